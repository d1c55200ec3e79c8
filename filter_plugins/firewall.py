"""Ansible filters of role firewall (nftables), thin wrappers around celery_stack.firewall.

- ``sources | celery_stack_firewall_families``: ``{"ip": [...], "ip6": [...]}``,
  the sources of one rule split per address family, normalised, sorted
  and de-duplicated (the rules file matches ``ip saddr`` and ``ip6 saddr``
  apart). An invalid source raises AnsibleFilterError.
- ``ssh_sources | celery_stack_firewall_errors(public_ports, rules, ssh_port)``:
  every problem of the role's inputs, one message each naming the variable
  and the value (empty list: fine).
- ``inventory_hostname | celery_stack_firewall_rules(groups, addresses, services)``:
  the host's ``firewall_rules`` from the inventory: for each service
  ``{name, group, ports, clients}`` the host serves, the private addresses
  of the other hosts of its client groups.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Callable, Iterable

_REPO_ROOT = os.path.realpath(os.path.join(os.path.dirname(os.path.realpath(__file__)), ".."))
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)

from ansible.errors import AnsibleFilterError  # noqa: E402

from celery_stack.firewall import check_firewall, firewall_rules, split_families  # noqa: E402


def celery_stack_firewall_families(sources: Iterable[Any] | None) -> dict[str, list[str]]:
    """The sources of one rule per family; an invalid one becomes an AnsibleFilterError."""
    try:
        return split_families(sources)
    except ValueError as error:
        raise AnsibleFilterError(f"celery_stack_firewall_families: {error}") from error


class FilterModule:
    """celery-stack firewall filters."""

    def filters(self) -> dict[str, Callable[..., Any]]:
        """Map filter names to functions."""
        return {
            "celery_stack_firewall_families": celery_stack_firewall_families,
            "celery_stack_firewall_errors": check_firewall,
            "celery_stack_firewall_rules": firewall_rules,
        }
