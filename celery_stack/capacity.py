"""Capacity plan for a celery-stack host.

One pure function, :func:`build_plan`, sizes everything that shares the
host's memory and the database's connection budget at once (PostgreSQL,
PgBouncer, the Redis broker and cache, the Celery worker pools, the API
processes, monitoring) and refuses plans that do not fit.  Every failed
check is reported at once in a :class:`PlanError`; softer findings go to
``plan["warnings"]``.

The PostgreSQL settings reproduce PGTune (https://github.com/le0pard/pgtune,
``src/features/configuration/configurationSlice.js``) for Linux, including
its value formatting.  The sizing rules and every output key are described
in ``docs/capacity.md``.

Input dictionaries use the Ansible variable names without the
``capacity_`` prefix (``workload["api_processes"]`` is
``capacity_api_processes``) so that every message names the inventory
variable to change.  Standard library only: this module must stay
importable without Ansible.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

# --------------------------------------------------------------------------
# Vocabulary and policy constants (documented in docs/capacity.md)
# --------------------------------------------------------------------------

SERVICES = ("db", "pgbouncer", "broker", "cache", "web", "workers", "monitoring")
DB_TYPES = ("web", "oltp", "mixed", "dw", "desktop")
STORAGE_TYPES = ("ssd", "nvme", "hdd")
PG_VERSIONS = (15, 17)

KB_PER_MB = 1024
KB_PER_GB = 1024 * 1024
PG_MAX_CONNECTIONS = 262143  # MAX_BACKENDS in PostgreSQL

OS_RESERVE_MIN_MB = 1024  # auto OS reserve: max(1024 MB, 5 % of RAM)
OS_RESERVE_FRACTION = 0.05
POSTGRESQL_MIN_MB = 512  # refuse a PostgreSQL share below this
POSTGRESQL_ROUND_MB = 256  # the automatic share is rounded down to this
REDIS_BROKER_MIN_MB = 256  # refuse a broker maxmemory below this
REDIS_BROKER_AUTO = (32, 256, 4096)  # RAM / 32, clamped to [256, 4096] MB
REDIS_CACHE_AUTO = (16, 128, 8192)  # RAM / 16, clamped to [128, 8192] MB
API_PROCESSES_CAP = 16  # auto API processes: min(2 x vCPU + 1, 16)
PGBOUNCER_MIN_CLIENT_CONN = 20  # room for psql/admin/exporter clients
PGBOUNCER_FD_MARGIN = 100  # listen sockets, log files, admin console
VISIBILITY_TIMEOUT_FACTOR = 1.25  # margin above the longest ack window
RESTORE_INTERVAL_SECONDS = 100  # kombu scans the unacked index every 10th 10-s tick

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*$")

HOST_VARIABLES = {
    "vcpus": "capacity_host_vcpus",
    "memory_mb": "capacity_host_memory_mb",
    "storage": "capacity_host_storage",
    "os_reserve_mb": "capacity_os_reserve_mb",
}

HOST_DEFAULTS: dict[str, Any] = {
    "vcpus": None,
    "memory_mb": None,
    "storage": "ssd",
    "os_reserve_mb": None,
}

# Same values as roles/capacity/defaults/main.yml (a unit test keeps them equal).
WORKLOAD_DEFAULTS: dict[str, Any] = {
    "postgresql_version": None,
    "postgresql_db_type": "web",
    "postgresql_memory_mb": None,
    "postgresql_max_connections": None,
    "postgresql_superuser_reserved_connections": 3,
    "postgresql_direct_connections": 10,
    "api_processes": None,
    "api_db_pool_size": 5,
    "api_db_max_overflow": 10,
    "api_process_memory_mb": 384,
    "celery_pools": [{"name": "default", "queues": ["celery"]}],
    "celery_routes": ["celery"],
    "celery_max_eta_seconds": 0,
    "celery_visibility_timeout": None,
    "celery_parent_memory_mb": 128,
    "celery_stop_timeout_margin_sec": 30,
    "celery_beat_enabled": True,
    "celery_beat_memory_mb": 128,
    "celery_beat_db_connections": 1,
    "celery_flower_enabled": False,
    "celery_flower_memory_mb": 256,
    "celery_flower_db_connections": 0,
    "redis_broker_maxmemory_mb": None,
    "redis_cache_maxmemory_mb": None,
    "redis_broker_overhead_factor": 2.0,
    "redis_cache_overhead_factor": 1.25,
    "pgbouncer_default_pool_size": None,
    "pgbouncer_reserve_pool_size": 5,
    "pgbouncer_max_client_conn": None,
    "pgbouncer_databases": 1,
    "pgbouncer_client_headroom": 1.25,
    "pgbouncer_memory_mb": 64,
    "nginx_memory_mb": 128,
    "monitoring_memory_mb": 1536,
    "exporters_memory_mb": 256,
}

POOL_DEFAULTS: dict[str, Any] = {
    "concurrency": "auto",
    "max_memory_per_child_kb": 262144,
    "max_tasks_per_child": 1000,
    "prefetch_multiplier": 1,
    "soft_time_limit": 300,
    "time_limit": 360,
    "db_connections_per_process": 1,
    "parent_memory_mb": None,
}

CLUSTER_DEFAULTS: dict[str, Any] = {
    "db_vcpus": None,
    "pgbouncer_server_connections": {},
    "remote_client_demand": {},
    "remote_queues": [],
    "remote_ack_window_seconds": 0,
    "unplanned_hosts": [],
}


class PlanError(ValueError):
    """A plan that does not fit; ``messages`` lists every failed check."""

    def __init__(self, messages: Iterable[str]) -> None:
        self.messages = list(messages)
        super().__init__("capacity plan refused:\n- " + "\n- ".join(self.messages))


# --------------------------------------------------------------------------
# Input parsing: every error is collected, each naming variable and value
# --------------------------------------------------------------------------


def _as_number(value: Any) -> float | None:
    """Return ``value`` as a finite number, or None (booleans are not numbers)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
        return number if math.isfinite(number) else None
    return None


