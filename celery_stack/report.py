"""The capacity plan as a fixed-width text table (playbooks/plan.yml, README).

Standard library only: this module must stay importable without Ansible.
"""

from __future__ import annotations

from typing import Any, Mapping

from celery_stack.plan import RESTORE_INTERVAL_SECONDS

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


def _monitoring_lines(plan: Mapping[str, Any]) -> list[str]:
    """MONITORING section: memory limits and retention of Prometheus and Alertmanager."""
    if "monitoring" not in plan:
        return []
    m = plan["monitoring"]
    return [
        _rule("MONITORING"),
        f"  prometheus    MemoryMax {m['prometheus_memory_max_mb']:>6} MB  GOMEMLIMIT {m['prometheus_gomemlimit_mb']} MiB",
        f"  alertmanager  MemoryMax {m['alertmanager_memory_max_mb']:>6} MB  GOMEMLIMIT {m['alertmanager_gomemlimit_mb']} MiB",
        f"  retention {m['retention_days']} d or {m['retention_size_mb']} MB, whichever comes first",
    ]


def format_plan(plan: Mapping[str, Any]) -> str:
    """Render a plan as a fixed-width text table, one line per value."""
    inputs = plan["inputs"]
    lines = [
        f"capacity plan: {inputs['vcpus']} vCPU, {inputs['memory_mb']} MB RAM, {inputs['storage']}",
        f"services: {' '.join(inputs['services'])}",
    ]
    for section in (_memory_lines, _postgresql_lines, _pgbouncer_lines, _redis_lines, _celery_lines, _monitoring_lines):
        lines += section(plan)
    lines.append(_rule("WARNINGS"))
    lines += [f"  ! {warning}" for warning in plan["warnings"]] or ["  none"]
    return "\n".join(lines)
