"""PGTune for Linux: the PostgreSQL settings of the capacity plan.

A port of PGTune (https://github.com/le0pard/pgtune,
``src/features/configuration/configurationSlice.js``) for Linux, including
its value formatting: :func:`pgtune` returns the settings as PGTune prints
them, :func:`pgtune_kb` the memory settings in kB.  The rules are described
in ``docs/capacity.md``.  Standard library only: this module must stay
importable without Ansible.
"""

from __future__ import annotations

import math

from celery_stack.units import KB_PER_GB, KB_PER_MB, clamp

DB_TYPES = ("web", "oltp", "mixed", "dw", "desktop")
PG_VERSIONS = (15, 17)


def format_pg_size(kb: int) -> str:
    """PGTune's formatValue: the largest unit that loses no resolution."""
    if kb % KB_PER_GB == 0:
        return f"{kb // KB_PER_GB}GB"
    if kb % KB_PER_MB == 0:
        return f"{kb // KB_PER_MB}MB"
    return f"{kb}kB"


def _format_number(value: float) -> str:
    """JavaScript-like number text: 4 -> '4', 1.1 -> '1.1'."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


_PG_BY_TYPE = {
    # db_type: (shared_buffers divisor, effective_cache_size fraction, maintenance divisor,
    #           min_wal_size MB, max_wal_size MB, default_statistics_target, work_mem divisor)
    "web": (4, (3, 4), 16, 1024, 4096, 100, 1),
    "oltp": (4, (3, 4), 16, 2048, 8192, 100, 1),
    "dw": (4, (3, 4), 8, 4096, 16384, 500, 2),
    "desktop": (16, (1, 4), 16, 100, 2048, 100, 6),
    "mixed": (4, (3, 4), 16, 1024, 4096, 100, 2),
}
_PG_BY_STORAGE = {
    # storage: (random_page_cost, effective_io_concurrency); san is PGTune's, not a host choice
    "hdd": (4, 2),
    "ssd": (1.1, 200),
    "san": (1.1, 300),
    "nvme": (1.1, 1000),
}
_PG_DEFAULT_MAX_WORKER_PROCESSES = 8  # PGTune DEFAULT_DB_SETTINGS, used below 4 CPUs
_PG_MAINTENANCE_WORK_MEM_CAP_KB = 8 * KB_PER_GB  # PGTune's cap on Linux
_PG_AUTOVACUUM_WORK_MEM_KB = 2 * KB_PER_GB  # set when maintenance_work_mem reaches it
_PG_HUGE_PAGES_MIN_SHARED_BUFFERS_KB = 2 * KB_PER_GB  # huge_pages = try from this shared_buffers
_PG_WORK_MEM_FLOOR_KB = 4 * KB_PER_MB
_PG_JIT_OFF_TYPES = ("web", "oltp", "mixed")  # jit = off from PostgreSQL 12; dw/desktop keep the default

# PostgreSQL's accepted ranges (PostgreSQL 15 and 17, 64-bit Linux: MAX_KILOBYTES = INT_MAX,
# shared_buffers and effective_cache_size count 8 kB blocks).  PGTune's rules stay inside them
# for any real host; a value outside (only past ~32 TB of memory, ~1024 CPUs or < 16 MB) is
# clamped so that PostgreSQL never refuses to start on a planned setting.
_INT_MAX = 2**31 - 1
_MAX_BACKENDS = 262143
_MAX_PARALLEL_WORKER_LIMIT = 1024
_PG_KB_RANGES = {
    "shared_buffers": (16 * 8, _INT_MAX // 2 * 8),
    "effective_cache_size": (8, _INT_MAX * 8),
    "maintenance_work_mem": (1024, _INT_MAX),
    "work_mem": (64, _INT_MAX),
}  # wal_buffers (32kB-16MB) and autovacuum_work_mem (2GB) are always inside theirs


def pgtune_kb(memory_mb: int, cpus: int, connections: int, db_type: str = "web") -> dict[str, int]:
    """PGTune's memory settings, as integers in kB (parallel settings excluded).

    ``autovacuum_work_mem`` is present only when PGTune sets it
    (``maintenance_work_mem`` of 2GB or more).
    """
    if db_type not in _PG_BY_TYPE:
        raise ValueError(f"db_type must be one of {', '.join(DB_TYPES)}, got {db_type!r}")
    sb_div, (ecs_num, ecs_den), mwm_div, min_wal, max_wal, _, wm_div = _PG_BY_TYPE[db_type]
    total_kb = memory_mb * KB_PER_MB
    shared_buffers = total_kb // sb_div
    maintenance = min(total_kb // mwm_div, _PG_MAINTENANCE_WORK_MEM_CAP_KB)
    wal_buffers = min(3 * shared_buffers // 100, 16 * KB_PER_MB)
    if 14 * KB_PER_MB < wal_buffers < 16 * KB_PER_MB:
        wal_buffers = 16 * KB_PER_MB
    # max_worker_processes of the parallel settings, else PGTune's default
    workers = min(cpus, _MAX_BACKENDS) if cpus >= 4 else _PG_DEFAULT_MAX_WORKER_PROCESSES
    work_mem = (total_kb - shared_buffers) // ((connections + workers) * 3 * wm_div)
    sizes = {
        "shared_buffers": shared_buffers,
        "effective_cache_size": total_kb * ecs_num // ecs_den,
        "maintenance_work_mem": maintenance,
        "wal_buffers": max(wal_buffers, 32),
        "work_mem": max(work_mem, _PG_WORK_MEM_FLOOR_KB),
        "min_wal_size": min_wal * KB_PER_MB,
        "max_wal_size": max_wal * KB_PER_MB,
    }
    if maintenance >= _PG_AUTOVACUUM_WORK_MEM_KB:
        sizes["autovacuum_work_mem"] = _PG_AUTOVACUUM_WORK_MEM_KB
    for key, (low, high) in _PG_KB_RANGES.items():
        sizes[key] = clamp(sizes[key], low, high)
    return sizes


def _parallel_settings(cpus: int, db_type: str, pg_version: int) -> dict[str, int]:
    """PGTune's parallel settings (none below 4 CPUs), within PostgreSQL's limits."""
    if cpus < 4:
        return {}
    per_gather = math.ceil(cpus / 2)
    if db_type != "dw":
        per_gather = min(per_gather, 4)
    settings = {
        "max_worker_processes": min(cpus, _MAX_BACKENDS),
        "max_parallel_workers_per_gather": min(per_gather, _MAX_PARALLEL_WORKER_LIMIT),
    }
    if pg_version >= 10:
        settings["max_parallel_workers"] = min(cpus, _MAX_PARALLEL_WORKER_LIMIT)
    if pg_version >= 11:
        settings["max_parallel_maintenance_workers"] = min(math.ceil(cpus / 2), 4)
    return settings


def _autovacuum_max_workers(cpus: int) -> int | None:
    """PGTune raises autovacuum_max_workers (default 3) only on large hosts."""
    if cpus >= 32:
        return 5
    if cpus >= 16:
        return 4
    return None


def _wal_compression(pg_version: int) -> str | None:
    """lz4 from PostgreSQL 15 (Debian/PGDG builds have it), pglz ('on') for 10-14."""
    if pg_version >= 15:
        return "lz4"
    if pg_version >= 10:
        return "on"
    return None


def pgtune(
    memory_mb: int, cpus: int, connections: int, storage: str = "ssd", db_type: str = "web", pg_version: int = 17
) -> dict[str, str]:
    """postgresql.conf settings exactly as PGTune prints them for Linux.

    ``memory_mb`` is the memory given to PostgreSQL (PGTune's "Total Memory"),
    ``storage`` is ssd, nvme, hdd (or PGTune's san), ``pg_version`` one of
    :data:`PG_VERSIONS` (every key emitted exists in that version).  Values
    are strings in PGTune's order and format (``"8GB"``, ``"40329kB"``,
    ``"1.1"``, ``"try"``); settings PGTune leaves out for these inputs are
    absent.
    """
    if storage not in _PG_BY_STORAGE:
        raise ValueError(f"storage must be one of {', '.join(_PG_BY_STORAGE)}, got {storage!r}")
    if pg_version not in PG_VERSIONS:
        raise ValueError(f"pg_version must be one of {', '.join(map(str, PG_VERSIONS))}, got {pg_version!r}")
    sizes = pgtune_kb(memory_mb, cpus, connections, db_type)
    random_page_cost, io_concurrency = _PG_BY_STORAGE[storage]
    settings = {
        "max_connections": str(connections),
        "shared_buffers": format_pg_size(sizes["shared_buffers"]),
        "effective_cache_size": format_pg_size(sizes["effective_cache_size"]),
        "maintenance_work_mem": format_pg_size(sizes["maintenance_work_mem"]),
        "checkpoint_completion_target": "0.9",
        "wal_buffers": format_pg_size(sizes["wal_buffers"]),
        "default_statistics_target": str(_PG_BY_TYPE[db_type][5]),
        "random_page_cost": _format_number(random_page_cost),
        "effective_io_concurrency": str(io_concurrency),
        "work_mem": format_pg_size(sizes["work_mem"]),
        "huge_pages": "try" if sizes["shared_buffers"] >= _PG_HUGE_PAGES_MIN_SHARED_BUFFERS_KB else "off",
    }
    if pg_version >= 12 and db_type in _PG_JIT_OFF_TYPES:
        settings["jit"] = "off"
    wal_compression = _wal_compression(pg_version)
    if wal_compression is not None:
        settings["wal_compression"] = wal_compression
    autovacuum_max_workers = _autovacuum_max_workers(cpus)
    if autovacuum_max_workers is not None:
        settings["autovacuum_max_workers"] = str(autovacuum_max_workers)
    if "autovacuum_work_mem" in sizes:
        settings["autovacuum_work_mem"] = format_pg_size(sizes["autovacuum_work_mem"])
    settings["min_wal_size"] = format_pg_size(sizes["min_wal_size"])
    settings["max_wal_size"] = format_pg_size(sizes["max_wal_size"])
    settings.update({key: str(value) for key, value in _parallel_settings(cpus, db_type, pg_version).items()})
    if db_type == "desktop":
        settings.update({"wal_level": "minimal", "max_wal_senders": "0"})
    return settings


def pgtune_warnings(memory_mb: int) -> list[str]:
    """PGTune's own warnings about the memory it was given."""
    if memory_mb < 256:
        return ["PGTune is not optimal for low memory systems (PostgreSQL share below 256 MB)"]
    if memory_mb > 100 * 1024:
        return ["PGTune is not optimal for very high memory systems (PostgreSQL share above 100 GB)"]
    return []
