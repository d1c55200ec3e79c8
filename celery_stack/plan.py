"""The capacity plan of one host: automatic values resolved, every share sized and checked.

One pure function, :func:`build_plan`, sizes everything that shares the
host's memory and the database's connection budget at once (PostgreSQL,
PgBouncer, the Redis broker and cache, the Celery worker pools, the API
processes, monitoring) and refuses plans that do not fit.  Every failed
check is reported at once in a :class:`~celery_stack.inputs.PlanError`;
softer findings go to ``plan["warnings"]``.  :func:`plan_or_errors` returns
the plan or the errors from one computation (the role's single call).

The inputs are declared and validated in :mod:`celery_stack.inputs`, the
PostgreSQL settings come from :mod:`celery_stack.pgtune`; the sizing rules
and every output key are described in ``docs/capacity.md``.  Standard
library only: this module must stay importable without Ansible.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

from celery_stack.inputs import PG_MAX_CONNECTIONS, Inputs, PlanError, parse_inputs
from celery_stack.pgtune import pgtune, pgtune_kb, pgtune_warnings
from celery_stack.units import clamp

# --------------------------------------------------------------------------
# Policy constants (documented in docs/capacity.md)
# --------------------------------------------------------------------------

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
MONITORING_PROMETHEUS_MIN_MB = 256  # refuse a Prometheus limit below this

# --------------------------------------------------------------------------
# Resolution of the automatic values
# --------------------------------------------------------------------------


def _auto_redis(memory_mb: int, rule: tuple[int, int, int]) -> int:
    """RAM / divisor clamped to [floor, cap] MB."""
    divisor, low, high = rule
    return clamp(memory_mb // divisor, low, high)


def resolve(inputs: Inputs) -> dict[str, Any]:
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


def client_demand(inputs: Inputs, resolved: dict[str, Any]) -> dict[str, int]:
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
    demand = {**client_demand(inputs, resolved), **inputs.cluster["remote_client_demand"]}
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


def _plan_monitoring(inputs: Inputs, memory: Mapping[str, Any], errors: list[str]) -> dict[str, Any]:
    """Prometheus and Alertmanager on a monitoring host: memory limits and retention.

    The monitoring share is split 85/15 between Prometheus (its TSDB head and
    queries) and Alertmanager; Go's soft limit (GOMEMLIMIT) sits at 80 % of
    each hard limit so the garbage collector works harder before systemd's
    MemoryMax kills the process.  Retention keeps 90 % of the disk budget
    for blocks; the rest is WAL and compaction headroom.
    """
    w = inputs.workload
    share = memory.get("monitoring", 0)
    prometheus = share * 85 // 100
    alertmanager = share - prometheus
    if prometheus < MONITORING_PROMETHEUS_MIN_MB:
        errors.append(
            f"Prometheus memory too small: 85 % of capacity_monitoring_memory_mb={share} MB = {prometheus} MB,"
            f" below the {MONITORING_PROMETHEUS_MIN_MB} MB minimum"
        )
    return {
        "memory_mb": share,
        "prometheus_memory_max_mb": prometheus,
        "prometheus_gomemlimit_mb": prometheus * 80 // 100,
        "alertmanager_memory_max_mb": alertmanager,
        "alertmanager_gomemlimit_mb": alertmanager * 80 // 100,
        "retention_days": w["monitoring_retention_days"],
        "retention_size_mb": w["monitoring_disk_mb"] * 90 // 100,
    }


def _plan_api(inputs: Inputs, resolved: dict[str, Any], errors: list[str]) -> dict[str, Any]:
    """The API processes of a web host and the nginx upstreams that reach them."""
    w = inputs.workload
    processes, port, address = resolved["api_processes"], w["api_port"], w["api_bind_address"]
    last = port + processes - 1
    if last > 65535:
        errors.append(
            f"capacity_api_port={port} + capacity_api_processes={processes} - 1 = {last} is above 65535"
        )
    host = f"[{address}]" if address and ":" in address else address
    return {
        "processes": processes,
        "port": port,
        "bind_address": address,
        "upstreams": [f"{host}:{port + index}" for index in range(processes)],
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
    :func:`celery_stack.cluster.cluster_view`); omit it for an all-in-one host.
    """
    inputs = parse_inputs(host, list(services) if services is not None else None, workload, cluster)
    resolved = resolve(inputs)
    errors: list[str] = []
    warnings: list[str] = [
        f"host {name} is not in this play: its demand is not counted" for name in inputs.cluster["unplanned_hosts"]
    ]
    plan: dict[str, Any] = {"inputs": _inputs_echo(inputs, resolved)}
    if inputs.has("web"):
        plan["api"] = _plan_api(inputs, resolved, errors)
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
    if inputs.has("monitoring"):
        plan["monitoring"] = _plan_monitoring(inputs, plan["memory"], errors)
    if celery is not None:
        plan["celery"] = celery
    plan["warnings"] = warnings
    if errors:
        raise PlanError(errors)
    return plan


def plan_or_errors(
    host: Mapping[str, Any],
    services: Iterable[str],
    workload: Mapping[str, Any],
    cluster: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The plan and the errors from one computation, for callers that must not raise.

    ``{"plan": plan, "errors": []}`` when the plan fits, else
    ``{"plan": None, "errors": messages}`` with every message
    :func:`build_plan` would raise.
    """
    try:
        return {"plan": build_plan(host, services, workload, cluster), "errors": []}
    except PlanError as error:
        return {"plan": None, "errors": error.messages}


def check_plan(
    host: Mapping[str, Any],
    services: Iterable[str],
    workload: Mapping[str, Any],
    cluster: Mapping[str, Any] | None = None,
) -> list[str]:
    """The messages :func:`build_plan` would raise (empty when the plan fits)."""
    return plan_or_errors(host, services, workload, cluster)["errors"]
