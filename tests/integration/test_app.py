"""The application tier, end to end: Nginx -> API -> Redis -> worker pools -> PgBouncer -> PostgreSQL.

Roles docker, app and celery, and playbooks deploy.yml, rollback.yml and
health.yml. Requests go through nginx from inside the host, from many
loopback source addresses (app_client.py). Measurements are printed and
written to .build/measurements/<host>-app.json.
"""
from __future__ import annotations

import json
import re
import time
import uuid

import pytest
from app_client import (
    CELERY_COMPOSE_FILE,
    COMPOSE_FILE,
    RELEASE_FILE,
    _q,
    ansible_playbook,
    celery,
    https,
    psql,
    record,
    require_all_in_one,
    rows_with_prefix,
    sources,
    task_state,
)
from stack import listening, secret, unit_properties

@pytest.fixture(scope="module", autouse=True)
def application(inventory_vars):
    require_all_in_one(inventory_vars)


# --- docker role --------------------------------------------------------------------------


def test_docker_engine_runs_with_log_rotation_and_compose_v2(host, role_vars):
    cfg = role_vars("docker")
    assert host.service("docker").is_enabled and host.service("docker").is_running
    version = host.run("docker compose version --short")
    assert version.rc == 0 and tuple(int(x) for x in re.findall(r"\d+", version.stdout)[:2]) >= (2, 18)
    info = json.loads(host.run("docker info --format '{{json .}}'").stdout)
    assert info["LoggingDriver"] == cfg["docker_log_driver"]
    assert info["LiveRestoreEnabled"] is cfg["docker_live_restore"]
    # Read back from a running container: the daemon's defaults reached it.
    log_config = json.loads(host.run("docker inspect --format '{{json .HostConfig.LogConfig}}' celery-stack-api-1-1").stdout)
    assert log_config["Type"] == cfg["docker_log_driver"]
    if cfg["docker_log_driver"] in ("json-file", "local"):
        assert log_config["Config"] == {"max-size": cfg["docker_log_max_size"], "max-file": str(cfg["docker_log_max_file"])}


# --- app role: the compose stack ------------------------------------------------------------


def test_stack_files_are_rendered_and_secrets_are_root_only(host, plan):
    compose = host.file(COMPOSE_FILE)
    assert compose.exists and compose.user == "root" and compose.mode == 0o644
    assert "Ansible managed" in compose.content_string
    env = host.file("/etc/celery-stack/app.env")
    assert env.user == "root" and env.mode == 0o600
    assert secret("postgresql_app_password") in env.content_string
    services = host.run(f"docker compose --file {COMPOSE_FILE} --profile migrate config --services")
    assert services.rc == 0, services.stderr
    expected = {f"api-{i}" for i in range(1, plan["inputs"]["api_processes"] + 1)} | {"flower", "migrate"}
    assert set(services.stdout.split()) == expected
    # The pools and beat: role celery's own compose file, same image as the release.
    celery_file = host.file(CELERY_COMPOSE_FILE)
    assert celery_file.user == "root" and celery_file.mode == 0o644
    services = host.run(f"docker compose --file {CELERY_COMPOSE_FILE} --profile worker --profile beat config --format json")
    assert services.rc == 0, services.stderr
    config = json.loads(services.stdout)["services"]
    assert set(config) == {"worker", "beat"}
    release = json.loads(host.file(RELEASE_FILE).content_string)
    assert {service["image"] for service in config.values()} == {release["image"]}


def test_api_processes_are_healthy_on_loopback_with_a_memory_cap(host, plan):
    processes = plan["inputs"]["api_processes"]
    for index in range(1, processes + 1):
        port = 8000 + index - 1
        state = host.run(f"docker inspect --format '{{{{.State.Health.Status}}}} {{{{.HostConfig.Memory}}}}' celery-stack-api-{index}-1")
        health, memory = state.stdout.split()
        assert health == "healthy"
        assert int(memory) == plan["memory"]["api"] // processes * 1024 * 1024
        assert listening(host, port) == {f"127.0.0.1:{port}"}
        answer = host.run(f"curl -s -o /dev/null -w '%{{http_code}}' http://127.0.0.1:{port}/healthz")
        assert answer.stdout == "200"


