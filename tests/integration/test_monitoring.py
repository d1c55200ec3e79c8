"""Monitoring (roles exporters and monitoring): targets, listeners, rules, alerts that really fire.

Read from the running services: Prometheus' API (targets, flags, metric
names), each exporter's own scrape, Alertmanager's API, and a webhook
receiver the test starts on loopback (the local inventory routes every alert
to it). The live alert test stops a pool and fills its queue; it records the
time from the fault to the alert in Alertmanager and to the notification.
"""
from __future__ import annotations

import json
import re
import sys
import time
import uuid

import pytest
from app_client import _q, ansible_playbook, exclusive_pool, https, psql, record, require_all_in_one, sources
from stack import ROOT, listening, secret, unit_properties

sys.path.insert(0, str(ROOT))
from celery_stack.dashboards import dashboard_metrics  # noqa: E402

PROMETHEUS = "http://127.0.0.1:9090/prometheus"
ALERTMANAGER = "http://127.0.0.1:9093/alertmanager"
EXPORTER_PORTS = {"node": 9100, "postgres": 9187, "pgbouncer": 9127, "redis": 9121, "nginx": 9113, "pgbackrest": 9854}
DASHBOARDS = sorted((ROOT / "roles" / "monitoring" / "files" / "grafana" / "dashboards").glob("*.json"))
SINK_UNIT = "celery-stack-test-webhook"
SINK_FILE = "/run/celery-stack-test-webhook.jsonl"
SINK = r"""
import http.server, sys
class Sink(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        with open(sys.argv[1], "ab") as out:
            out.write(body.replace(b"\n", b" ") + b"\n")
        self.send_response(200); self.end_headers()
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", 9099), Sink).serve_forever()
"""


@pytest.fixture(scope="module", autouse=True)
def monitored(inventory_vars):
    if not inventory_vars.get("celery_stack_monitoring", True):
        pytest.skip("celery_stack_monitoring is false on this host")
    if "monitoring" not in inventory_vars.get("group_names", []):
        pytest.skip("not a monitoring host")


def get_json(host, url: str, *args: str):
    result = host.run("curl -fsS " + " ".join(_q(a) for a in args) + " " + _q(url))
    assert result.rc == 0, f"{url}: {result.stderr}"
    return json.loads(result.stdout)


def query(host, expr: str) -> list[dict]:
    answer = get_json(host, f"{PROMETHEUS}/api/v1/query", "-G", "--data-urlencode", f"query={expr}")
    assert answer["status"] == "success", answer
    return answer["data"]["result"]


def scrape(host, url: str) -> str:
    result = host.run(f"curl -fsS {_q(url)}")
    assert result.rc == 0, f"{url}: {result.stderr}"
    return result.stdout


def sample(text: str, metric: str, **labels: str) -> float | None:
    """The value of the first sample of ``metric`` whose labels include ``labels``, from a text scrape."""
    wanted = [f'{k}="{v}"' for k, v in labels.items()]
    for line in text.splitlines():
        if line.startswith(metric + "{") or line.startswith(metric + " "):
            if all(w in line for w in wanted):
                return float(line.rsplit(" ", 1)[1])
    return None


def alerts(host, name: str) -> list[dict]:
    return [a for a in get_json(host, f"{ALERTMANAGER}/api/v2/alerts") if a["labels"]["alertname"] == name]


def wait_for(what: str, check, timeout: float, interval: float = 1.0):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what}: not within {timeout:.0f} s"
        time.sleep(interval)


# --- targets, listeners, key metrics --------------------------------------------------------------


