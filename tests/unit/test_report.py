"""Unit tests of celery_stack.report: the plan table."""

from __future__ import annotations

from capacity_cases import ALL, ROOT, SEED_HOST, SEED_WORKLOAD

from celery_stack.plan import build_plan
from celery_stack.report import format_plan


def test_golden_3_table_is_in_the_readme() -> None:
    table = format_plan(build_plan(SEED_HOST, ALL, SEED_WORKLOAD))
    assert table in (ROOT / "README.md").read_text()
