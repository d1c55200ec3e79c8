"""Fault suite: no task is lost across the restarts and crashes an operator meets.

Every fault runs against the converged all-in-one host with at least 200
tasks sent through nginx, and ends with exact counts: one row per task
(0 lost), never two rows for a key (the primary key), and the number of
keys whose task ran more than once (refapp_rows.runs > 1: at-least-once
delivery made visible). The time to drain and, where a task had to be
delivered again, the redelivery delay are printed and recorded in
.build/measurements/<host>-app.json; the closing note's table comes from there.

The tasks are the reference app's idempotent writes (refapp.write_row) and
long tasks (refapp.long_task, a sleep, then the write). Celery runs with
acks_late and reject_on_worker_lost; the broker's visibility_timeout comes
from the capacity plan (docs/capacity.md, "The trade-off").
"""
from __future__ import annotations

import json
import re
import subprocess
import time
import uuid

import pytest
from app_client import _q, celery, client_command, https, psql, record, require_all_in_one, sources, task_state
from stack import secret, unit_properties

BROKER_UNIT = "celery-stack-redis@broker.service"
WORKERS_TARGET = "celery-workers.target"
BEAT_UNIT = "celery-beat.service"
# kombu's Redis transport: priority lists "queue", "queue:1" .. "queue:9"
# (priority_steps 0-9, sep ":"), the in-flight hash and its index.
PRIORITY_STEPS = range(10)
UNACKED, UNACKED_INDEX = "unacked", "unacked_index"
# kombu sweeps the unacked index on every 10th 10-s tick of a consuming worker.
RESTORE_INTERVAL = 100
TASKS = 200
SUM_LLEN = "local n = 0 for _, k in ipairs(KEYS) do n = n + redis.call('LLEN', k) end return n"


@pytest.fixture(scope="module", autouse=True)
def application(inventory_vars):
    require_all_in_one(inventory_vars)


@pytest.fixture(scope="module")
def broker(host, role_vars):
    """redis-cli as the broker's admin user: broker("HLEN", "unacked") -> stdout."""
    port = int(role_vars("redis")["redis_broker_port"])
    auth = "REDISCLI_AUTH=" + _q(secret("redis_broker_admin_password"))

    def run(*args: str) -> str:
        result = host.run(f"{auth} redis-cli -p {port} --user admin --no-auth-warning " + " ".join(_q(a) for a in args))
        assert result.rc == 0 and not result.stdout.startswith(("ERR", "NOPERM", "NOAUTH")), result.stdout + result.stderr
        return result.stdout

    return run


@pytest.fixture(scope="module")
def queues(plan) -> list[str]:
    return plan["celery"]["routes"]


def now(host) -> float:
    """The host's clock (shared with PostgreSQL's now())."""
    return float(host.run("date +%s.%N").stdout)


def task_requests(prefix: str, count: int, queues: list[str], offset: int, kind: str = "write",
                  seconds: float | None = None) -> list[dict]:
    """POST requests of ``count`` tasks (keys prefix0..), spread over ``queues`` and 100 client addresses."""
    addresses = sources(100, offset=offset)
    requests = []
    for i in range(count):
        body = {"kind": kind, "key": f"{prefix}{i}", "queue": queues[i % len(queues)]}
        if seconds is not None:
            body["seconds"] = seconds
        requests.append({"method": "POST", "path": "/api/tasks", "source": addresses[i % len(addresses)], "body": body})
    return requests


def enqueue(host, prefix: str, count: int, queues: list[str], offset: int, kind: str = "write",
            seconds: float | None = None) -> list[str]:
    """POST the tasks through nginx and wait for the answers; returns the task ids."""
    answers = https(host, task_requests(prefix, count, queues, offset, kind, seconds), workers=16)
    bad = [a for a in answers if a[0] != 202]
    assert not bad, f"{len(bad)} of {count} POSTs were not accepted: {bad[:5]}"
    return [json.loads(a[1])["id"] for a in answers]


