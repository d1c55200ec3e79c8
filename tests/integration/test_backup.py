"""Backups (role backup) and restores (playbooks/restore.yml), proven with row counts.

The drill of issue 12: 1 000 rows, a full backup (the real timer's unit),
500 more rows, the time T, 500 more; a point-in-time restore to T into a
scratch cluster has exactly 1 500 rows, a restore to latest 2 000; the live
cluster is untouched and the scratch copies push no WAL into the stanza;
differential and incremental backups succeed; the timers are enabled with
their next elapse; a broker snapshot brings back queued tasks that then run.
Times and the repository's size are recorded in .build/measurements/.
"""
from __future__ import annotations

import json
import time
import uuid

import pytest
from app_client import _q, ansible_playbook, exclusive_pool, https, psql, record, require_all_in_one, sources
from stack import secret, unit_properties

STANZA = "celery-stack"
CONF = "/etc/pgbackrest/pgbackrest.conf"
REPO = "/var/lib/pgbackrest"
SCRATCH_PORT = 5433
TABLE = "backup_drill"


@pytest.fixture(scope="module", autouse=True)
def backed_up(inventory_vars):
    if not inventory_vars.get("celery_stack_backup", True):
        pytest.skip("celery_stack_backup is false on this host")
    groups = inventory_vars.get("group_names", [])
    if "db" not in groups or "broker" not in groups:
        pytest.skip("these checks need the database and the broker on this host")


def pgbackrest(host, *args: str):
    result = host.run("runuser -u postgres -- pgbackrest --config=" + CONF + f" --stanza={STANZA} " + " ".join(_q(a) for a in args))
    assert result.rc == 0, result.stdout + result.stderr
    return result.stdout


def info(host) -> dict:
    return json.loads(pgbackrest(host, "--output=json", "info"))[0]


def sql(host, statement: str, port: int = 5432, database: str = "app") -> str:
    result = host.run(f"runuser -u postgres -- psql -X -At -p {port} -d {database} -c {_q(statement)}")
    assert result.rc == 0, result.stderr
    return result.stdout.strip()


def insert(host, count: int, batch: str) -> None:
    sql(host, f"INSERT INTO {TABLE} (batch) SELECT '{batch}' FROM generate_series(1, {count})")


def run_backup(host, kind: str) -> float:
    """One backup through its systemd unit (what the timer starts); returns seconds."""
    started = time.monotonic()
    result = host.run(f"systemctl start celery-stack-pgbackrest@{kind}.service")
    assert result.rc == 0, host.run(f"journalctl -u celery-stack-pgbackrest@{kind} -n 30 --no-pager -o cat").stdout
    props = unit_properties(host, f"celery-stack-pgbackrest@{kind}.service", "Result", "ExecMainStatus")
    assert props == {"Result": "success", "ExecMainStatus": "0"}, props
    return time.monotonic() - started


def restore(*extra: str) -> float:
    started = time.monotonic()
    result = ansible_playbook("restore.yml", *extra)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    return time.monotonic() - started


def timelines_in_archive(host) -> list[str]:
    out = host.run(f"find {REPO}/archive/{STANZA} -name '*.history*' -printf '%f\\n'").stdout
    return sorted(out.split())


def stop_scratch(host, version: str) -> None:
    host.run(f"runuser -u postgres -- /usr/lib/postgresql/{version}/bin/pg_ctl -D /var/lib/postgresql/celery-stack-restore"
             " -m fast -w stop")


