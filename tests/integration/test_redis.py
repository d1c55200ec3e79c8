"""Role redis, read back from the running broker and cache instances.

Expected sizes come from the capacity plan the host was converged with
(/etc/celery-stack/capacity-plan.json); the values compared are read from the
running servers (CONFIG GET as the admin user), not from their files.
Passwords are the ones generated on the controller into .secrets/local/.
"""

from __future__ import annotations

import hashlib
import math
import shlex
import time

import pytest
from stack import in_container, secret, unit_properties

INSTANCES = ("broker", "cache")
UNIT = "celery-stack-redis@{}.service"
FLAVORS = {
    "redis": {"cli": "redis-cli", "packaged_unit": "redis-server.service", "conf_dir": "/etc/redis", "group": "redis"},
    "valkey": {
        "cli": "valkey-cli",
        "packaged_unit": "valkey-server.service",
        "conf_dir": "/etc/valkey",
        "group": "valkey",
    },
}
# Commands the application user must never run. DEBUG and MODULE are also
# disabled for everybody by enable-debug-command / enable-module-command no,
# which Redis checks before the ACL ("... command not allowed").
REFUSED_FOR_APP = [
    ("CONFIG", "GET", "maxmemory"),
    ("FLUSHALL",),
    ("FLUSHDB",),
    ("DEBUG", "SLEEP", "0"),
    # ABORT: harmless even if it were allowed.
    ("SHUTDOWN", "ABORT"),
    ("ACL", "LIST"),
    ("MODULE", "LIST"),
]




@pytest.fixture(scope="module")
def cfg(role_vars) -> dict:
    return role_vars("redis")


@pytest.fixture(scope="module")
def flavor(cfg) -> dict:
    return FLAVORS[cfg["redis_flavor"]]


@pytest.fixture(params=INSTANCES)
def instance(request, plan) -> str:
    name = request.param
    if name not in plan.get("redis", {}):
        pytest.skip(f"the plan of this host has no {name} instance")
    return name


@pytest.fixture
def port(cfg, instance) -> int:
    return int(cfg[f"redis_{instance}_port"])


class Cli:
    """Run the flavour's command line client against one instance."""

    def __init__(self, host, cfg, flavor, instance, port):
        self.host, self.cfg, self.flavor, self.instance, self.port = host, cfg, flavor, instance, port

    def command(self, user: str | None, *args: str, timeout: int | None = None) -> str:
        """The shell command; user None = no password, "app"/"admin" = that ACL user."""
        base = [self.flavor["cli"], "-h", "127.0.0.1", "-p", str(self.port)]
        env = "unset REDISCLI_AUTH;"
        if user is not None:
            env = "REDISCLI_AUTH=" + shlex.quote(secret(f"redis_{self.instance}_{user}_password"))
            base += ["--user", self.cfg[f"redis_{user}_user"], "--no-auth-warning"]
        if timeout:
            base = ["timeout", str(timeout)] + base
        return f"{env} " + " ".join(shlex.quote(a) for a in base + list(args))

    def __call__(self, user: str | None, *args: str):
        return self.host.run(self.command(user, *args))


@pytest.fixture
def cli(host, cfg, flavor, instance, port) -> Cli:
    return Cli(host, cfg, flavor, instance, port)


def reply(result) -> str:
    return (result.stdout + result.stderr).strip()


def config_get(cli, *names: str) -> dict[str, str]:
    out = cli("admin", "CONFIG", "GET", *names)
    assert out.rc == 0, reply(out)
    lines = out.stdout.splitlines()
    return dict(zip(lines[0::2], lines[1::2]))


def test_unit_active_and_enabled(host, instance):
    unit = host.service(UNIT.format(instance))
    assert unit.is_running, host.run(f"journalctl -u {UNIT.format(instance)} --no-pager -n 20").stdout
    assert unit.is_enabled


def test_packaged_single_instance_is_masked(host, flavor):
    packaged = flavor["packaged_unit"]
    assert not host.service(packaged).is_running
    assert host.run(f"systemctl is-enabled {packaged}").stdout.strip() == "masked"


def test_listens_on_loopback_only(host, port):
    listening = [s for s in host.socket.get_listening_sockets() if s.startswith("tcp") and s.endswith(f":{port}")]
    assert f"tcp://127.0.0.1:{port}" in listening
    assert set(listening) <= {f"tcp://127.0.0.1:{port}", f"tcp://::1:{port}"}, listening
    assert not host.socket(f"tcp://0.0.0.0:{port}").is_listening