def test_every_target_is_up(host, inventory_vars):
    expected = {"prometheus", "alertmanager", "node", "postgres", "pgbouncer", "redis", "nginx"}
    if inventory_vars.get("celery_stack_application", True):
        expected.add("celery")
    if inventory_vars.get("celery_stack_backup", True):
        expected.add("pgbackrest")

    def current():
        targets = get_json(host, f"{PROMETHEUS}/api/v1/targets")["data"]["activeTargets"]
        health = {(t["labels"]["job"], t["labels"]["instance"]): (t["health"], t["lastError"]) for t in targets}
        return targets, health

    # Right after a host restart (test_faults) Prometheus may not have
    # discovered or scraped every target yet: wait for its first rounds.
    deadline = time.monotonic() + 120
    while True:
        targets, health = current()
        settled = {job for job, _ in health} == expected and all(h == "up" for h, _ in health.values())
        if settled or time.monotonic() > deadline:
            break
        time.sleep(2)
    jobs = {job for job, _ in health}
    assert jobs == expected, health
    assert {i for j, i in health if j == "redis"} == {"redis://127.0.0.1:6379", "redis://127.0.0.1:6380"}
    down = {k: v for k, v in health.items() if v[0] != "up"}
    assert not down, down
    # The same from the query API: up == 1 for every series, each with its host label.
    series = query(host, 'up{host!=""}')
    assert len(series) == len(targets)
    assert all(s["value"][1] == "1" and s["metric"]["host"] == inventory_vars["inventory_hostname"] for s in series)


@pytest.mark.parametrize("port", [*EXPORTER_PORTS.values(), 9090, 9093])
def test_listens_on_loopback_only(host, port):
    sockets = listening(host, port)
    assert sockets, f"nothing listens on {port}"
    assert all(s.startswith(("127.0.0.1:", "[::1]:")) for s in sockets), sockets


def test_exporters_key_metrics(host, plan):
    pg = scrape(host, "http://127.0.0.1:9187/metrics")
    assert sample(pg, "pg_up") == 1
    assert sample(pg, "pg_settings_max_connections") == plan["connections"]["max_connections"]
    bouncer = scrape(host, "http://127.0.0.1:9127/metrics")
    assert sample(bouncer, "pgbouncer_up") == 1
    assert sample(bouncer, "pgbouncer_config_max_client_connections") == plan["pgbouncer"]["max_client_conn"]
    for instance, port in (("broker", 6379), ("cache", 6380)):
        redis = scrape(host, f"http://127.0.0.1:9121/scrape?target=redis://127.0.0.1:{port}")
        assert sample(redis, "redis_up") == 1, instance
        assert sample(redis, "redis_memory_max_bytes") == plan["redis"][instance]["maxmemory_mb"] * 1024 * 1024
    nginx = scrape(host, "http://127.0.0.1:9113/metrics")
    assert sample(nginx, "nginx_up") == 1
    node = scrape(host, "http://127.0.0.1:9100/metrics")
    assert sample(node, "node_memory_MemTotal_bytes") > 0
    for pool in plan.get("celery", {}).get("pools", []):
        unit = f"celery-worker@{pool['name']}.service"
        assert sample(node, "node_systemd_unit_state", name=unit, state="active") == 1, unit


def test_exporter_logins_are_least_privileged(host):
    """The Redis monitor user reads lengths and INFO, not values; no NOPERM in the exporter's log."""
    port = 6379
    auth = "REDISCLI_AUTH=" + _q(secret("redis_monitor_password"))
    cli = f"{auth} redis-cli -p {port} --user monitor --no-auth-warning"
    assert host.run(f"{cli} PING").stdout.strip() == "PONG"
    assert host.run(f"{cli} LLEN celery").stdout.strip().isdigit()
    for denied in ("GET celery", "LRANGE celery 0 0", "SET x 1", "CONFIG SET maxmemory 1", "FLUSHALL", "KEYS '*'"):
        assert "NOPERM" in host.run(f"{cli} {denied}").stdout, denied
    journal = host.run("journalctl -u prometheus-redis-exporter --since -10min -o cat --no-pager").stdout
    assert "NOPERM" not in journal, [line for line in journal.splitlines() if "NOPERM" in line][:3]
    # PgBouncer's stats user may read SHOW commands but not control the pooler.
    env = "PGPASSWORD=" + _q(secret("pgbouncer_stats_password"))
    psql_console = f"{env} psql -X -At -h 127.0.0.1 -p 6432 -U stats pgbouncer -c"
    assert host.run(f"{psql_console} 'SHOW POOLS'").rc == 0
    assert "admin" in host.run(f"{psql_console} 'PAUSE'").stderr.lower()