def test_timers_enabled_with_their_next_elapse(host):
    for kind, weekday in (("full", "Sun"), ("diff", None)):
        timer = f"celery-stack-pgbackrest-{kind}.timer"
        assert host.service(timer).is_enabled and host.service(timer).is_running, timer
        props = unit_properties(host, timer, "NextElapseUSecRealtime", "Persistent", "TimersCalendar")
        assert props["Persistent"] == "yes"
        nxt = props["NextElapseUSecRealtime"]
        assert nxt, props
        # "Sun 2026-11-29 01:00:00 UTC" / "Mon 2026-11-30 02:00:00 UTC"
        assert nxt.split()[2] == ("01:00:00" if kind == "full" else "02:00:00"), nxt
        if weekday:
            assert nxt.split()[0] == weekday, nxt
        else:
            assert nxt.split()[0] != "Sun", nxt
    snapshot = "celery-stack-broker-snapshot.timer"
    assert host.service(snapshot).is_enabled and host.service(snapshot).is_running
    assert unit_properties(host, snapshot, "Persistent")["Persistent"] == "yes"
    # The first converge took a first full backup: the host is never without one.
    assert any(b["type"] == "full" for b in info(host)["backup"])


def test_archive_settings_read_back(host):
    assert sql(host, "SHOW archive_mode", database="postgres") == "on"
    command = sql(host, "SHOW archive_command", database="postgres")
    assert f"--stanza={STANZA}" in command and "archive-push %p" in command
    conf = host.file(CONF)
    assert conf.user == "root" and conf.group == "postgres" and conf.mode == 0o640
    assert "repo1-cipher-type=aes-256-cbc" in conf.content_string
    assert info(host)["cipher"] == "aes-256-cbc"
    pgbackrest(host, "--log-level-console=warn", "check")


def test_point_in_time_and_latest_restores_into_a_scratch_cluster(host, plan):
    version = str(plan["inputs"]["postgresql_version"])
    sql(host, f"DROP TABLE IF EXISTS {TABLE}")
    sql(host, f"CREATE TABLE {TABLE} (id bigserial PRIMARY KEY, batch text NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp())")
    insert(host, 1000, "a")
    full_seconds = run_backup(host, "full")
    insert(host, 500, "b")
    time.sleep(1.1)
    target = sql(host, "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'")
    time.sleep(1.1)
    insert(host, 500, "c")
    # The WAL after T must be archived, or recovery stops before its target:
    # pgbackrest check switches the WAL segment and waits for the archiver.
    pgbackrest(host, "--log-level-console=warn", "check")
    assert sql(host, f"SELECT count(*) FROM {TABLE}") == "2000"
    history_before = timelines_in_archive(host)
    started_at = sql(host, "SELECT pg_postmaster_start_time()", database="postgres")
    try:
        pitr_seconds = restore("-e", "backup_restore_type=time", "-e", f"backup_restore_time='{target}'")
        assert sql(host, f"SELECT count(*) FROM {TABLE}", port=SCRATCH_PORT) == "1500"
        assert sql(host, f"SELECT count(*) FROM {TABLE} WHERE batch = 'c'", port=SCRATCH_PORT) == "0"
        assert sql(host, "SHOW archive_mode", port=SCRATCH_PORT, database="postgres") == "off"
        latest_seconds = restore()
        assert sql(host, f"SELECT count(*) FROM {TABLE}", port=SCRATCH_PORT) == "2000"
    finally:
        stop_scratch(host, version)
    # The live cluster: never restarted, all its rows, and the copies pushed
    # no WAL (no new timeline history) into its stanza.
    assert sql(host, "SELECT pg_postmaster_start_time()", database="postgres") == started_at
    assert sql(host, f"SELECT count(*) FROM {TABLE}") == "2000"
    assert timelines_in_archive(host) == history_before
    pgbackrest(host, "--log-level-console=warn", "check")
    diff_seconds = run_backup(host, "diff")
    incr_seconds = run_backup(host, "incr")
    backups = info(host)["backup"]
    assert [b["type"] for b in backups][-3:] == ["full", "diff", "incr"], [b["label"] for b in backups]
    assert all(b["error"] is False for b in backups[-3:])
    size = int(host.run(f"du -sb {REPO}").stdout.split()[0])
    database_bytes = int(sql(host, "SELECT pg_database_size('app')"))
    record(host, "backup: drill (1000 + 500 + 500 rows)", {
        "full_backup_seconds": round(full_seconds, 1), "diff_backup_seconds": round(diff_seconds, 1),
        "incr_backup_seconds": round(incr_seconds, 1), "pitr_restore_seconds": round(pitr_seconds, 1),
        "latest_restore_seconds": round(latest_seconds, 1), "repository_bytes": size,
        "app_database_bytes": database_bytes, "backups": len(backups),
        "last_full_repo_bytes": [b for b in backups if b["type"] == "full"][-1]["info"]["repository"]["delta"],
    })