def _bounds_text(minimum: float, maximum: float | None) -> str:
    """Human text for an accepted range."""
    if maximum is None:
        return f">= {minimum:g}"
    return f"between {minimum:g} and {maximum:g}"


class _Reader:
    """Reads typed values and collects every error instead of stopping."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def fail(self, message: str) -> None:
        """Record one error."""
        self.errors.append(message)

    def integer(
        self, var: str, value: Any, minimum: int = 0, maximum: int | None = None, nullable: bool = False
    ) -> int | None:
        """An integer within bounds (None allowed only when ``nullable``)."""
        if value is None:
            if not nullable:
                self.fail(f"{var} must be set, got null")
            return None
        number = _as_number(value)
        if number is None or number != int(number):
            self.fail(f"{var} must be an integer {_bounds_text(minimum, maximum)}, got {value!r}")
            return None
        if number < minimum or (maximum is not None and number > maximum):
            self.fail(f"{var} must be {_bounds_text(minimum, maximum)}, got {value!r}")
            return None
        return int(number)

    def decimal(self, var: str, value: Any, minimum: float) -> float | None:
        """A number (integer or not) >= ``minimum``."""
        number = _as_number(value)
        if number is None or number < minimum:
            self.fail(f"{var} must be a number >= {minimum:g}, got {value!r}")
            return None
        return number

    def choice(self, var: str, value: Any, choices: tuple) -> Any:
        """One of ``choices``; numeric choices also accept numeric strings."""
        candidate = value.strip().lower() if isinstance(value, str) else value
        if choices and isinstance(choices[0], int):
            number = _as_number(value)
            candidate = int(number) if number is not None and number == int(number) else None
        if candidate not in choices:
            allowed = ", ".join(str(item) for item in choices)
            self.fail(f"{var} must be one of {allowed}, got {value!r}")
            return None
        return candidate

    def flag(self, var: str, value: Any) -> bool | None:
        """A boolean (YAML true/false, or the strings Ansible passes with -e)."""
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
            return value.strip().lower() in ("true", "yes", "on", "1")
        self.fail(f"{var} must be true or false, got {value!r}")
        return None

    def strings(self, var: str, value: Any, non_empty: bool = False) -> list[str] | None:
        """A list of non-empty strings."""
        if not isinstance(value, (list, tuple)) or not all(isinstance(item, str) and item for item in value):
            self.fail(f"{var} must be a list of non-empty strings, got {value!r}")
            return None
        if non_empty and not value:
            self.fail(f"{var} must not be empty")
            return None
        return [str(item) for item in value]

    def mapping(self, var: str, value: Any, known: Iterable[str]) -> dict[str, Any]:
        """A dict whose keys are all in ``known`` (catches misspelt keys)."""
        if not isinstance(value, Mapping):
            self.fail(f"{var} must be a mapping, got {value!r}")
            return {}
        unknown = sorted(str(key) for key in value if key not in known)
        if unknown:
            self.fail(f"{var} has unknown keys: {', '.join(unknown)}")
        return dict(value)


@dataclass
class Pool:
    """One Celery worker pool (a systemd unit running ``celery worker``)."""

    name: str
    queues: list[str]
    concurrency: int | None  # None = auto
    max_memory_per_child_kb: int
    max_tasks_per_child: int
    prefetch_multiplier: int
    soft_time_limit: int
    time_limit: int
    db_connections_per_process: int
    parent_memory_mb: int
    index: int = 0

    @property
    def var(self) -> str:
        """The inventory path of this pool, for messages."""
        return f"capacity_celery_pools[{self.index}] ({self.name})"

    @property
    def ack_window_seconds(self) -> int:
        """Longest time a reserved task may stay unacknowledged in this pool.

        A task prefetched behind ``prefetch_multiplier - 1`` others on the same
        child may wait for them to hit their hard limit, then run to its own.
        """
        return self.prefetch_multiplier * self.time_limit

    @property
    def memory_max_mb(self) -> int:
        """Memory cap: every child at its recycle threshold plus the parent."""
        assert self.concurrency is not None
        return _ceil_div(self.concurrency * self.max_memory_per_child_kb, KB_PER_MB) + self.parent_memory_mb


@dataclass
class Inputs:
    """Validated inputs of one plan."""

    vcpus: int
    memory_mb: int
    storage: str
    os_reserve_mb: int | None
    services: list[str]
    workload: dict[str, Any]
    pools: list[Pool]
    cluster: dict[str, Any] = field(default_factory=dict)

    def has(self, service: str) -> bool:
        """True when ``service`` runs on this host."""
        return service in self.services


def _parse_host(reader: _Reader, host: Any) -> dict[str, Any]:
    """Validate the host description."""
    raw = {**HOST_DEFAULTS, **reader.mapping("host", host, HOST_DEFAULTS)}
    name = HOST_VARIABLES
    for key in ("vcpus", "memory_mb"):
        if raw[key] is None:
            reader.fail(f"{name[key]} is null and no facts were gathered: declare it in the inventory or gather facts")
    return {
        "vcpus": reader.integer(name["vcpus"], raw["vcpus"], minimum=1, nullable=True),
        "memory_mb": reader.integer(name["memory_mb"], raw["memory_mb"], minimum=1, nullable=True),
        "storage": reader.choice(name["storage"], raw["storage"], STORAGE_TYPES),
        "os_reserve_mb": reader.integer(name["os_reserve_mb"], raw["os_reserve_mb"], minimum=0, nullable=True),
    }


def _parse_services(reader: _Reader, services: Any) -> list[str]:
    """Validate the list of services running on the host."""
    names = reader.strings("services", services) or []
    unknown = [name for name in names if name not in SERVICES]
    if unknown:
        reader.fail(f"services has unknown names {unknown}; known: {', '.join(SERVICES)}")
    return [name for name in SERVICES if name in names]


_INT_RULES: dict[str, tuple[int, int | None, bool]] = {
    # key: (minimum, maximum, nullable)
    "postgresql_memory_mb": (1, None, True),
    "postgresql_max_connections": (1, PG_MAX_CONNECTIONS, True),
    "postgresql_superuser_reserved_connections": (0, None, False),
    "postgresql_direct_connections": (0, None, False),
    "api_processes": (1, None, True),
    "api_db_pool_size": (0, None, False),
    "api_db_max_overflow": (0, None, False),
    "api_process_memory_mb": (1, None, False),
    "celery_max_eta_seconds": (0, None, False),
    "celery_visibility_timeout": (1, None, True),
    "celery_parent_memory_mb": (0, None, False),
    "celery_stop_timeout_margin_sec": (0, None, False),
    "celery_beat_memory_mb": (0, None, False),
    "celery_beat_db_connections": (0, None, False),
    "celery_flower_memory_mb": (0, None, False),
    "celery_flower_db_connections": (0, None, False),
    "redis_broker_maxmemory_mb": (1, None, True),
    "redis_cache_maxmemory_mb": (1, None, True),
    "pgbouncer_default_pool_size": (1, None, True),
    "pgbouncer_reserve_pool_size": (0, None, False),
    "pgbouncer_max_client_conn": (1, None, True),
    "pgbouncer_databases": (1, None, False),
    "pgbouncer_memory_mb": (0, None, False),
    "nginx_memory_mb": (0, None, False),
    "monitoring_memory_mb": (0, None, False),
    "exporters_memory_mb": (0, None, False),
}
_FLOAT_RULES = {
    "redis_broker_overhead_factor": 1.0,
    "redis_cache_overhead_factor": 1.0,
    "pgbouncer_client_headroom": 1.0,
}
_FLAGS = ("celery_beat_enabled", "celery_flower_enabled")


def _parse_workload(reader: _Reader, workload: Any, services: list[str]) -> dict[str, Any]:
    """Validate the workload (everything but the host size and the pools)."""
    raw = {**WORKLOAD_DEFAULTS, **reader.mapping("workload", workload, WORKLOAD_DEFAULTS)}
    values: dict[str, Any] = {}
    for key, (minimum, maximum, nullable) in _INT_RULES.items():
        values[key] = reader.integer(f"capacity_{key}", raw[key], minimum, maximum, nullable)
    for key, minimum in _FLOAT_RULES.items():
        values[key] = reader.decimal(f"capacity_{key}", raw[key], minimum)
    for key in _FLAGS:
        values[key] = reader.flag(f"capacity_{key}", raw[key])
    values["postgresql_version"] = None
    if raw["postgresql_version"] is None and "db" in services:
        reader.fail(
            "capacity_postgresql_version is null and could not be derived from the OS facts; set it to 15 or 17"
        )
    elif raw["postgresql_version"] is not None:
        values["postgresql_version"] = reader.choice(
            "capacity_postgresql_version", raw["postgresql_version"], PG_VERSIONS
        )
    values["postgresql_db_type"] = reader.choice("capacity_postgresql_db_type", raw["postgresql_db_type"], DB_TYPES)
    values["celery_routes"] = reader.strings("capacity_celery_routes", raw["celery_routes"])
    values["celery_pools"] = raw["celery_pools"]
    return values


def _parse_pool(reader: _Reader, index: int, raw: Any, parent_default: int | None) -> Pool | None:
    """Validate one entry of ``capacity_celery_pools``."""
    base = f"capacity_celery_pools[{index}]"
    raw = reader.mapping(base, raw, ("name", "queues", *POOL_DEFAULTS))
    if not raw:
        return None
    name = raw.get("name")
    if not isinstance(name, str) or not _NAME_RE.match(name):
        reader.fail(f"{base}.name must match {_NAME_RE.pattern} (it names a systemd unit), got {name!r}")
        name = None
    label = f"{base} ({name})" if name else base
    values = {**POOL_DEFAULTS, **raw}
    concurrency = values["concurrency"]
    if isinstance(concurrency, str) and concurrency.strip().lower() == "auto":
        concurrency = None
    else:
        concurrency = reader.integer(f"{label}.concurrency", concurrency, minimum=1)
        if concurrency is None:
            reader.errors[-1] += " (or 'auto')"
    parent = values["parent_memory_mb"] if values["parent_memory_mb"] is not None else parent_default
    pool = Pool(
        name=name or "",
        queues=reader.strings(f"{label}.queues", values.get("queues"), non_empty=True) or [],
        concurrency=concurrency,
        max_memory_per_child_kb=reader.integer(
            f"{label}.max_memory_per_child_kb", values["max_memory_per_child_kb"], 1
        ),
        max_tasks_per_child=reader.integer(f"{label}.max_tasks_per_child", values["max_tasks_per_child"], 1),
        prefetch_multiplier=reader.integer(f"{label}.prefetch_multiplier", values["prefetch_multiplier"], 1),
        soft_time_limit=reader.integer(f"{label}.soft_time_limit", values["soft_time_limit"], 1),
        time_limit=reader.integer(f"{label}.time_limit", values["time_limit"], 1),
        db_connections_per_process=reader.integer(
            f"{label}.db_connections_per_process", values["db_connections_per_process"], 0
        ),
        parent_memory_mb=reader.integer(f"{label}.parent_memory_mb", parent, 0),
        index=index,
    )
    return pool


def _parse_pools(reader: _Reader, pools: Any, parent_default: int | None) -> list[Pool]:
    """Validate ``capacity_celery_pools`` and refuse duplicate names."""
    if not isinstance(pools, (list, tuple)):
        reader.fail(f"capacity_celery_pools must be a list of pool mappings, got {pools!r}")
        return []
    parsed = [_parse_pool(reader, index, raw, parent_default) for index, raw in enumerate(pools)]
    result = [pool for pool in parsed if pool is not None]
    seen: dict[str, int] = {}
    for pool in result:
        if pool.name and pool.name in seen:
            reader.fail(
                f"capacity_celery_pools[{pool.index}].name {pool.name!r} duplicates capacity_celery_pools[{seen[pool.name]}]"
            )
        seen.setdefault(pool.name, pool.index)
    return result


def _parse_cluster(reader: _Reader, cluster: Any) -> dict[str, Any]:
    """Validate the optional view of the other hosts (split layouts)."""
    raw = {**CLUSTER_DEFAULTS, **reader.mapping("cluster", cluster or {}, CLUSTER_DEFAULTS)}
    values: dict[str, Any] = {
        "db_vcpus": reader.integer("cluster.db_vcpus", raw["db_vcpus"], minimum=1, nullable=True),
        "remote_queues": reader.strings("cluster.remote_queues", raw["remote_queues"]) or [],
        "remote_ack_window_seconds": reader.integer(
            "cluster.remote_ack_window_seconds", raw["remote_ack_window_seconds"], 0
        )
        or 0,
        "unplanned_hosts": reader.strings("cluster.unplanned_hosts", raw["unplanned_hosts"]) or [],
    }
    for key in ("pgbouncer_server_connections", "remote_client_demand"):
        counts = raw[key] if isinstance(raw[key], Mapping) else {}
        if not isinstance(raw[key], Mapping):
            reader.fail(f"cluster.{key} must be a mapping of name to count, got {raw[key]!r}")
        values[key] = {str(label): reader.integer(f"cluster.{key}[{label}]", n, 0) or 0 for label, n in counts.items()}
    return values


def parse_inputs(host: Any, services: Any, workload: Any, cluster: Any = None) -> Inputs:
    """Validate every input, raising :class:`PlanError` with all the errors."""
    reader = _Reader()
    host_values = _parse_host(reader, host)
    names = _parse_services(reader, services)
    work = _parse_workload(reader, workload, names)
    pools = _parse_pools(reader, work["celery_pools"], work["celery_parent_memory_mb"])
    cluster_values = _parse_cluster(reader, cluster)
    if reader.errors:
        raise PlanError(reader.errors)
    return Inputs(
        vcpus=host_values["vcpus"],
        memory_mb=host_values["memory_mb"],
        storage=host_values["storage"],
        os_reserve_mb=host_values["os_reserve_mb"],
        services=names,
        workload=work,
        pools=pools,
        cluster=cluster_values,
    )


# --------------------------------------------------------------------------
# PGTune (le0pard/pgtune, Linux)
# --------------------------------------------------------------------------


def _ceil_div(numerator: int, denominator: int) -> int:
    """Integer ceiling division."""
    return -(-numerator // denominator)


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
        sizes[key] = _clamp(sizes[key], low, high)
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


# --------------------------------------------------------------------------
# Resolution of the automatic values
# --------------------------------------------------------------------------


def _clamp(value: int, low: int, high: int) -> int:
    """Clamp ``value`` to [low, high]."""
    return max(low, min(high, value))


def _auto_redis(memory_mb: int, rule: tuple[int, int, int]) -> int:
    """RAM / divisor clamped to [floor, cap] MB."""
    divisor, low, high = rule
    return _clamp(memory_mb // divisor, low, high)


def _resolve(inputs: Inputs) -> dict[str, Any]:
    """Resolve every ``null``/``auto`` input except the PostgreSQL share."""
    w = inputs.workload
    auto_pools = [pool for pool in inputs.pools if pool.concurrency is None]
    auto_concurrency = inputs.vcpus // len(auto_pools) if auto_pools else 0
    for pool in auto_pools:
        pool.concurrency = auto_concurrency
    db_vcpus = inputs.cluster["db_vcpus"] or inputs.vcpus
    default_pool = w["pgbouncer_default_pool_size"] or 2 * db_vcpus + 1
    pool_max = default_pool + w["pgbouncer_reserve_pool_size"]
    return {
        "os_reserve_mb": (
            inputs.os_reserve_mb
            if inputs.os_reserve_mb is not None
            else max(OS_RESERVE_MIN_MB, math.ceil(inputs.memory_mb * OS_RESERVE_FRACTION))
        ),
        "api_processes": w["api_processes"] or min(2 * inputs.vcpus + 1, API_PROCESSES_CAP),
        "auto_pools": auto_pools,
        "db_vcpus": db_vcpus,
        "broker_maxmemory_mb": w["redis_broker_maxmemory_mb"] or _auto_redis(inputs.memory_mb, REDIS_BROKER_AUTO),
        "cache_maxmemory_mb": w["redis_cache_maxmemory_mb"] or _auto_redis(inputs.memory_mb, REDIS_CACHE_AUTO),
        "pgbouncer_default_pool_size": default_pool,
        "pgbouncer_max_db_connections": pool_max,
        "pgbouncer_server_connections": pool_max * w["pgbouncer_databases"],
    }


def _client_demand(inputs: Inputs, resolved: dict[str, Any]) -> dict[str, int]:
    """DB client connections opened by the processes of this host."""
    w = inputs.workload
    demand: dict[str, int] = {}
    if inputs.has("web"):
        demand["api"] = resolved["api_processes"] * (w["api_db_pool_size"] + w["api_db_max_overflow"])
    if inputs.has("workers"):
        for pool in inputs.pools:
            demand[f"celery:{pool.name}"] = pool.concurrency * pool.db_connections_per_process
        if w["celery_beat_enabled"]:
            demand["beat"] = w["celery_beat_db_connections"]
        if w["celery_flower_enabled"]:
            demand["flower"] = w["celery_flower_db_connections"]
    return demand


# --------------------------------------------------------------------------
# Plan sections
# --------------------------------------------------------------------------


def _memory_shares(inputs: Inputs, resolved: dict[str, Any]) -> dict[str, int]:
    """Memory reserved by every service of the host except PostgreSQL (MB)."""
    w = inputs.workload
    shares = {"os_reserve": resolved["os_reserve_mb"]}
    if inputs.has("broker"):
        shares["redis_broker"] = math.ceil(resolved["broker_maxmemory_mb"] * w["redis_broker_overhead_factor"])
    if inputs.has("cache"):
        shares["redis_cache"] = math.ceil(resolved["cache_maxmemory_mb"] * w["redis_cache_overhead_factor"])
    if inputs.has("workers"):
        shares["workers"] = sum(pool.memory_max_mb for pool in inputs.pools)
        shares["beat"] = w["celery_beat_memory_mb"] if w["celery_beat_enabled"] else 0
        shares["flower"] = w["celery_flower_memory_mb"] if w["celery_flower_enabled"] else 0
    if inputs.has("web"):
        shares["api"] = resolved["api_processes"] * w["api_process_memory_mb"]
        shares["nginx"] = w["nginx_memory_mb"]
    if inputs.has("pgbouncer"):
        shares["pgbouncer"] = w["pgbouncer_memory_mb"]
    if inputs.has("monitoring"):
        shares["monitoring"] = w["monitoring_memory_mb"]
    shares["exporters"] = w["exporters_memory_mb"]
    return shares


def _parts_text(shares: Mapping[str, int]) -> str:
    """'os_reserve 1639 + postgresql 19200 + ...' for messages."""
    return " + ".join(f"{name} {mb}" for name, mb in shares.items() if mb)


def _plan_memory(inputs: Inputs, resolved: dict[str, Any], errors: list[str], warnings: list[str]) -> dict[str, Any]:
    """Split the host memory; the PostgreSQL share is pinned or the remainder."""
    shares = _memory_shares(inputs, resolved)
    total = inputs.memory_mb
    if inputs.has("db"):
        pinned = inputs.workload["postgresql_memory_mb"]
        others = sum(shares.values())
        share = pinned if pinned is not None else (total - others) // POSTGRESQL_ROUND_MB * POSTGRESQL_ROUND_MB
        if share < POSTGRESQL_MIN_MB:
            how = (
                f"capacity_postgresql_memory_mb={pinned}"
                if pinned is not None
                else (
                    f"capacity_postgresql_memory_mb (auto) = {total} MB - ({_parts_text(shares)} = {others} MB) = {share} MB"
                )
            )
            errors.append(f"PostgreSQL share too small: {how}, below the {POSTGRESQL_MIN_MB} MB minimum")
            share = POSTGRESQL_MIN_MB
        shares = {"os_reserve": shares.pop("os_reserve"), "postgresql": share, **shares}
    allocated = sum(shares.values())
    if allocated > total:
        errors.append(
            f"memory over-commit: {_parts_text(shares)} = {allocated} MB > capacity_host_memory_mb={total} MB "
            f"(over by {allocated - total} MB)"
        )
    free = total - allocated
    if free > total // 4:
        warnings.append(f"{free} MB of {total} MB are not allocated to any service")
    workers_by_pool = {pool.name: pool.memory_max_mb for pool in inputs.pools} if inputs.has("workers") else {}
    return {"total": total, **shares, "workers_by_pool": workers_by_pool, "allocated": allocated, "free": free}


def _plan_pgbouncer(inputs: Inputs, resolved: dict[str, Any], errors: list[str], warnings: list[str]) -> dict[str, Any]:
    """PgBouncer in transaction mode: pool sizes, max_client_conn, fd limit."""
    w = inputs.workload
    demand = {**_client_demand(inputs, resolved), **inputs.cluster["remote_client_demand"]}
    total_demand = sum(demand.values())
    wanted = max(math.ceil(total_demand * w["pgbouncer_client_headroom"]), PGBOUNCER_MIN_CLIENT_CONN)
    pinned = w["pgbouncer_max_client_conn"]
    if pinned is not None and pinned < total_demand:
        errors.append(
            f"capacity_pgbouncer_max_client_conn={pinned} is below the client demand {total_demand} "
            f"({_parts_text(demand)})"
        )
    elif pinned is not None and pinned < wanted:
        warnings.append(
            f"capacity_pgbouncer_max_client_conn={pinned} leaves less than the "
            f"x{w['pgbouncer_client_headroom']:g} headroom over the client demand {total_demand} (auto would be {wanted})"
        )
    if (
        inputs.has("pgbouncer")
        and not inputs.has("db")
        and inputs.cluster["db_vcpus"] is None
        and not (w["pgbouncer_default_pool_size"])
    ):
        warnings.append(
            "the PostgreSQL host's vCPUs are unknown: capacity_pgbouncer_default_pool_size was derived from this host's vCPUs"
        )
    local_processes = sum(pool.concurrency for pool in inputs.pools) if inputs.has("workers") else 0
    local_processes += resolved["api_processes"] if inputs.has("web") else 0
    if local_processes > resolved["pgbouncer_max_db_connections"]:
        warnings.append(
            f"{local_processes} worker/API processes share {resolved['pgbouncer_max_db_connections']} server connections "
            "per database: transactions will queue in PgBouncer at peak"
        )
    max_client_conn = pinned if pinned is not None else wanted
    server = resolved["pgbouncer_server_connections"]
    return {
        "pool_mode": "transaction",
        "default_pool_size": resolved["pgbouncer_default_pool_size"],
        "reserve_pool_size": w["pgbouncer_reserve_pool_size"],
        "max_db_connections": resolved["pgbouncer_max_db_connections"],
        "databases": w["pgbouncer_databases"],
        "server_connections": server,
        "client_demand": demand,
        "client_demand_total": total_demand,
        "max_client_conn": max_client_conn,
        "fd_limit": max_client_conn + server + PGBOUNCER_FD_MARGIN,
    }


def _plan_connections(
    inputs: Inputs, resolved: dict[str, Any], errors: list[str], warnings: list[str]
) -> dict[str, Any]:
    """PostgreSQL max_connections: PgBouncer servers + direct + superuser."""
    w = inputs.workload
    servers = dict(inputs.cluster["pgbouncer_server_connections"])
    if inputs.has("pgbouncer"):
        servers = {"local": resolved["pgbouncer_server_connections"], **servers}
    if not servers:
        warnings.append("no PgBouncer feeds this PostgreSQL host: max_connections only covers direct connections")
    pooled = sum(servers.values())
    direct = w["postgresql_direct_connections"]
    reserved = w["postgresql_superuser_reserved_connections"]
    required = max(pooled + direct + reserved, reserved + 1)
    pinned = w["postgresql_max_connections"]
    if pinned is not None and pinned < required:
        errors.append(
            f"capacity_postgresql_max_connections={pinned} is below the planned connections {required} "
            f"(PgBouncer servers {pooled} + capacity_postgresql_direct_connections {direct} + "
            f"capacity_postgresql_superuser_reserved_connections {reserved})"
        )
    max_connections = pinned if pinned is not None else required
    if max_connections > PG_MAX_CONNECTIONS:
        errors.append(f"max_connections {max_connections} exceeds PostgreSQL's limit {PG_MAX_CONNECTIONS}")
    return {
        "max_connections": max_connections,
        "required": required,
        "pgbouncer_servers": servers,
        "direct": direct,
        "superuser_reserved": reserved,
    }


def _plan_postgresql(inputs: Inputs, memory_mb: int, max_connections: int) -> tuple[dict[str, str], dict[str, int]]:
    """PGTune settings for the PostgreSQL share, plus the memory values in kB."""
    w = inputs.workload
    db_type = w["postgresql_db_type"]
    settings = pgtune(memory_mb, inputs.vcpus, max_connections, inputs.storage, db_type, w["postgresql_version"])
    settings["superuser_reserved_connections"] = str(w["postgresql_superuser_reserved_connections"])
    return settings, pgtune_kb(memory_mb, inputs.vcpus, max_connections, db_type)


def _plan_redis(inputs: Inputs, resolved: dict[str, Any], errors: list[str]) -> dict[str, Any]:
    """Redis broker (no eviction, AOF) and cache (LRU, no persistence)."""
    redis: dict[str, Any] = {}
    if inputs.has("broker"):
        broker = resolved["broker_maxmemory_mb"]
        if broker < REDIS_BROKER_MIN_MB:
            errors.append(
                f"capacity_redis_broker_maxmemory_mb={broker} is below the {REDIS_BROKER_MIN_MB} MB minimum for a broker"
            )
        redis["broker"] = {
            "maxmemory_mb": broker,
            "maxmemory_policy": "noeviction",
            "appendonly": "yes",
            "appendfsync": "everysec",
        }
    if inputs.has("cache"):
        redis["cache"] = {
            "maxmemory_mb": resolved["cache_maxmemory_mb"],
            "maxmemory_policy": "allkeys-lru",
            "appendonly": "no",
        }
    return redis


def _check_pools(inputs: Inputs, resolved: dict[str, Any], errors: list[str], warnings: list[str]) -> None:
    """Concurrency, time limits and queue routing of the worker pools."""
    for pool in resolved["auto_pools"]:
        if pool.concurrency < 1:
            errors.append(
                f"{pool.var}.concurrency 'auto' resolves to 0: capacity_host_vcpus={inputs.vcpus} shared by "
                f"{len(resolved['auto_pools'])} auto pools; set a concurrency"
            )
    for pool in inputs.pools:
        if pool.time_limit <= pool.soft_time_limit:
            errors.append(
                f"{pool.var}.time_limit={pool.time_limit} must be greater than soft_time_limit={pool.soft_time_limit}"
            )
    consumed: dict[str, list[str]] = {}
    for pool in inputs.pools:
        for queue in pool.queues:
            consumed.setdefault(queue, []).append(pool.name)
    routes = inputs.workload["celery_routes"]
    remote = set(inputs.cluster["remote_queues"])
    for queue in routes:
        if queue not in consumed and queue not in remote:
            errors.append(f"capacity_celery_routes sends tasks to queue {queue!r} but no pool consumes it")
    for queue, pools in consumed.items():
        if queue not in routes:
            warnings.append(f"queue {queue!r} consumed by pool {pools[0]!r} is not in capacity_celery_routes")
        if len(pools) > 1:
            warnings.append(f"queue {queue!r} is consumed by several pools: {', '.join(pools)}")


def _visibility_timeout(inputs: Inputs, errors: list[str]) -> int:
    """Broker visibility_timeout: above every ack window and the longest ETA."""
    w = inputs.workload
    needs = {
        f"{pool.var} time_limit {pool.time_limit} x prefetch_multiplier {pool.prefetch_multiplier}": pool.ack_window_seconds
        for pool in inputs.pools
    }
    needs["capacity_celery_max_eta_seconds"] = w["celery_max_eta_seconds"]
    needs["the other worker hosts' pools"] = inputs.cluster["remote_ack_window_seconds"]
    longest = max(needs.values())
    pinned = w["celery_visibility_timeout"]
    if pinned is None:
        # No fixed floor (kombu's default is 3600 s): a task held by a worker
        # that died is redelivered only after visibility_timeout, so the
        # shortest safe value is the one the pools' limits and ETAs allow.
        return math.ceil(longest * VISIBILITY_TIMEOUT_FACTOR / 60) * 60
    for what, seconds in needs.items():
        if pinned <= seconds:
            errors.append(
                f"capacity_celery_visibility_timeout={pinned} must exceed {what} = {seconds} s, "
                "or the broker redelivers tasks that are still running or waiting"
            )
    return pinned


def _plan_celery(inputs: Inputs, resolved: dict[str, Any], errors: list[str], warnings: list[str]) -> dict[str, Any]:
    """Worker pools as the celery role consumes them."""
    w = inputs.workload
    _check_pools(inputs, resolved, errors, warnings)
    margin = w["celery_stop_timeout_margin_sec"]
    pools = [
        {
            "name": pool.name,
            "queues": list(pool.queues),
            "concurrency": pool.concurrency,
            "max_memory_per_child_kb": pool.max_memory_per_child_kb,
            "max_tasks_per_child": pool.max_tasks_per_child,
            "prefetch_multiplier": pool.prefetch_multiplier,
            "soft_time_limit": pool.soft_time_limit,
            "time_limit": pool.time_limit,
            "stop_timeout_sec": pool.time_limit + margin,
            "memory_max_mb": pool.memory_max_mb,
            "parent_memory_mb": pool.parent_memory_mb,
            "db_connections": pool.concurrency * pool.db_connections_per_process,
        }
        for pool in inputs.pools
    ]
    return {
        "pools": pools,
        "visibility_timeout": _visibility_timeout(inputs, errors),
        "routes": list(w["celery_routes"]),
        "max_eta_seconds": w["celery_max_eta_seconds"],
        "beat": {"enabled": w["celery_beat_enabled"], "memory_max_mb": w["celery_beat_memory_mb"]},
        "flower": {"enabled": w["celery_flower_enabled"], "memory_max_mb": w["celery_flower_memory_mb"]},
    }


def _inputs_echo(inputs: Inputs, resolved: dict[str, Any]) -> dict[str, Any]:
    """The resolved host description, echoed in the plan."""
    w = inputs.workload
    return {
        "vcpus": inputs.vcpus,
        "memory_mb": inputs.memory_mb,
        "storage": inputs.storage,
        "services": list(inputs.services),
        "os_reserve_mb": resolved["os_reserve_mb"],
        "postgresql_version": w["postgresql_version"],
        "postgresql_db_type": w["postgresql_db_type"],
        "db_vcpus": resolved["db_vcpus"],
        "api_processes": resolved["api_processes"] if inputs.has("web") else 0,
    }


# --------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------


def build_plan(
    host: Mapping[str, Any],
    services: Iterable[str],
    workload: Mapping[str, Any],
    cluster: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Size one host and return the plan, or raise :class:`PlanError`.

    ``host``: ``vcpus``, ``memory_mb``, ``storage``, ``os_reserve_mb``.
    ``services``: the celery-stack groups the host belongs to.
    ``workload``: the ``capacity_*`` variables without their prefix
    (missing keys take the role defaults).
    ``cluster``: what the other hosts contribute in split layouts (see
    :func:`cluster_view`); omit it for an all-in-one host.
    """
    inputs = parse_inputs(host, list(services) if services is not None else None, workload, cluster)
    resolved = _resolve(inputs)
    errors: list[str] = []
    warnings: list[str] = [
        f"host {name} is not in this play: its demand is not counted" for name in inputs.cluster["unplanned_hosts"]
    ]
    plan: dict[str, Any] = {"inputs": _inputs_echo(inputs, resolved)}
    celery = _plan_celery(inputs, resolved, errors, warnings) if inputs.has("workers") else None
    plan["memory"] = _plan_memory(inputs, resolved, errors, warnings)
    if inputs.has("pgbouncer"):
        plan["pgbouncer"] = _plan_pgbouncer(inputs, resolved, errors, warnings)
    if inputs.has("db"):
        plan["connections"] = _plan_connections(inputs, resolved, errors, warnings)
        settings, sizes = _plan_postgresql(inputs, plan["memory"]["postgresql"], plan["connections"]["max_connections"])
        plan["postgresql"], plan["postgresql_kb"] = settings, sizes
        warnings.extend(pgtune_warnings(plan["memory"]["postgresql"]))
    plan["redis"] = _plan_redis(inputs, resolved, errors)
    if celery is not None:
        plan["celery"] = celery
    plan["warnings"] = warnings
    if errors:
        raise PlanError(errors)
    return plan


