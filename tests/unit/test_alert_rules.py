"""Role monitoring: the alerting rules and their promtool unit tests (two Jinja2 templates).

Both templates are rendered the way Ansible's template module renders them
(trim_blocks, no lstrip_blocks, undefined variables are errors) for two
variable sets: the role's defaults and a three-pool set with short `for:`
values like the Molecule inventory's. The rendered rules are checked here for
what every alert must carry; when promtool is on PATH (Debian 13's
`promtool` package, the converged host) the rendered files are also run
through `promtool check rules` and `promtool test rules`.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jinja2
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = ROOT / "roles" / "monitoring" / "templates"
RULES_TEMPLATE = "alerts.rules.yml.j2"
TESTS_TEMPLATE = "alerts.tests.yml.j2"
# Where the role installs them: the tests file names the rules by a path relative to itself.
RULES_PATH = Path("rules") / "celery-stack-alerts.yml"
TESTS_PATH = Path("rules-tests") / "celery-stack-alerts.tests.yml"

DEFAULTS: dict[str, Any] = {
    "monitoring_celery_pools": [
        {
            "name": "default",
            "queues": ["default", "celery"],
            "time_limit": 360,
            "soft_time_limit": 300,
            "concurrency": 4,
        },
        {"name": "high", "queues": ["high"], "time_limit": 90, "soft_time_limit": 60, "concurrency": 2},
    ],
    "monitoring_alert_queue_backlog": 100,
    "monitoring_alert_queue_backlog_by_queue": {},
    "monitoring_alert_task_failure_ratio": 0.10,
    "monitoring_alert_task_runtime_ratio": 0.8,
    "monitoring_alert_pg_connections_ratio": 0.8,
    "monitoring_alert_pgbouncer_clients_ratio": 0.8,
    "monitoring_alert_redis_memory_ratio": 0.8,
    "monitoring_alert_disk_free_ratio": 0.15,
    "monitoring_alert_memory_available_ratio": 0.10,
    "monitoring_alert_backup_max_age": "26h",
    "monitoring_alert_full_backup_max_age": "8d",
    "monitoring_alert_for": {
        "queue_backlog": "5m",
        "task_failures": "5m",
        "task_runtime": "10m",
        "pool_down": "2m",
        "worker_offline": "2m",
        "target_down": "2m",
        "host_down": "1m",
        "pg_connections": "1m",
        "pgbouncer_clients": "1m",
        "pgbouncer_waiting": "1m",
        "redis_memory": "5m",
        "redis_down": "0s",
        "disk": "5m",
        "memory": "5m",
        "rule_failures": "5m",
        "notifications": "5m",
        "backup": "15m",
        "wal_archive": "5m",
    },
}

# Three pools, other limits, per-queue overrides (one above and one below the
# default, one for a queue no pool consumes), backup ages in other units and
# the short `for:` values of the Molecule inventory (30s, 45s, 90s).
THREE_POOLS: dict[str, Any] = {
    **copy.deepcopy(DEFAULTS),
    "monitoring_celery_pools": [
        {
            "name": "default",
            "queues": ["default", "celery"],
            "time_limit": 600,
            "soft_time_limit": 540,
            "concurrency": 8,
        },
        {"name": "high", "queues": ["high"], "time_limit": 45, "soft_time_limit": 30, "concurrency": 4},
        {"name": "bulk", "queues": ["bulk", "reports"], "time_limit": 3600, "soft_time_limit": 3300, "concurrency": 2},
    ],
    "monitoring_alert_queue_backlog": 50,
    "monitoring_alert_queue_backlog_by_queue": {"bulk": 5000, "high": 20, "orphaned": 250},
    "monitoring_alert_task_failure_ratio": 0.25,
    "monitoring_alert_task_runtime_ratio": 0.85,
    "monitoring_alert_pg_connections_ratio": 0.7,
    "monitoring_alert_pgbouncer_clients_ratio": 0.9,
    "monitoring_alert_redis_memory_ratio": 0.75,
    "monitoring_alert_disk_free_ratio": 0.1,
    "monitoring_alert_memory_available_ratio": 0.05,
    "monitoring_alert_backup_max_age": "36h",
    "monitoring_alert_full_backup_max_age": "2w",
    "monitoring_alert_for": {
        "queue_backlog": "30s",
        "task_failures": "1m",
        "task_runtime": "90s",
        "pool_down": "30s",
        "worker_offline": "30s",
        "target_down": "30s",
        "host_down": "30s",
        "pg_connections": "30s",
        "pgbouncer_clients": "30s",
        "pgbouncer_waiting": "30s",
        "redis_memory": "45s",
        "redis_down": "0s",
        "disk": "1m",
        "memory": "1m",
        "rule_failures": "1m",
        "notifications": "1m",
        "backup": "90s",
        "wal_archive": "45s",
    },
}

VARIABLE_SETS = {"defaults": DEFAULTS, "three_pools": THREE_POOLS}

# The contract: every alert name, and the monitoring_alert_for key that sets its `for:`.
ALERT_FOR = {
    "CeleryQueueBacklog": "queue_backlog",
    "CeleryTaskFailureRate": "task_failures",
    "CeleryTaskRuntimeHigh": "task_runtime",
    "CeleryPoolDown": "pool_down",
    "CeleryWorkerOffline": "worker_offline",
    "PostgresDown": "target_down",
    "PostgresConnectionsHigh": "pg_connections",
    "PgBouncerDown": "target_down",
    "PgBouncerClientsHigh": "pgbouncer_clients",
    "PgBouncerClientsWaiting": "pgbouncer_waiting",
    "RedisDown": "redis_down",
    "RedisMemoryHigh": "redis_memory",
    "RedisRejectedConnections": "redis_down",
    "NginxDown": "target_down",
    "HostDown": "host_down",
    "DiskSpaceLow": "disk",
    "MemoryAvailableLow": "memory",
    "ExporterDown": "target_down",
    "PrometheusRuleFailures": "rule_failures",
    "AlertmanagerNotificationsFailing": "notifications",
    "PgBackRestBackupTooOld": "backup",
    "PgBackRestFullBackupTooOld": "backup",
    "PgBackRestStanzaError": "backup",
    "PostgresWalArchiveFailing": "wal_archive",
    "BrokerSnapshotTooOld": "backup",
}
# Alerts on a state (down, offline): no value to show, the description gives the `for:`.
STATE_ALERTS = {
    "CeleryPoolDown",
    "CeleryWorkerOffline",
    "PostgresDown",
    "PgBouncerDown",
    "RedisDown",
    "NginxDown",
    "HostDown",
    "ExporterDown",
}
GROUPS = ["celery", "postgresql", "pgbouncer", "redis", "backup", "nginx", "host", "monitoring"]
COMPONENTS = set(GROUPS)  # component label values: the group names


def render(template: str, variables: dict[str, Any]) -> str:
    """Render a role template as Ansible's template module does by default."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=False,
        keep_trailing_newline=True,
    )
    return env.get_template(template).render(ansible_managed="Ansible managed: test_alert_rules.py", **variables)


