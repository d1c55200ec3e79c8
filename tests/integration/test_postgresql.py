"""Role postgresql, read back from the running server of the converged host.

Expected sizes come from the capacity plan the host was converged with
(/etc/celery-stack/capacity-plan.json, made from this host's real facts);
every value is read from the running server (pg_settings, pg_roles, ...),
never from the configuration files.
"""
from __future__ import annotations

import re

import pytest
from stack import listening, secret

DROPIN = "conf.d/60-celery-stack.conf"

# Units of pg_settings and of postgresql.conf values, in kB (memory) or ms (time).
MEMORY_UNITS = {"kB": 1, "MB": 1024, "GB": 1024**2, "TB": 1024**3}
TIME_UNITS = {"us": 0.001, "ms": 1, "s": 1000, "min": 60_000, "h": 3_600_000, "d": 86_400_000}
BOOLEANS = {"on": True, "off": False, "true": True, "false": False, "yes": True, "no": False, "1": True, "0": False}


@pytest.fixture(scope="module")
def cfg(host, role_vars, inventory_vars) -> dict:
    if "db" not in inventory_vars.get("group_names", []):
        pytest.skip("not a db host")
    return role_vars("postgresql")


def sql(host, query: str) -> list[list[str]]:
    """Rows of a query run as the postgres superuser over the Unix socket."""
    out = host.run("runuser -u postgres -- psql -X -A -t -F '\t' -v ON_ERROR_STOP=1 -c %s", query)
    assert out.rc == 0, out.stderr
    return [line.split("\t") for line in out.stdout.splitlines() if line]


def value(host, query: str) -> str:
    rows = sql(host, query)
    assert len(rows) == 1 and len(rows[0]) == 1, rows
    return rows[0][0]


def normalize(raw: str, vartype: str, unit: str | None):
    """A setting as a comparable value: integers in kB or ms for memory and time."""
    if vartype == "bool":
        return BOOLEANS[raw.strip().lower()]
    if vartype in ("integer", "real"):
        match = re.fullmatch(r"(-?\d+(?:\.\d+)?)\s*([a-zA-Z]+)?", raw.strip())
        assert match, f"not a number: {raw!r}"
        number, given_unit = float(match.group(1)), match.group(2)
        base = re.fullmatch(r"(\d+)?([a-zA-Z]+)", unit) if unit else None
        if base is None:  # unitless
            assert given_unit is None, f"{raw!r} has a unit, the setting has none"
            return number
        scale, base_unit = int(base.group(1) or 1), base.group(2)
        table = MEMORY_UNITS if base_unit in MEMORY_UNITS else TIME_UNITS
        if given_unit is None:  # bare numbers are in the setting's own unit
            return number * scale * table[base_unit]
        return number * table[given_unit]
    return raw.lower() if vartype == "enum" else raw


@pytest.fixture(scope="module")
def settings(host, cfg) -> dict[str, dict]:
    """Every setting of the running server: setting, unit, vartype, source, sourcefile, SHOW string."""
    rows = sql(
        host,
        "SELECT name, setting, coalesce(unit, ''), vartype, source, coalesce(sourcefile, ''),"
        " current_setting(name) FROM pg_settings",
    )
    keys = ("setting", "unit", "vartype", "source", "sourcefile", "show")
    return {row[0]: dict(zip(keys, row[1:])) for row in rows}


def mismatches(settings: dict, expected: dict) -> list[str]:
    """Expected settings the running server does not have (from our drop-in)."""
    bad = []
    for name, want in expected.items():
        have = settings[name]
        unit = have["unit"] or None
        if normalize(str(want), have["vartype"], unit) != normalize(have["setting"], have["vartype"], unit):
            bad.append(f"{name}: plan {want!r}, running {have['show']!r} ({have['setting']} {have['unit']})")
        elif not have["sourcefile"].endswith(DROPIN):
            bad.append(f"{name}: {have['show']!r} comes from {have['source']} {have['sourcefile']}, not {DROPIN}")
    return bad


def test_listens_only_where_configured(host, cfg):
    port = cfg["postgresql_port"]
    sockets = listening(host, port)
    assert sockets == {f"{address}:{port}" for address in cfg["postgresql_listen_addresses"]}
    assert not sockets & {f"0.0.0.0:{port}", f"*:{port}", f"[::]:{port}"}


