"""The smoke size of `make bench` (scripts/bench.py), so that the benchmark cannot rot.

Same code as the full run, a few seconds per measurement. Smoke figures are too
short to hold the targets of the full run; they must still be complete and
error-free, and PgBouncer must beat a new PostgreSQL backend per connection.
"""
from __future__ import annotations

import sys

from app_client import record, require_all_in_one
from stack import ROOT

sys.path.insert(0, str(ROOT / "scripts"))

import bench as runner  # noqa: E402

from celery_stack import bench  # noqa: E402


def test_bench_smoke_measures_every_comparison(host, inventory_vars):
    require_all_in_one(inventory_vars)
    results = runner.measure(host, "smoke")
    print("\n" + bench.render(results))
    rows = {row["name"]: row for row in results["comparisons"]}
    assert list(rows) == ["connect_per_request", "persistent", "tuned_vs_defaults", "end_to_end"]
    assert all(row["subject_value"] > 0 and row["baseline_value"] > 0 for row in rows.values()), rows
    for mode in ("connect_per_request", "persistent"):
        for side in ("pgbouncer", "direct"):
            measured = rows[mode]["details"][side]
            assert (measured["failed"], measured["errors"]) == (0, 0), measured
    # Connection setup: PgBouncer hands out a pooled server connection, direct
    # PostgreSQL forks a backend per connection.
    assert rows["connect_per_request"]["ratio"] > 1.0, rows["connect_per_request"]
    crowd = results["crowd"]
    assert (crowd["clients"], crowd["failed"], crowd["errors"]) == (1000, 0, 0), crowd
    # The scratch cluster is gone.
    assert "bench" not in host.run("pg_lsclusters -h").stdout
    assert not host.run("ls -d /etc/postgresql/*/bench 2>/dev/null").stdout.strip()
    assert host.run("docker ps -a --format '{{.Names}}'").stdout.count("celery-stack-bench") == 0
    record(host, "bench smoke", {name: row["ratio"] for name, row in rows.items()})