def test_release_record_names_the_running_version(host, inventory_vars):
    release = json.loads(host.file(RELEASE_FILE).content_string)
    status, body, _ = https(host, [{"method": "GET", "path": "/version", "source": "127.0.9.1"}], 1)[0]
    assert status == 200
    assert json.loads(body)["version"] == release["version"]
    assert release["image"] == f"{inventory_vars['app_image']}:{release['version']}"


# --- celery role: worker pools and beat ------------------------------------------------------


def test_one_enabled_active_unit_per_pool(host, pools):
    for pool in pools:
        service = host.service(f"celery-worker@{pool['name']}")
        assert service.is_enabled and service.is_running, pool["name"]
        show = unit_properties(host, f"celery-worker@{pool['name']}", "KillMode", "Restart", "TimeoutStopUSec", "After")
        assert show["KillMode"] == "mixed" and show["Restart"] == "always"
        # TimeoutStopUSec is printed like "2min 15s": compare in seconds.
        seconds = host.run(f"systemctl show celery-worker@{pool['name']} -P TimeoutStopUSec").stdout
        assert _seconds(seconds) > pool["stop_timeout_sec"] > pool["time_limit"]
        after = show["After"].split()
        assert "celery-stack-redis@broker.service" in after and "pgbouncer.service" in after
        memory = host.run(f"docker inspect --format '{{{{.HostConfig.Memory}}}}' celery-worker-{pool['name']}").stdout
        assert int(memory) == pool["memory_max_mb"] * 1024 * 1024
    running = host.run("systemctl list-units --plain --no-legend --state=running 'celery-worker@*'").stdout.split("\n")
    assert sorted(line.split()[0] for line in running if line.strip()) == sorted(
        f"celery-worker@{pool['name']}.service" for pool in pools
    )


def _seconds(text: str) -> float:
    units = {"h": 3600, "min": 60, "s": 1, "ms": 0.001}
    return sum(float(n) * units[u] for n, u in re.findall(r"([\d.]+)(h|min|ms|s)\b", text))


def test_each_pool_consumes_exactly_its_queues_with_its_limits(host, pools, hostname):
    first = pools[0]["name"]
    queues = celery(host, first, "inspect", "active_queues", "--json", "--timeout=10")
    stats = celery(host, first, "inspect", "stats", "--json", "--timeout=10")
    assert queues.rc == 0 and stats.rc == 0, queues.stderr + stats.stderr
    queues, stats = json.loads(queues.stdout), json.loads(stats.stdout)
    assert set(queues) == {f"{pool['name']}@{hostname}" for pool in pools}
    for pool in pools:
        node = f"{pool['name']}@{hostname}"
        assert sorted(q["name"] for q in queues[node]) == sorted(pool["queues"]), node
        assert stats[node]["pool"]["max-concurrency"] == pool["concurrency"], node
        assert stats[node]["pool"]["max-tasks-per-child"] == pool["max_tasks_per_child"], node
        assert stats[node]["pool"]["timeouts"] == [pool["soft_time_limit"], pool["time_limit"]], node
        assert stats[node]["prefetch_count"] == pool["concurrency"] * pool["prefetch_multiplier"], node
        log = host.run(f"journalctl -u celery-worker@{pool['name']} --no-pager -o cat")
        assert f"{node} ready." in log.stdout, f"no ready line of {node} in its unit's journal"


