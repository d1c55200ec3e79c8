"""The inputs of the capacity plan: their one declaration, parsing and validation.

:data:`INPUTS` declares every ``capacity_*`` variable of the role once:
Ansible name, type, default, bounds or choices, description.  Everything
else is derived from it: the defaults used by :func:`parse_inputs`
(:data:`HOST_DEFAULTS`, :data:`WORKLOAD_DEFAULTS`), the validation rules,
and the role's ``defaults/main.yml``, ``meta/argument_specs.yml``, workload
name list (``vars/main.yml``) and README table, which
:mod:`celery_stack.role_files` generates (a unit test fails on drift).

Input dictionaries use the Ansible variable names without the
``capacity_`` prefix (``workload["api_processes"]`` is
``capacity_api_processes``) so that every message names the inventory
variable to change.  Every error is collected; :func:`parse_inputs` raises
them all at once in a :class:`PlanError`.  Standard library only: this
module must stay importable without Ansible.
"""

from __future__ import annotations

import ipaddress
import math
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from celery_stack.pgtune import DB_TYPES, PG_VERSIONS
from celery_stack.units import KB_PER_MB, ceil_div

# --------------------------------------------------------------------------
# Vocabulary (documented in docs/capacity.md)
# --------------------------------------------------------------------------

SERVICES = ("db", "pgbouncer", "broker", "cache", "web", "workers", "monitoring")
STORAGE_TYPES = ("ssd", "nvme", "hdd")
PG_MAX_CONNECTIONS = 262143  # MAX_BACKENDS in PostgreSQL
PREFIX = "capacity_"

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*$")

# --------------------------------------------------------------------------
# The declaration of every input
# --------------------------------------------------------------------------

HOST = "host"  # a key of build_plan's ``host`` argument
SERVICES_INPUT = "services"  # resolved by the role into build_plan's ``services`` argument
WORKLOAD = "workload"  # a key of build_plan's ``workload`` argument

REQUIRED = object()  # default of a pool key that has none (the key must be given)


@dataclass(frozen=True)
class PoolKey:
    """One key of a ``capacity_celery_pools`` entry."""

    key: str
    type: str  # argument_specs type: str, list, int, raw
    default: Any
    description: str
    minimum: int | None = None
    elements: str | None = None

    @property
    def required(self) -> bool:
        """True when the key has no default."""
        return self.default is REQUIRED


@dataclass(frozen=True)
class Input:
    """One ``capacity_*`` variable of the role.

    ``default`` None means "automatic" (and that null is accepted);
    ``minimum``/``maximum`` bound numbers, ``choices`` lists the accepted
    values, ``elements`` the type of a list's items, ``pool_keys`` the keys of
    ``capacity_celery_pools`` entries.  ``section`` groups the variables in
    ``defaults/main.yml``.
    """

    variable: str
    type: str  # argument_specs type: int, float, bool, str, list
    default: Any
    description: str
    section: str
    kind: str = WORKLOAD
    key: str = ""  # key in the host/workload dict; "" = the variable without "capacity_"
    minimum: float | None = None
    maximum: int | None = None
    choices: tuple = ()
    elements: str | None = None
    pool_keys: tuple[PoolKey, ...] = ()

    @property
    def name(self) -> str:
        """The key of this input in build_plan's ``host`` or ``workload`` dict."""
        return self.key or self.variable.removeprefix(PREFIX)

    @property
    def nullable(self) -> bool:
        """null is accepted (and means automatic)."""
        return self.default is None


POOL_KEYS: tuple[PoolKey, ...] = (
    PoolKey("name", "str", REQUIRED, "Pool name, used in the systemd unit name: [a-z0-9][a-z0-9_-]*, unique."),
    PoolKey("queues", "list", REQUIRED, "Queues consumed by the pool (a non-empty list).", elements="str"),
    PoolKey(
        "concurrency",
        "raw",
        "auto",
        "Worker processes: an integer >= 1, or auto = the vCPUs split evenly among the auto pools.",
    ),
    PoolKey("max_memory_per_child_kb", "int", 262144, "Celery --max-memory-per-child, in KiB.", minimum=1),
    PoolKey("max_tasks_per_child", "int", 1000, "Celery --max-tasks-per-child.", minimum=1),
    PoolKey("prefetch_multiplier", "int", 1, "Celery --prefetch-multiplier (>= 1).", minimum=1),
    PoolKey("soft_time_limit", "int", 300, "Celery --soft-time-limit in seconds.", minimum=1),
    PoolKey("time_limit", "int", 360, "Celery --time-limit (hard) in seconds; must exceed soft_time_limit.", minimum=1),
    PoolKey("db_connections_per_process", "int", 1, "DB client connections of one worker process.", minimum=0),
    PoolKey(
        "parent_memory_mb",
        "int",
        None,
        "Memory of the pool's parent (main) process in MB; null = capacity_celery_parent_memory_mb.",
        minimum=0,
    ),
)

