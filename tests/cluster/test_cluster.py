"""The split layout, checked across hosts: who reaches what, TLS, the plan, the work on both workers hosts.

Probes are plain TCP connects from one host (or from a container on the
private network that is not in the inventory) with a 3 s timeout:
``open`` (accepted), ``refused`` (RST: nothing listens) or ``timeout`` (the
firewall dropped the SYN). A port the firewall must close is one the service
listens on (it answers from its own host), and the probe must time out.
"""
from __future__ import annotations

import json
import re
import shlex
import subprocess
import time
import uuid

import pytest
from app_client import https, psql, sources
from conftest import NETWORK, plan_of
from stack import secret

PROBE = r"""
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM); s.settimeout(3)
try:
    s.connect((sys.argv[1], int(sys.argv[2]))); print("open")
except socket.timeout:
    print("timeout")
except ConnectionRefusedError:
    print("refused")
except OSError as error:
    print(f"error {error}")
"""

REDIS = r"""
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
s.sendall(("AUTH %s %s\r\n" % (sys.argv[3], sys.argv[4]) + "\r\n".join(sys.argv[5:]) + "\r\n").encode())
data = b""
while data.count(b"\r\n") < 1 + len(sys.argv[5:]):
    chunk = s.recv(4096)
    if not chunk:
        break
    data += chunk
print(data.decode(errors="replace"))
"""


def probe(host, address: str, port: int) -> str:
    return host.run(f"python3 -c {shlex.quote(PROBE)} {address} {port}").stdout.strip()


def redis(host, address: str, port: int, user: str, password: str, *commands: str) -> str:
    args = " ".join(shlex.quote(c) for c in (address, str(port), user, password, *commands))
    result = host.run(f"python3 -c {shlex.quote(REDIS)} {args}")
    assert result.rc == 0, result.stderr
    return result.stdout


def outsider(targets: list[tuple[str, int]]) -> dict[tuple[str, int], str]:
    """Probe from a throwaway container on the private network, not in the inventory."""
    script = "import subprocess, sys\n" + "".join(
        f"print({address!r}, {port}, subprocess.run([sys.executable, '-c', {PROBE!r}, {address!r}, '{port}'],"
        " capture_output=True, text=True).stdout.strip())\n"
        for address, port in targets
    )
    result = subprocess.run(
        ["docker", "run", "--rm", "--network", NETWORK, "celery-stack/debian13:current", "python3", "-c", script],
        capture_output=True, text=True, timeout=600, check=True,
    )
    answers = {}
    for line in result.stdout.splitlines():
        address, port, state = line.split(" ", 2)
        answers[(address, int(port))] = state
    return answers


def first(groups, name: str) -> str:
    return groups[name][0]


# --- who reaches what ---------------------------------------------------------------------


def test_each_worker_reaches_its_pgbouncer_and_the_broker(cluster, groups, addresses):
    broker = addresses[first(groups, "broker")]
    password = secret("postgresql_app_password")
    for name in groups["workers"]:
        host = cluster[name]
        result = host.run(
            f"PGPASSWORD={shlex.quote(password)} psql -X -At -h 127.0.0.1 -p 6432 -U app app -c 'SELECT inet_server_addr()'"
        )
        assert result.rc == 0, f"{name}: {result.stderr}"
        # PgBouncer's server connection comes from the db host's private address.
        assert result.stdout.strip() == addresses[first(groups, "db")], (name, result.stdout)
        assert "+PONG" in redis(host, broker, 6379, "app", secret("redis_broker_app_password"), "PING"), name