def test_running_settings_match_the_plan(cli, plan, instance):
    expected = plan["redis"][instance]
    live = config_get(cli, "maxmemory", "maxmemory-policy", "appendonly", "appendfsync")
    assert int(live["maxmemory"]) == expected["maxmemory_mb"] * 1048576
    assert live["maxmemory-policy"] == expected["maxmemory_policy"]
    assert live["appendonly"] == expected["appendonly"]
    if "appendfsync" in expected:
        assert live["appendfsync"] == expected["appendfsync"]


def test_broker_never_evicts_cache_does(plan, instance):
    expected = {"broker": ("noeviction", "yes"), "cache": ("allkeys-lru", "no")}[instance]
    conf = plan["redis"][instance]
    assert (conf["maxmemory_policy"], conf["appendonly"]) == expected


def test_snapshots(cli, cfg, instance):
    live = config_get(cli, "save")
    wanted = " ".join(cfg["redis_broker_save"]) if instance == "broker" else ""
    assert live["save"] == wanted


def test_no_password_no_access(cli):
    for args in (("PING",), ("GET", "celery")):
        out = cli(None, *args)
        assert "NOAUTH" in reply(out), reply(out)


def test_default_user_is_off(cli):
    out = cli("admin", "ACL", "GETUSER", "default")
    lines = out.stdout.splitlines()
    flags = lines[lines.index("flags") + 1 : lines.index("passwords")]
    assert "off" in flags and "on" not in flags, flags
    auth = cli(None, "AUTH", "default", "anything")
    assert "WRONGPASS" in reply(auth), reply(auth)


def test_app_user_can_queue_and_cache(cli, instance):
    key = f"testinfra:{instance}"
    assert cli("app", "SET", key, "v1").stdout.strip() == "OK"
    assert cli("app", "GET", key).stdout.strip() == "v1"
    assert cli("app", "DEL", f"{key}:q").rc == 0
    assert cli("app", "LPUSH", f"{key}:q", "task1").stdout.strip() == "1"
    assert cli("app", "BRPOP", f"{key}:q", "1").stdout.split() == [f"{key}:q", "task1"]


def test_app_user_pubsub(host, cli, instance):
    channel = f"testinfra.{instance}.{time.time_ns()}"
    out_file = f"/tmp/{channel}.out"
    sub = cli.command("app", "SUBSCRIBE", channel, timeout=6)
    host.run(f"({sub} > {out_file} 2>&1 &)")
    receivers = "0"
    for _ in range(25):
        receivers = cli("app", "PUBLISH", channel, "hello").stdout.strip()
        if receivers.isdigit() and int(receivers) >= 1:
            break
        time.sleep(0.2)
    assert receivers == "1", f"PUBLISH reached {receivers} subscribers"
    time.sleep(0.3)
    received = host.file(out_file).content_string.split()
    host.run(f"rm -f {out_file}")
    assert ["message", channel, "hello"] == received[-3:], received


@pytest.mark.parametrize("command", REFUSED_FOR_APP, ids=lambda c: " ".join(c))
def test_app_user_refused_admin_commands(cli, cfg, command):
    out = cli("app", *command)
    text = reply(out)
    if command[0] in ("DEBUG", "MODULE"):
        assert "NOPERM" in text or "command not allowed" in text, text
    else:
        assert "NOPERM" in text, text
    # Whatever the server-wide switches, the ACL itself refuses the command.
    dry = cli("admin", "ACL", "DRYRUN", cfg["redis_app_user"], *command)
    assert "no permissions" in reply(dry), reply(dry)


def test_admin_user_has_full_rights(cli, cfg):
    out = cli("admin", "ACL", "DRYRUN", cfg["redis_admin_user"], "FLUSHALL")
    assert out.stdout.strip() == "OK", reply(out)


def test_broker_appends_and_cache_does_not_persist(host, cli, instance):
    data_dir = config_get(cli, "dir")["dir"]
    assert cli("app", "SET", f"testinfra:persist:{instance}", "x").stdout.strip() == "OK"
    time.sleep(1.5)  # appendfsync everysec
    files = host.run(f"find {shlex.quote(data_dir)} -type f").stdout.split()
    aof = [f for f in files if ".aof" in f]
    if instance == "broker":
        assert aof, files
        content = host.run(f"cat {shlex.quote(data_dir)}/appendonlydir/*.incr.aof").stdout
        assert f"testinfra:persist:{instance}" in content
    else:
        assert not aof and not [f for f in files if f.endswith(".rdb")], files