def test_flower_reports_each_pool_under_its_hostname(host, plan, hostname, inventory_vars):
    require_all_in_one(inventory_vars)
    workers = [f"{pool['name']}@{hostname}" for pool in plan["celery"]["pools"]]

    def online() -> dict[str, float | None]:
        text = scrape(host, "http://127.0.0.1:5555/flower/metrics")
        return {worker: sample(text, "flower_worker_online", worker=worker) for worker in workers}

    # After a host restart Flower learns each worker from its next event or heartbeat (every 2 s).
    deadline = time.monotonic() + 60
    seen = online()
    while any(value != 1 for value in seen.values()) and time.monotonic() < deadline:
        time.sleep(2)
        seen = online()
    assert all(value == 1 for value in seen.values()), seen


# --- configuration checked, rules tested, plan applied ----------------------------------------


def test_configurations_pass_their_checkers(host):
    for command in (
        "promtool check config /etc/prometheus/prometheus.yml",
        "promtool check rules /etc/prometheus/rules/celery-stack-alerts.yml /etc/prometheus/rules/celery-stack-recording.yml",
        "promtool test rules /etc/prometheus/rules-tests/celery-stack-alerts.tests.yml",
        "amtool check-config /etc/prometheus/alertmanager.yml",
    ):
        result = host.run(command)
        assert result.rc == 0, f"{command}: {result.stdout}{result.stderr}"


def test_a_bad_receiver_fails_the_play_and_changes_nothing(host):
    """amtool check-config refuses the file before it replaces the running one."""
    before = host.file("/etc/prometheus/alertmanager.yml").sha256sum
    bad = json.dumps({
        "monitoring_alertmanager_receivers": [{"name": "broken", "webhook_configs": [{"url": "not-a-url"}]}],
        "monitoring_alertmanager_receiver_critical": "broken",
        "monitoring_alertmanager_receiver_warning": "broken",
    })
    result = ansible_playbook("site.yml", "--tags", "monitoring", "-e", bad)
    assert result.returncode != 0
    output = " ".join((result.stdout + result.stderr).split())
    assert "Write Alertmanager's configuration" in output and "failed to validate" in output, output[-2000:]
    assert host.file("/etc/prometheus/alertmanager.yml").sha256sum == before
    assert get_json(host, f"{ALERTMANAGER}/api/v2/status")["config"]["original"].count("broken") == 0


def test_a_rule_that_breaks_its_unit_test_is_refused(host):
    """The rules check runs the promtool unit tests against a candidate file: a changed threshold fails them."""
    rules = "/etc/prometheus/rules/celery-stack-alerts.yml"
    candidate = "/root/celery-stack-alerts.candidate.yml"
    assert host.run(f"cp {rules} {candidate}").rc == 0
    assert host.run(f"/usr/local/sbin/celery-stack-check-rules {candidate}").rc == 0
    # The same file with every "> <n>" comparison of the queue backlog moved by one.
    edited = host.run(f"sed -i -E '/celery_queue_length/ s/> ([0-9]+)/> 1\\1/' {candidate}")
    assert edited.rc == 0 and host.file(candidate).sha256sum != host.file(rules).sha256sum
    refused = host.run(f"/usr/local/sbin/celery-stack-check-rules {candidate}")
    host.run(f"rm -f {candidate}")
    assert refused.rc != 0
    assert "CeleryQueueBacklog" in refused.stdout + refused.stderr