def test_every_planned_setting_is_running(settings, plan):
    """Every key of capacity_plan.postgresql, compared in the setting's base unit (kB, ms)."""
    expected = plan["postgresql"]
    assert {"max_connections", "shared_buffers", "work_mem", "superuser_reserved_connections"} <= set(expected)
    assert mismatches(settings, expected) == []
    # The unit-normalised values are equal; PostgreSQL also prints them as the plan does.
    assert {k: settings[k]["show"] for k in expected} == {k: str(v) for k, v in expected.items()}


def test_logging_and_security_settings(settings, cfg):
    expected = {
        "listen_addresses": ",".join(cfg["postgresql_listen_addresses"]),
        "port": cfg["postgresql_port"],
        "password_encryption": "scram-sha-256",
        "log_min_duration_statement": cfg["postgresql_log_min_duration_statement"],
        "log_checkpoints": "on" if cfg["postgresql_log_checkpoints"] else "off",
        "log_lock_waits": "on" if cfg["postgresql_log_lock_waits"] else "off",
        "log_temp_files": cfg["postgresql_log_temp_files"],
        "log_autovacuum_min_duration": cfg["postgresql_log_autovacuum_min_duration"],
        "log_line_prefix": cfg["postgresql_log_line_prefix"],
        "deadlock_timeout": cfg["postgresql_deadlock_timeout"],
    }
    assert mismatches(settings, expected) == []
    assert settings["log_min_duration_statement"]["show"] == "100ms"  # seed 001


def test_configuration_applied_without_errors(host, cfg):
    assert sql(host, "SELECT name FROM pg_settings WHERE pending_restart") == []
    assert sql(host, "SELECT sourcefile, sourceline, name, error FROM pg_file_settings WHERE error IS NOT NULL") == []
    assert sql(host, "SELECT line_number, error FROM pg_hba_file_rules WHERE error IS NOT NULL") == []


def test_cluster_encoding_and_checksums(host, cfg):
    assert value(host, "SHOW server_encoding") == "UTF8"
    assert value(host, f"SELECT pg_encoding_to_char(encoding) FROM pg_database WHERE datname = '{cfg['postgresql_app_database']}'") == "UTF8"
    assert value(host, "SHOW data_checksums") == ("on" if cfg["postgresql_data_checksums"] else "off")


def test_hba_is_scram_only(host, cfg):
    rules = sql(host, "SELECT type, array_to_string(database, ','), array_to_string(user_name, ','), coalesce(address, ''), auth_method FROM pg_hba_file_rules")
    assert rules, "no pg_hba rules"
    for kind, database, user, address, method in rules:
        assert method != "trust"
        if kind == "local":
            assert (user, method) == ("postgres", "peer"), "only the postgres superuser may use the socket (peer)"
        else:
            assert method == "scram-sha-256", (kind, database, user, address, method)
            assert user != "postgres" and user != "all" and database != "all"
            assert address not in ("0.0.0.0", "::", "all")


def psql_tcp(host, port: int, user: str, database: str, password: str | None):
    env = f"PGPASSWORD={password} " if password is not None else ""
    return host.run(
        f"{env}psql -X -A -t -w -h 127.0.0.1 -p {port} -U {user} -d {database} -c 'SELECT current_user'"
    )


def test_password_authentication(host, cfg):
    port, user, db = cfg["postgresql_port"], cfg["postgresql_app_user"], cfg["postgresql_app_database"]
    no_password = psql_tcp(host, port, user, db, None)
    assert no_password.rc != 0 and "no password supplied" in no_password.stderr
    wrong = psql_tcp(host, port, user, db, "not-the-password-0123456789")
    assert wrong.rc != 0 and "password authentication failed" in wrong.stderr
    superuser = psql_tcp(host, port, "postgres", "postgres", None)
    assert superuser.rc != 0
    right = psql_tcp(host, port, user, db, secret("postgresql_app_password"))
    assert right.rc == 0 and right.stdout.strip() == user, right.stderr
    verifier = value(host, f"SELECT rolpassword FROM pg_authid WHERE rolname = '{user}'")
    assert verifier.startswith("SCRAM-SHA-256$")