_HOST_SECTION = "Host"
_PG_SECTION = "PostgreSQL"
_API_SECTION = "API (containers behind nginx)"
_CELERY_SECTION = "Celery"
_REDIS_SECTION = "Redis"
_PGB_SECTION = "PgBouncer (transaction pooling)"
_OTHER_SECTION = "Other memory consumers"

# Order matters: it is the order of the role files and of the error messages.
INPUTS: tuple[Input, ...] = (
    # --- Host
    Input(
        "capacity_host_vcpus",
        "int",
        None,
        "vCPUs of the host. null = fact ansible_processor_vcpus (facts must be gathered). Must be >= 1.",
        _HOST_SECTION,
        kind=HOST,
        key="vcpus",
        minimum=1,
    ),
    Input(
        "capacity_host_memory_mb",
        "int",
        None,
        "RAM of the host in MB. null = fact ansible_memtotal_mb (facts must be gathered). Must be >= 1.",
        _HOST_SECTION,
        kind=HOST,
        key="memory_mb",
        minimum=1,
    ),
    Input(
        "capacity_host_storage",
        "str",
        "ssd",
        "Data storage (PGTune). ssd gives random_page_cost 1.1 and effective_io_concurrency 200, nvme 1.1 and 1000,"
        " hdd 4 and 2.",
        _HOST_SECTION,
        kind=HOST,
        key="storage",
        choices=STORAGE_TYPES,
    ),
    Input(
        "capacity_os_reserve_mb",
        "int",
        None,
        "Memory kept for the OS (kernel, page tables, sshd, journald, containerd...) in MB."
        " null = max(1024, ceil(5% of RAM)).",
        _HOST_SECTION,
        kind=HOST,
        key="os_reserve_mb",
        minimum=0,
    ),
    Input(
        "capacity_services",
        "list",
        None,
        "Services on this host among db, pgbouncer, broker, cache, web, workers, monitoring. null = the host's"
        " inventory groups (group_names). Absent services get no memory.",
        _HOST_SECTION,
        kind=SERVICES_INPUT,
        elements="str",
    ),
    # --- PostgreSQL
    Input(
        "capacity_postgresql_version",
        "int",
        None,
        "PostgreSQL major version, 15 or 17. null = from the OS facts (Debian 12 bookworm 15, Debian 13 trixie 17);"
        " without facts it must be set.",
        _PG_SECTION,
        choices=PG_VERSIONS,
    ),
    Input("capacity_postgresql_db_type", "str", "web", "PGTune workload type.", _PG_SECTION, choices=DB_TYPES),
    Input(
        "capacity_postgresql_memory_mb",
        "int",
        None,
        "Memory given to PostgreSQL (PGTune total memory) in MB. null = RAM minus the OS reserve and every other"
        " service of the host, rounded down to 256 MB. Below 512 MB is refused.",
        _PG_SECTION,
        minimum=1,
    ),
    Input(
        "capacity_postgresql_max_connections",
        "int",
        None,
        "Pin max_connections. null = PgBouncer server connections + direct connections + superuser reserved"
        " connections; a pinned value below that is refused.",
        _PG_SECTION,
        minimum=1,
        maximum=PG_MAX_CONNECTIONS,
    ),
    Input(
        "capacity_postgresql_superuser_reserved_connections",
        "int",
        3,
        "superuser_reserved_connections, counted in max_connections.",
        _PG_SECTION,
        minimum=0,
    ),
    Input(
        "capacity_postgresql_direct_connections",
        "int",
        10,
        "Connections that bypass PgBouncer (migrations, admin, exporter, backups).",
        _PG_SECTION,
        minimum=0,
    ),
    # --- API
    Input(
        "capacity_api_processes",
        "int",
        None,
        "API processes (containers) on this host. null = min(2 x vCPUs + 1, 16).",
        _API_SECTION,
        minimum=1,
    ),
    Input(
        "capacity_api_db_pool_size",
        "int",
        5,
        "SQLAlchemy-style pool_size of each API process (client connections to PgBouncer).",
        _API_SECTION,
        minimum=0,
    ),
    Input(
        "capacity_api_db_max_overflow",
        "int",
        10,
        "SQLAlchemy-style max_overflow of each API process.",
        _API_SECTION,
        minimum=0,
    ),
    Input(
        "capacity_api_process_memory_mb",
        "int",
        384,
        "Memory limit of one API process (container) in MB.",
        _API_SECTION,
        minimum=1,
    ),
    Input(
        "capacity_api_port",
        "int",
        8000,
        "Port of the first API process; api-k listens on port + k - 1 (the plan's nginx upstreams).",
        _API_SECTION,
        minimum=1024,
        maximum=65535,
    ),
    Input(
        "capacity_api_bind_address",
        "str",
        "127.0.0.1",
        "IP address the API processes listen on (loopback on an all-in-one host; the plan's nginx upstreams).",
        _API_SECTION,
    ),
    # --- Celery
    Input(
        "capacity_celery_pools",
        "list",
        [{"name": "default", "queues": ["celery"]}],
        "Celery worker pools, one systemd unit each.",
        _CELERY_SECTION,
        elements="dict",
        pool_keys=POOL_KEYS,
    ),
    Input(
        "capacity_celery_routes",
        "list",
        ["celery"],
        "Queues the application routes tasks to (task_routes + task_default_queue). A routed queue that no pool"
        " consumes is refused; a pool queue that is not routed gives a warning.",
        _CELERY_SECTION,
        elements="str",
    ),
    Input(
        "capacity_celery_max_eta_seconds",
        "int",
        0,
        "Longest countdown/ETA used by the application, in seconds.",
        _CELERY_SECTION,
        minimum=0,
    ),
    Input(
        "capacity_celery_visibility_timeout",
        "int",
        None,
        "Redis broker visibility_timeout in seconds. null = longest ack window (time_limit x prefetch_multiplier)"
        " or ETA x 1.25 rounded up to a minute. A worker that dies has its tasks redelivered after it (+ up to"
        " 100 s, see docs/capacity.md for the trade-off); a pinned value not above every ack window and the ETA is"
        " refused.",
        _CELERY_SECTION,
        minimum=1,
    ),
    Input(
        "capacity_celery_parent_memory_mb",
        "int",
        128,
        "Memory of a pool's parent (main) process in MB (default for parent_memory_mb).",
        _CELERY_SECTION,
        minimum=0,
    ),
    Input(
        "capacity_celery_stop_timeout_margin_sec",
        "int",
        30,
        "systemd TimeoutStopSec of a pool = time_limit + this margin.",
        _CELERY_SECTION,
        minimum=0,
    ),
    Input(
        "capacity_celery_beat_enabled",
        "bool",
        True,
        "Run celery beat on this host (keep it on one host only).",
        _CELERY_SECTION,
    ),
    Input(
        "capacity_celery_beat_memory_mb", "int", 128, "Memory limit of celery beat in MB.", _CELERY_SECTION, minimum=0
    ),
    Input(
        "capacity_celery_beat_db_connections",
        "int",
        1,
        "DB client connections of celery beat (1 for a database scheduler).",
        _CELERY_SECTION,
        minimum=0,
    ),
    Input("capacity_celery_flower_enabled", "bool", False, "Run flower on this host.", _CELERY_SECTION),
    Input("capacity_celery_flower_memory_mb", "int", 256, "Memory limit of flower in MB.", _CELERY_SECTION, minimum=0),
    Input(
        "capacity_celery_flower_db_connections",
        "int",
        0,
        "DB client connections of flower.",
        _CELERY_SECTION,
        minimum=0,
    ),
    # --- Redis
    Input(
        "capacity_redis_broker_maxmemory_mb",
        "int",
        None,
        "Broker maxmemory in MB. null = RAM / 32 clamped to 256..4096. Below 256 is refused.",
        _REDIS_SECTION,
        minimum=1,
    ),
    Input(
        "capacity_redis_cache_maxmemory_mb",
        "int",
        None,
        "Cache maxmemory in MB. null = RAM / 16 clamped to 128..8192.",
        _REDIS_SECTION,
        minimum=1,
    ),
    Input(
        "capacity_redis_broker_overhead_factor",
        "float",
        2.0,
        "Memory reserved for the broker = maxmemory x factor: AOF rewrite forks and copy-on-write can double the"
        " resident memory in the worst case. >= 1.",
        _REDIS_SECTION,
        minimum=1.0,
    ),
    Input(
        "capacity_redis_cache_overhead_factor",
        "float",
        1.25,
        "Memory reserved for the cache = maxmemory x factor (no persistence, so no fork: only allocator"
        " fragmentation). >= 1.",
        _REDIS_SECTION,
        minimum=1.0,
    ),
    # --- PgBouncer
    Input(
        "capacity_pgbouncer_default_pool_size",
        "int",
        None,
        "PgBouncer default_pool_size: server connections per database/user pair. null = 2 x vCPUs of the"
        " PostgreSQL host + 1.",
        _PGB_SECTION,
        minimum=1,
    ),
    Input(
        "capacity_pgbouncer_reserve_pool_size",
        "int",
        5,
        "PgBouncer reserve_pool_size: extra server connections per pair for bursts.",
        _PGB_SECTION,
        minimum=0,
    ),
    Input(
        "capacity_pgbouncer_max_client_conn",
        "int",
        None,
        "Pin max_client_conn. null = max(20, ceil(client demand x headroom)); a pinned value below the client"
        " demand is refused.",
        _PGB_SECTION,
        minimum=1,
    ),
    Input(
        "capacity_pgbouncer_databases",
        "int",
        1,
        "Number of database/user pairs pooled by PgBouncer.",
        _PGB_SECTION,
        minimum=1,
    ),
    Input(
        "capacity_pgbouncer_client_headroom",
        "float",
        1.25,
        "Factor over the client demand for the automatic max_client_conn. >= 1.",
        _PGB_SECTION,
        minimum=1.0,
    ),
    Input("capacity_pgbouncer_memory_mb", "int", 64, "Memory of PgBouncer in MB.", _PGB_SECTION, minimum=0),
    # --- Other memory consumers
    Input("capacity_nginx_memory_mb", "int", 128, "Memory of nginx on web hosts in MB.", _OTHER_SECTION, minimum=0),
    Input(
        "capacity_monitoring_memory_mb",
        "int",
        1536,
        "Memory of the monitoring stack (Prometheus, Grafana, Alertmanager...) on monitoring hosts in MB.",
        _OTHER_SECTION,
        minimum=0,
    ),
    Input(
        "capacity_monitoring_retention_days",
        "int",
        15,
        "Days of metrics Prometheus keeps on monitoring hosts (--storage.tsdb.retention.time).",
        _OTHER_SECTION,
        minimum=1,
    ),
    Input(
        "capacity_monitoring_disk_mb",
        "int",
        10240,
        "Disk Prometheus may use on monitoring hosts in MB; retention.size is 90 % of it (the WAL and compaction need"
        " the rest).",
        _OTHER_SECTION,
        minimum=512,
    ),
    Input(
        "capacity_exporters_memory_mb",
        "int",
        256,
        "Memory of the exporters (node, postgres, redis, pgbouncer, celery) on every host in MB.",
        _OTHER_SECTION,
        minimum=0,
    ),
)

