"""Unit tests of celery_stack.plan: golden plans, every check, properties."""

from __future__ import annotations

import copy

import pytest
import yaml
from capacity_cases import (
    ALL,
    ROOT,
    SEED_HOST,
    SEED_WORKLOAD,
    assert_accepted_by_postgresql,
    pg_kb,
    refused,
    seed,
)
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from celery_stack.inputs import HOST_VARIABLES, PG_MAX_CONNECTIONS, SERVICES, STORAGE_TYPES, PlanError
from celery_stack.pgtune import DB_TYPES, PG_VERSIONS
from celery_stack.plan import POSTGRESQL_MIN_MB, build_plan, check_plan, plan_or_errors
from celery_stack.report import format_plan


def test_plan_passes_nvme_to_pgtune() -> None:
    plan = build_plan({**SEED_HOST, "storage": "nvme"}, ALL, SEED_WORKLOAD)
    assert plan["postgresql"]["effective_io_concurrency"] == "1000"
    assert plan["postgresql"]["random_page_cost"] == "1.1"


# ---------------------------------------------------------------- golden case 3


def test_golden_3_seed_all_in_one_host_fits() -> None:
    plan = build_plan(SEED_HOST, ALL, SEED_WORKLOAD)
    assert plan["memory"] == {
        "total": 32768,
        "os_reserve": 1639,
        "postgresql": 19200,
        "redis_broker": 2048,
        "redis_cache": 2560,
        "workers": 3412,
        "beat": 128,
        "flower": 256,
        "api": 1536,
        "nginx": 128,
        "pgbouncer": 64,
        "monitoring": 1536,
        "exporters": 256,
        "workers_by_pool": {"high": 1300, "normal": 1593, "low": 519},
        "allocated": 32763,
        "free": 5,
    }
    assert plan["connections"]["max_connections"] == 35
    assert plan["pgbouncer"]["default_pool_size"] == 17
    assert plan["pgbouncer"]["max_db_connections"] == 22
    assert plan["pgbouncer"]["client_demand"] == {
        "api": 320,
        "celery:high": 4,
        "celery:normal": 6,
        "celery:low": 2,
        "beat": 1,
        "flower": 0,
    }
    assert plan["pgbouncer"]["max_client_conn"] == 417
    assert plan["pgbouncer"]["fd_limit"] == 539
    assert plan["postgresql"] == {
        "max_connections": "35",
        "shared_buffers": "4800MB",
        "effective_cache_size": "14400MB",
        "maintenance_work_mem": "1200MB",
        "checkpoint_completion_target": "0.9",
        "wal_buffers": "16MB",
        "default_statistics_target": "100",
        "random_page_cost": "1.1",
        "effective_io_concurrency": "200",
        "work_mem": "114306kB",
        "huge_pages": "try",  # shared_buffers 4800MB >= 2GB
        "jit": "off",
        "wal_compression": "lz4",
        "min_wal_size": "1GB",
        "max_wal_size": "4GB",
        "max_worker_processes": "8",
        "max_parallel_workers_per_gather": "4",
        "max_parallel_workers": "8",
        "max_parallel_maintenance_workers": "4",
        "superuser_reserved_connections": "3",
    }
    assert plan["postgresql_kb"] == {
        "shared_buffers": 4915200,
        "effective_cache_size": 14745600,
        "maintenance_work_mem": 1228800,
        "wal_buffers": 16384,
        "work_mem": 114306,
        "min_wal_size": 1048576,
        "max_wal_size": 4194304,
    }
    assert plan["redis"]["broker"] == {
        "maxmemory_mb": 1024,
        "maxmemory_policy": "noeviction",
        "appendonly": "yes",
        "appendfsync": "everysec",
    }
    assert plan["redis"]["cache"] == {"maxmemory_mb": 2048, "maxmemory_policy": "allkeys-lru", "appendonly": "no"}
    pools = {pool["name"]: pool for pool in plan["celery"]["pools"]}
    assert pools["high"]["memory_max_mb"] == 1300 and pools["high"]["stop_timeout_sec"] == 390
    assert plan["celery"]["visibility_timeout"] == 780  # 1.25 x the 600 s ETA, rounded up to a minute
    assert plan["warnings"] == []


