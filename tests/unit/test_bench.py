"""The figures of `make bench` (celery_stack/bench.py): pgbench parsing, ratios, targets, the table."""
from __future__ import annotations

import pytest

from celery_stack import bench

PGBENCH_C = """pgbench (17.12 (Debian 17.12-0+deb13u1))
transaction type: /run/celery-stack-bench/select1.sql
scaling factor: 1
query mode: simple
number of clients: 8
number of threads: 2
maximum number of tries: 1
duration: 3 s
number of transactions actually processed: 1497
number of failed transactions: 0 (0.000%)
latency average = 16.045 ms
average connection time = 3.001 ms
tps = 498.590727 (including reconnection times)
"""

PGBENCH_FAILED = """number of clients: 1000
number of threads: 2
number of transactions actually processed: 20000
number of failed transactions: 12 (0.060%)
pgbench: error: client 17 aborted in command 0 (SQL) of script 0; ERROR:  no more connections allowed
tps = 6600.1 (without initial connection time)
"""


def test_parse_connect_per_request_run():
    assert bench.parse_pgbench(PGBENCH_C) == {
        "clients": 8, "transactions": 1497, "failed": 0, "tps": 498.590727, "errors": 0,
    }


def test_parse_counts_failures_and_error_lines():
    parsed = bench.parse_pgbench(PGBENCH_FAILED)
    assert (parsed["failed"], parsed["errors"], parsed["tps"]) == (12, 1, 6600.1)


def test_incomplete_run_is_an_error():
    with pytest.raises(ValueError, match="not a complete pgbench run"):
        bench.parse_pgbench("pgbench: error: connection to server failed")


def test_ratio_and_median():
    assert bench.ratio(300, 100) == 3.0
    assert bench.ratio(1, 0) is None
    assert bench.median([3.0, 1.0, 2.0]) == 2.0
    assert bench.median([4.0, 1.0]) == 2.5


def test_comparison_against_its_target():
    row = bench.comparison("connect_per_request", "PgBouncer", 600.0, "direct", 100.0, "tps")
    assert (row["ratio"], row["target"], row["met"]) == (6.0, 5.0, True)
    low = bench.comparison("end_to_end", "nginx", 150.0, "bare", 500.0, "tasks/s")
    assert (low["ratio"], low["met"]) == (0.3, False)
    free = bench.comparison("persistent", "PgBouncer", 90.0, "direct", 100.0, "tps")
    assert (free["target"], free["met"]) == (None, None)


def test_times_and_unmet():
    results = {
        "comparisons": [bench.comparison("tuned_vs_defaults", "plan", 94.0, "defaults", 100.0, "tps")],
        "times": [bench.time_row("idempotent_seconds", 44.0), bench.time_row("converge_seconds", 400.0)],
    }
    assert bench.unmet(results) == ["tuned_vs_defaults", "converge_seconds"]


def test_table_has_a_line_per_row_with_ratio_and_verdict():
    results = {
        "host": "celery-stack-local", "machine": "2 CPUs, 23 GiB", "size": "full",
        "comparisons": [bench.comparison("connect_per_request", "PgBouncer", 600.0, "direct", 100.0, "tps")],
        "times": [bench.time_row("idempotent_seconds", 50.0)], "notes": ["1000 clients: 0 failed"],
    }
    table = bench.render(results).splitlines()
    assert table[0].startswith("celery-stack benchmark on celery-stack-local (2 CPUs, 23 GiB), full run")
    row = next(line for line in table if line.startswith("connect_per_request"))
    assert "6.00" in row and ">=5.0" in row and row.endswith("yes")
    assert next(line for line in table if line.startswith("idempotent_seconds")).endswith("NO")
    assert table[-1] == "  - 1000 clients: 0 failed"