def test_transactions_survive_a_broker_restart(host, cli, instance):
    """Kombu keeps tasks in flight (the unacked hash) and puts tasks back with MULTI/EXEC.

    Redis 8.0 replays the AOF as the default user and re-checks ACLs on EXEC:
    with a default user without rights every transaction vanished on restart,
    with "CRITICAL ... NOPERM" lines in the log (redis/redis#14541).
    """
    if instance != "broker":
        pytest.skip("only the broker persists (appendonly yes)")
    key = f"testinfra:multi:{time.time_ns()}"
    script = f"MULTI\nLPUSH {key} task1\nHSET {key}:unacked tag1 task1\nEXEC\n"
    written = host.run(f"printf {shlex.quote(script)} | {cli.command('app')}")
    assert written.rc == 0 and "NOPERM" not in reply(written), reply(written)
    since = host.run("date +%s").stdout.strip()
    assert host.run(f"systemctl restart {UNIT.format(instance)}").rc == 0
    for _ in range(30):
        if cli("admin", "PING").stdout.strip() == "PONG":
            break
        time.sleep(1)
    assert cli("app", "LRANGE", key, "0", "-1").stdout.split() == ["task1"]
    assert cli("app", "HGET", f"{key}:unacked", "tag1").stdout.strip() == "task1"
    log = host.run(f"journalctl -u {UNIT.format(instance)} --since @{since} --no-pager -o cat").stdout
    assert "DB loaded from" in log or "Done loading" in log or "Ready to accept" in log, log[-2000:]
    assert not [line for line in log.splitlines() if "CRITICAL" in line or "NOPERM" in line], log[-2000:]
    cli("app", "DEL", key, f"{key}:unacked")


def test_passwords_are_hashed_on_disk(host, flavor, instance):
    users = host.file(f"{flavor['conf_dir']}/celery-stack-redis-{instance}.users.conf")
    assert users.user == "root" and users.group == flavor["group"] and users.mode == 0o640
    text = users.content_string
    assert text.startswith("# Ansible managed")
    for user in ("app", "admin"):
        password = secret(f"redis_{instance}_{user}_password")
        assert password not in text
        assert "#" + hashlib.sha256(password.encode()).hexdigest() in text


def test_memory_cap(host, plan, cfg, instance, cli):
    share = plan["memory"][f"redis_{instance}"]
    margin = int(cfg["redis_memory_max_margin_percent"])
    expected_mb = math.ceil(share * (100 + margin) / 100)
    value = host.run(f"systemctl show -P MemoryMax {UNIT.format(instance)}").stdout.strip()
    assert int(value) == expected_mb * 1048576
    maxclients = int(config_get(cli, "maxclients")["maxclients"])
    nofile = int(host.run(f"systemctl show -P LimitNOFILE {UNIT.format(instance)}").stdout.strip())
    assert nofile >= maxclients + 32


def test_unit_hardening(host, cfg, instance):
    props = [
        "User",
        "NoNewPrivileges",
        "ProtectSystem",
        "ProtectHome",
        "PrivateTmp",
        "PrivateDevices",
        "ProtectProc",
        "PrivateUsers",
        "RestrictAddressFamilies",
        "CapabilityBoundingSet",
        "Type",
    ]
    values = unit_properties(host, UNIT.format(instance), *props)
    assert values["User"] == FLAVORS[cfg["redis_flavor"]]["group"]
    assert values["Type"] == "notify"
    assert values["NoNewPrivileges"] == "yes"
    assert values["ProtectSystem"] == "strict"
    assert values["ProtectHome"] == "yes"
    assert values["PrivateTmp"] == "yes"
    assert values["PrivateDevices"] == "yes"
    assert values["ProtectProc"] == "invisible"
    assert values["CapabilityBoundingSet"] == ""
    assert set(values["RestrictAddressFamilies"].split()) == {"AF_INET", "AF_INET6", "AF_UNIX"}
    # Left out only inside containers (see the unit template for the reason).
    assert values["PrivateUsers"] == ("no" if in_container(host) else "yes")


def test_kernel_settings(host, cfg, cli):
    conf = host.file("/etc/sysctl.d/61-redis.conf")
    assert conf.exists and conf.user == "root" and conf.mode == 0o644
    for key, value in cfg["redis_sysctl"].items():
        assert f"{key} = {value}" in conf.content_string.splitlines()
    backlog = int(config_get(cli, "tcp-backlog")["tcp-backlog"])
    assert int(host.run("sysctl -n net.core.somaxconn").stdout) >= backlog
    if not in_container(host):
        assert host.run("sysctl -n vm.overcommit_memory").stdout.strip() == "1"


def test_transparent_huge_pages(host, cfg):
    if not cfg["redis_disable_thp"]:
        pytest.skip("redis_disable_thp is false")
    unit = host.service("disable-thp.service")
    assert unit.is_enabled
    if in_container(host):
        # ConditionVirtualization=!container: never started here, never failed.
        assert host.run("systemctl is-failed disable-thp.service").stdout.strip() == "inactive"
    else:
        assert "[never]" in host.file("/sys/kernel/mm/transparent_hugepage/enabled").content_string