def enqueue_in_background(host, requests: list[dict], out: str) -> None:
    """POST the tasks from a process of their own on the host; its answers (JSON) end up in ``out``."""
    host.run(f"rm -f {out}")
    started = host.run(f"nohup {client_command(requests, 4)} >{out}.tmp 2>&1 && mv {out}.tmp {out} &")
    assert started.rc == 0, started.stderr


def background_answers(host, out: str, count: int, timeout: float = 120) -> list[list]:
    deadline = time.monotonic() + timeout
    while not host.file(out).exists:
        assert time.monotonic() < deadline, f"the background POSTs never finished: {host.run(f'cat {out}.tmp').stdout[-500:]}"
        time.sleep(0.5)
    answers = json.loads(host.file(out).content_string)
    bad = [a for a in answers if a[0] != 202]
    assert len(answers) == count and not bad, f"{len(bad)} of {count} POSTs were not accepted: {bad[:5]}"
    return answers


def counts(host, prefix: str) -> dict[str, int]:
    """Rows with the prefix (one per key: the primary key), keys whose task ran more than once, rows written by a retry."""
    out = psql(
        host,
        "SELECT count(*), count(*) FILTER (WHERE runs > 1), count(*) FILTER (WHERE attempts > 1) "
        f"FROM refapp_rows WHERE key LIKE '{prefix}%'",
    )
    rows, rerun, retried = (int(x) for x in out.split("|"))
    return {"rows": rows, "ran_twice": rerun, "retried": retried}


def wait_rows(host, prefix: str, expected: int, timeout: float) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    while (seen := counts(host, prefix))["rows"] < expected and time.monotonic() < deadline:
        time.sleep(0.5)
    return seen


def queue_lengths(broker, queues: list[str]) -> dict[str, int]:
    """Messages waiting in each queue, its priority lists included."""
    lengths = {}
    for queue in queues:
        keys = [queue if step == 0 else f"{queue}:{step}" for step in PRIORITY_STEPS]
        lengths[queue] = int(broker("EVAL", SUM_LLEN, str(len(keys)), *keys))
    return lengths


def unacked_tags(broker) -> set[str]:
    return set(broker("HKEYS", UNACKED).split())


def restart_broker(host, broker) -> dict:
    """Restart the broker; returns its journal since then and how long it took."""
    since = host.run("date +%s").stdout.strip()
    started = time.monotonic()
    assert host.run(f"systemctl restart {BROKER_UNIT}").rc == 0
    deadline = time.monotonic() + 30
    while broker("PING").strip() != "PONG":
        assert time.monotonic() < deadline, "the broker does not answer PING after its restart"
        time.sleep(0.5)
    seconds = time.monotonic() - started
    log = host.run(f"journalctl -u {BROKER_UNIT} --since @{since} --no-pager -o cat").stdout
    critical = [line for line in log.splitlines() if "CRITICAL" in line or "NOPERM" in line]
    return {"seconds": round(seconds, 1), "critical_lines": len(critical), "sample": critical[:3]}


def unit_state(host, unit: str) -> tuple[str, str]:
    """(ActiveState, Result) of a unit: ("inactive", "success") after a clean stop."""
    values = unit_properties(host, unit, "ActiveState", "Result")
    return values["ActiveState"], values["Result"]


def pool_for(pools: list[dict], queue: str) -> dict:
    return next(pool for pool in pools if queue in pool["queues"])