@pytest.fixture(scope="module", params=sorted(VARIABLE_SETS))
def rendered(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Both files rendered for one variable set, written in the layout the role installs."""
    variables = VARIABLE_SETS[request.param]
    directory = tmp_path_factory.mktemp(request.param)
    texts = {RULES_PATH: render(RULES_TEMPLATE, variables), TESTS_PATH: render(TESTS_TEMPLATE, variables)}
    for path, text in texts.items():
        (directory / path).parent.mkdir(parents=True, exist_ok=True)
        (directory / path).write_text(text)
    return {
        "variables": variables,
        "directory": directory,
        "texts": texts,
        "rules": yaml.safe_load(texts[RULES_PATH]),
        "tests": yaml.safe_load(texts[TESTS_PATH]),
    }


def alerts(rules: dict[str, Any]) -> list[dict[str, Any]]:
    return [rule for group in rules["groups"] for rule in group["rules"]]


def test_templates_start_with_ansible_managed(rendered: dict[str, Any]) -> None:
    for text in rendered["texts"].values():
        assert text.startswith("# Ansible managed: test_alert_rules.py\n")


def test_groups_and_alert_names_are_the_contract(rendered: dict[str, Any]) -> None:
    assert [group["name"] for group in rendered["rules"]["groups"]] == GROUPS
    assert {rule["alert"] for rule in alerts(rendered["rules"])} == set(ALERT_FOR)
    assert set(ALERT_FOR.values()) == set(rendered["variables"]["monitoring_alert_for"])  # every `for` is used


def test_every_alert_has_severity_component_annotations_and_its_configured_for(rendered: dict[str, Any]) -> None:
    durations = rendered["variables"]["monitoring_alert_for"]
    for rule in alerts(rendered["rules"]):
        name = rule["alert"]
        assert set(rule) == {"alert", "expr", "for", "labels", "annotations"}, name
        assert rule["labels"]["severity"] in {"critical", "warning"}, name
        assert rule["labels"]["component"] in COMPONENTS, name
        assert rule["for"] == durations[ALERT_FOR[name]], name
        assert set(rule["annotations"]) == {"summary", "description"}, name
        assert "$labels.host" in rule["annotations"]["summary"], name
        description = rule["annotations"]["description"]
        if name not in STATE_ALERTS:
            assert "$value" in description, name
        assert f"for {rule['for']}" in description, name
        assert "monitoring_alert_" in description, name  # the variable to change
        assert "\n" not in description and "  " not in description, name  # folded into one line


def test_no_duplicate_rules(rendered: dict[str, Any]) -> None:
    """promtool's duplicate-rules lint: rules of one alert name differ by their static labels."""
    keys = [(rule["alert"], tuple(sorted(rule["labels"].items()))) for rule in alerts(rendered["rules"])]
    assert len(keys) == len(set(keys))


def test_queue_backlog_thresholds_follow_the_variables(rendered: dict[str, Any]) -> None:
    variables = rendered["variables"]
    overrides = variables["monitoring_alert_queue_backlog_by_queue"]
    queues = {queue for pool in variables["monitoring_celery_pools"] for queue in pool["queues"]} | set(overrides)
    rules = [rule for rule in alerts(rendered["rules"]) if rule["alert"] == "CeleryQueueBacklog"]
    per_queue = {}
    for rule in rules:
        selector, threshold = rule["expr"].rsplit(" > ", 1)
        if selector.startswith('celery_queue_length{queue="'):
            per_queue[selector.split('"')[1]] = int(threshold)
        else:  # the catch-all excludes every queue that has its own rule
            assert int(threshold) == variables["monitoring_alert_queue_backlog"]
            assert all(f'queue!="{queue}"' in selector for queue in queues)
    assert per_queue == {queue: overrides.get(queue, variables["monitoring_alert_queue_backlog"]) for queue in queues}
    assert len(rules) == len(queues) + 1


def test_one_runtime_and_one_pool_down_rule_per_pool(rendered: dict[str, Any]) -> None:
    variables = rendered["variables"]
    ratio = variables["monitoring_alert_task_runtime_ratio"]
    for alert in ("CeleryTaskRuntimeHigh", "CeleryPoolDown"):
        rules = {rule["labels"]["pool"]: rule for rule in alerts(rendered["rules"]) if rule["alert"] == alert}
        assert list(rules) == [pool["name"] for pool in variables["monitoring_celery_pools"]]
        for pool in variables["monitoring_celery_pools"]:
            expr = rules[pool["name"]]["expr"]
            if alert == "CeleryTaskRuntimeHigh":
                assert f'worker=~"{pool["name"]}@.*"' in expr
                assert float(expr.rsplit(">", 1)[1]) == pytest.approx(ratio * pool["time_limit"])
            else:
                assert f'absent(node_systemd_unit_state{{name="celery-worker@{pool["name"]}.service"}})' in expr


def test_backup_thresholds_are_the_max_ages_in_seconds(rendered: dict[str, Any]) -> None:
    variables = rendered["variables"]
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    backup, full = (
        int(variables[name][:-1]) * units[variables[name][-1]]
        for name in ("monitoring_alert_backup_max_age", "monitoring_alert_full_backup_max_age")
    )
    exprs = {
        rule["alert"]: rule["expr"] for rule in alerts(rendered["rules"]) if rule["labels"]["component"] == "backup"
    }
    assert exprs["PgBackRestBackupTooOld"] == (
        f"min by (host, stanza) (pgbackrest_backup_since_last_completion_seconds) > {backup}"
    )
    assert exprs["PgBackRestFullBackupTooOld"] == (
        f'pgbackrest_backup_since_last_completion_seconds{{backup_type="full"}} > {full}'
    )
    assert exprs["BrokerSnapshotTooOld"] == (
        f"time() - celery_stack_broker_snapshot_last_success_timestamp_seconds > {backup}"
    )


def test_every_alert_is_tested_firing_and_quiet(rendered: dict[str, Any]) -> None:
    tests = rendered["tests"]
    assert tests["rule_files"] == ["../rules/celery-stack-alerts.yml"]
    cases: dict[str, list[bool]] = {}
    for group in tests["tests"]:
        for case in group["alert_rule_test"]:
            cases.setdefault(case["alertname"], []).append(bool(case.get("exp_alerts")))
    assert set(cases) == set(ALERT_FOR)
    for name, fires in cases.items():
        assert True in fires and False in fires, name
    text = rendered["texts"][TESTS_PATH]
    assert all(text.count(name) >= 2 for name in ALERT_FOR)


def test_renders_for_a_plan_without_pools(tmp_path: Path) -> None:
    """monitoring_celery_pools defaults to the plan's pools or []: no per-pool rules, the rest still tested."""
    variables = {**copy.deepcopy(DEFAULTS), "monitoring_celery_pools": []}
    rules = yaml.safe_load(render(RULES_TEMPLATE, variables))
    tests = yaml.safe_load(render(TESTS_TEMPLATE, variables))
    names = {rule["alert"] for rule in alerts(rules)}
    assert names == set(ALERT_FOR) - {"CeleryTaskRuntimeHigh", "CeleryPoolDown"}
    assert {case["alertname"] for group in tests["tests"] for case in group["alert_rule_test"]} == names
    backlog = [rule["expr"] for rule in alerts(rules) if rule["alert"] == "CeleryQueueBacklog"]
    assert backlog == ["celery_queue_length > 100"]


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool is not installed (Debian: apt-get install promtool); the converged host runs it")
    return path


def test_promtool_checks_and_tests_the_rules(rendered: dict[str, Any], promtool: str) -> None:
    directory = rendered["directory"]
    for command in (["check", "rules", "--lint-fatal", str(RULES_PATH)], ["test", "rules", str(TESTS_PATH)]):
        result = subprocess.run([promtool, *command], cwd=directory, capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, f"promtool {' '.join(command)}:\n{result.stdout}{result.stderr}"
