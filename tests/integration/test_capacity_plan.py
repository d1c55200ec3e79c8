"""The capacity plan recorded on the host was made from this host's real facts.

Later service checks compare the running services against this plan, so it
must describe the machine it is on.
"""
from __future__ import annotations


def test_plan_uses_the_real_host_size(host, plan):
    vcpus = int(host.run("nproc --all").stdout)
    memtotal_kb = int(host.run("awk '/^MemTotal:/ {print $2}' /proc/meminfo").stdout)
    assert plan["inputs"]["vcpus"] == vcpus
    assert plan["inputs"]["memory_mb"] == memtotal_kb // 1024
    assert plan["memory"]["total"] == memtotal_kb // 1024


def test_plan_covers_the_host_services(host, plan, inventory_vars):
    groups = set(inventory_vars["group_names"])
    assert set(plan["inputs"]["services"]) == groups & {
        "db", "pgbouncer", "broker", "cache", "web", "workers", "monitoring"
    }


def test_plan_fits(plan):
    memory = plan["memory"]
    assert memory["allocated"] <= memory["total"]
    assert memory["free"] == memory["total"] - memory["allocated"]
    connections = plan["connections"]
    assert connections["required"] <= connections["max_connections"]
    assert plan["pgbouncer"]["client_demand_total"] <= plan["pgbouncer"]["max_client_conn"]
    for pool in plan["celery"]["pools"]:
        assert pool["concurrency"] >= 1
        assert pool["stop_timeout_sec"] > pool["time_limit"] > pool["soft_time_limit"]
        assert plan["celery"]["visibility_timeout"] > pool["time_limit"]