def test_beat_runs_once_with_its_schedule_and_keeps_its_state(host, inventory_vars):
    beat = host.service("celery-beat")
    assert beat.is_enabled and beat.is_running
    assert host.run("docker ps --filter name=^celery-beat$ --format '{{.Names}}'").stdout.split() == ["celery-beat"]
    state = host.file("/var/lib/celery-stack/beat")
    assert state.uid == 10001 and state.mode == 0o750
    assert host.run("ls /var/lib/celery-stack/beat").stdout.strip().startswith("celerybeat-schedule")
    entry = inventory_vars["celery_beat_schedule"][0]
    deadline = time.monotonic() + entry["every"] + 30
    while time.monotonic() < deadline:
        log = host.run("journalctl -u celery-beat --no-pager -o cat").stdout
        if f"Sending due task {entry['name']} ({entry['task']})" in log:
            break
        time.sleep(2)
    else:
        pytest.fail(f"beat never sent {entry['name']}")
    assert rows_with_prefix(host, entry["args"][0]) == 1


# --- end to end ------------------------------------------------------------------------------


def test_1000_tasks_through_nginx_leave_1000_rows(host, plan):
    run = uuid.uuid4().hex[:8]
    prefix = f"load-{run}-"
    queues = plan["celery"]["routes"]
    addresses = sources(200)
    requests = [
        {"method": "POST", "path": "/api/tasks", "source": addresses[i % len(addresses)],
         "body": {"kind": "write", "key": f"{prefix}{i}", "queue": queues[i % len(queues)]}}
        for i in range(1000)
    ]
    started = time.monotonic()
    answers = https(host, requests, workers=16)
    enqueued = time.monotonic() - started
    statuses = [a[0] for a in answers]
    assert statuses.count(202) == 1000, f"answers other than 202: {[a for a in answers if a[0] != 202][:5]}"
    ids = [json.loads(a[1])["id"] for a in answers]
    deadline = time.monotonic() + 300
    while (count := rows_with_prefix(host, prefix)) < 1000 and time.monotonic() < deadline:
        time.sleep(0.5)
    finished = time.monotonic() - started
    assert count == 1000
    # Every task reached SUCCESS (read through nginx, from other client addresses).
    states = https(host, [{"method": "GET", "path": f"/api/tasks/{task_id}", "source": addresses[i % 200]}
                          for i, task_id in enumerate(ids)], workers=16)
    assert [s[0] for s in states] == [200] * 1000
    assert {json.loads(s[1])["state"] for s in states} == {"SUCCESS"}
    assert rows_with_prefix(host, prefix) == 1000
    record(host, "1000 tasks through nginx", {
        "tasks": 1000, "enqueue_seconds": round(enqueued, 2), "enqueue_per_second": round(1000 / enqueued, 1),
        "all_rows_seconds": round(finished, 2), "tasks_per_second": round(1000 / finished, 1),
        "queues": queues,
    })


def test_long_task_survives_a_restart_of_its_pool(host, pools, inventory_vars):
    routes = inventory_vars.get("app_celery_task_routes", {})
    queue = routes.get("refapp.long_task", {}).get("queue", "default")
    pool = next(p["name"] for p in pools if queue in p["queues"])
    key = f"long-{uuid.uuid4().hex[:8]}"
    seconds = 15
    source = sources(1, offset=300)[0]
    status, body, _ = https(host, [{"method": "POST", "path": "/api/tasks", "source": source,
                                    "body": {"kind": "long", "key": key, "seconds": seconds}}], 1)[0]
    assert status == 202, body
    task_id = json.loads(body)["id"]
    deadline = time.monotonic() + 60
    while task_state(host, task_id, source) != "STARTED":
        assert time.monotonic() < deadline, "the long task never started"
        time.sleep(0.5)
    started = time.monotonic()
    restart = host.run(f"systemctl restart celery-worker@{pool}")
    restart_seconds = time.monotonic() - started
    assert restart.rc == 0, restart.stderr
    # Warm shutdown: the stop waited for the running task instead of killing it.
    assert rows_with_prefix(host, key) == 1, "the task did not finish before its pool stopped"
    deadline = time.monotonic() + 60
    while task_state(host, task_id, source) != "SUCCESS":
        assert time.monotonic() < deadline, "the long task never reached SUCCESS"
        time.sleep(0.5)
    assert psql(host, f"SELECT attempts FROM refapp_rows WHERE key = '{key}'") == "1"
    assert host.service(f"celery-worker@{pool}").is_running
    record(host, "long task across a pool restart", {
        "pool": pool, "task_seconds": seconds, "restart_seconds": round(restart_seconds, 1), "rows": 1,
    })


