"""Scrape targets from the inventory groups (celery_stack.monitoring)."""

from celery_stack.monitoring import RUNTIME_BUCKETS, exporter_queues, runtime_buckets, scrape_targets

PORTS = {"node": 9100, "postgres": 9187, "pgbouncer": 9127, "redis": 9121, "nginx": 9113}
REDIS = {"broker": 6379, "cache": 6380}
FLOWER = {"host": "web1", "address": "127.0.0.1", "port": 5555, "path": "/flower/metrics"}


def test_all_in_one_is_loopback_everywhere():
    groups = {name: ["aio"] for name in ("all", "db", "pgbouncer", "broker", "cache", "web", "workers", "monitoring")}
    jobs = scrape_targets(groups, {}, PORTS, REDIS, {**FLOWER, "host": "aio"})
    assert sorted(jobs) == ["celery", "nginx", "node", "pgbouncer", "postgres", "redis"]
    assert jobs["node"] == [{"targets": ["127.0.0.1:9100"], "labels": {"host": "aio"}}]
    assert [c["targets"] for c in jobs["redis"]] == [["redis://127.0.0.1:6379"], ["redis://127.0.0.1:6380"]]
    assert [c["labels"]["redis_instance"] for c in jobs["redis"]] == ["broker", "cache"]
    assert {c["labels"]["__exporter_address__"] for c in jobs["redis"]} == {"127.0.0.1:9121"}
    assert jobs["celery"][0]["labels"] == {"host": "aio", "__metrics_path__": "/flower/metrics"}


def test_split_layout_uses_each_hosts_address_and_groups():
    groups = {
        "all": ["db1", "mq1", "web1", "w1", "w2", "mon"],
        "db": ["db1"],
        "pgbouncer": ["db1"],
        "broker": ["mq1"],
        "web": ["web1"],
        "workers": ["w1", "w2"],
        "monitoring": ["mon"],
    }
    addresses = {"db1": "10.0.0.2", "mq1": "10.0.0.3", "web1": "10.0.0.4", "w1": "10.0.0.5", "w2": "10.0.0.6", "mon": "fd00::7"}
    jobs = scrape_targets(groups, addresses, {**PORTS, "pgbackrest": 9854}, REDIS, None, ["db1"])
    assert "celery" not in jobs
    assert jobs["pgbackrest"] == [{"targets": ["10.0.0.2:9854"], "labels": {"host": "db1"}}]
    assert [c["targets"][0] for c in jobs["node"]] == [
        "10.0.0.2:9100", "10.0.0.3:9100", "10.0.0.4:9100", "10.0.0.5:9100", "10.0.0.6:9100", "[fd00::7]:9100",
    ]
    assert jobs["postgres"] == [{"targets": ["10.0.0.2:9187"], "labels": {"host": "db1"}}]
    assert jobs["redis"] == [{
        "targets": ["redis://10.0.0.3:6379"],
        "labels": {"host": "mq1", "redis_instance": "broker", "__exporter_address__": "10.0.0.3:9121"},
    }]
    assert [c["labels"]["host"] for c in jobs["node"]] == groups["all"]


def test_jobs_without_hosts_are_left_out():
    jobs = scrape_targets({"all": ["a"]}, {}, PORTS, REDIS, None)
    assert list(jobs) == ["node"]


def test_exporter_queues_unique_in_order():
    pools = {
        "w1": [{"name": "default", "queues": ["default", "celery"]}, {"name": "high", "queues": ["high"]}],
        "w2": [{"name": "bulk", "queues": ["bulk", "default"]}],
        "web": None,
    }
    assert exporter_queues(pools) == ["default", "celery", "high", "bulk"]


def test_runtime_buckets_resolve_each_pools_threshold():
    buckets = runtime_buckets([{"name": "a", "time_limit": 90}, {"name": "b", "time_limit": 3600}], 0.8)
    assert buckets == sorted(set(buckets))
    assert {72.0, 90.0, 45.0, 2880.0, 3600.0, 1800.0} <= set(buckets)
    assert set(RUNTIME_BUCKETS) <= set(buckets)
    assert runtime_buckets([]) == list(RUNTIME_BUCKETS)