def check_plan(
    host: Mapping[str, Any],
    services: Iterable[str],
    workload: Mapping[str, Any],
    cluster: Mapping[str, Any] | None = None,
) -> list[str]:
    """The messages :func:`build_plan` would raise (empty when the plan fits)."""
    try:
        build_plan(host, services, workload, cluster)
    except PlanError as error:
        return error.messages
    return []


def cluster_contribution(
    host: Mapping[str, Any],
    services: Iterable[str],
    workload: Mapping[str, Any],
    cluster: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """What this host adds to the other hosts' plans (split layouts).

    ``client_demand``: DB clients of its API/Celery processes;
    ``pgbouncer_server_connections``: server connections its PgBouncer
    opens to PostgreSQL; ``queues`` its pools consume and the longest
    ``ack_window_seconds`` among them.  Invalid inputs give an empty
    contribution: :func:`build_plan` reports them on this host.
    """
    try:
        inputs = parse_inputs(host, list(services) if services is not None else None, workload, cluster)
    except PlanError:
        return {"client_demand": {}, "pgbouncer_server_connections": 0, "queues": [], "ack_window_seconds": 0}
    resolved = _resolve(inputs)
    workers = inputs.has("workers")
    return {
        "client_demand": _client_demand(inputs, resolved),
        "pgbouncer_server_connections": resolved["pgbouncer_server_connections"] if inputs.has("pgbouncer") else 0,
        "queues": sorted({queue for pool in inputs.pools for queue in pool.queues}) if workers else [],
        "ack_window_seconds": max((pool.ack_window_seconds for pool in inputs.pools), default=0) if workers else 0,
    }


def cluster_view(
    hostname: str,
    services: Iterable[str],
    groups: Mapping[str, Iterable[str]],
    contributions: Mapping[str, Mapping[str, Any]],
    db_vcpus: int | None = None,
) -> dict[str, Any]:
    """Build the ``cluster`` argument of :func:`build_plan` for ``hostname``.

    ``groups`` is Ansible's ``groups``; ``contributions`` maps every host of
    the play to its :func:`cluster_contribution`.  Rules: a PostgreSQL host
    counts the server connections of every PgBouncer host; a PgBouncer host
    counts the clients of every web/workers host that has no PgBouncer of its
    own (conservative: such a host may be pointed at any PgBouncer); a
    workers host accepts routes consumed by any workers host and keeps the
    visibility timeout above every workers host's ack window.
    """
    services = set(services)

    def members(group: str) -> set[str]:
        return set(groups.get(group, ()))

    others = {name: dict(item) for name, item in contributions.items() if name != hostname}
    app_hosts = members("web") | members("workers")
    pgbouncers = members("pgbouncer")
    related: set[str] = set()
    view: dict[str, Any] = {"db_vcpus": db_vcpus}
    if "db" in services:
        related |= pgbouncers
        view["pgbouncer_server_connections"] = {
            name: others[name].get("pgbouncer_server_connections", 0) for name in sorted(pgbouncers & others.keys())
        }
    if "pgbouncer" in services:
        clients = app_hosts - pgbouncers
        related |= clients
        view["remote_client_demand"] = {
            f"{name}:{label}": count
            for name in sorted(clients & others.keys())
            for label, count in others[name].get("client_demand", {}).items()
        }
    if "workers" in services:
        workers = members("workers") & others.keys()
        related |= members("workers")
        view["remote_queues"] = sorted({queue for name in workers for queue in others[name].get("queues", [])})
        view["remote_ack_window_seconds"] = max(
            (others[name].get("ack_window_seconds", 0) for name in workers), default=0
        )
    view["unplanned_hosts"] = sorted(related - others.keys() - {hostname})
    return view


# --------------------------------------------------------------------------
# Fixed-width rendering (playbooks/plan.yml)
# --------------------------------------------------------------------------

_WIDTH = 78


def _rule(title: str) -> str:
    """A section header line."""
    return f"-- {title} " + "-" * max(0, _WIDTH - len(title) - 4)


def _memory_lines(plan: Mapping[str, Any]) -> list[str]:
    """MEMORY section: one row per share with its percentage of RAM."""
    memory = plan["memory"]
    total = memory["total"]
    skip = {"total", "workers_by_pool", "allocated", "free"}
    lines = [_rule("MEMORY (MB)"), f"  {'share':<28}{'MB':>8}{'% RAM':>8}"]
    for name, mb in memory.items():
        if name in skip:
            continue
        lines.append(f"  {name:<28}{mb:>8}{100 * mb / total:>8.1f}")
        if name == "workers":
            for pool, pool_mb in memory["workers_by_pool"].items():
                lines.append(f"    {'pool ' + pool:<26}{pool_mb:>8}{100 * pool_mb / total:>8.1f}")
    for name in ("allocated", "free", "total"):
        lines.append(f"  {name:<28}{memory[name]:>8}{100 * memory[name] / total:>8.1f}")
    return lines


def _postgresql_lines(plan: Mapping[str, Any]) -> list[str]:
    """POSTGRESQL section: connection budget then every setting."""
    if "postgresql" not in plan:
        return []
    inputs, conn = plan["inputs"], plan["connections"]
    servers = " + ".join(f"{name} {count}" for name, count in conn["pgbouncer_servers"].items()) or "0"
    lines = [
        _rule(f"POSTGRESQL {inputs['postgresql_version']} ({inputs['postgresql_db_type']}, PGTune)"),
        f"  connections: pgbouncer servers {servers} + direct {conn['direct']}"
        f" + superuser {conn['superuser_reserved']} = {conn['required']}",
    ]
    lines += [f"  {key:<34}= {value}" for key, value in plan["postgresql"].items()]
    return lines


def _pgbouncer_lines(plan: Mapping[str, Any]) -> list[str]:
    """PGBOUNCER section: pools, demand and limits."""
    if "pgbouncer" not in plan:
        return []
    pgb = plan["pgbouncer"]
    lines = [_rule(f"PGBOUNCER (pool_mode {pgb['pool_mode']})")]
    lines += [f"  client {label:<27}{count:>8}" for label, count in pgb["client_demand"].items()]
    lines.append(f"  {'client demand total':<34}{pgb['client_demand_total']:>8}")
    for key in (
        "max_client_conn",
        "default_pool_size",
        "reserve_pool_size",
        "max_db_connections",
        "databases",
        "server_connections",
        "fd_limit",
    ):
        lines.append(f"  {key:<34}{pgb[key]:>8}")
    return lines


def _redis_lines(plan: Mapping[str, Any]) -> list[str]:
    """REDIS section: one line per instance."""
    if not plan.get("redis"):
        return []
    lines = [_rule("REDIS")]
    for name, conf in plan["redis"].items():
        fsync = f" ({conf['appendfsync']})" if "appendfsync" in conf else ""
        lines.append(
            f"  {name:<8}maxmemory {conf['maxmemory_mb']:>6} MB  {conf['maxmemory_policy']:<12}"
            f"  appendonly {conf['appendonly']}{fsync}"
        )
    return lines


def _celery_lines(plan: Mapping[str, Any]) -> list[str]:
    """CELERY section: a table of pools then the broker timeouts."""
    if "celery" not in plan:
        return []
    celery = plan["celery"]
    header = (
        f"  {'pool':<8}{'conc':>5}{'mem/child KiB':>14}{'tasks':>7}{'pref':>5}"
        f"{'soft':>6}{'hard':>6}{'stop':>6}{'MemMax':>8}{'db':>4}  queues"
    )
    lines = [_rule("CELERY"), header]
    for pool in celery["pools"]:
        lines.append(
            f"  {pool['name']:<8}{pool['concurrency']:>5}{pool['max_memory_per_child_kb']:>14}"
            f"{pool['max_tasks_per_child']:>7}{pool['prefetch_multiplier']:>5}{pool['soft_time_limit']:>6}"
            f"{pool['time_limit']:>6}{pool['stop_timeout_sec']:>6}{pool['memory_max_mb']:>8}{pool['db_connections']:>4}"
            f"  {','.join(pool['queues'])}"
        )
    beat = "on" if celery["beat"]["enabled"] else "off"
    flower = "on" if celery["flower"]["enabled"] else "off"
    lines.append(
        f"  visibility_timeout {celery['visibility_timeout']} s (max ETA {celery['max_eta_seconds']} s),"
        f" beat {beat}, flower {flower}"
    )
    lines.append(
        f"  a crashed worker's tasks run again after {celery['visibility_timeout']}"
        f"-{celery['visibility_timeout'] + RESTORE_INTERVAL_SECONDS} s"
    )
    lines.append(f"  routes: {', '.join(celery['routes'])}")
    return lines


def format_plan(plan: Mapping[str, Any]) -> str:
    """Render a plan as a fixed-width text table, one line per value."""
    inputs = plan["inputs"]
    lines = [
        f"capacity plan: {inputs['vcpus']} vCPU, {inputs['memory_mb']} MB RAM, {inputs['storage']}",
        f"services: {' '.join(inputs['services'])}",
    ]
    for section in (_memory_lines, _postgresql_lines, _pgbouncer_lines, _redis_lines, _celery_lines):
        lines += section(plan)
    lines.append(_rule("WARNINGS"))
    lines += [f"  ! {warning}" for warning in plan["warnings"]] or ["  none"]
    return "\n".join(lines)