def wait_state(host, task_id: str, source: str, wanted: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while (state := task_state(host, task_id, source)) != wanted:
        assert time.monotonic() < deadline, f"task {task_id} is {state}, never {wanted}"
        time.sleep(0.3)


# --- a prefork child dies under its task (the OOM killer's choice) ---------------------------


def test_child_killed_under_a_task_runs_it_again(host, pools, queues, hostname):
    run = uuid.uuid4().hex[:8]
    long_key, prefix, seconds = f"fault-child-{run}-long0", f"fault-child-{run}-w", 10
    pool = pool_for(pools, "low")
    source = sources(1, offset=400)[0]
    task_id = enqueue(host, long_key[:-1], 1, ["low"], offset=400, kind="long", seconds=seconds)[0]
    wait_state(host, task_id, source, "STARTED", 60)
    active = celery(host, pool["name"], "inspect", "active", "--json", "--timeout=10",
                    f"--destination={pool['name']}@{hostname}")
    assert active.rc == 0, active.stderr
    running = [t for t in json.loads(active.stdout)[f"{pool['name']}@{hostname}"] if t["id"] == task_id]
    assert running, f"task {task_id} is not active in pool {pool['name']}"
    child = int(running[0]["worker_pid"])
    started = time.monotonic()
    killed_at = now(host)
    kill = host.run(f"docker exec celery-worker-{pool['name']} python -c 'import os; os.kill({child}, 9)'")
    assert kill.rc == 0, kill.stderr
    enqueue(host, prefix, TASKS, queues, offset=410)
    seen = wait_rows(host, prefix, TASKS, 120)
    long_row = wait_rows(host, long_key, 1, 60)
    drained = time.monotonic() - started
    assert seen["rows"] == TASKS, seen
    assert long_row["rows"] == 1, "the task whose child was killed never ran again"
    # The row was written by a run that started after the kill (the killed run never wrote).
    written = float(psql(host, f"SELECT extract(epoch FROM written_at) FROM refapp_rows WHERE key = '{long_key}'"))
    assert written - killed_at >= seconds - 1, (written, killed_at)
    wait_state(host, task_id, source, "SUCCESS", 30)
    log = host.run(f"journalctl -u celery-worker@{pool['name']} --since @{int(killed_at) - 1} --no-pager -o cat").stdout
    assert "WorkerLostError" in log or "signal 9" in log, log[-2000:]
    record(host, "fault: prefork child SIGKILLed under a task", {
        "tasks": TASKS + 1, "rows": seen["rows"] + long_row["rows"], "lost": TASKS + 1 - seen["rows"] - long_row["rows"],
        "ran_twice": seen["ran_twice"] + long_row["ran_twice"], "drain_seconds": round(drained, 1),
        "redelivery_seconds": round(written - killed_at - seconds, 1), "pool": pool["name"],
    })


# --- a whole pool dies, then the broker restarts ----------------------------------------------


def test_pool_sigkilled_then_broker_restarted_loses_nothing(host, plan, pools, broker):
    """The SIGKILLed pool's tasks wait in `unacked`, survive a broker restart, and run after visibility_timeout."""
    pool = next(p for p in pools if p["concurrency"] * p["prefetch_multiplier"] >= 2)
    held = pool["concurrency"] * pool["prefetch_multiplier"]
    targets = list(pool["queues"])
    visibility = plan["celery"]["visibility_timeout"]
    run = uuid.uuid4().hex[:8]
    long_prefix, prefix, seconds = f"fault-pool-{run}-long-", f"fault-pool-{run}-w", 5
    long_ids = enqueue(host, long_prefix, held + 2, [targets[0]], offset=500, kind="long", seconds=seconds)
    source = sources(1, offset=500)[0]
    deadline = time.monotonic() + 60
    while sum(task_state(host, i, source) == "STARTED" for i in long_ids) < held:
        assert time.monotonic() < deadline, f"pool {pool['name']} never started {held} long tasks"
        time.sleep(0.3)
    before_kill = unacked_tags(broker)
    killed_at = now(host)
    started = time.monotonic()
    # The whole pool at once, main process and children (the container's OOM kill, a crash).
    assert host.run(f"docker kill --signal KILL celery-worker-{pool['name']}").rc == 0
    enqueue(host, prefix, TASKS, targets, offset=520)
    # The pool comes back (Restart=always) and drains all but the tasks its dead self held.
    seen = wait_rows(host, prefix, TASKS, 180)
    assert seen["rows"] == TASKS, seen
    others = wait_rows(host, long_prefix, 2, 120)
    assert others["rows"] >= 2, others
    orphans = before_kill & unacked_tags(broker)
    assert len(orphans) == held, f"expected the {held} tasks the killed pool held in unacked, found {len(orphans)}"
    delivered = [float(broker("ZSCORE", UNACKED_INDEX, tag)) for tag in orphans]
    restart = restart_broker(host, broker)
    after = unacked_tags(broker)
    assert orphans <= after, f"{len(orphans - after)} in-flight tasks vanished with the broker restart"
    assert restart["critical_lines"] == 0, restart["sample"]
    done = wait_rows(host, long_prefix, held + 2, visibility + RESTORE_INTERVAL + 120)
    drained = time.monotonic() - started
    assert done["rows"] == held + 2, done
    written = [float(x) for x in psql(
        host, f"SELECT extract(epoch FROM written_at) FROM refapp_rows WHERE key LIKE '{long_prefix}%' "
        f"ORDER BY written_at DESC LIMIT {held}").split()]
    # The held tasks ran again (each a `seconds` long run before its write) no
    # sooner than visibility_timeout after their delivery, and within one sweep after it.
    rerun_started = [w - seconds for w in written]
    assert min(rerun_started) >= min(delivered) + visibility - 1, (rerun_started, delivered, visibility)
    assert max(rerun_started) <= max(delivered) + visibility + RESTORE_INTERVAL + 15, (rerun_started, delivered)
    redelivery = max(rerun_started) - killed_at
    final = counts(host, prefix)
    record(host, "fault: pool SIGKILLed, broker restarted", {
        "tasks": TASKS + held + 2, "rows": final["rows"] + done["rows"],
        "lost": TASKS + held + 2 - final["rows"] - done["rows"], "ran_twice": final["ran_twice"] + done["ran_twice"],
        "unacked_before_restart": len(orphans), "unacked_kept": len(orphans & after),
        "broker_critical_lines": restart["critical_lines"], "broker_restart_seconds": restart["seconds"],
        "drain_seconds": round(drained, 1), "redelivery_seconds": round(redelivery, 1),
        "redelivery_after_delivery_seconds": round(max(rerun_started) - max(delivered), 1),
        "visibility_timeout": visibility, "pool": pool["name"],
    })


# --- the broker restarts while every pool is stopped ---------------------------------------------


def test_stop_target_waits_for_every_pool_then_broker_restart_keeps_the_queues(host, pools, queues, broker):
    run = uuid.uuid4().hex[:8]
    prefix, during, long_key, seconds = f"fault-queued-{run}-w", f"fault-queued-{run}-stop-", f"fault-queued-{run}-long0", 8
    task_id = enqueue(host, long_key[:-1], 1, ["low"], offset=600, kind="long", seconds=seconds)[0]
    wait_state(host, task_id, sources(1, offset=600)[0], "STARTED", 60)
    assert host.run(f"systemctl stop {BEAT_UNIT}").rc == 0
    since = host.run("date +%s").stdout.strip()
    started = time.monotonic()
    try:
        # Tasks published while the pools drain: a stopping pool may still
        # receive some and must put them back (kombu's restore, a MULTI/EXEC).
        enqueue_in_background(host, task_requests(during, 100, queues, offset=700), "/tmp/fault-stop.json")
        stop = host.run(f"systemctl stop {WORKERS_TARGET}")
        stop_seconds = time.monotonic() - started
        assert stop.rc == 0, stop.stderr
        # It returned only when every pool had stopped: the long task ended first,
        # every unit is inactive (not failed), no pool container is left.
        assert psql(host, f"SELECT count(*) FROM refapp_rows WHERE key = '{long_key}'") == "1"
        states = {pool["name"]: unit_state(host, f"celery-worker@{pool['name']}") for pool in pools}
        assert all(state == ("inactive", "success") for state in states.values()), states
        assert host.run("docker ps --quiet --filter name=celery-worker-").stdout.strip() == ""
        background_answers(host, "/tmp/fault-stop.json", 100)
        enqueue(host, prefix, 300, queues, offset=620)
        waiting = queue_lengths(broker, queues)
        restart = restart_broker(host, broker)
        assert queue_lengths(broker, queues) == waiting
        assert restart["critical_lines"] == 0, restart["sample"]
    finally:
        assert host.run(f"systemctl start {WORKERS_TARGET} {BEAT_UNIT}").rc == 0
    resumed = time.monotonic()
    seen = wait_rows(host, prefix, 300, 180)
    stopping = wait_rows(host, during, 100, 60)
    drained = time.monotonic() - resumed
    assert seen["rows"] == 300, seen
    assert stopping["rows"] == 100, stopping
    for pool in pools:
        assert host.service(f"celery-worker@{pool['name']}").is_running, pool["name"]
    # Tasks a stopping pool had received and put back (kombu's restore, a MULTI/EXEC).
    journal = host.run(f"journalctl --since @{since} --no-pager -o cat -u 'celery-worker@*'").stdout
    restored = sum(int(n) for n in re.findall(r"Restoring (\d+) unacknowledged message", journal))
    record(host, "fault: broker restarted, pools stopped", {
        "tasks": 401, "rows": seen["rows"] + stopping["rows"] + 1, "lost": 400 - seen["rows"] - stopping["rows"],
        "ran_twice": seen["ran_twice"] + stopping["ran_twice"], "queued_at_restart": sum(waiting.values()),
        "stop_target_seconds": round(stop_seconds, 1), "broker_critical_lines": restart["critical_lines"],
        "restored_by_stopping_pools": restored,
        "drain_seconds": round(drained, 1),
    })


# --- PostgreSQL or PgBouncer restarts while tasks run ----------------------------------------------


@pytest.mark.parametrize("service", ["postgresql", "pgbouncer"])
def test_database_restart_while_tasks_run(host, queues, service):
    unit = "pgbouncer.service"
    if service == "postgresql":
        listed = host.run("systemctl list-units --plain --no-legend --state=running 'postgresql@*'").stdout.split()
        assert listed, "no running postgresql@ unit"
        unit = listed[0]
    run = uuid.uuid4().hex[:8]
    prefix = f"fault-{service}-{run}-"
    # Short long-tasks (0.25 s each, then the write): the pools are busy for
    # many seconds, so the restart hits tasks that are writing.
    started = time.monotonic()
    enqueue_in_background(host, task_requests(prefix, TASKS, queues, offset=800, kind="long", seconds=0.25),
                          "/tmp/fault-db.json")
    deadline = time.monotonic() + 60
    while counts(host, prefix)["rows"] < 20:
        assert time.monotonic() < deadline, "tasks never started writing"
        time.sleep(0.2)
    before = float(host.run("date +%s.%N").stdout)
    restarted = host.run(f"systemctl restart {unit}")
    after = float(host.run("date +%s.%N").stdout)
    assert restarted.rc == 0, restarted.stderr
    seen = wait_rows(host, prefix, TASKS, 240)
    drained = time.monotonic() - started
    background_answers(host, "/tmp/fault-db.json", TASKS)
    assert seen["rows"] == TASKS, seen
    # The restart happened while the pools were writing: rows were written
    # before it and after it. A task whose write the restart cut failed and
    # retried ("retried"); one that only waited in PgBouncer's queue did not,
    # so how many retried depends on timing and is recorded, not asserted.
    split = psql(
        host,
        f"SELECT count(*) FILTER (WHERE written_at < to_timestamp({before})), "
        f"count(*) FILTER (WHERE written_at > to_timestamp({after})) "
        f"FROM refapp_rows WHERE key LIKE '{prefix}%'",
    )
    written_before, written_after = (int(x) for x in split.split("|"))
    assert written_before >= 20 and written_after >= 1, (written_before, written_after)
    record(host, f"fault: {service} restarted while tasks run", {
        "tasks": TASKS, "rows": seen["rows"], "lost": TASKS - seen["rows"], "ran_twice": seen["ran_twice"],
        "retried": seen["retried"], "written_before_restart": written_before,
        "written_after_restart": written_after, "restart_seconds": round(after - before, 1),
        "drain_seconds": round(drained, 1), "unit": unit,
    })


# --- the host restarts --------------------------------------------------------------------------------

STACK_UNITS = ("postgresql@", "pgbouncer", "celery-stack-redis@", "nginx", "docker", "celery-worker@", "celery-beat")


def running_stack_units(host) -> list[str]:
    out = host.run("systemctl list-units --type=service --state=running --plain --no-legend").stdout
    return sorted(u for u in (line.split()[0] for line in out.splitlines() if line.strip()) if u.startswith(STACK_UNITS))


def test_host_restart_brings_every_unit_back_and_keeps_queued_tasks(host, queues, broker):
    container = host.backend.get_hostname()
    units = running_stack_units(host)
    rows_before = int(psql(host, "SELECT count(*) FROM refapp_rows"))
    run = uuid.uuid4().hex[:8]
    prefix = f"fault-reboot-{run}-"
    assert host.run(f"systemctl stop {WORKERS_TARGET} {BEAT_UNIT}").rc == 0
    enqueue(host, prefix, TASKS, queues, offset=900)
    waiting = sum(queue_lengths(broker, queues).values())
    assert waiting >= TASKS
    # A clean shutdown: systemd's halt signal stops every unit in order
    # (`docker restart` would send SIGTERM, which systemd takes as "re-execute").
    halted = time.monotonic()
    assert _docker("kill", "--signal", "SIGRTMIN+3", container).returncode == 0
    _docker("wait", container, timeout=300)
    shutdown_seconds = time.monotonic() - halted
    assert _docker("start", container).returncode == 0
    booted = time.monotonic()
    answers: list[str] = []
    deadline = booted + 300
    while time.monotonic() < deadline:
        code = host.run("curl -sk -o /dev/null -w '%{http_code}' --max-time 2 https://127.0.0.1/healthz").stdout.strip()
        answers.append(code)
        if code == "200":
            break
        time.sleep(0.2)
    healthy_seconds = time.monotonic() - booted
    assert answers and answers[-1] == "200", answers[-10:]
    seen = wait_rows(host, prefix, TASKS, 240)
    drained = time.monotonic() - booted
    assert seen["rows"] == TASKS, seen
    assert int(psql(host, "SELECT count(*) FROM refapp_rows")) == rows_before + TASKS
    deadline = time.monotonic() + 120
    while (back := running_stack_units(host)) != units and time.monotonic() < deadline:
        time.sleep(1)
    assert back == units, f"missing after the restart: {sorted(set(units) - set(back))}"
    failed = host.run("systemctl list-units --failed --plain --no-legend").stdout.strip()
    assert failed == "", failed
    record(host, "fault: host restart", {
        "tasks": TASKS, "rows": seen["rows"], "lost": TASKS - seen["rows"], "ran_twice": seen["ran_twice"],
        "queued_at_shutdown": waiting, "shutdown_seconds": round(shutdown_seconds, 1),
        "boot_to_healthz_200_seconds": round(healthy_seconds, 1),
        "answers_before_200": {code: answers.count(code) for code in sorted(set(answers)) if code != "200"},
        "drain_seconds_from_boot": round(drained, 1), "units_back": len(back),
    })


def _docker(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
