"""Unit tests of celery_stack.cluster: split layouts."""

from __future__ import annotations

from capacity_cases import SEED_HOST, SEED_WORKLOAD

from celery_stack.cluster import cluster_contribution, cluster_view
from celery_stack.plan import build_plan


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