def test_login_roles_carry_the_configured_scram_iterations(host, cfg):
    """Each managed login role's verifier has its configured iteration count; the app still logs in with it."""
    expected = {
        cfg["postgresql_app_user"]: cfg["postgresql_scram_iterations"],
        cfg["postgresql_pgbouncer_auth_user"]: cfg["postgresql_scram_iterations"],
        cfg["postgresql_monitor_user"]: cfg["postgresql_monitor_scram_iterations"],
    }
    expected.pop(None, None)
    listed = ", ".join(f"'{name}'" for name in expected)
    rows = dict(sql(host, f"SELECT rolname, split_part(rolpassword, ':', 1) FROM pg_authid WHERE rolname IN ({listed})"))
    assert rows == {name: f"SCRAM-SHA-256${count}" for name, count in expected.items()}
    right = psql_tcp(host, cfg["postgresql_port"], cfg["postgresql_app_user"], cfg["postgresql_app_database"],
                     secret("postgresql_app_password"))
    assert right.rc == 0, right.stderr


def test_app_role_is_least_privileged(host, cfg):
    user, db = cfg["postgresql_app_user"], cfg["postgresql_app_database"]
    row = sql(host, f"SELECT rolcanlogin, rolsuper, rolcreaterole, rolcreatedb, rolreplication, rolbypassrls FROM pg_roles WHERE rolname = '{user}'")
    assert row == [["t", "f", "f", "f", "f", "f"]]
    assert value(host, f"SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = '{db}'") == user
    assert value(host, f"SELECT has_database_privilege('public', '{db}', 'CONNECT')") == "f"
    assert value(host, f"SELECT count(*) FROM pg_auth_members WHERE member = '{user}'::regrole") == "0"


def test_monitoring_role(host, cfg):
    user = cfg["postgresql_monitor_user"]
    if not user:
        pytest.skip("no monitoring role")
    assert sql(host, f"SELECT rolcanlogin, rolsuper, rolcreaterole, rolcreatedb FROM pg_roles WHERE rolname = '{user}'") == [["t", "f", "f", "f"]]
    assert value(host, f"SELECT pg_has_role('{user}', 'pg_monitor', 'MEMBER')") == "t"


def test_pgbouncer_lookup_function(host, cfg):
    auth, owner, schema = (cfg[f"postgresql_pgbouncer_auth_{k}"] for k in ("user", "owner", "schema"))
    if not auth:
        pytest.skip("no PgBouncer auth_query lookup")
    db, app = cfg["postgresql_app_database"], cfg["postgresql_app_user"]
    function = f"{schema}.user_lookup(text)"

    def in_db(query):
        out = host.run("runuser -u postgres -- psql -X -A -t -F '\t' -v ON_ERROR_STOP=1 -d %s -c %s", db, query)
        assert out.rc == 0, out.stderr
        return [line.split("\t") for line in out.stdout.splitlines() if line]

    assert in_db(f"SELECT pg_get_userbyid(proowner), prosecdef FROM pg_proc WHERE oid = '{function}'::regprocedure") == [[owner, "t"]]
    assert in_db(f"SELECT pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = '{schema}'") == [[owner]]
    assert sql(host, f"SELECT rolcanlogin, rolsuper FROM pg_roles WHERE rolname = '{owner}'") == [["f", "f"]]
    for role, allowed in (("public", "f"), (app, "f"), (cfg["postgresql_monitor_user"] or "public", "f"), (auth, "t")):
        assert in_db(f"SELECT has_function_privilege('{role}', '{function}', 'EXECUTE')") == [[allowed]], role
    # It hands out the application's SCRAM verifier, never a superuser's.
    assert in_db(f"SELECT uname, left(phash, 14) FROM {schema}.user_lookup('{app}')") == [[app, "SCRAM-SHA-256$"]]
    assert in_db(f"SELECT uname IS NULL AND phash IS NULL FROM {schema}.user_lookup('postgres')") == [["t"]]
    assert in_db(f"SELECT uname IS NULL AND phash IS NULL FROM {schema}.user_lookup('{auth}')") == [["t"]]
