"""The Ansible filter plugin wraps the celery_stack modules and converts their errors."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

pytest.importorskip("ansible")
from ansible.errors import AnsibleFilterError  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
HOST = {"vcpus": 8, "memory_mb": 32768, "storage": "ssd"}
SERVICES = ["db", "pgbouncer", "broker", "cache", "web", "workers", "monitoring"]


@pytest.fixture(scope="module")
def plugin() -> ModuleType:
    """Load filter_plugins/capacity_plan.py the way Ansible does: by path."""
    spec = importlib.util.spec_from_file_location("capacity_plan_filter", ROOT / "filter_plugins" / "capacity_plan.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def filters(plugin: ModuleType) -> dict:
    """The filters the module exposes."""
    return plugin.FilterModule().filters()


def test_filter_names(filters: dict) -> None:
    assert set(filters) == {
        "celery_stack_plan_result",
        "celery_stack_plan",
        "celery_stack_plan_errors",
        "celery_stack_plan_table",
        "celery_stack_contribution",
        "celery_stack_cluster",
    }


def test_plan_and_table(filters: dict) -> None:
    plan = filters["celery_stack_plan"](HOST, SERVICES, {"postgresql_version": 17})
    assert plan["pgbouncer"]["pool_mode"] == "transaction"
    table = filters["celery_stack_plan_table"](plan)
    assert table.startswith("capacity plan: 8 vCPU, 32768 MB RAM, ssd")


def test_refused_plan_becomes_filter_error_with_every_message(filters: dict) -> None:
    workload = {
        "postgresql_version": 17,
        "api_processes": -1,
        "redis_broker_maxmemory_mb": "big",
        "celery_routes": ["x"],
    }
    expected = filters["celery_stack_plan_errors"](HOST, SERVICES, workload)
    assert len(expected) == 2
    with pytest.raises(AnsibleFilterError) as error:
        filters["celery_stack_plan"](HOST, SERVICES, workload)
    assert error.value.messages == expected
    for message in expected:
        assert message in str(error.value)
    assert "capacity_api_processes" in str(error.value) and "capacity_redis_broker_maxmemory_mb" in str(error.value)


def test_plan_check_errors_after_inputs_are_valid(filters: dict) -> None:
    workload = {"postgresql_version": 17, "postgresql_memory_mb": 40000, "celery_routes": ["celery", "nowhere"]}
    messages = filters["celery_stack_plan_errors"](HOST, SERVICES, workload)
    assert [message.split(":")[0] for message in messages] == [
        "capacity_celery_routes sends tasks to queue 'nowhere' but no pool consumes it",
        "memory over-commit",
    ]
    assert filters["celery_stack_plan_errors"](HOST, SERVICES, {"postgresql_version": 17}) == []


def test_table_filter_rejects_non_plans(filters: dict) -> None:
    with pytest.raises(AnsibleFilterError):
        filters["celery_stack_plan_table"]({"nope": 1})


def test_plan_result_gives_the_plan_or_every_error_from_one_call(filters: dict) -> None:
    result = filters["celery_stack_plan_result"](HOST, SERVICES, {"postgresql_version": 17})
    assert result == {"plan": filters["celery_stack_plan"](HOST, SERVICES, {"postgresql_version": 17}), "errors": []}
    workload = {"postgresql_version": 17, "postgresql_memory_mb": 40000, "celery_routes": ["celery", "nowhere"]}
    refused = filters["celery_stack_plan_result"](HOST, SERVICES, workload)
    assert refused == {"plan": None, "errors": filters["celery_stack_plan_errors"](HOST, SERVICES, workload)}
    assert len(refused["errors"]) == 2
