"""The figures of `make bench` (scripts/bench.py): parsing, ratios, the table.

Pure functions, unit-tested (tests/unit/test_bench.py). The runner measures on
a host and hands the raw numbers here; every comparison is a pair measured in
the same run, reported with its ratio and, where the project sets one, the
target it must meet (``TARGETS``).
"""
from __future__ import annotations

import re
from typing import Any

# comparison name -> (minimum ratio, what the ratio is)
TARGETS: dict[str, tuple[float, str]] = {
    "connect_per_request": (5.0, "PgBouncer / direct PostgreSQL, tps, a new connection per transaction"),
    "persistent": (0.0, "PgBouncer / direct PostgreSQL, tps, persistent connections (reported, no target)"),
    "tuned_vs_defaults": (0.95, "plan's settings / Debian's defaults, pgbench tpcb-like tps, same data"),
    "end_to_end": (0.40, "tasks/s through nginx / bare Celery no-op worker, same processes"),
}
# Seconds: an idempotent re-run of site.yml, a converge from scratch.
TIME_TARGETS: dict[str, float] = {"idempotent_seconds": 45.0, "converge_seconds": 360.0}

_PGBENCH = {
    "clients": r"number of clients: (\d+)",
    "transactions": r"number of transactions actually processed: (\d+)",
    "failed": r"number of failed transactions: (\d+)",
    "tps": r"tps = ([\d.]+) \((?:without initial connection time|including reconnection times)\)",
}


def parse_pgbench(output: str) -> dict[str, Any]:
    """clients, transactions, failed, tps and errors (client error lines) of one pgbench run."""
    found: dict[str, Any] = {}
    for name, pattern in _PGBENCH.items():
        match = re.search(pattern, output)
        found[name] = None if match is None else (float(match.group(1)) if name == "tps" else int(match.group(1)))
    if found["failed"] is None and found["transactions"] is not None:
        found["failed"] = 0
    found["errors"] = len(re.findall(r"^(?:pgbench: )?(?:error|fatal):", output, flags=re.MULTILINE | re.IGNORECASE))
    if found["tps"] is None or found["transactions"] is None:
        raise ValueError(f"not a complete pgbench run: {output[-500:]!r}")
    return found


def ratio(numerator: float, denominator: float) -> float | None:
    """numerator / denominator rounded to 2 decimals, None when the denominator is not positive."""
    return round(numerator / denominator, 2) if denominator > 0 else None


def median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def comparison(name: str, subject: str, subject_value: float, baseline: str, baseline_value: float,
               unit: str, **details: Any) -> dict[str, Any]:
    """One row of the table: a measured pair, its ratio and the target it is held to."""
    target = TARGETS[name][0]
    value = ratio(subject_value, baseline_value)
    return {
        "name": name, "subject": subject, "subject_value": round(subject_value, 1),
        "baseline": baseline, "baseline_value": round(baseline_value, 1), "unit": unit,
        "ratio": value, "target": target or None,
        "met": None if not target else (value is not None and value >= target),
        "details": details,
    }


def time_row(name: str, seconds: float, **details: Any) -> dict[str, Any]:
    target = TIME_TARGETS[name]
    return {"name": name, "seconds": round(seconds, 1), "target": target, "met": seconds <= target, "details": details}


def render(results: dict[str, Any]) -> str:
    """The table `make bench` prints."""
    lines = [
        f"celery-stack benchmark on {results.get('host', '?')} ({results.get('machine', '?')}), "
        f"{results.get('size', '?')} run",
        "",
        f"{'comparison':<22} {'subject':<34} {'value':>10} {'baseline':<34} {'value':>10} {'ratio':>6} "
        f"{'target':>7}  met",
    ]
    for row in results.get("comparisons", []):
        target = "" if row["target"] is None else f">={row['target']}"
        met = "" if row["met"] is None else ("yes" if row["met"] else "NO")
        ratio_text = "-" if row["ratio"] is None else f"{row['ratio']:.2f}"
        lines.append(
            f"{row['name']:<22} {row['subject']:<34} {row['subject_value']:>10} {row['baseline']:<34} "
            f"{row['baseline_value']:>10} {ratio_text:>6} {target:>7}  {met}"
        )
    for row in results.get("times", []):
        lines.append(f"{row['name']:<22} {'seconds':<34} {row['seconds']:>10} {'':<34} {'':>10} {'':>6} "
                     f"{'<=' + str(row['target']):>7}  {'yes' if row['met'] else 'NO'}")
    for note in results.get("notes", []):
        lines.append(f"  - {note}")
    return "\n".join(lines)


def unmet(results: dict[str, Any]) -> list[str]:
    """Names of the rows that miss their target."""
    rows = results.get("comparisons", []) + results.get("times", [])
    return [row["name"] for row in rows if row.get("met") is False]