# --------------------------------------------------------------------------
# Derived from the declaration
# --------------------------------------------------------------------------

HOST_INPUTS = {item.name: item for item in INPUTS if item.kind == HOST}
WORKLOAD_INPUTS = {item.name: item for item in INPUTS if item.kind == WORKLOAD}

HOST_VARIABLES = {key: item.variable for key, item in HOST_INPUTS.items()}
HOST_DEFAULTS: dict[str, Any] = {key: item.default for key, item in HOST_INPUTS.items()}
# The role's defaults/main.yml is generated from the same declaration.
WORKLOAD_DEFAULTS: dict[str, Any] = {key: item.default for key, item in WORKLOAD_INPUTS.items()}
POOL_DEFAULTS: dict[str, Any] = {item.key: item.default for item in POOL_KEYS if not item.required}

# Validation rules of the scalar workload inputs (the others are parsed one by one below).
_INT_RULES: dict[str, tuple[int, int | None, bool]] = {
    # key: (minimum, maximum, nullable)
    key: (int(item.minimum or 0), item.maximum, item.nullable)
    for key, item in WORKLOAD_INPUTS.items()
    if item.type == "int" and not item.choices
}
_FLOAT_RULES: dict[str, float] = {
    key: float(item.minimum or 0) for key, item in WORKLOAD_INPUTS.items() if item.type == "float"
}
_FLAGS = tuple(key for key, item in WORKLOAD_INPUTS.items() if item.type == "bool")
_POOL_INT_MINIMA = {item.key: item.minimum or 0 for item in POOL_KEYS if item.type == "int"}

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

    def address(self, var: str, value: Any) -> str | None:
        """An IPv4 or IPv6 address literal (not a wildcard)."""
        try:
            parsed = ipaddress.ip_address(str(value).strip()) if isinstance(value, str) else None
        except ValueError:
            parsed = None
        if parsed is None or parsed.is_unspecified:
            self.fail(f"{var} must be an IP address of this host (not a wildcard), got {value!r}")
            return None
        return str(parsed)

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
        return ceil_div(self.concurrency * self.max_memory_per_child_kb, KB_PER_MB) + self.parent_memory_mb


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
    values: dict[str, Any] = {}
    for key, item in HOST_INPUTS.items():
        if item.choices:
            values[key] = reader.choice(item.variable, raw[key], item.choices)
        else:
            values[key] = reader.integer(item.variable, raw[key], int(item.minimum or 0), item.maximum, nullable=True)
    return values