def test_rules_loaded_with_their_health(host, plan):
    groups = get_json(host, f"{PROMETHEUS}/api/v1/rules")["data"]["groups"]
    rules = [r for g in groups for r in g["rules"]]
    assert all(r["health"] == "ok" for r in rules), [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"]
    names = {r["name"] for r in rules}
    assert {"celery_queue_length", "CeleryPoolDown", "CeleryQueueBacklog", "HostDown", "PostgresConnectionsHigh"} <= names
    # One pool-down and one runtime rule per pool of the plan.
    for alert in ("CeleryPoolDown", "CeleryTaskRuntimeHigh"):
        assert sum(r["name"] == alert for r in rules) == len(plan.get("celery", {}).get("pools", [])), alert


def test_alert_routes(host):
    """amtool: critical and warning alerts reach the configured receiver, others none."""
    def receiver(*labels: str) -> str:
        result = host.run("amtool config routes test --config.file=/etc/prometheus/alertmanager.yml " + " ".join(labels))
        assert result.rc == 0, result.stderr
        return result.stdout.strip()

    assert receiver("severity=critical", "alertname=HostDown") == "test-webhook"
    assert receiver("severity=warning", "alertname=CeleryQueueBacklog") == "test-webhook"
    assert receiver("severity=info") == "celery-stack-none"


def test_retention_and_memory_from_the_plan(host, plan):
    monitoring = plan["monitoring"]
    flags = get_json(host, f"{PROMETHEUS}/api/v1/status/flags")["data"]
    assert flags["storage.tsdb.retention.time"] == f"{monitoring['retention_days']}d"
    # Prometheus prints the size in its own unit (MB is MiB to it: 9216MB -> 9GiB).
    number, unit = re.fullmatch(r"([0-9.]+)([KMGT]i?B)", flags["storage.tsdb.retention.size"]).groups()
    factor = 1024 ** ("BKMGT".index(unit[0]) if unit != "B" else 0)
    assert float(number) * factor == monitoring["retention_size_mb"] * 1024 * 1024, flags["storage.tsdb.retention.size"]
    assert flags["web.listen-address"] == "127.0.0.1:9090"
    for unit, key in (("prometheus", "prometheus_memory_max_mb"), ("prometheus-alertmanager", "alertmanager_memory_max_mb")):
        props = unit_properties(host, unit, "MemoryMax", "ActiveState")
        assert props["ActiveState"] == "active"
        assert int(props["MemoryMax"]) == monitoring[key] * 1024 * 1024, unit
    assert plan["memory"]["monitoring"] == monitoring["memory_mb"]


def test_uis_through_nginx_with_basic_auth(host, inventory_vars):
    user = inventory_vars["nginx_basic_auth_users"][0]["name"]
    password = (ROOT / ".secrets" / "local" / f"nginx_basic_auth_{user}").read_text().split(" salt=")[0].strip()
    for path in ("/prometheus/api/v1/status/buildinfo", "/alertmanager/api/v2/status"):
        url = f"https://127.0.0.1{path}"
        assert host.run(f"curl -ks -o /dev/null -w '%{{http_code}}' {url}").stdout == "401", path
        ok = host.run(f"curl -ks -o /dev/null -w '%{{http_code}}' -u {_q(user + ':' + password)} {url}").stdout
        assert ok == "200", path
    # Debian's Prometheus has no React UI; its classic UI answers, behind the same auth.
    page = host.run(f"curl -ksf -u {_q(user + ':' + password)} https://127.0.0.1/prometheus/classic/targets")
    assert page.rc == 0 and "pgbouncer" in page.stdout and "classic/static" in page.stdout


def test_dashboards_query_metrics_the_exporters_expose(host, inventory_vars):
    """Every metric a Grafana dashboard queries exists in the running Prometheus."""
    require_all_in_one(inventory_vars)
    known = set(get_json(host, f"{PROMETHEUS}/api/v1/label/__name__/values")["data"])
    assert DASHBOARDS
    missing = {path.name: sorted(dashboard_metrics(path) - known) for path in DASHBOARDS}
    assert not any(missing.values()), missing


# --- alerts that fire: a pool stops, its queue fills -------------------------------------------


@pytest.fixture
def webhook(host):
    host.run(f"systemctl stop {SINK_UNIT}; systemctl reset-failed {SINK_UNIT}; rm -f {SINK_FILE}")
    started = host.run(f"systemd-run --unit={SINK_UNIT} --quiet python3 -c {_q(SINK)} {SINK_FILE}")
    assert started.rc == 0, started.stderr
    wait_for("webhook sink listening", lambda: listening(host, 9099), 15, 0.5)

    def received(name: str, status: str) -> list[dict]:
        text = host.run(f"cat {SINK_FILE} 2>/dev/null").stdout
        found = []
        for line in text.splitlines():
            body = json.loads(line)
            found += [a for a in body["alerts"] if a["labels"]["alertname"] == name and a["status"] == status]
        return found

    yield received
    host.run(f"systemctl stop {SINK_UNIT}")


def test_pool_down_and_queue_backlog_fire_then_resolve(host, plan, inventory_vars, webhook):
    require_all_in_one(inventory_vars)
    pools = plan["celery"]["pools"]
    pool = exclusive_pool(pools)
    queue = pool["queues"][0]
    threshold = int(inventory_vars.get("monitoring_alert_queue_backlog", 100))
    count = threshold + 20
    prefix = f"alert-{uuid.uuid4().hex[:8]}-"
    unit = f"celery-worker@{pool['name']}"
    broker = "REDISCLI_AUTH=" + _q(secret("redis_broker_admin_password")) + " redis-cli -p 6379 --user admin --no-auth-warning"

    stopped_at = time.monotonic()
    assert host.run(f"systemctl stop {unit}").rc == 0
    try:
        # Tasks of every priority: kombu puts priority s > 0 in "<queue>:<s>".
        addresses = sources(50, offset=900)
        requests = [
            {"method": "POST", "path": "/api/tasks", "source": addresses[i % 50],
             "body": {"kind": "write", "key": f"{prefix}{i}", "queue": queue, "priority": i % 10}}
            for i in range(count)
        ]
        def exported_length() -> float | None:
            text = scrape(host, "http://127.0.0.1:9121/scrape?target=redis://127.0.0.1:6379")
            return sample(text, "redis_script_values", key=queue)

        before = exported_length()
        answers = https(host, requests, workers=8)
        assert all(a[0] == 202 for a in answers), [a for a in answers if a[0] != 202][:3]
        lists = [queue] + [f"{queue}:{step}" for step in range(1, 10)]
        lengths = [int(host.run(f"{broker} LLEN {_q(key)}").stdout) for key in lists]
        assert lengths[0] < sum(lengths), "every task landed in the base list: the priority sub-queues were not exercised"
        # The exporter counts the sub-queues too (redis_exporter's own LLEN check would see lengths[0]).
        assert exported_length() == sum(lengths) == before + count, (before, lengths)
        base = lengths[0]

        down = wait_for("CeleryPoolDown in Alertmanager", lambda: [a for a in alerts(host, "CeleryPoolDown")
                                                                   if a["labels"].get("pool") == pool["name"]], 120)
        pool_down_seconds = time.monotonic() - stopped_at
        backlog = wait_for("CeleryQueueBacklog in Alertmanager", lambda: [a for a in alerts(host, "CeleryQueueBacklog")
                                                                          if a["labels"].get("queue") == queue], 120)
        backlog_seconds = time.monotonic() - stopped_at
        assert down[0]["labels"]["severity"] == "critical" and down[0]["status"]["state"] == "active"
        assert backlog[0]["labels"]["severity"] == "warning"
        assert inventory_vars["inventory_hostname"] in down[0]["annotations"]["summary"]
        wait_for("CeleryPoolDown notification", lambda: webhook("CeleryPoolDown", "firing"), 60)
        notified_seconds = time.monotonic() - stopped_at
    finally:
        assert host.run(f"systemctl start {unit}").rc == 0
    started_at = time.monotonic()
    wait_for("the queued tasks ran", lambda: psql(host, f"SELECT count(*) FROM refapp_rows WHERE key LIKE '{prefix}%'")
             == str(count), 180)
    wait_for("CeleryPoolDown resolved", lambda: not [a for a in alerts(host, "CeleryPoolDown")
                                                     if a["labels"].get("pool") == pool["name"]], 120)
    wait_for("CeleryQueueBacklog resolved", lambda: not [a for a in alerts(host, "CeleryQueueBacklog")
                                                         if a["labels"].get("queue") == queue], 120)
    wait_for("resolved notification", lambda: webhook("CeleryPoolDown", "resolved"), 60)
    record(host, "alert: pool stopped, queue filled", {
        "pool": pool["name"], "queue": queue, "tasks": count, "threshold": threshold, "in_base_list": base,
        "pool_down_for": inventory_vars["monitoring_alert_for"]["pool_down"],
        "seconds_to_pool_down_alert": round(pool_down_seconds, 1),
        "seconds_to_backlog_alert": round(backlog_seconds, 1),
        "seconds_to_notification": round(notified_seconds, 1),
        "seconds_to_resolved": round(time.monotonic() - started_at, 1),
    })
