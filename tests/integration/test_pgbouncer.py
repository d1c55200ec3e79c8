"""Role pgbouncer, read back from the running PgBouncer of the converged host.

Pool sizes are compared with the capacity plan the host was converged with
(/etc/celery-stack/capacity-plan.json), as PgBouncer reports them on its admin
console (SHOW CONFIG), not as the file says. The load test opens 500
concurrent clients through PgBouncer and samples what PostgreSQL sees.
"""
from __future__ import annotations

import re

import pytest
from stack import listening, secret


LOAD_CLIENTS = 500
LOAD_SECONDS = 15
# pgbench's own descriptors: one socket per client plus its files.
LOAD_NOFILE = 4096


def version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text.split("-")[0])[:3])


@pytest.fixture(scope="module")
def cfg(host, role_vars, inventory_vars) -> dict:
    if "pgbouncer" not in inventory_vars.get("group_names", []):
        pytest.skip("not a pgbouncer host")
    merged = role_vars("pgbouncer")
    merged["postgresql"] = role_vars("postgresql")
    merged["is_db_host"] = "db" in inventory_vars["group_names"]
    return merged


@pytest.fixture(scope="module")
def pools(plan, cfg) -> dict:
    """The PgBouncer part of the capacity plan."""
    return plan["pgbouncer"]


@pytest.fixture(scope="module")
def version(host, cfg) -> tuple[int, ...]:
    return version_tuple(host.check_output("dpkg-query -W -f='${Version}' pgbouncer"))


def console(host, cfg, command: str, user: str | None = None, password: str | None = None):
    """Run a command on PgBouncer's admin console over TCP (login bounded to 10 s)."""
    user = user or cfg["pgbouncer_admin_user"]
    password = password if password is not None else secret("pgbouncer_admin_password")
    return host.run(
        f"PGCONNECT_TIMEOUT=10 PGPASSWORD={password} psql -X -A -t -w -F '\t' -h 127.0.0.1 -p {cfg['pgbouncer_listen_port']}"
        f" -U {user} -d pgbouncer -c %s",
        command,
    )


@pytest.fixture(scope="module")
def show_config(host, cfg) -> dict[str, str]:
    out = console(host, cfg, "SHOW CONFIG")
    assert out.rc == 0, out.stderr
    return {line.split("\t")[0]: line.split("\t")[1] for line in out.stdout.splitlines() if line}


def test_listens_only_where_configured(host, cfg):
    port = cfg["pgbouncer_listen_port"]
    sockets = listening(host, port)
    assert sockets == {f"{address}:{port}" for address in cfg["pgbouncer_listen_addresses"]}
    assert not sockets & {f"0.0.0.0:{port}", f"*:{port}", f"[::]:{port}"}


def test_pools_equal_the_plan(show_config, pools):
    keys = ("pool_mode", "max_client_conn", "default_pool_size", "reserve_pool_size", "max_db_connections")
    assert {k: show_config[k] for k in keys} == {k: str(pools[k]) for k in keys}
    assert show_config["pool_mode"] == "transaction"


def test_version_specific_settings(show_config, cfg, version):
    if version >= (1, 21):
        assert show_config["max_prepared_statements"] == str(cfg["pgbouncer_max_prepared_statements"])
    else:
        assert "max_prepared_statements" not in show_config, f"PgBouncer {version} has no max_prepared_statements"


def test_auth_and_transaction_mode_settings(show_config, cfg):
    assert show_config["auth_type"] == "scram-sha-256"
    assert show_config["auth_user"] == cfg["pgbouncer_auth_user"]
    assert show_config["auth_query"] == cfg["pgbouncer_auth_query"]
    assert show_config["admin_users"] == cfg["pgbouncer_admin_user"]
    assert cfg["pgbouncer_admin_user"] in show_config["stats_users"].split(",")
    assert show_config["server_reset_query"] == ""
    assert show_config["server_check_query"] == cfg["pgbouncer_server_check_query"]
    assert show_config["ignore_startup_parameters"] == ",".join(cfg["pgbouncer_ignore_startup_parameters"])


def test_file_descriptor_limit(host, pools):
    assert host.run("systemctl show pgbouncer -p LimitNOFILE --value").stdout.strip() == str(pools["fd_limit"])
    pid = host.run("systemctl show pgbouncer -p MainPID --value").stdout.strip()
    assert pid not in ("", "0"), "pgbouncer is not running"
    limits = host.file(f"/proc/{pid}/limits").content_string
    soft, hard = re.search(r"^Max open files\s+(\d+)\s+(\d+)", limits, re.M).groups()
    assert (int(soft), int(hard)) == (pools["fd_limit"], pools["fd_limit"])


def test_auth_file_has_no_application_password(host, cfg):
    userlist = host.file("/etc/pgbouncer/userlist.txt")
    assert userlist.user == "root" and userlist.group == "postgres" and userlist.mode == 0o640
    users = re.findall(r'^"([^"]+)" "([^"]*)"', userlist.content_string, re.M)
    assert {u for u, _ in users} <= {cfg["pgbouncer_auth_user"], cfg["pgbouncer_admin_user"], cfg["pgbouncer_stats_user"]}
    assert dict(users)[cfg["pgbouncer_admin_user"]].startswith("SCRAM-SHA-256$4096:")
    assert cfg["postgresql"]["postgresql_app_user"] not in {u for u, _ in users}