def test_restore_refuses_the_live_cluster_without_confirmation(host):
    started_at = psql(host, "SELECT pg_postmaster_start_time()")
    result = ansible_playbook("restore.yml", "-e", "backup_restore_target=live")
    assert result.returncode != 0
    assert "backup_restore_confirm" in " ".join((result.stdout + result.stderr).split())
    assert psql(host, "SELECT pg_postmaster_start_time()") == started_at


def test_broker_snapshot_restore_brings_back_queued_tasks(host, plan, inventory_vars):
    require_all_in_one(inventory_vars)
    pools = plan["celery"]["pools"]
    pool = exclusive_pool(pools)
    queue, unit = pool["queues"][0], f"celery-worker@{pool['name']}"
    prefix, count = f"snap-{uuid.uuid4().hex[:8]}-", 120
    broker = "REDISCLI_AUTH=" + _q(secret("redis_broker_admin_password")) + " redis-cli -p 6379 --user admin --no-auth-warning"
    assert host.run(f"systemctl stop {unit}").rc == 0
    try:
        addresses = sources(40, offset=950)
        requests = [{"method": "POST", "path": "/api/tasks", "source": addresses[i % 40],
                     "body": {"kind": "write", "key": f"{prefix}{i}", "queue": queue, "priority": i % 10}}
                    for i in range(count)]
        answers = https(host, requests, workers=8)
        assert all(a[0] == 202 for a in answers)
        # Only this test's messages are counted (their argsrepr carries the key):
        # beat's heartbeat goes to the same queue every 30 s while the pool is stopped.
        lists = [queue] + [f"{queue}:{step}" for step in range(1, 10)]

        def ours() -> int:
            return sum(host.run(f"{broker} LRANGE {_q(k)} 0 -1").stdout.count(prefix) for k in lists)

        assert ours() == count
        snapshot = host.run("systemctl start celery-stack-broker-snapshot.service")
        assert snapshot.rc == 0, snapshot.stderr
        # The queue is lost (a flushed or corrupted broker) ...
        host.run(f"{broker} DEL " + " ".join(_q(k) for k in lists))
        assert sum(int(host.run(f"{broker} LLEN {_q(k)}").stdout) for k in lists) == 0
        # ... and comes back from the snapshot.
        started = time.monotonic()
        restore("-e", "backup_restore_component=broker")
        restore_seconds = time.monotonic() - started
        waiting = ours()
        assert waiting == count, waiting
    finally:
        assert host.run(f"systemctl start {unit}").rc == 0
    deadline = time.monotonic() + 180
    while psql(host, f"SELECT count(*) FROM refapp_rows WHERE key LIKE '{prefix}%'") != str(count):
        assert time.monotonic() < deadline, "the restored tasks did not all run"
        time.sleep(1)
    assert psql(host, f"SELECT count(*) FROM refapp_rows WHERE key LIKE '{prefix}%' AND runs > 1") == "0"
    snapshots = host.run("ls -1 /var/backups/celery-stack/broker/").stdout.split()
    assert snapshots and all(s.startswith("broker-") and s.endswith(".rdb") for s in snapshots)
    record(host, "backup: broker snapshot restored", {
        "tasks": count, "restored_waiting": waiting, "ran": count, "restore_seconds": round(restore_seconds, 1),
    })


