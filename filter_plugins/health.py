"""The record every role's health check appends (tasks/health.yml, playbooks/health.yml).

``<role>_health_checks | default([]) | celery_stack_health_check(component, ok, detail)``
returns the list with one more ``{component, ok, detail}``: ``ok`` a bool,
``detail`` one line of at most 200 characters. playbooks/health.yml reports
every record and fails naming the host and the components that are not ok.
"""

from __future__ import annotations

from typing import Any, Callable

DETAIL_MAX = 200


def celery_stack_health_check(checks: list[dict[str, Any]] | None, component: str, ok: Any, detail: Any) -> list[dict[str, Any]]:
    """``checks`` plus the record of one component."""
    text = " ".join(str(detail if detail is not None else "").split())
    if len(text) > DETAIL_MAX:
        text = text[: DETAIL_MAX - 3] + "..."
    return [*(checks or []), {"component": str(component), "ok": bool(ok), "detail": text}]


class FilterModule:
    """celery-stack health filters."""

    def filters(self) -> dict[str, Callable[..., Any]]:
        """Map filter names to functions."""
        return {"celery_stack_health_check": celery_stack_health_check}
