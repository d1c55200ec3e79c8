"""Prometheus scrape targets of a site, from the inventory's groups.

The monitoring role gets its targets from here (through the filter
``celery_stack_scrape_targets``, wired in playbooks/vars/monitoring.yml), so
a host added to a group is scraped on the next converge with no list to
keep by hand.  Every target carries a ``host`` label (the inventory name):
alerts and Alertmanager's inhibition ("the host is down, silence its
services") group by it.

Jobs and the groups whose hosts they scrape:

========  ====================  =============================================
job       hosts                 target
========  ====================  =============================================
node      every host            node_exporter
postgres  db                    postgres_exporter
pgbouncer pgbouncer             pgbouncer_exporter
redis     broker, cache         redis_exporter's /scrape?target=redis://...
                                (label redis_instance = broker | cache)
nginx     web                   nginx exporter (stub_status)
pgbackrest backed_up hosts      pgbackrest_exporter (db hosts role backup runs on)
celery    the Flower host       Flower's /<prefix>/metrics (tasks, workers)
========  ====================  =============================================

The job name ``celery`` contains "celery", which the Celery alert mixins
of the ecosystem filter on.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

JOB_GROUPS: dict[str, tuple[str, ...]] = {
    "node": ("all",),
    "postgres": ("db",),
    "pgbouncer": ("pgbouncer",),
    "nginx": ("web",),
}
REDIS_INSTANCES = ("broker", "cache")


def _hosts(groups: Mapping[str, Sequence[str]], names: Sequence[str]) -> list[str]:
    seen: list[str] = []
    for name in names:
        for host in groups.get(name, []):
            if host not in seen:
                seen.append(host)
    return seen


def _address(addresses: Mapping[str, str], host: str) -> str:
    address = addresses.get(host) or "127.0.0.1"
    return f"[{address}]" if ":" in address else address


def scrape_targets(
    groups: Mapping[str, Sequence[str]],
    addresses: Mapping[str, str],
    ports: Mapping[str, int],
    redis_ports: Mapping[str, int],
    flower: Mapping[str, Any] | None = None,
    backed_up: Sequence[str] = (),
) -> dict[str, list[dict[str, Any]]]:
    """Static configs per job: ``{job: [{"targets": [...], "labels": {...}}, ...]}``.

    ``addresses`` maps a host to the address its exporters listen on (absent:
    loopback, the all-in-one case); ``ports`` maps node, postgres, pgbouncer,
    redis and nginx to exporter ports; ``redis_ports`` maps broker and cache
    to Redis ports; ``flower`` is ``{"host", "address", "port", "path"}`` or
    None when Flower does not run; ``backed_up`` lists the hosts whose
    pgBackRest the pgbackrest job scrapes.  Jobs with no host are left out.
    """
    jobs: dict[str, list[dict[str, Any]]] = {}
    for job, names in JOB_GROUPS.items():
        hosts = _hosts(groups, names) if names != ("all",) else list(groups.get("all", []))
        if hosts:
            jobs[job] = [
                {"targets": [f"{_address(addresses, host)}:{int(ports[job])}"], "labels": {"host": host}}
                for host in hosts
            ]
    redis: list[dict[str, Any]] = []
    for instance in REDIS_INSTANCES:
        for host in groups.get(instance, []):
            address = _address(addresses, host)
            redis.append(
                {
                    "targets": [f"redis://{address}:{int(redis_ports[instance])}"],
                    "labels": {
                        "host": host,
                        "redis_instance": instance,
                        "__exporter_address__": f"{address}:{int(ports['redis'])}",
                    },
                }
            )
    if redis:
        jobs["redis"] = redis
    if backed_up:
        jobs["pgbackrest"] = [
            {"targets": [f"{_address(addresses, host)}:{int(ports['pgbackrest'])}"], "labels": {"host": host}}
            for host in backed_up
        ]
    if flower:
        jobs["celery"] = [
            {
                "targets": [f"{flower['address']}:{int(flower['port'])}"],
                "labels": {"host": flower["host"], "__metrics_path__": str(flower["path"])},
            }
        ]
    return jobs


def exporter_queues(pools_by_host: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[str]:
    """Every queue a pool of any workers host consumes, in first-seen order."""
    queues: list[str] = []
    for pools in pools_by_host.values():
        for pool in pools or []:
            for queue in pool.get("queues", []):
                if queue not in queues:
                    queues.append(queue)
    return queues


# Flower's task runtime histogram: these buckets in seconds, plus each pool's
# time limit and the alert's share of it (Flower's default buckets stop at
# 10 s, so a P95 above 10 s would read as 10 s and never alert).
RUNTIME_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)


def runtime_buckets(pools: Sequence[Mapping[str, Any]], ratio: float = 0.8) -> list[float]:
    """Histogram buckets (seconds, ascending) that resolve each pool's runtime alert threshold."""
    edges = set(RUNTIME_BUCKETS)
    for pool in pools or []:
        limit = float(pool["time_limit"])
        edges.update({limit, round(limit * float(ratio), 3), round(limit * 0.5, 3)})
    return sorted(edges)