POLLER = r"""
import http.client, json, ssl, sys, time, os
out, stop = sys.argv[1], sys.argv[2]
context = ssl._create_unverified_context(); results = []; n = 0
while not os.path.exists(stop):
    source = "127.0.%d.%d" % (200 + n % 10, 1 + n % 250); n += 1
    try:
        conn = http.client.HTTPSConnection("127.0.0.1", 443, timeout=10, context=context, source_address=(source, 0))
        conn.request("GET", "/version"); answer = conn.getresponse(); body = answer.read().decode()
        version = json.loads(body).get("version") if answer.status == 200 else body[:100]
        results.append([answer.status, version]); conn.close()
    except Exception as exc:
        results.append([0, f"{type(exc).__name__}: {exc}"])
    time.sleep(0.05)
json.dump(results, open(out, "w"))
"""


def test_deploy_and_rollback_keep_the_api_answering(host, pools, inventory_vars):
    initial = json.loads(host.file(RELEASE_FILE).content_string)["version"]
    target = "1.1.0" if initial != "1.1.0" else "1.0.0"
    host.run("rm -f /tmp/poll.stop /tmp/poll.json")
    poller = host.run(f"nohup python3 -c {_q(POLLER)} /tmp/poll.json /tmp/poll.stop >/dev/null 2>&1 & echo $!")
    assert poller.rc == 0
    try:
        started = time.monotonic()
        deploy = ansible_playbook("deploy.yml", "-e", f"app_version={target}")
        deploy_seconds = time.monotonic() - started
        assert deploy.returncode == 0, deploy.stdout[-3000:] + deploy.stderr[-2000:]
        release = json.loads(host.file(RELEASE_FILE).content_string)
        assert (release["version"], release["previous"]) == (target, initial)
        for pool in pools:
            image = host.run(f"docker inspect --format '{{{{.Config.Image}}}}' celery-worker-{pool['name']}").stdout.strip()
            assert image == f"{inventory_vars['app_image']}:{target}", pool["name"]
        started = time.monotonic()
        rollback = ansible_playbook("rollback.yml")
        rollback_seconds = time.monotonic() - started
        assert rollback.returncode == 0, rollback.stdout[-3000:] + rollback.stderr[-2000:]
        assert "refapp.migrate" not in rollback.stdout
        release = json.loads(host.file(RELEASE_FILE).content_string)
        assert (release["version"], release["previous"]) == (initial, target)
    finally:
        host.run("touch /tmp/poll.stop")
        deadline = time.monotonic() + 30
        while not host.file("/tmp/poll.json").exists and time.monotonic() < deadline:
            time.sleep(0.5)
    polled = json.loads(host.file("/tmp/poll.json").content_string)
    statuses = [status for status, _ in polled]
    bad = [entry for entry in polled if entry[0] != 200]
    assert not bad, f"{len(bad)} of {len(polled)} polls failed during deploy/rollback: {bad[:10]}"
    versions = [version for _, version in polled]
    assert target in versions and versions[-1] == initial
    record(host, "deploy and rollback under polling", {
        "polls": len(statuses), "non_200": len(bad), "deploy_seconds": round(deploy_seconds, 1),
        "rollback_seconds": round(rollback_seconds, 1), "from": initial, "to": target,
    })