def test_pgbouncer_reaches_postgresql_over_verified_tls(cluster, groups, addresses):
    db = cluster[first(groups, "db")]
    pgbouncers = {addresses[name] for name in groups["pgbouncer"]}
    # Open a server connection from every PgBouncer host, then look at them from PostgreSQL.
    for name in groups["pgbouncer"]:
        assert cluster[name].run(
            f"PGPASSWORD={shlex.quote(secret('postgresql_app_password'))} psql -X -At -h 127.0.0.1 -p 6432 -U app app -c 'SELECT 1'"
        ).rc == 0
        config = cluster[name].run("grep -E '^server_tls_(sslmode|ca_file)' /etc/pgbouncer/pgbouncer.ini").stdout
        assert "server_tls_sslmode = verify-full" in config, (name, config)
    rows = psql(db, "SELECT host(a.client_addr), s.ssl, s.version FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) "
                    "WHERE a.usename = 'app' AND a.client_addr IS NOT NULL AND host(a.client_addr) <> '127.0.0.1'")
    seen = {}
    for line in rows.splitlines():
        address, ssl, version = line.split("|")
        seen.setdefault(address, set()).add((ssl, version))
    assert set(seen) == pgbouncers, seen
    assert all(states <= {("t", "TLSv1.3"), ("t", "TLSv1.2")} for states in seen.values()), seen
    # verify-full really verifies: the site's CA and the address as name pass; another CA, or a
    # name the certificate does not carry, is refused (what PgBouncer's server_tls_sslmode relies on).
    worker = cluster[groups["workers"][0]]
    db_address = addresses[first(groups, "db")]
    password = shlex.quote(secret("postgresql_app_password"))

    def login(conninfo: str):
        return worker.run(f"PGPASSWORD={password} psql -X -At {shlex.quote(conninfo + ' user=app dbname=app')} -c 'SELECT 1'")

    right = "sslmode=verify-full sslrootcert=/etc/pgbouncer/server-ca.crt"
    assert login(f"host={db_address} {right}").stdout.strip() == "1"
    wrong_ca = login(f"host={db_address} sslmode=verify-full sslrootcert=/etc/ssl/certs/ca-certificates.crt")
    assert wrong_ca.rc != 0 and "certificate verify failed" in wrong_ca.stderr, wrong_ca.stderr
    wrong_name = login(f"host=not-the-db.example hostaddr={db_address} {right}")
    assert wrong_name.rc != 0 and "does not match host name" in wrong_name.stderr, wrong_name.stderr
    # PostgreSQL refuses a login without TLS from another host (hostssl only).
    worker = cluster[groups["workers"][0]]
    plain = worker.run(
        f"PGSSLMODE=disable PGCONNECT_TIMEOUT=5 PGPASSWORD={shlex.quote(secret('postgresql_app_password'))} "
        f"psql -X -At -h {addresses[first(groups, 'db')]} -p 5432 -U app app -c 'SELECT 1'"
    )
    assert plain.rc != 0 and "no pg_hba.conf entry" in plain.stderr and "no encryption" in plain.stderr, plain.stderr


def test_disallowed_hosts_are_dropped(cluster, groups, addresses):
    db, broker, web = first(groups, "db"), first(groups, "broker"), first(groups, "web")
    monitoring = first(groups, "monitoring")
    worker = groups["workers"][0]
    # Each service answers its allowed clients (so "timeout" below is the firewall, not a missing listener).
    # PostgreSQL: PgBouncer and monitoring hosts only (web runs its own PgBouncer).
    assert probe(cluster[web], addresses[db], 5432) == "open"
    assert probe(cluster[broker], addresses[db], 5432) == "timeout"
    assert probe(cluster[worker], addresses[db], 9100) == "timeout"    # exporters: monitoring only
    assert probe(cluster[monitoring], addresses[broker], 9100) == "open"
    assert probe(cluster[broker], addresses[worker], 9127) == "timeout"  # pgbouncer exporter of a worker
    assert probe(cluster[monitoring], addresses[worker], 9127) == "open"
    assert probe(cluster[worker], addresses[broker], 6379) == "open"
    # The exporters read Redis over loopback on the broker host: monitoring never needs 6379.
    assert probe(cluster[monitoring], addresses[broker], 6379) == "timeout"
    # Prometheus (on the monitoring host): nginx on web only.
    assert probe(cluster[web], addresses[monitoring], 9090) == "open"
    assert probe(cluster[worker], addresses[monitoring], 9090) == "timeout"


def test_postgresql_drops_every_host_that_is_not_its_client(cluster, groups, addresses):
    """Only PgBouncer hosts reach PostgreSQL; any other host's SYN is dropped.

    (The web host runs a PgBouncer of its own, so it is a PostgreSQL client by
    design: inventories/split/README.md.)
    """
    others = set(groups["all"]) - set(groups["pgbouncer"]) - set(groups["db"])
    assert others == {first(groups, "broker")}, others
    db = addresses[first(groups, "db")]
    for name in sorted(others):
        assert probe(cluster[name], db, 5432) == "timeout", name
    for name in groups["pgbouncer"]:
        assert probe(cluster[name], db, 5432) == "open", name


def test_a_worker_cannot_administer_the_broker(cluster, groups, addresses):
    broker = addresses[first(groups, "broker")]
    worker = cluster[groups["workers"][0]]
    # The worker's credentials are the app user's: admin commands are refused.
    answer = redis(worker, broker, 6379, "app", secret("redis_broker_app_password"), "CONFIG GET maxmemory", "FLUSHALL")
    assert answer.count("-NOPERM") == 2, answer
    # The admin and monitoring passwords are not on any workers or web host.
    for name in groups["workers"] + groups["web"]:
        for key in ("redis_broker_admin_password", "redis_monitor_password"):
            found = cluster[name].run(f"grep -rlF {shlex.quote(secret(key))} /etc /opt /srv 2>/dev/null").stdout
            assert found == "", (name, key, found)
    # Anonymous access (the default user) is off from every host.
    assert "WRONGPASS" in redis(worker, broker, 6379, "default", "x", "PING")


