"""Memory units and the integer arithmetic shared by the sizing rules.

Standard library only: this module must stay importable without Ansible.
"""

from __future__ import annotations

KB_PER_MB = 1024
KB_PER_GB = 1024 * 1024


def ceil_div(numerator: int, denominator: int) -> int:
    """Integer ceiling division."""
    return -(-numerator // denominator)


def clamp(value: int, low: int, high: int) -> int:
    """Clamp ``value`` to [low, high]."""
    return max(low, min(high, value))