def _inventory_workload(environment: str) -> tuple[dict, dict]:
    """host and workload from an inventory's hosts.yml and group_vars/all/capacity.yml."""
    inventory = ROOT / "inventories" / environment
    hostvars = next(iter(yaml.safe_load((inventory / "hosts.yml").read_text())["all"]["hosts"].values()))
    group_vars = yaml.safe_load((inventory / "group_vars" / "all" / "capacity.yml").read_text())
    host = {key: hostvars[var] for key, var in HOST_VARIABLES.items() if var in hostvars}
    workload = {name.removeprefix("capacity_"): value for name, value in group_vars.items()}
    return host, workload


@pytest.mark.parametrize("environment", ["production", "staging"])
def test_inventory_examples_fit(environment: str) -> None:
    host, workload = _inventory_workload(environment)
    plan = build_plan(host, ALL, workload)
    assert plan["memory"]["allocated"] <= plan["memory"]["total"]
    if environment == "production":
        assert plan == build_plan(SEED_HOST, ALL, SEED_WORKLOAD)


def test_dedicated_db_host_gives_postgresql_everything_but_os_and_exporters() -> None:
    plan = build_plan({"vcpus": 8, "memory_mb": 32768}, ["db"], {"postgresql_version": 15})
    assert plan["memory"]["postgresql"] == (32768 - 1639 - 256) // 256 * 256
    assert "redis" in plan and plan["redis"] == {} and "celery" not in plan and "pgbouncer" not in plan
    assert any("no PgBouncer" in warning for warning in plan["warnings"])


# ---------------------------------------------------------------- checks (failing and passing)


def test_memory_over_commit_lists_the_parts() -> None:
    messages = refused(SEED_HOST, ALL, seed(postgresql_memory_mb=30000))
    assert len(messages) == 1
    assert messages[0].startswith("memory over-commit: os_reserve 1639 + postgresql 30000 + redis_broker 2048")
    assert "> capacity_host_memory_mb=32768 MB" in messages[0]
    assert build_plan(SEED_HOST, ALL, seed(postgresql_memory_mb=19200))["memory"]["free"] == 5


def test_postgresql_share_below_minimum() -> None:
    messages = refused(SEED_HOST, ALL, seed(postgresql_memory_mb=256))
    assert messages == ["PostgreSQL share too small: capacity_postgresql_memory_mb=256, below the 512 MB minimum"]
    auto = refused({"vcpus": 2, "memory_mb": 6144}, ALL, seed(api_processes=2))
    assert any("capacity_postgresql_memory_mb (auto)" in message for message in auto)
    assert build_plan(SEED_HOST, ALL, seed(postgresql_memory_mb=512))["memory"]["postgresql"] == 512


def test_pinned_max_connections_below_plan() -> None:
    messages = refused(SEED_HOST, ALL, seed(postgresql_max_connections=34))
    assert messages == [
        "capacity_postgresql_max_connections=34 is below the planned connections 35 (PgBouncer servers 22 + "
        "capacity_postgresql_direct_connections 10 + capacity_postgresql_superuser_reserved_connections 3)"
    ]
    assert build_plan(SEED_HOST, ALL, seed(postgresql_max_connections=100))["postgresql"]["max_connections"] == "100"


def test_pinned_max_client_conn_below_demand() -> None:
    messages = refused(SEED_HOST, ALL, seed(pgbouncer_max_client_conn=332))
    assert "capacity_pgbouncer_max_client_conn=332 is below the client demand 333" in messages[0]
    plan = build_plan(SEED_HOST, ALL, seed(pgbouncer_max_client_conn=333))
    assert plan["pgbouncer"]["max_client_conn"] == 333
    assert any("headroom" in warning for warning in plan["warnings"])


def test_routed_queue_without_consumer_is_an_error_unrouted_queue_a_warning() -> None:
    messages = refused(SEED_HOST, ALL, seed(celery_routes=[*SEED_WORKLOAD["celery_routes"], "ef_reports"]))
    assert messages == ["capacity_celery_routes sends tasks to queue 'ef_reports' but no pool consumes it"]
    plan = build_plan(
        SEED_HOST, ALL, seed(celery_routes=["ef_pull", "ef_push", "celery", "default", "ef_sync", "ef_core"])
    )
    assert plan["warnings"] == ["queue 'ef_low' consumed by pool 'low' is not in capacity_celery_routes"]


def test_routed_queue_consumed_on_another_worker_host_is_accepted() -> None:
    workload = seed(celery_routes=[*SEED_WORKLOAD["celery_routes"], "ef_reports"])
    plan = build_plan(SEED_HOST, ALL, workload, {"remote_queues": ["ef_reports"]})
    assert plan["celery"]["routes"][-1] == "ef_reports"


