"""Ansible filters for the celery-stack capacity plan.

Thin wrappers around the :mod:`celery_stack` modules (pure Python,
importable from the repository root):

- ``host | celery_stack_plan_result(services, workload, cluster)``: the plan
  and the failed checks from one computation, ``{"plan": dict or None,
  "errors": [...]}`` (what the capacity role uses).
- ``host | celery_stack_plan(services, workload, cluster)``: the plan dict;
  a refused plan raises AnsibleFilterError listing every failed check.
- ``host | celery_stack_plan_errors(services, workload, cluster)``: the
  list of failed checks (empty when the plan fits).
- ``plan | celery_stack_plan_table``: the plan as a fixed-width text table.
- ``host | celery_stack_contribution(services, workload, cluster)``: what
  this host adds to the plans of the other hosts (split layouts).
- ``inventory_hostname | celery_stack_cluster(services, groups,
  contributions, db_vcpus)``: the ``cluster`` argument for this host.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Callable

_REPO_ROOT = os.path.realpath(os.path.join(os.path.dirname(os.path.realpath(__file__)), ".."))
if _REPO_ROOT not in sys.path:
    sys.path.insert(0, _REPO_ROOT)

from ansible.errors import AnsibleFilterError  # noqa: E402

from celery_stack.cluster import cluster_contribution, cluster_view  # noqa: E402
from celery_stack.inputs import PlanError  # noqa: E402
from celery_stack.plan import build_plan, check_plan, plan_or_errors  # noqa: E402
from celery_stack.report import format_plan  # noqa: E402


def celery_stack_plan(
    host: dict[str, Any], services: list[str], workload: dict[str, Any], cluster: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Build the capacity plan; a refused plan becomes an AnsibleFilterError."""
    try:
        return build_plan(host, services, workload, cluster)
    except PlanError as error:
        failure = AnsibleFilterError(str(error))
        failure.messages = error.messages  # type: ignore[attr-defined]
        raise failure from error


def celery_stack_plan_errors(
    host: dict[str, Any], services: list[str], workload: dict[str, Any], cluster: dict[str, Any] | None = None
) -> list[str]:
    """Every failed check of the plan (empty list when it fits)."""
    return check_plan(host, services, workload, cluster)


def celery_stack_plan_result(
    host: dict[str, Any], services: list[str], workload: dict[str, Any], cluster: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The plan (None when refused) and every failed check, computed once."""
    return plan_or_errors(host, services, workload, cluster)


def celery_stack_plan_table(plan: dict[str, Any]) -> str:
    """The plan rendered as a fixed-width table."""
    try:
        return format_plan(plan)
    except (KeyError, TypeError) as error:
        raise AnsibleFilterError(f"celery_stack_plan_table expects a plan from celery_stack_plan: {error}") from error


class FilterModule:
    """celery-stack capacity filters."""

    def filters(self) -> dict[str, Callable[..., Any]]:
        """Map filter names to functions."""
        return {
            "celery_stack_plan_result": celery_stack_plan_result,
            "celery_stack_plan": celery_stack_plan,
            "celery_stack_plan_errors": celery_stack_plan_errors,
            "celery_stack_plan_table": celery_stack_plan_table,
            "celery_stack_contribution": cluster_contribution,
            "celery_stack_cluster": cluster_view,
        }
