"""celery-stack helpers shared by the Ansible plugins and the unit tests.

Only pure standard-library code lives here, so it can be imported (and
tested) without Ansible.  The capacity plan is split by what it computes:

- :mod:`celery_stack.inputs`: the declaration of every ``capacity_*`` input,
  parsing and validation (:class:`PlanError`);
- :mod:`celery_stack.pgtune`: PGTune's PostgreSQL settings;
- :mod:`celery_stack.plan`: automatic values, the plan and its checks;
- :mod:`celery_stack.cluster`: split layouts (contributions, cluster view);
- :mod:`celery_stack.report`: the plan as a text table;
- :mod:`celery_stack.role_files`: the capacity role's files generated from
  the declaration of the inputs.
"""

from celery_stack.cluster import cluster_contribution, cluster_view
from celery_stack.inputs import PlanError
from celery_stack.pgtune import pgtune
from celery_stack.plan import build_plan, check_plan, plan_or_errors
from celery_stack.report import format_plan

__all__ = [
    "PlanError",
    "build_plan",
    "check_plan",
    "cluster_contribution",
    "cluster_view",
    "format_plan",
    "pgtune",
    "plan_or_errors",
]
