"""Split layouts: what each host adds to the others' plans, and the view each host plans with.

The role calls :func:`cluster_contribution` on every host of the play, then
:func:`cluster_view` builds the ``cluster`` argument of
:func:`celery_stack.plan.build_plan` for one host from the contributions of
the others (rules in ``docs/capacity.md``, "Split layouts").  Standard
library only: this module must stay importable without Ansible.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from celery_stack.inputs import PlanError, parse_inputs
from celery_stack.plan import client_demand, resolve


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
    contribution: :func:`~celery_stack.plan.build_plan` reports them on this host.
    """
    try:
        inputs = parse_inputs(host, list(services) if services is not None else None, workload, cluster)
    except PlanError:
        return {"client_demand": {}, "pgbouncer_server_connections": 0, "queues": [], "ack_window_seconds": 0}
    resolved = resolve(inputs)
    workers = inputs.has("workers")
    return {
        "client_demand": client_demand(inputs, resolved),
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
    """Build the ``cluster`` argument of :func:`~celery_stack.plan.build_plan` for ``hostname``.

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
