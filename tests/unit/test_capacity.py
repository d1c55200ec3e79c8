"""Unit tests of celery_stack.capacity: PGTune parity, golden plans, every check, properties."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from celery_stack import capacity
from celery_stack.capacity import (
    PlanError,
    build_plan,
    check_plan,
    cluster_contribution,
    cluster_view,
    format_plan,
    pgtune,
)

ROOT = Path(__file__).resolve().parents[2]
ALL = list(capacity.SERVICES)

SEED_HOST = {"vcpus": 8, "memory_mb": 32768, "storage": "ssd"}
SEED_WORKLOAD: dict[str, Any] = {
    "postgresql_version": 17,
    "postgresql_db_type": "web",
    "postgresql_direct_connections": 10,
    "api_processes": 4,
    "api_db_pool_size": 30,
    "api_db_max_overflow": 50,
    "api_process_memory_mb": 384,
    "celery_pools": [
        {"name": "high", "queues": ["ef_pull", "ef_push"], "concurrency": 4, "max_memory_per_child_kb": 300000},
        {
            "name": "normal",
            "queues": ["celery", "default", "ef_sync", "ef_core"],
            "concurrency": 6,
            "max_memory_per_child_kb": 250000,
        },
        {"name": "low", "queues": ["ef_low"], "concurrency": 2, "max_memory_per_child_kb": 200000},
    ],
    "celery_routes": ["ef_pull", "ef_push", "celery", "default", "ef_sync", "ef_core", "ef_low"],
    "celery_max_eta_seconds": 600,
    "celery_beat_enabled": True,
    "celery_flower_enabled": True,
}


def seed(**changes: Any) -> dict[str, Any]:
    """The seed workload with some keys changed."""
    workload = copy.deepcopy(SEED_WORKLOAD)
    workload.update(changes)
    return workload


def refused(host: dict, services: list[str], workload: dict, cluster: dict | None = None) -> list[str]:
    """The messages of a refused plan (fails the test if the plan fits)."""
    with pytest.raises(PlanError) as error:
        build_plan(host, services, workload, cluster)
    return error.value.messages


def pg_kb(text: str) -> int:
    """Parse a PGTune size ('8GB', '16MB', '40329kB') into kB."""
    number, unit = re.fullmatch(r"(\d+)(kB|MB|GB)", text).groups()
    return int(number) * {"kB": 1, "MB": 1024, "GB": 1024 * 1024}[unit]


# ---------------------------------------------------------------- PGTune


def test_golden_1_pgtune_web_32gb_8cpu_200_connections_ssd() -> None:
    assert pgtune(32768, 8, 200, "ssd", "web", 15) == {
        "max_connections": "200",
        "shared_buffers": "8GB",
        "effective_cache_size": "24GB",
        "maintenance_work_mem": "2GB",
        "checkpoint_completion_target": "0.9",
        "wal_buffers": "16MB",
        "default_statistics_target": "100",
        "random_page_cost": "1.1",
        "effective_io_concurrency": "200",
        "work_mem": "40329kB",
        "huge_pages": "try",
        "jit": "off",
        "wal_compression": "lz4",
        "autovacuum_work_mem": "2GB",
        "min_wal_size": "1GB",
        "max_wal_size": "4GB",
        "max_worker_processes": "8",
        "max_parallel_workers_per_gather": "4",
        "max_parallel_workers": "8",
        "max_parallel_maintenance_workers": "4",
    }


# The order of PGTune's postgresql.conf output (configurationView), as format_plan prints it.
PGTUNE_ORDER = [
    "max_connections",
    "shared_buffers",
    "effective_cache_size",
    "maintenance_work_mem",
    "checkpoint_completion_target",
    "wal_buffers",
    "default_statistics_target",
    "random_page_cost",
    "effective_io_concurrency",
    "work_mem",
    "huge_pages",
    "jit",
    "wal_compression",
    "autovacuum_max_workers",
    "autovacuum_work_mem",
    "min_wal_size",
    "max_wal_size",
    "max_worker_processes",
    "max_parallel_workers_per_gather",
    "max_parallel_workers",
    "max_parallel_maintenance_workers",
    "wal_level",
    "max_wal_senders",
]


def test_pgtune_keys_follow_pgtune_order() -> None:
    for args in [
        (32768, 8, 200, "ssd", "web", 15),
        (262144, 64, 40, "nvme", "dw", 17),
        (4096, 2, 20, "hdd", "desktop", 17),
    ]:
        keys = list(pgtune(*args))
        assert keys == sorted(keys, key=PGTUNE_ORDER.index)


def test_golden_2_pgtune_mixed_8gb() -> None:
    settings_ = pgtune(8192, 8, 100, "ssd", "mixed", 17)
    assert settings_["shared_buffers"] == "2GB"
    assert settings_["effective_cache_size"] == "6GB"
    assert settings_["maintenance_work_mem"] == "512MB"
    assert settings_["work_mem"] == "9709kB"
    assert settings_["huge_pages"] == "try"  # shared_buffers = 2GB, PGTune's threshold
    assert "autovacuum_work_mem" not in settings_  # maintenance_work_mem below 2GB


def test_pgtune_hdd_and_small_cpu_count() -> None:
    settings_ = pgtune(4096, 2, 100, "hdd", "oltp", 15)
    assert settings_["random_page_cost"] == "4"
    assert settings_["effective_io_concurrency"] == "2"
    assert settings_["min_wal_size"] == "2GB" and settings_["max_wal_size"] == "8GB"
    assert "max_worker_processes" not in settings_  # no parallel settings below 4 CPUs
    # work_mem falls back to PGTune's default of 8 worker processes
    assert settings_["work_mem"] == f"{(4096 * 1024 - 4096 * 1024 // 4) // ((100 + 8) * 3)}kB"


def test_pgtune_dw_desktop_and_caps() -> None:
    dw = pgtune(65536, 32, 40, "ssd", "dw", 17)
    assert dw["maintenance_work_mem"] == "8GB"  # RAM/8, exactly the 8GB cap
    assert dw["autovacuum_work_mem"] == "2GB"
    assert dw["max_parallel_workers_per_gather"] == "16"  # not capped for dw
    assert dw["max_parallel_maintenance_workers"] == "4"
    assert dw["default_statistics_target"] == "500"
    assert dw["min_wal_size"] == "4GB" and dw["max_wal_size"] == "16GB"
    assert "jit" not in dw  # dw keeps PostgreSQL's default
    desktop = pgtune(4096, 4, 20, "ssd", "desktop", 17)
    assert desktop["shared_buffers"] == "256MB"  # RAM/16
    assert desktop["effective_cache_size"] == "1GB"  # RAM/4
    assert desktop["wal_level"] == "minimal" and desktop["max_wal_senders"] == "0"
    assert "jit" not in desktop and desktop["huge_pages"] == "off"


@pytest.mark.parametrize(
    ("memory_mb", "db_type", "shared_buffers", "huge_pages"),
    [
        (8192, "web", "2GB", "try"),  # shared_buffers exactly 2GB
        (8191, "web", "2096896kB", "off"),  # 256 kB below
        (32768, "desktop", "2GB", "try"),  # desktop: RAM/16
        (32767, "desktop", "2097088kB", "off"),
        (16384, "desktop", "1GB", "off"),  # the total memory does not matter, shared_buffers does
    ],
)
def test_pgtune_huge_pages_from_2gb_of_shared_buffers(
    memory_mb: int, db_type: str, shared_buffers: str, huge_pages: str
) -> None:
    settings_ = pgtune(memory_mb, 8, 100, "ssd", db_type, 17)
    assert (settings_["shared_buffers"], settings_["huge_pages"]) == (shared_buffers, huge_pages)


def test_pgtune_maintenance_work_mem_cap_8gb_and_autovacuum_work_mem() -> None:
    assert pgtune(262144, 8, 100, "ssd", "web", 17)["maintenance_work_mem"] == "8GB"  # 256GB/16 = 16GB, capped
    assert pgtune(131072, 8, 100, "ssd", "web", 17)["maintenance_work_mem"] == "8GB"  # exactly the cap
    assert pgtune(131056, 8, 100, "ssd", "web", 17)["maintenance_work_mem"] == "8191MB"  # just under
    assert pgtune(131072, 8, 100, "ssd", "dw", 17)["maintenance_work_mem"] == "8GB"  # dw 128GB/8 = 16GB, capped
    # autovacuum_work_mem = 2GB from maintenance_work_mem 2GB (32GB web), omitted below
    assert pgtune(262144, 8, 100, "ssd", "web", 17)["autovacuum_work_mem"] == "2GB"
    assert pgtune(32768, 8, 100, "ssd", "web", 17)["autovacuum_work_mem"] == "2GB"
    assert "autovacuum_work_mem" not in pgtune(32767, 8, 100, "ssd", "web", 17)


def test_pgtune_work_mem_floor_4mb() -> None:
    # (4GB - 1GB) / ((1000 + 4) x 3) = 1044 kB, raised to the 4MB floor
    assert pgtune(4096, 4, 1000, "ssd", "web", 17)["work_mem"] == "4MB"
    # mixed halves it: (8GB - 2GB) / ((500 + 8) x 3) / 2 = 2064 kB
    assert pgtune(8192, 8, 500, "ssd", "mixed", 15)["work_mem"] == "4MB"
    # just above the floor stays as computed: (32GB - 8GB) / ((2040 + 8) x 3) = 4096.5 -> 4096 kB = 4MB
    assert pgtune(32768, 8, 2040, "ssd", "web", 17)["work_mem"] == "4MB"
    assert pgtune(32768, 8, 2030, "ssd", "web", 17)["work_mem"] == "4116kB"
    assert capacity.pgtune_kb(4096, 4, 1000)["work_mem"] == 4096


@pytest.mark.parametrize(
    ("storage", "random_page_cost", "effective_io_concurrency"),
    [("hdd", "4", "2"), ("ssd", "1.1", "200"), ("san", "1.1", "300"), ("nvme", "1.1", "1000")],
)
def test_pgtune_storage(storage: str, random_page_cost: str, effective_io_concurrency: str) -> None:
    settings_ = pgtune(16384, 8, 100, storage, "web", 17)
    assert (settings_["random_page_cost"], settings_["effective_io_concurrency"]) == (
        random_page_cost,
        effective_io_concurrency,
    )


def test_plan_passes_nvme_to_pgtune() -> None:
    plan = build_plan({**SEED_HOST, "storage": "nvme"}, ALL, SEED_WORKLOAD)
    assert plan["postgresql"]["effective_io_concurrency"] == "1000"
    assert plan["postgresql"]["random_page_cost"] == "1.1"


@pytest.mark.parametrize("pg_version", capacity.PG_VERSIONS)
@pytest.mark.parametrize("db_type", capacity.DB_TYPES)
def test_pgtune_jit_and_wal_compression_by_version(pg_version: int, db_type: str) -> None:
    settings_ = pgtune(16384, 8, 100, "ssd", db_type, pg_version)
    assert settings_.get("jit") == ("off" if db_type in ("web", "oltp", "mixed") else None)
    assert settings_["wal_compression"] == "lz4"  # PostgreSQL 15 and later


def test_pgtune_refuses_unsupported_inputs() -> None:
    with pytest.raises(ValueError, match="pg_version must be one of 15, 17, got 14"):
        pgtune(16384, 8, 100, "ssd", "web", 14)
    with pytest.raises(ValueError, match="pg_version"):
        pgtune(16384, 8, 100, "ssd", "web", 18)  # PGTune adds io_method/io_workers there
    with pytest.raises(ValueError, match="storage"):
        pgtune(16384, 8, 100, "tape", "web", 17)
    with pytest.raises(ValueError, match="db_type"):
        pgtune(16384, 8, 100, "ssd", "olap", 17)


@pytest.mark.parametrize(("cpus", "workers"), [(4, None), (15, None), (16, "4"), (31, "4"), (32, "5"), (128, "5")])
def test_pgtune_autovacuum_max_workers_by_cpus(cpus: int, workers: str | None) -> None:
    assert pgtune(65536, cpus, 100, "ssd", "web", 17).get("autovacuum_max_workers") == workers


def test_pgtune_wal_buffers_rounding() -> None:
    assert pgtune(2000, 4, 100)["wal_buffers"] == "16MB"  # 3% = 15360kB, between 14MB and 16MB -> 16MB
    assert pgtune(1024, 4, 100)["wal_buffers"] == "7864kB"
    assert capacity.format_pg_size(32) == "32kB"


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


def test_golden_3_table_is_in_the_readme() -> None:
    table = format_plan(build_plan(SEED_HOST, ALL, SEED_WORKLOAD))
    assert table in (ROOT / "README.md").read_text()


def _inventory_workload(environment: str) -> tuple[dict, dict]:
    """host and workload from an inventory's hosts.yml and group_vars/all/capacity.yml."""
    inventory = ROOT / "inventories" / environment
    hostvars = next(iter(yaml.safe_load((inventory / "hosts.yml").read_text())["all"]["hosts"].values()))
    group_vars = yaml.safe_load((inventory / "group_vars" / "all" / "capacity.yml").read_text())
    host = {key: hostvars[var] for key, var in capacity.HOST_VARIABLES.items() if var in hostvars}
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