def test_a_container_outside_the_inventory_reaches_only_the_web_ports(groups, addresses):
    web = addresses[first(groups, "web")]
    targets = [(addresses[name], port) for name in addresses for port in (22, 5432, 6379, 6380, 6432, 9090, 9100, 9187, 5555)]
    targets += [(web, 80), (web, 443)]
    answers = outsider(targets)
    assert answers[(web, 80)] == "open" and answers[(web, 443)] == "open", answers
    opened = {target: state for target, state in answers.items() if state == "open" and target[0] != web or (
        target[0] == web and target[1] not in (80, 443) and state == "open")}
    assert opened == {}, opened
    # The listening services are dropped, not refused.
    assert answers[(addresses[first(groups, "db")], 5432)] == "timeout"
    assert answers[(addresses[first(groups, "broker")], 6379)] == "timeout"


# --- the rules, and Docker next to them -------------------------------------------------


def test_each_table_lists_the_generated_rules(cluster, groups, addresses):
    db = cluster[first(groups, "db")]
    table = db.run("nft list table inet celery_stack").stdout
    postgresql = next(line for line in table.splitlines() if "dport 5432" in line)
    expected = {addresses[name] for name in groups["pgbouncer"]}
    assert {a for a in expected if a in postgresql} == expected, postgresql
    assert all(addresses[name] not in postgresql for name in groups["db"])
    for name, host in cluster.items():
        policy = json.loads(host.run("nft -j list chain inet celery_stack input").stdout)["nftables"][1]["chain"]["policy"]
        assert policy == "drop", name


@pytest.mark.parametrize("how", ["reload", "restart"])
def test_a_container_on_a_worker_still_reaches_the_broker(cluster, groups, addresses, how):
    worker = cluster[groups["workers"][0]]
    broker = addresses[first(groups, "broker")]
    assert worker.run(f"systemctl {how} nftables").rc == 0
    image = worker.run("docker ps --filter name=celery-worker- --format '{{.Image}}'").stdout.split()[0]
    # Docker's bridge network: forwarded and masqueraded by Docker's own rules.
    result = worker.run(
        f"docker run --rm --network bridge --entrypoint python {image} -c {shlex.quote(PROBE)} {broker} 6379"
    )
    assert result.stdout.strip() == "open", result.stdout + result.stderr
    assert "table ip nat" in worker.run("nft list tables").stdout


# --- the plan, the work ---------------------------------------------------------------


def test_the_db_plan_counts_every_pgbouncer_host(cluster, groups):
    db = cluster[first(groups, "db")]
    plan = plan_of(db)
    per_host = {name: plan_of(cluster[name])["pgbouncer"]["max_db_connections"] for name in groups["pgbouncer"]}
    server = int(psql(db, "SHOW max_connections"))
    reserved = int(psql(db, "SHOW superuser_reserved_connections"))
    assert server == int(plan["postgresql"]["max_connections"])
    assert server - reserved >= sum(per_host.values()), (server, reserved, per_host)
    text = json.dumps(plan)
    assert all(name in text for name in groups["pgbouncer"]), "the db plan names every PgBouncer host"


def test_tasks_enqueued_on_the_web_host_run_on_both_workers(cluster, groups):
    web = cluster[first(groups, "web")]
    status, body, _ = https(web, [{"method": "GET", "path": "/healthz"}], 1)[0]
    assert status == 200, body
    prefix = f"cluster-{uuid.uuid4().hex[:8]}-"
    count = 60
    # From many client addresses: nginx rate-limits per address.
    answers = https(web, [{"method": "POST", "path": "/api/tasks", "source": source,
                           "body": {"kind": "long", "key": f"{prefix}{i}", "seconds": 0.3}}
                          for i, source in enumerate(sources(count))], 8)
    assert all(status == 202 for status, _, _ in answers), [a for a in answers if a[0] != 202][:3]
    db = cluster[first(groups, "db")]
    deadline = time.monotonic() + 120
    while int(psql(db, f"SELECT count(*) FROM refapp_rows WHERE key LIKE '{prefix}%'")) < count and time.monotonic() < deadline:
        time.sleep(2)
    assert int(psql(db, f"SELECT count(*) FROM refapp_rows WHERE key LIKE '{prefix}%'")) == count
    per_host = {}
    for name in groups["workers"]:
        logs = cluster[name].run("for c in $(docker ps --filter name=celery-worker- --format '{{.Names}}'); do docker logs $c 2>&1; done").stdout
        per_host[name] = sum(1 for line in logs.splitlines() if "refapp.long_task key=" + prefix in line and "inserted=True" in line)
    assert sum(per_host.values()) == count, per_host
    assert all(n > 0 for n in per_host.values()), per_host
    print(f"\nMEASURED cluster: tasks per workers host {per_host}")