def test_time_limit_must_exceed_soft_time_limit() -> None:
    pools = copy.deepcopy(SEED_WORKLOAD["celery_pools"])
    pools[0].update(soft_time_limit=600, time_limit=600)
    messages = refused(SEED_HOST, ALL, seed(celery_pools=pools))
    assert messages == ["capacity_celery_pools[0] (high).time_limit=600 must be greater than soft_time_limit=600"]
    pools[0]["time_limit"] = 601
    assert build_plan(SEED_HOST, ALL, seed(celery_pools=pools))["celery"]["pools"][0]["stop_timeout_sec"] == 631


def test_visibility_timeout_must_exceed_hard_limits_and_eta() -> None:
    messages = refused(SEED_HOST, ALL, seed(celery_visibility_timeout=360))
    assert len(messages) == 4  # equal to every pool's time_limit (360 s x prefetch 1), below the 600 s ETA
    assert messages[0].startswith(
        "capacity_celery_visibility_timeout=360 must exceed capacity_celery_pools[0] (high) time_limit 360"
    )
    eta = refused(SEED_HOST, ALL, seed(celery_visibility_timeout=500, celery_max_eta_seconds=7200))
    assert eta == [
        "capacity_celery_visibility_timeout=500 must exceed capacity_celery_max_eta_seconds = 7200 s, "
        "or the broker redelivers tasks that are still running or waiting"
    ]
    assert build_plan(SEED_HOST, ALL, seed(celery_visibility_timeout=7201, celery_max_eta_seconds=7200))
    assert build_plan(SEED_HOST, ALL, seed(celery_max_eta_seconds=7200))["celery"]["visibility_timeout"] == 9000


def test_visibility_timeout_accounts_for_prefetch() -> None:
    pools = copy.deepcopy(SEED_WORKLOAD["celery_pools"])
    pools[1].update(prefetch_multiplier=4, time_limit=1800, soft_time_limit=1700)
    assert build_plan(SEED_HOST, ALL, seed(celery_pools=pools))["celery"]["visibility_timeout"] == 9000
    assert refused(SEED_HOST, ALL, seed(celery_pools=pools, celery_visibility_timeout=7200))


def test_concurrency_zero_and_auto_resolving_to_zero() -> None:
    pools = copy.deepcopy(SEED_WORKLOAD["celery_pools"])
    pools[2]["concurrency"] = 0
    assert refused(SEED_HOST, ALL, seed(celery_pools=pools)) == [
        "capacity_celery_pools[2] (low).concurrency must be >= 1, got 0 (or 'auto')"
    ]
    auto = [{"name": "a", "queues": ["celery"]}, {"name": "b", "queues": ["other"]}]
    messages = check_plan(
        {"vcpus": 1, "memory_mb": 16384}, ["workers"], {"celery_pools": auto, "celery_routes": ["celery"]}
    )
    assert "capacity_celery_pools[0] (a).concurrency 'auto' resolves to 0" in messages[0]
    plan = build_plan(
        {"vcpus": 4, "memory_mb": 16384}, ["workers"], {"celery_pools": auto, "celery_routes": ["celery", "other"]}
    )
    assert [pool["concurrency"] for pool in plan["celery"]["pools"]] == [2, 2]


def test_redis_broker_maxmemory_minimum() -> None:
    assert refused(SEED_HOST, ALL, seed(redis_broker_maxmemory_mb=128)) == [
        "capacity_redis_broker_maxmemory_mb=128 is below the 256 MB minimum for a broker"
    ]
    assert build_plan(SEED_HOST, ALL, seed(redis_broker_maxmemory_mb=256))["redis"]["broker"]["maxmemory_mb"] == 256


def test_every_failed_check_is_reported_at_once() -> None:
    pools = copy.deepcopy(SEED_WORKLOAD["celery_pools"])
    pools[0]["time_limit"] = 100
    messages = refused(
        SEED_HOST,
        ALL,
        seed(
            celery_pools=pools,
            postgresql_max_connections=20,
            pgbouncer_max_client_conn=100,
            redis_broker_maxmemory_mb=100,
            celery_routes=["nowhere", *SEED_WORKLOAD["celery_routes"]],
        ),
    )
    assert len(messages) == 5
    assert [message.split()[0] for message in messages] == [
        "capacity_celery_pools[0]",
        "capacity_celery_routes",
        "capacity_pgbouncer_max_client_conn=100",
        "capacity_postgresql_max_connections=20",
        "capacity_redis_broker_maxmemory_mb=100",
    ]


# ---------------------------------------------------------------- properties

