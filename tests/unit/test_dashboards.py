"""The Grafana dashboards and provisioning files (roles/monitoring/files/grafana) and celery_stack.dashboards.

Every expression of every dashboard may query only the metric names the
stack's exporters and recording rules expose (CONTRACT below); a live test
against a running Prometheus uses the same :func:`dashboard_metrics`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from celery_stack.dashboards import dashboard_metrics, dashboard_queries, metric_names

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "roles" / "monitoring" / "files" / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "celery-stack.yml"
PROVIDERS = GRAFANA / "provisioning" / "dashboards" / "celery-stack.yml"

# The metric names the stack exposes (every series has the labels job and host).
CONTRACT = frozenset(
    {
        "up",
        # node_exporter 1.9
        "node_cpu_seconds_total",
        "node_load1",
        "node_load5",
        "node_memory_MemAvailable_bytes",
        "node_memory_MemTotal_bytes",
        "node_filesystem_avail_bytes",
        "node_filesystem_size_bytes",
        "node_network_receive_bytes_total",
        "node_network_transmit_bytes_total",
        "node_systemd_unit_state",
        # postgres_exporter 0.17
        "pg_up",
        "pg_stat_activity_count",
        "pg_settings_max_connections",
        "pg_stat_database_xact_commit",
        "pg_stat_database_xact_rollback",
        "pg_stat_database_deadlocks",
        # pgbouncer_exporter 0.10
        "pgbouncer_up",
        "pgbouncer_pools_client_active_connections",
        "pgbouncer_pools_client_waiting_connections",
        "pgbouncer_pools_server_active_connections",
        "pgbouncer_pools_server_idle_connections",
        "pgbouncer_config_max_client_connections",
        "pgbouncer_stats_queries_pooled_total",
        # redis_exporter 1.69 (label redis_instance = broker | cache)
        "redis_up",
        "redis_memory_used_bytes",
        "redis_memory_max_bytes",
        "redis_connected_clients",
        "redis_rejected_connections_total",
        "redis_commands_processed_total",
        # nginx-prometheus-exporter 1.4
        "nginx_up",
        "nginx_connections_active",
        "nginx_http_requests_total",
        # Flower (job celery)
        "flower_events_total",
        "flower_task_runtime_seconds_bucket",
        "flower_task_runtime_seconds_sum",
        "flower_task_runtime_seconds_count",
        "flower_worker_online",
        "flower_worker_number_of_currently_executing_tasks",
        # recording rule
        "celery_queue_length",
    }
)
EXPECTED_FILES = {"celery.json", "postgresql-pgbouncer.json", "redis.json", "nginx.json", "host.json"}


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def all_panels(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Panels, rows' nested panels included."""
    found = []
    for panel in panels:
        found.append(panel)
        found += all_panels(panel.get("panels") or [])
    return found


def ids(paths: list[Path]) -> list[str]:
    return [path.name for path in paths]


def test_the_five_dashboards_exist() -> None:
    assert {path.name for path in DASHBOARDS} == EXPECTED_FILES


@pytest.mark.parametrize("path", DASHBOARDS, ids=ids(DASHBOARDS))
def test_dashboard_is_valid_with_title_uid_tags_and_variables(path: Path) -> None:
    dashboard = load(path)
    assert dashboard["title"].strip()
    assert dashboard["uid"] == f"celery-stack-{path.stem}"
    assert len(dashboard["uid"]) <= 40  # Grafana's limit
    assert dashboard["schemaVersion"] == 39
    assert dashboard["tags"] == ["celery-stack"]
    assert dashboard["id"] is None
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    host = variables["host"]
    assert host["type"] == "query"
    assert host["definition"] == "label_values(up, host)"
    assert host["query"]["query"] == "label_values(up, host)"
    assert host["datasource"]["uid"] == "${datasource}"


@pytest.mark.parametrize("path", DASHBOARDS, ids=ids(DASHBOARDS))
def test_panel_ids_are_unique_and_every_panel_has_an_expr(path: Path) -> None:
    panels = all_panels(load(path)["panels"])
    panel_ids = [panel["id"] for panel in panels]
    assert len(panel_ids) == len(set(panel_ids)), panel_ids
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["title"].strip()
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        exprs = [target.get("expr", "") for target in panel.get("targets", [])]
        assert any(expr.strip() for expr in exprs), panel["title"]
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]


def test_uids_are_unique_across_files() -> None:
    uids = [load(path)["uid"] for path in DASHBOARDS]
    assert len(uids) == len(set(uids)), uids


@pytest.mark.parametrize("path", DASHBOARDS, ids=ids(DASHBOARDS))
def test_every_expr_queries_only_metrics_the_stack_exposes(path: Path) -> None:
    queries = dashboard_queries(path)
    assert "up" in queries  # the host variable's label_values(up, host)
    unknown = {}
    for expr in queries:
        names = metric_names(expr)
        assert names, f"no metric in {expr!r}"
        if names - CONTRACT:
            unknown[expr] = sorted(names - CONTRACT)
    assert not unknown, unknown
    assert dashboard_metrics(path) <= CONTRACT


def test_the_dashboards_together_cover_every_component() -> None:
    used = set().union(*(dashboard_metrics(path) for path in DASHBOARDS))
    for prefix in ("node_", "pg_", "pgbouncer_", "redis_", "nginx_", "flower_", "celery_"):
        assert any(name.startswith(prefix) for name in used), prefix