def test_duplicate_pool_names() -> None:
    pools = copy.deepcopy(SEED_WORKLOAD["celery_pools"])
    pools[2]["name"] = "high"
    assert refused(SEED_HOST, ALL, seed(celery_pools=pools)) == [
        "capacity_celery_pools[2].name 'high' duplicates capacity_celery_pools[0]"
    ]


def test_redis_broker_maxmemory_minimum() -> None:
    assert refused(SEED_HOST, ALL, seed(redis_broker_maxmemory_mb=128)) == [
        "capacity_redis_broker_maxmemory_mb=128 is below the 256 MB minimum for a broker"
    ]
    assert build_plan(SEED_HOST, ALL, seed(redis_broker_maxmemory_mb=256))["redis"]["broker"]["maxmemory_mb"] == 256


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
    assert messages[0].startswith(capacity.HOST_VARIABLES[key]) and repr(value) in messages[0]


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


# ---------------------------------------------------------------- split layouts


def test_split_layout_counts_every_pgbouncer_and_remote_clients() -> None:
    groups = {
        "db": ["db1"],
        "pgbouncer": ["app1", "app2"],
        "web": ["app1", "app2"],
        "workers": ["app1", "app2"],
        "broker": ["db1"],
        "cache": ["app1", "app2"],
    }
    db_host = {"vcpus": 16, "memory_mb": 65536}
    app_host = {"vcpus": 8, "memory_mb": 32768}
    services = {
        "db1": ["db", "broker"],
        "app1": ["pgbouncer", "cache", "web", "workers"],
        "app2": ["pgbouncer", "cache", "web", "workers"],
    }
    hosts = {"db1": db_host, "app1": app_host, "app2": app_host}
    contributions = {
        name: cluster_contribution(hosts[name], services[name], SEED_WORKLOAD, {"db_vcpus": 16}) for name in hosts
    }
    assert contributions["app1"]["pgbouncer_server_connections"] == 2 * 16 + 1 + 5
    db_view = cluster_view("db1", services["db1"], groups, contributions, 16)
    assert db_view["pgbouncer_server_connections"] == {"app1": 38, "app2": 38}
    db_plan = build_plan(db_host, services["db1"], SEED_WORKLOAD, db_view)
    assert db_plan["connections"]["max_connections"] == 38 + 38 + 10 + 3
    app_plan = build_plan(
        app_host, services["app1"], SEED_WORKLOAD, cluster_view("app1", services["app1"], groups, contributions, 16)
    )
    assert app_plan["pgbouncer"]["default_pool_size"] == 33
    assert "connections" not in app_plan and "redis_broker" not in app_plan["memory"]