pool_strategy = st.fixed_dictionaries(
    {
        "concurrency": st.one_of(st.just("auto"), st.integers(1, 16)),
        "max_memory_per_child_kb": st.integers(50_000, 1_000_000),
        "prefetch_multiplier": st.integers(1, 8),
        "soft_time_limit": st.integers(10, 3600),
        "extra": st.integers(1, 600),
        "db_connections_per_process": st.integers(0, 3),
    }
)


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[dict, list[str], dict]:
    """Random hosts (1-128 vCPU, 1-1024 GB) and workloads."""
    host = {
        "vcpus": draw(st.integers(1, 128)),
        "memory_mb": draw(st.integers(1, 1024)) * 1024,
        "storage": draw(st.sampled_from(STORAGE_TYPES)),
    }
    services = draw(st.lists(st.sampled_from(SERVICES), unique=True, min_size=1))
    pools = []
    for index, raw in enumerate(draw(st.lists(pool_strategy, min_size=1, max_size=4))):
        extra = raw.pop("extra")
        pools.append(
            {**raw, "name": f"p{index}", "queues": [f"q{index}"], "time_limit": raw["soft_time_limit"] + extra}
        )
    workload = {
        "postgresql_version": draw(st.sampled_from(PG_VERSIONS)),
        "postgresql_db_type": draw(st.sampled_from(DB_TYPES)),
        "api_processes": draw(st.one_of(st.none(), st.integers(1, 32))),
        "api_db_pool_size": draw(st.integers(0, 50)),
        "api_db_max_overflow": draw(st.integers(0, 50)),
        "celery_pools": pools,
        "celery_routes": [f"q{index}" for index in range(len(pools))],
        "celery_max_eta_seconds": draw(st.integers(0, 86400)),
        "pgbouncer_databases": draw(st.integers(1, 4)),
        "pgbouncer_default_pool_size": draw(st.one_of(st.none(), st.integers(1, 200))),
    }
    return host, services, workload


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(scenarios())
def test_property_accepted_plans_fit_and_stay_in_range(scenario: tuple[dict, list[str], dict]) -> None:
    host, services, workload = scenario
    try:
        plan = build_plan(host, services, workload)
    except PlanError as error:
        assert error.messages and all(isinstance(message, str) and message for message in error.messages)
        assume(False)
        return
    memory = plan["memory"]
    shares = {k: v for k, v in memory.items() if k not in ("total", "workers_by_pool", "allocated", "free")}
    assert all(mb >= 0 for mb in shares.values())
    assert sum(shares.values()) == memory["allocated"] <= memory["total"] == host["memory_mb"]
    if "db" in services:
        conn = plan["connections"]
        assert 1 <= conn["max_connections"] <= PG_MAX_CONNECTIONS
        assert (
            conn["max_connections"]
            >= sum(conn["pgbouncer_servers"].values()) + conn["direct"] + conn["superuser_reserved"]
        )
        assert conn["max_connections"] > conn["superuser_reserved"]
        pg = plan["postgresql"]
        assert memory["postgresql"] >= POSTGRESQL_MIN_MB
        assert pg_kb(pg["shared_buffers"]) >= 128 and pg_kb(pg["work_mem"]) >= 4096  # PGTune's 4MB floor
        assert 1024 <= pg_kb(pg["maintenance_work_mem"]) <= 8 * 1024 * 1024  # PGTune's 8GB cap
        assert 32 <= pg_kb(pg["wal_buffers"]) <= 16 * 1024
        assert pg_kb(pg["effective_cache_size"]) >= 8
        assert {key: pg_kb(pg[key]) for key in plan["postgresql_kb"]} == plan["postgresql_kb"]
        assert pg_kb(pg["shared_buffers"]) <= memory["postgresql"] * 1024
        assert pg["huge_pages"] == ("try" if pg_kb(pg["shared_buffers"]) >= 2 * 1024 * 1024 else "off")
        assert ("autovacuum_work_mem" in pg) == (pg_kb(pg["maintenance_work_mem"]) >= 2 * 1024 * 1024)
        assert pg["effective_io_concurrency"] == {"hdd": "2", "ssd": "200", "nvme": "1000"}[host["storage"]]
        assert_accepted_by_postgresql(pg, workload["postgresql_version"])
    if "pgbouncer" in services:
        pgb = plan["pgbouncer"]
        assert pgb["default_pool_size"] >= 1 and pgb["max_db_connections"] >= 1
        assert pgb["max_client_conn"] >= pgb["client_demand_total"]
        assert pgb["fd_limit"] > pgb["max_client_conn"] + pgb["server_connections"]
        if "db" in services:
            assert pgb["server_connections"] <= plan["connections"]["max_connections"]
    for redis in plan["redis"].values():
        assert redis["maxmemory_mb"] > 0
    if "workers" in services:
        celery = plan["celery"]
        for pool in celery["pools"]:
            assert pool["concurrency"] >= 1
            assert celery["visibility_timeout"] > pool["time_limit"] * pool["prefetch_multiplier"]
            assert pool["stop_timeout_sec"] > pool["time_limit"] > pool["soft_time_limit"]
            assert pool["memory_max_mb"] > 0
        assert celery["visibility_timeout"] > celery["max_eta_seconds"]
    assert format_plan(plan)