def _parse_services(reader: _Reader, services: Any) -> list[str]:
    """Validate the list of services running on the host."""
    names = reader.strings("services", services) or []
    unknown = [name for name in names if name not in SERVICES]
    if unknown:
        reader.fail(f"services has unknown names {unknown}; known: {', '.join(SERVICES)}")
    return [name for name in SERVICES if name in names]


def _parse_workload(reader: _Reader, workload: Any, services: list[str]) -> dict[str, Any]:
    """Validate the workload (everything but the host size and the pools)."""
    raw = {**WORKLOAD_DEFAULTS, **reader.mapping("workload", workload, WORKLOAD_DEFAULTS)}
    values: dict[str, Any] = {}
    for key, (minimum, maximum, nullable) in _INT_RULES.items():
        values[key] = reader.integer(f"{PREFIX}{key}", raw[key], minimum, maximum, nullable)
    for key, minimum in _FLOAT_RULES.items():
        values[key] = reader.decimal(f"{PREFIX}{key}", raw[key], minimum)
    for key in _FLAGS:
        values[key] = reader.flag(f"{PREFIX}{key}", raw[key])
    values["postgresql_version"] = None
    if raw["postgresql_version"] is None and "db" in services:
        reader.fail(
            "capacity_postgresql_version is null and could not be derived from the OS facts; set it to 15 or 17"
        )
    elif raw["postgresql_version"] is not None:
        values["postgresql_version"] = reader.choice(
            "capacity_postgresql_version", raw["postgresql_version"], WORKLOAD_INPUTS["postgresql_version"].choices
        )
    values["postgresql_db_type"] = reader.choice(
        "capacity_postgresql_db_type", raw["postgresql_db_type"], WORKLOAD_INPUTS["postgresql_db_type"].choices
    )
    values["api_bind_address"] = reader.address("capacity_api_bind_address", raw["api_bind_address"])
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
    if values["parent_memory_mb"] is None:
        values["parent_memory_mb"] = parent_default
    queues = reader.strings(f"{label}.queues", values.get("queues"), non_empty=True) or []
    numbers = {key: reader.integer(f"{label}.{key}", values[key], minimum) for key, minimum in _POOL_INT_MINIMA.items()}
    return Pool(name=name or "", queues=queues, concurrency=concurrency, **numbers, index=index)


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
