"""celery-stack helpers shared by the Ansible plugins and the unit tests.

Only pure standard-library code lives here, so it can be imported (and
tested) without Ansible.
"""

from celery_stack.capacity import (
    PlanError,
    build_plan,
    check_plan,
    cluster_contribution,
    cluster_view,
    format_plan,
    pgtune,
)

__all__ = [
    "PlanError",
    "build_plan",
    "check_plan",
    "cluster_contribution",
    "cluster_view",
    "format_plan",
    "pgtune",
]