def test_restore_over_the_live_cluster_keeps_every_committed_row(host, inventory_vars):
    """The documented path over the live cluster: latest, with confirmation; nothing committed is lost."""
    hostname = inventory_vars["inventory_hostname"]
    application = inventory_vars.get("celery_stack_application", True)
    tables = (TABLE, "refapp_rows") if application else (TABLE,)
    writers = "celery-beat.service celery-workers.target"
    if application:
        assert host.run(f"systemctl stop {writers}").rc == 0
    try:
        before = {table: sql(host, f"SELECT count(*) FROM {table}") for table in tables}
        started_at = sql(host, "SELECT pg_postmaster_start_time()", database="postgres")
        started = time.monotonic()
        seconds = restore("-e", "backup_restore_target=live", "-e", f"backup_restore_confirm={hostname}")
        after = {table: sql(host, f"SELECT count(*) FROM {table}") for table in tables}
        assert after == before
        assert sql(host, "SELECT pg_postmaster_start_time()", database="postgres") != started_at
        assert sql(host, "SELECT pg_is_in_recovery()", database="postgres") == "f"
    finally:
        if application:
            assert host.run(f"systemctl start {writers}").rc == 0
    # Archiving goes on on the new timeline. PgBouncer logs in again once its
    # server_login_retry has passed (it cached the failed logins of the restart).
    pgbackrest(host, "--log-level-console=warn", "check")
    env = "PGPASSWORD=" + _q(secret("postgresql_app_password"))
    through_pgbouncer = f"{env} psql -X -At -h 127.0.0.1 -p 6432 -U app app -c 'SELECT 1'"
    deadline = time.monotonic() + 60
    while (answer := host.run(through_pgbouncer)).stdout.strip() != "1":
        assert time.monotonic() < deadline, answer.stderr
        time.sleep(1)
    back_through_pgbouncer = time.monotonic()
    record(host, "backup: restore over the live cluster (latest)", {
        "restore_seconds": round(seconds, 1), **before,
        "app_through_pgbouncer_after_seconds": round(back_through_pgbouncer - started, 1),
    })


def test_health_reports_the_backups(host):
    result = ansible_playbook("health.yml")
    assert result.returncode == 0, result.stdout[-3000:]
    text = " ".join(result.stdout.split())
    assert "ok pgbackrest check archive ok" in text
    assert "ok pgbackrest backups" in text and "ok broker snapshot" in text


def test_backup_metrics_reach_prometheus(host, inventory_vars):
    """Backup age per type, the stanza status, the WAL archiver and the snapshot time, as role monitoring sees them."""
    if not inventory_vars.get("celery_stack_monitoring", True) or "monitoring" not in inventory_vars.get("group_names", []):
        pytest.skip("no monitoring on this host")

    def query(expr: str) -> list[dict]:
        out = host.run(f"curl -fsS -G http://127.0.0.1:9090/prometheus/api/v1/query --data-urlencode {_q('query=' + expr)}")
        assert out.rc == 0, out.stderr
        return json.loads(out.stdout)["data"]["result"]

    deadline = time.monotonic() + 90
    while not query('pgbackrest_backup_since_last_completion_seconds{backup_type="incr"}'):
        assert time.monotonic() < deadline, "no pgbackrest metrics in Prometheus"
        time.sleep(3)
    ages = {r["metric"]["backup_type"]: float(r["value"][1]) for r in query("pgbackrest_backup_since_last_completion_seconds")}
    assert set(ages) == {"full", "diff", "incr"} and all(0 <= age < 3600 for age in ages.values()), ages
    assert [r["value"][1] for r in query(f'pgbackrest_stanza_status{{stanza="{STANZA}"}}')] == ["0"]
    archiver = {r["metric"]["__name__"]: float(r["value"][1]) for r in query('{__name__=~"pg_stat_archiver_.+"}')}
    assert archiver["pg_stat_archiver_enabled"] == 1 and archiver["pg_stat_archiver_archived_count"] > 0, archiver
    assert 0 <= archiver["pg_stat_archiver_last_archive_age_seconds"] < 600, archiver
    snapshot = query("time() - celery_stack_broker_snapshot_last_success_timestamp_seconds")
    assert snapshot and 0 <= float(snapshot[0]["value"][1]) < 3600, snapshot
    firing = {r["metric"]["alertname"] for r in query('ALERTS{component="backup"}')}
    assert not firing, firing