def client(host, cfg, password: str | None):
    user, db = cfg["postgresql"]["postgresql_app_user"], cfg["pgbouncer_databases"][0]["name"]
    env = f"PGPASSWORD={password} " if password is not None else ""
    return host.run(
        f"{env}psql -X -A -t -w -h 127.0.0.1 -p {cfg['pgbouncer_listen_port']} -U {user} -d {db} -c 'SELECT current_user'"
    )


def test_authentication(host, cfg):
    no_password = client(host, cfg, None)
    assert no_password.rc != 0 and "no password supplied" in no_password.stderr
    wrong = client(host, cfg, "not-the-password-0123456789")
    assert wrong.rc != 0 and "authentication failed" in wrong.stderr
    right = client(host, cfg, secret("postgresql_app_password"))
    assert right.rc == 0 and right.stdout.strip() == cfg["postgresql"]["postgresql_app_user"], right.stderr
    # The console: the admin user may SHOW POOLS/STATS, the application may not, nobody without a password.
    assert console(host, cfg, "SHOW POOLS").rc == 0
    assert console(host, cfg, "SHOW STATS").rc == 0
    assert console(host, cfg, "SHOW POOLS", password="").rc != 0
    app = console(host, cfg, "SHOW POOLS", cfg["postgresql"]["postgresql_app_user"], secret("postgresql_app_password"))
    # Refused at login: 1.24 answers "bouncer config error" (auth_query has no server for the console),
    # 1.18 never answers (the login times out).
    assert app.rc != 0 and app.stdout == "", app.stdout


LOAD_SCRIPT = r"""
set -u
ulimit -n {nofile}
dir=$(mktemp -d)
printf 'BEGIN;\nSELECT 1;\nEND;\n' > "$dir/tx.sql"
PGPASSWORD={password} pgbench -h 127.0.0.1 -p {port} -U {user} -c {clients} -j 2 -T {seconds} -n -f "$dir/tx.sql" {db} \
  > "$dir/out" 2>&1 &
bench=$!
peak_db=0; peak_user=0; samples=0
while kill -0 "$bench" 2>/dev/null; do
  read -r db_conns user_conns < <(runuser -u postgres -- psql -X -A -t -F ' ' -c \
    "SELECT count(*), count(*) FILTER (WHERE usename = '{user}') FROM pg_stat_activity
     WHERE datname = '{db}' AND backend_type = 'client backend'")
  [ "${{db_conns:-0}}" -gt "$peak_db" ] && peak_db=$db_conns
  [ "${{user_conns:-0}}" -gt "$peak_user" ] && peak_user=$user_conns
  samples=$((samples + 1))
  sleep 0.2
done
wait "$bench"; rc=$?
cat "$dir/out"
echo "pgbench_rc=$rc samples=$samples peak_db=$peak_db peak_user=$peak_user"
rm -rf "$dir"
"""


def test_500_clients_through_pgbouncer(host, cfg, pools, capsys):
    """500 concurrent clients, short transactions: no error, PostgreSQL sees at most max_db_connections."""
    if not cfg["is_db_host"]:
        pytest.skip("the load test samples pg_stat_activity: all-in-one hosts only")
    assert pools["max_client_conn"] >= LOAD_CLIENTS, "capacity_pgbouncer_max_client_conn must admit the load test"
    db = cfg["pgbouncer_databases"][0]["name"]
    script = LOAD_SCRIPT.format(
        nofile=LOAD_NOFILE,
        password=secret("postgresql_app_password"),
        port=cfg["pgbouncer_listen_port"],
        user=cfg["postgresql"]["postgresql_app_user"],
        clients=LOAD_CLIENTS,
        seconds=LOAD_SECONDS,
        db=db,
    )
    out = host.run("bash -c %s", script).stdout
    result = dict(re.findall(r"(pgbench_rc|samples|peak_db|peak_user)=(\d+)", out))
    numbers = {
        "clients": re.search(r"number of clients: (\d+)", out),
        "transactions": re.search(r"number of transactions actually processed: (\d+)", out),
        "failed": re.search(r"number of failed transactions: (\d+)", out),
        "tps": re.search(r"tps = ([\d.]+) \(without initial connection time\)", out),
    }
    found = {k: (m.group(1) if m else None) for k, m in numbers.items()}
    with capsys.disabled():
        print(
            f"\n[pgbouncer load] clients={found['clients']} transactions={found['transactions']}"
            f" tps={found['tps']} failed={found['failed']} pgbench_rc={result.get('pgbench_rc')}"
            f" peak server connections to {db}: all users {result.get('peak_db')}, app {result.get('peak_user')}"
            f" (planned max_db_connections {pools['max_db_connections']}, {result.get('samples')} samples)"
        )
    assert result.get("pgbench_rc") == "0", out
    assert found["clients"] == str(LOAD_CLIENTS), out
    assert int(found["transactions"] or 0) > 0, out
    assert found["failed"] in ("0", None) and "error" not in out.lower(), out
    assert int(result["samples"]) >= 10, out
    assert 1 <= int(result["peak_user"]) <= int(result["peak_db"]) <= pools["max_db_connections"], out
