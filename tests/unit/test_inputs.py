"""Unit tests of celery_stack.inputs: every bad input is refused, naming the variable and the value."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from capacity_cases import ALL, SEED_HOST, SEED_WORKLOAD, refused, seed

from celery_stack.inputs import (
    HOST,
    HOST_VARIABLES,
    INPUTS,
    PG_MAX_CONNECTIONS,
    POOL_DEFAULTS,
    WORKLOAD_DEFAULTS,
    WORKLOAD_INPUTS,
    Input,
)
from celery_stack.plan import build_plan, check_plan


def test_duplicate_pool_names() -> None:
    pools = copy.deepcopy(SEED_WORKLOAD["celery_pools"])
    pools[2]["name"] = "high"
    assert refused(SEED_HOST, ALL, seed(celery_pools=pools)) == [
        "capacity_celery_pools[2].name 'high' duplicates capacity_celery_pools[0]"
    ]


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("api_processes", -1),
        ("api_processes", "four"),
        ("api_db_pool_size", -5),
        ("postgresql_direct_connections", 2.5),
        ("pgbouncer_reserve_pool_size", True),
        ("redis_cache_maxmemory_mb", 0),
        ("celery_max_eta_seconds", "soon"),
        ("pgbouncer_client_headroom", 0.5),
        ("postgresql_version", 16),
        ("postgresql_db_type", "olap"),
        ("celery_beat_enabled", "maybe"),
    ],
)
def test_bad_values_name_the_variable_and_the_value(variable: str, value: Any) -> None:
    messages = refused(SEED_HOST, ALL, seed(**{variable: value}))
    assert len(messages) == 1
    assert messages[0].startswith(f"capacity_{variable} must")
    assert repr(value) in messages[0]


@pytest.mark.parametrize(
    ("key", "value"), [("vcpus", -2), ("memory_mb", "lots"), ("storage", "tape"), ("os_reserve_mb", -1)]
)
def test_bad_host_values(key: str, value: Any) -> None:
    messages = refused({**SEED_HOST, key: value}, ALL, SEED_WORKLOAD)
    assert messages[0].startswith(HOST_VARIABLES[key]) and repr(value) in messages[0]


def test_numeric_strings_are_accepted() -> None:
    plan = build_plan({"vcpus": "8", "memory_mb": "32768"}, ALL, seed(api_processes="4", postgresql_version="17"))
    assert plan == build_plan(SEED_HOST, ALL, SEED_WORKLOAD)


def test_missing_size_asks_to_declare_or_gather() -> None:
    messages = refused({"vcpus": None, "memory_mb": None}, ALL, SEED_WORKLOAD)
    assert messages == [
        "capacity_host_vcpus is null and no facts were gathered: declare it in the inventory or gather facts",
        "capacity_host_memory_mb is null and no facts were gathered: declare it in the inventory or gather facts",
    ]
    assert "capacity_postgresql_version is null" in refused(SEED_HOST, ALL, seed(postgresql_version=None))[0]


def test_unknown_keys_and_services_are_refused() -> None:
    pools = copy.deepcopy(SEED_WORKLOAD["celery_pools"])
    pools[0]["max_memory_per_child"] = 300000
    messages = refused(SEED_HOST, [*ALL, "mail"], seed(celery_pools=pools))
    assert messages == [
        "services has unknown names ['mail']; known: db, pgbouncer, broker, cache, web, workers, monitoring",
        "capacity_celery_pools[0] has unknown keys: max_memory_per_child",
    ]


# ---------------------------------------------------------------- the declaration drives the validation


@pytest.mark.parametrize("item", [item for item in INPUTS if item.minimum is not None], ids=lambda item: item.variable)
def test_every_declared_minimum_is_enforced(item: Input) -> None:
    below = item.minimum - 1 if item.type == "int" else item.minimum - 0.5
    if item.kind == HOST:
        messages = refused({**SEED_HOST, item.name: below}, ALL, SEED_WORKLOAD)
    else:
        messages = refused(SEED_HOST, ALL, seed(**{item.name: below}))
    # (capacity_celery_parent_memory_mb is also the default of every pool's parent_memory_mb, refused there too)
    assert messages[0].startswith(f"{item.variable} must") and repr(below) in messages[0]
    assert all("parent_memory_mb" in message for message in messages[1:])


def test_declared_maximum_and_nulls_are_enforced() -> None:
    assert refused(SEED_HOST, ALL, seed(postgresql_max_connections=PG_MAX_CONNECTIONS + 1)) == [
        f"capacity_postgresql_max_connections must be between 1 and {PG_MAX_CONNECTIONS}, got {PG_MAX_CONNECTIONS + 1}"
    ]
    for key, item in WORKLOAD_INPUTS.items():
        if item.type != "int" or item.choices:
            continue
        if item.nullable:
            assert check_plan(SEED_HOST, ALL, seed(**{key: None})) == [], key  # null = automatic
        else:
            messages = refused(SEED_HOST, ALL, seed(**{key: None}))
            assert messages[0] == f"{item.variable} must be set, got null"
            assert all("parent_memory_mb" in message for message in messages[1:])


def test_pool_keys_take_their_declared_defaults() -> None:
    plan = build_plan(SEED_HOST, ["workers"], {"celery_pools": [{"name": "p", "queues": ["celery"]}]})
    pool = plan["celery"]["pools"][0]
    for key, default in POOL_DEFAULTS.items():
        if key == "concurrency":
            assert default == "auto" and pool[key] == SEED_HOST["vcpus"]
        elif key == "parent_memory_mb":
            assert default is None and pool[key] == WORKLOAD_DEFAULTS["celery_parent_memory_mb"]
        elif key == "db_connections_per_process":
            assert pool["db_connections"] == default * pool["concurrency"]
        else:
            assert pool[key] == default, key