# --- deploy and health across the cluster ----------------------------------------------


def unit_times(host, unit: str) -> tuple[int, int]:
    """(left active, entered active again) of a unit, microseconds since the epoch (one kernel clock for all)."""
    out = host.run(f"systemctl show {unit} -p ActiveExitTimestamp -p ActiveEnterTimestamp --timestamp=unix").stdout
    values = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    return int(float(values["ActiveExitTimestamp"].lstrip("@") or 0) * 1e6), int(float(values["ActiveEnterTimestamp"].lstrip("@")) * 1e6)


def test_deploy_migrates_once_and_restarts_the_workers_hosts_one_after_the_other(cluster, groups):
    from app_client import ansible_playbook

    web = cluster[first(groups, "web")]
    db = cluster[first(groups, "db")]
    release = json.loads(web.file("/etc/ansible/facts.d/celery_stack_release.fact").content_string)
    target = "1.1.0" if release["version"] != "1.1.0" else "1.0.0"
    # Work in flight across the deploy: every task must run exactly once (warm stops).
    prefix = f"deploy-{uuid.uuid4().hex[:8]}-"
    count = 24
    answers = https(web, [{"method": "POST", "path": "/api/tasks", "source": source,
                           "body": {"kind": "long", "key": f"{prefix}{i}", "seconds": 2}}
                          for i, source in enumerate(sources(count, offset=500))], 8)
    assert all(status == 202 for status, _, _ in answers)
    deploy = ansible_playbook("deploy.yml", "-e", f"app_version={target}")
    assert deploy.returncode == 0, deploy.stdout[-3000:] + deploy.stderr[-2000:]
    # The migration: one task result, on one host, for the whole cluster.
    output = deploy.stdout
    migration = output[output.index("TASK [app : Run the migrations"):]
    migration = migration[:migration.index("TASK [", 10)]
    assert len([line for line in migration.splitlines() if line.startswith(("changed:", "ok:"))]) == 1, migration
    # Pools: every pool of the first workers host was back before any pool of the next one stopped.
    spans = {name: [unit_times(cluster[name], f"celery-worker@{pool['name']}.service")
                    for pool in plan_of(cluster[name])["celery"]["pools"]] for name in groups["workers"]}
    order = sorted(groups["workers"], key=lambda name: min(stop for stop, _ in spans[name]))
    for before, after in zip(order, order[1:]):
        assert max(start for _, start in spans[before]) <= min(stop for stop, _ in spans[after]), spans
    for name in groups["workers"]:
        image = cluster[name].run("docker inspect --format '{{.Config.Image}}' celery-worker-default").stdout.strip()
        assert image.endswith(f":{target}"), (name, image)
        # Warm: a stop that waited for the running tasks ends with status 0, not a kill.
        result = cluster[name].run("systemctl show celery-worker@default -p Result -p ExecMainStatus").stdout
        assert "Result=success" in result, (name, result)
    deadline = time.monotonic() + 180
    while int(psql(db, f"SELECT count(*) FROM refapp_rows WHERE key LIKE '{prefix}%'")) < count and time.monotonic() < deadline:
        time.sleep(2)
    assert int(psql(db, f"SELECT count(*) FROM refapp_rows WHERE key LIKE '{prefix}%'")) == count
    runs = psql(db, f"SELECT max(runs) FROM refapp_rows WHERE key LIKE '{prefix}%'")
    assert runs == "1", f"a task ran more than once ({runs}): a pool was not stopped warm"
    print(f"\nMEASURED cluster deploy to {target}: {count} tasks in flight, all written, max runs per row {runs}")


def test_health_is_green_on_every_host(groups):
    from app_client import ansible_playbook

    health = ansible_playbook("health.yml")
    assert health.returncode == 0, health.stdout[-3000:]
    assert health.stdout.count("checks, all healthy") == len(groups["all"]), health.stdout[-3000:]
    # Prometheus scrapes every host's exporters across the firewall.
    assert re.search(r"ok prometheus targets all \d+ up", " ".join(health.stdout.split())), health.stdout[-3000:]