def test_central_pgbouncer_counts_the_clients_of_app_hosts_without_one() -> None:
    groups = {"db": ["db1"], "pgbouncer": ["db1"], "web": ["web1"], "workers": ["web1"]}
    contributions = {"web1": cluster_contribution(SEED_HOST, ["web", "workers"], SEED_WORKLOAD), "db1": {}}
    view = cluster_view("db1", ["db", "pgbouncer"], groups, contributions, 8)
    assert view["remote_client_demand"]["web1:api"] == 320
    plan = build_plan(SEED_HOST, ["db", "pgbouncer"], SEED_WORKLOAD, view)
    assert plan["pgbouncer"]["client_demand_total"] == 333
    missing = cluster_view("db1", ["db", "pgbouncer"], groups, {"db1": {}}, 8)
    assert missing["unplanned_hosts"] == ["web1"]
    assert (
        "host web1 is not in this play"
        in build_plan(SEED_HOST, ["db", "pgbouncer"], SEED_WORKLOAD, missing)["warnings"][0]
    )


# ---------------------------------------------------------------- role consistency


def test_role_defaults_equal_python_defaults() -> None:
    defaults = yaml.safe_load((ROOT / "roles" / "capacity" / "defaults" / "main.yml").read_text())
    workload = {key.removeprefix("capacity_"): value for key, value in defaults.items()}
    host = {key: workload.pop(var.removeprefix("capacity_")) for key, var in capacity.HOST_VARIABLES.items()}
    assert workload.pop("services") is None
    assert host == capacity.HOST_DEFAULTS
    assert workload == capacity.WORKLOAD_DEFAULTS


