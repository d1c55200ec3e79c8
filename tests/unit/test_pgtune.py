"""Unit tests of celery_stack.pgtune: PGTune parity, and only settings PostgreSQL accepts."""

from __future__ import annotations

import pytest
from capacity_cases import assert_accepted_by_postgresql, pg_kb
from hypothesis import given, settings
from hypothesis import strategies as st

from celery_stack.pgtune import DB_TYPES, PG_VERSIONS, format_pg_size, pgtune, pgtune_kb


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
    assert pgtune_kb(4096, 4, 1000)["work_mem"] == 4096


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


@pytest.mark.parametrize("pg_version", PG_VERSIONS)
@pytest.mark.parametrize("db_type", DB_TYPES)
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
    assert format_pg_size(32) == "32kB"


# ---------------------------------------------------------------- what PostgreSQL accepts


@settings(max_examples=500, deadline=None)
@given(
    memory_mb=st.one_of(st.integers(512, 1024 * 1024), st.integers(1, 64 * 1024 * 1024)),
    cpus=st.one_of(st.integers(1, 128), st.integers(1, 300000)),
    connections=st.integers(1, 262143),
    storage=st.sampled_from(["ssd", "nvme", "hdd", "san"]),
    db_type=st.sampled_from(DB_TYPES),
    pg_version=st.sampled_from(PG_VERSIONS),
)
def test_property_pgtune_emits_only_what_postgresql_accepts(
    memory_mb: int, cpus: int, connections: int, storage: str, db_type: str, pg_version: int
) -> None:
    settings_ = pgtune(memory_mb, cpus, connections, storage, db_type, pg_version)
    assert_accepted_by_postgresql(settings_, pg_version)
    keys = list(settings_)
    assert keys == sorted(keys, key=PGTUNE_ORDER.index)
    sizes = pgtune_kb(memory_mb, cpus, connections, db_type)
    assert {key: pg_kb(settings_[key]) for key in sizes} == sizes
