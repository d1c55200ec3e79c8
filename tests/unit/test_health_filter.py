"""The health record filter every role's tasks/health.yml uses (filter_plugins/health.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

_PATH = Path(__file__).resolve().parents[2] / "filter_plugins" / "health.py"
_SPEC = importlib.util.spec_from_file_location("health_filter", _PATH)
assert _SPEC and _SPEC.loader
health = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(health)
record = health.celery_stack_health_check


def test_appends_one_record_without_touching_the_list() -> None:
    checks = [{"component": "postgresql", "ok": True, "detail": "accepting connections"}]
    out = record(checks, "pool low", 0, "Error: No nodes replied within time constraint")
    assert out == checks + [{"component": "pool low", "ok": False, "detail": "Error: No nodes replied within time constraint"}]
    assert len(checks) == 1


def test_starts_a_list_and_keeps_details_on_one_short_line() -> None:
    out = record(None, "api-1", "yes", "  line one\n  line two  ")
    assert out == [{"component": "api-1", "ok": True, "detail": "line one line two"}]
    long = record([], "nginx", True, "x" * 500)[0]["detail"]
    assert len(long) == 200 and long.endswith("...")
    assert record([], "beat", False, None)[0]["detail"] == ""