def test_argument_specs_document_every_default() -> None:
    defaults = yaml.safe_load((ROOT / "roles" / "capacity" / "defaults" / "main.yml").read_text())
    specs = yaml.safe_load((ROOT / "roles" / "capacity" / "meta" / "argument_specs.yml").read_text())
    options = specs["argument_specs"]["main"]["options"]
    assert set(options) == set(defaults)
    assert all(option["description"] for option in options.values())
    readme = (ROOT / "roles" / "capacity" / "README.md").read_text()
    assert all(f"`{name}`" in readme for name in defaults)


# ---------------------------------------------------------------- what PostgreSQL accepts

INT_MAX = 2**31 - 1
# Every setting pgtune/build_plan may write and the values PostgreSQL 15 and 17 accept
# (guc_tables.c, 64-bit Linux: MAX_KILOBYTES = INT_MAX; shared_buffers and effective_cache_size
# count 8 kB blocks, wal_buffers 8 kB WAL blocks; MAX_BACKENDS 262143, MAX_PARALLEL_WORKER_LIMIT
# 1024, MAX_IO_CONCURRENCY 1000).  Sizes in kB, numbers as (min, max), enums as sets.
POSTGRESQL_ACCEPTS: dict[int, dict[str, Any]] = {
    version: {
        "max_connections": (1, 262143),
        "superuser_reserved_connections": (0, 262143),
        "shared_buffers": ("kB", 128, INT_MAX // 2 * 8),
        "effective_cache_size": ("kB", 8, INT_MAX * 8),
        "maintenance_work_mem": ("kB", 1024, INT_MAX),
        "work_mem": ("kB", 64, INT_MAX),
        "autovacuum_work_mem": ("kB", 1024, INT_MAX),
        "wal_buffers": ("kB", 32, INT_MAX // 8192 * 8),
        "min_wal_size": ("kB", 32 * 1024, INT_MAX),  # 2 WAL segments of 16MB
        "max_wal_size": ("kB", 32 * 1024, INT_MAX),
        "checkpoint_completion_target": (0.0, 1.0),
        "default_statistics_target": (1, 10000),
        "random_page_cost": (0.0, float("inf")),
        "effective_io_concurrency": (0, 1000),
        "max_worker_processes": (0, 262143),
        "max_parallel_workers_per_gather": (0, 1024),
        "max_parallel_workers": (0, 1024),
        "max_parallel_maintenance_workers": (0, 1024),
        "autovacuum_max_workers": (1, 262143),
        "max_wal_senders": (0, 262143),
        "huge_pages": {"off", "on", "try"},
        "jit": {"on", "off"},
        "wal_compression": {"off", "on", "pglz", "lz4", "zstd"},  # lz4: Debian/PGDG builds --with-lz4
        "wal_level": {"minimal", "replica", "logical"},
    }
    for version in capacity.PG_VERSIONS
}


def assert_accepted_by_postgresql(settings_: dict[str, str], version: int) -> None:
    """Every key exists in PostgreSQL ``version`` and every value is in its range."""
    accepts = POSTGRESQL_ACCEPTS[version]
    assert set(settings_) <= set(accepts), set(settings_) - set(accepts)
    for key, text in settings_.items():
        rule = accepts[key]
        if isinstance(rule, set):
            assert text in rule, (key, text)
        elif rule[0] == "kB":
            assert rule[1] <= pg_kb(text) <= rule[2], (key, text)
        else:
            number = float(text) if isinstance(rule[0], float) else int(text)
            assert rule[0] <= number <= rule[1], (key, text)
    if settings_.get("wal_level") == "minimal":
        assert settings_["max_wal_senders"] == "0"  # PostgreSQL refuses to start otherwise
    assert pg_kb(settings_["min_wal_size"]) <= pg_kb(settings_["max_wal_size"])


@settings(max_examples=500, deadline=None)
@given(
    memory_mb=st.one_of(st.integers(512, 1024 * 1024), st.integers(1, 64 * 1024 * 1024)),
    cpus=st.one_of(st.integers(1, 128), st.integers(1, 300000)),
    connections=st.integers(1, 262143),
    storage=st.sampled_from(["ssd", "nvme", "hdd", "san"]),
    db_type=st.sampled_from(capacity.DB_TYPES),
    pg_version=st.sampled_from(capacity.PG_VERSIONS),
)
def test_property_pgtune_emits_only_what_postgresql_accepts(
    memory_mb: int, cpus: int, connections: int, storage: str, db_type: str, pg_version: int
) -> None:
    settings_ = pgtune(memory_mb, cpus, connections, storage, db_type, pg_version)
    assert_accepted_by_postgresql(settings_, pg_version)
    keys = list(settings_)
    assert keys == sorted(keys, key=PGTUNE_ORDER.index)
    sizes = capacity.pgtune_kb(memory_mb, cpus, connections, db_type)
    assert {key: pg_kb(settings_[key]) for key in sizes} == sizes


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
        "storage": draw(st.sampled_from(capacity.STORAGE_TYPES)),
    }
    services = draw(st.lists(st.sampled_from(capacity.SERVICES), unique=True, min_size=1))
    pools = []
    for index, raw in enumerate(draw(st.lists(pool_strategy, min_size=1, max_size=4))):
        extra = raw.pop("extra")
        pools.append(
            {**raw, "name": f"p{index}", "queues": [f"q{index}"], "time_limit": raw["soft_time_limit"] + extra}
        )
    workload = {
        "postgresql_version": draw(st.sampled_from(capacity.PG_VERSIONS)),
        "postgresql_db_type": draw(st.sampled_from(capacity.DB_TYPES)),
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
        assert 1 <= conn["max_connections"] <= capacity.PG_MAX_CONNECTIONS
        assert (
            conn["max_connections"]
            >= sum(conn["pgbouncer_servers"].values()) + conn["direct"] + conn["superuser_reserved"]
        )
        assert conn["max_connections"] > conn["superuser_reserved"]
        pg = plan["postgresql"]
        assert memory["postgresql"] >= capacity.POSTGRESQL_MIN_MB
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