def test_provisioning_files_parse() -> None:
    datasources = yaml.safe_load(DATASOURCES.read_text(encoding="utf-8"))
    assert datasources["apiVersion"] == 1
    [source] = datasources["datasources"]
    assert source["type"] == "prometheus"
    assert source["url"] == "${CELERY_STACK_PROMETHEUS_URL}"
    assert source["basicAuth"] is True
    assert source["basicAuthUser"] == "${CELERY_STACK_PROMETHEUS_USER}"
    assert source["secureJsonData"] == {"basicAuthPassword": "${CELERY_STACK_PROMETHEUS_PASSWORD}"}
    # The dashboards' datasource variable selects the provisioned datasource by default.
    for path in DASHBOARDS:
        [variable] = [v for v in load(path)["templating"]["list"] if v["name"] == "datasource"]
        assert variable["current"]["value"] == source["uid"], path.name

    providers = yaml.safe_load(PROVIDERS.read_text(encoding="utf-8"))
    assert providers["apiVersion"] == 1
    [provider] = providers["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards/celery-stack"


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("up", {"up"}),
        ('up{job="node", host=~"$host"} == 0', {"up"}),
        ("histogram_quantile(0.95, sum by (le) (rate(x_bucket[5m])))", {"x_bucket"}),
        ("sum(rate(x_bucket[5m])) by (le, pool)", {"x_bucket"}),
        ("SUM BY (le) (x) OFFSET 5m", {"x"}),
        # Label values, label_replace arguments and Grafana variables in strings are not names.
        (
            'sum by (pool) (label_replace(rate(flower_events_total{type="task-failed", host=~"$host"}[$__rate_interval]),'
            ' "pool", "$1", "worker", "([^@]+)@.*"))',
            {"flower_events_total"},
        ),
        # Escaped quotes, single quotes and backticks inside strings.
        ('a{x="say \\"b{c}\\" rate(d)"} + e{y=\'f g\'} + h{z=`i\\`}', {"a", "e", "h"}),
        # Keywords and their label lists.
        ("a / on (host) group_left (pool, mode) b", {"a", "b"}),
        ("a / ignoring(cpu) group_right c", {"a", "c"}),
        ("a > bool 1 and b or c unless d", {"a", "b", "c", "d"}),
        ("count without (cpu, mode) (node_cpu_seconds_total)", {"node_cpu_seconds_total"}),
        ("atan2(a, b)", {"a", "b"}),
        ("a atan2 b", {"a", "b"}),
        ('topk(5, a) + quantile(0.9, b) + count_values("v", c)', {"a", "b", "c"}),
        # Numbers, durations, Inf/NaN, subqueries, offsets and @ modifiers.
        ("a * 1e-3 + 0x1f - Inf + NaN", {"a"}),
        ("max_over_time(rate(a[5m])[1h:30s]) offset -1h30m", {"a"}),
        ("a @ start() + b @ 1609746000", {"a", "b"}),
        ("rate(a[$__rate_interval]) offset $__interval", {"a"}),
        # Recording rule names (colons), the __name__ matcher.
        ("job:http_requests:rate5m", {"job:http_requests:rate5m"}),
        ('{__name__="up", job="node"}', {"up"}),
        ('{__name__=~"node_.*"}', set()),
        ('{__name__!="up"}', set()),
        # Comments, line breaks, a function with no metric.
        ("sum(a) # by (b) c\n/ d", {"a", "d"}),
        ("vector(1)", set()),
        ("time() - process_start_time_seconds", {"process_start_time_seconds"}),
    ],
)
def test_metric_names(expr: str, expected: set[str]) -> None:
    assert metric_names(expr) == expected


def test_dashboard_queries_reads_nested_rows_variables_and_annotations(tmp_path: Path) -> None:
    dashboard = {
        "annotations": {"list": [{"builtIn": 1, "name": "Annotations & Alerts"}, {"expr": "changes(k[5m]) > 0"}]},
        "panels": [
            {"type": "timeseries", "targets": [{"expr": "a"}, {"expr": "  "}, {"refId": "B"}]},
            {"type": "row", "collapsed": True, "panels": [{"type": "stat", "targets": [{"expr": "rate(b[5m])"}]}]},
            {"type": "text"},
        ],
        "rows": [{"panels": [{"targets": [{"expr": "c"}]}]}],
        "templating": {
            "list": [
                {"type": "datasource", "name": "datasource", "query": "prometheus"},
                {"type": "query", "name": "host", "query": "label_values(up, host)"},
                {"type": "query", "name": "db", "query": {"query": 'label_values(pg_up{job="x, y"}, datname)'}},
                {"type": "query", "name": "q", "query": "query_result(topk(3, d))"},
                {"type": "query", "name": "labels", "query": "label_values(host)"},
                {"type": "query", "name": "metrics", "query": "metrics(node_.*)"},
                {"type": "query", "name": "editor", "query": {"qryType": 1}, "definition": "label_values(e, host)"},
                {"type": "custom", "name": "custom", "query": "a,b"},
            ]
        },
    }
    path = tmp_path / "d.json"
    path.write_text(json.dumps(dashboard))
    assert dashboard_queries(path) == [
        "a",
        "rate(b[5m])",
        "c",
        "up",
        'pg_up{job="x, y"}',
        "topk(3, d)",
        "e",
        "changes(k[5m]) > 0",
    ]
    assert dashboard_metrics(path) == {"a", "b", "c", "up", "pg_up", "d", "e", "k"}