def test_health_playbook_passes_when_healthy(host):
    health = ansible_playbook("health.yml")
    assert health.returncode == 0, health.stdout[-3000:]
    assert "all healthy" in health.stdout


@pytest.mark.parametrize(
    ("unit", "component"),
    [
        ("celery-worker@low.service", "pool low"),
        ("pgbouncer.service", "database app via PgBouncer"),
        # Prometheus names the target it cannot scrape (health.yml reads its targets).
        ("prometheus-nginx-exporter.service", "prometheus targets (down: nginx 127.0.0.1:9113"),
    ],
)
def test_health_playbook_fails_naming_the_stopped_component(host, pools, unit, component):
    if unit.startswith("celery-worker@") and unit.split("@")[1].split(".")[0] not in {p["name"] for p in pools}:
        pytest.skip(f"no pool {unit}")
    assert host.run(f"systemctl stop {unit}").rc == 0
    try:
        health = ansible_playbook("health.yml")
    finally:
        assert host.run(f"systemctl start {unit}").rc == 0
    assert health.returncode != 0
    # The failure goes to stdout or stderr depending on the callback settings.
    # Long messages may be folded over several lines: compare with whitespace collapsed.
    output = health.stdout + health.stderr
    start = output.find("UNHEALTHY")
    assert start >= 0, output[-3000:]
    message = " ".join(output[start:start + 1000].split())
    assert component in message, message


# --- Flower ---------------------------------------------------------------------------------


def test_flower_only_through_nginx_with_basic_auth(host, pools, hostname):
    assert listening(host, 5555) == {"127.0.0.1:5555"}
    anonymous = host.run("curl -sk -o /dev/null -w '%{http_code}' https://127.0.0.1/flower/")
    assert anonymous.stdout == "401"
    auth = f"ops:{secret('nginx_basic_auth_ops')}"
    page = host.run(f"curl -sk -o /dev/null -w '%{{http_code}}' -u {_q(auth)} https://127.0.0.1/flower/")
    assert page.stdout == "200"
    # Flower's own /api stays off (it needs FLOWER_UNAUTHENTICATED_API): its
    # dashboard data shows every pool's node, seen through the broker's events.
    workers = host.run(f"curl -sk -u {_q(auth)} 'https://127.0.0.1/flower/workers?refresh=1&json=1'")
    assert workers.rc == 0
    nodes = {worker["hostname"] for worker in json.loads(workers.stdout)["data"]}
    assert {f"{pool['name']}@{hostname}" for pool in pools} <= nodes


# --- bad input stops before any change ----------------------------------------------------------


@pytest.mark.parametrize(
    ("extra_vars", "expected"),
    [
        ({"nginx_upstream_servers": ["127.0.0.1:8000"]},
         "nginx_upstream_servers=['127.0.0.1:8000'] misses ['127.0.0.1:8001']: app_api_processes=2"),
        ({"celery_beat_schedule": [{"name": "twice", "task": "refapp.write_row", "every": 5, "crontab": {"minute": 1}}]},
         "celery_beat_schedule entry"),
        ({"app_api_port": 70000}, "app_api_port"),
    ],
    ids=["upstreams-miss-an-api-process", "beat-entry-with-every-and-crontab", "api-port-out-of-range"],
)
def test_bad_application_input_fails_in_preflight_before_any_change(host, extra_vars, expected):
    before = host.run(f"stat -c %Y {COMPOSE_FILE} /etc/celery-stack/workers/*.env").stdout
    site = ansible_playbook("site.yml", "-e", json.dumps(extra_vars))
    output = " ".join((site.stdout + site.stderr).split())
    assert site.returncode != 0
    assert expected in output, output[-2000:]
    assert "Preflight" in output and "TASK [common : Install base packages]" not in output
    assert host.run(f"stat -c %Y {COMPOSE_FILE} /etc/celery-stack/workers/*.env").stdout == before
