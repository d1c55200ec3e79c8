"""Shared cases of the capacity unit tests: the seed host and workload, and what PostgreSQL accepts."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest

from celery_stack.inputs import SERVICES, PlanError
from celery_stack.pgtune import PG_VERSIONS
from celery_stack.plan import build_plan

ROOT = Path(__file__).resolve().parents[2]
ALL = list(SERVICES)

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
    for version in PG_VERSIONS
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