# ---------------------------------------------------------------- one call for the role


def test_plan_or_errors_gives_the_plan_or_every_error_at_once() -> None:
    plan = build_plan(SEED_HOST, ALL, SEED_WORKLOAD)
    assert plan_or_errors(SEED_HOST, ALL, SEED_WORKLOAD) == {"plan": plan, "errors": []}
    workload = seed(postgresql_max_connections=34, redis_broker_maxmemory_mb=128)
    result = plan_or_errors(SEED_HOST, ALL, workload)
    assert result["plan"] is None and result["errors"] == refused(SEED_HOST, ALL, workload) == check_plan(
        SEED_HOST, ALL, workload
    )
    assert len(result["errors"]) == 2
    bad_input = plan_or_errors({"vcpus": 0, "memory_mb": 1024}, ALL, SEED_WORKLOAD)
    assert bad_input == {"plan": None, "errors": ["capacity_host_vcpus must be >= 1, got 0"]}


def test_nginx_upstreams_are_the_api_processes_of_the_plan() -> None:
    plan = build_plan(SEED_HOST, ALL, seed(api_processes=3, api_port=9000))
    assert plan["api"] == {
        "processes": 3,
        "port": 9000,
        "bind_address": "127.0.0.1",
        "upstreams": ["127.0.0.1:9000", "127.0.0.1:9001", "127.0.0.1:9002"],
    }
    ipv6 = build_plan(SEED_HOST, ALL, seed(api_processes=2, api_bind_address="::1"))["api"]
    assert ipv6["upstreams"] == ["[::1]:8000", "[::1]:8001"]
    workers_only = build_plan(SEED_HOST, ["workers"], SEED_WORKLOAD)
    assert "api" not in workers_only


def test_api_ports_and_address_are_checked() -> None:
    assert refused(SEED_HOST, ALL, seed(api_processes=4, api_port=65534)) == [
        "capacity_api_port=65534 + capacity_api_processes=4 - 1 = 65537 is above 65535"
    ]
    assert refused(SEED_HOST, ALL, seed(api_bind_address="0.0.0.0")) == [
        "capacity_api_bind_address must be an IP address of this host (not a wildcard), got '0.0.0.0'"
    ]
    assert refused(SEED_HOST, ALL, seed(api_bind_address="localhost")) == [
        "capacity_api_bind_address must be an IP address of this host (not a wildcard), got 'localhost'"
    ]
    assert "capacity_api_port" in " ".join(refused(SEED_HOST, ALL, seed(api_port=80)))


# ---------------------------------------------------------------- monitoring


def test_monitoring_section_splits_the_share_and_sets_retention() -> None:
    plan = build_plan(SEED_HOST, ALL, seed(monitoring_retention_days=30, monitoring_disk_mb=20000))
    monitoring = plan["monitoring"]
    assert monitoring == {
        "memory_mb": 1536,
        "prometheus_memory_max_mb": 1305,
        "prometheus_gomemlimit_mb": 1044,
        "alertmanager_memory_max_mb": 231,
        "alertmanager_gomemlimit_mb": 184,
        "retention_days": 30,
        "retention_size_mb": 18000,
    }
    assert monitoring["memory_mb"] == plan["memory"]["monitoring"]
    assert monitoring["prometheus_memory_max_mb"] + monitoring["alertmanager_memory_max_mb"] == monitoring["memory_mb"]


def test_no_monitoring_section_without_the_service() -> None:
    assert "monitoring" not in build_plan(SEED_HOST, ["db", "pgbouncer"], SEED_WORKLOAD)


def test_monitoring_share_too_small_for_prometheus_is_refused() -> None:
    errors = refused(SEED_HOST, ALL, seed(monitoring_memory_mb=256))
    assert any("Prometheus memory too small" in e and "capacity_monitoring_memory_mb=256" in e for e in errors), errors
