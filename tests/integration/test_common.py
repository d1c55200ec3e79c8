"""Role common, read back from the converged host."""
from __future__ import annotations

import pytest
from stack import in_container, role_defaults

# Units allowed to fail in a container host, with the reason. Empty: a
# converged host must report "running", not "degraded".
ALLOWED_FAILED_UNITS: dict[str, str] = {}

GLOBAL_PREFIXES = ("vm.", "fs.", "kernel.")


def test_systemd_is_running(host):
    state = host.run("systemctl is-system-running --wait").stdout.strip()
    failed = host.run("systemctl list-units --state=failed --plain --no-legend").stdout
    failed_units = {line.split()[0] for line in failed.splitlines() if line.strip()}
    unexpected = failed_units - set(ALLOWED_FAILED_UNITS)
    assert not unexpected, f"failed units: {sorted(unexpected)}"
    assert state in ("running", "degraded") and (state == "running" or failed_units), state


def sysctl_cases():
    return sorted(role_defaults("common")["common_sysctl"])


@pytest.mark.parametrize("key", sysctl_cases())
def test_sysctl_value_applied(host, role_vars, key):
    settings = dict(role_vars("common")["common_sysctl"])
    settings.update(role_vars("common")["common_sysctl_extra"])
    expected = " ".join(str(settings[key]).split())
    # The drop-in file always carries the setting ...
    conf = host.file("/etc/sysctl.d/60-celery-stack.conf")
    assert conf.exists and conf.user == "root" and conf.mode == 0o644
    assert f"{key} = {settings[key]}" in conf.content_string.splitlines()
    # ... and the running kernel has it, except host-global keys in a container.
    if in_container(host) and key.startswith(GLOBAL_PREFIXES):
        pytest.skip(f"{key} is host-global: not applied inside a container")
    live = host.run(f"sysctl -n {key}")
    assert live.rc == 0, live.stderr
    assert " ".join(live.stdout.split()) == expected


def test_timezone(host, role_vars):
    tz = role_vars("common")["common_timezone"]
    assert host.file("/etc/localtime").linked_to.endswith(f"/zoneinfo/{tz}")
    assert host.run("date +%Z").stdout.strip() in ("UTC", tz.rsplit("/", 1)[-1])


def test_nofile_limit_for_services(host, role_vars):
    limit = role_vars("common")["common_nofile_limit"]
    out = host.run("systemctl show --property=DefaultLimitNOFILE,DefaultLimitNOFILESoft").stdout
    values = dict(line.split("=", 1) for line in out.splitlines())
    assert values["DefaultLimitNOFILE"] == str(limit)
    assert values["DefaultLimitNOFILESoft"] == str(limit)


def test_journal_is_persistent(host, role_vars):
    cfg = role_vars("common")
    assert cfg["common_journald_storage"] == "persistent"
    journal = host.file("/var/log/journal")
    assert journal.is_directory
    machine_id = host.file("/etc/machine-id").content_string.strip()
    # journald writes to /var/log/journal/<machine-id> only when persistent.
    assert host.file(f"/var/log/journal/{machine_id}").is_directory
