#!/usr/bin/env python3
"""make bench: measure the stack against its alternatives, side by side, in one run.

On a converged all-in-one host (default: the local host of `make up`):
  1. connections: pgbench SELECT 1, a new connection per transaction (Django's
     CONN_MAX_AGE=0) and persistent, through PgBouncer and direct to
     PostgreSQL, same clients; then 1,000 concurrent clients through PgBouncer;
  2. PostgreSQL: pgbench tpcb-like on a scratch cluster (port 5499, dropped
     afterwards) with Debian's defaults and with the capacity plan's settings,
     alternating, on the same data;
  3. tasks: write tasks posted through nginx (clients keeping their connection;
     also new TLS connections) until every row exists, against a
     bare Celery no-op worker with the pools' total concurrency on the same broker;
  4. (--converge) the local host converged from scratch, then re-run (changed=0).
Prints a table with ratios and targets and writes .build/bench/<time>.json
(and latest.json). Exit status 1 when a target is missed (--no-fail: 0).
The smoke size runs in `make test` (tests/integration/test_bench.py).
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shlex
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "integration")]

from app_client import https, rows_with_prefix, sources  # noqa: E402
from stack import PLAN_FILE, secret  # noqa: E402

from celery_stack import bench  # noqa: E402

SIZES = {
    # seconds per pgbench run, rounds, pgbench scale, tpcb clients, tasks
    "smoke": {"seconds": 3, "rounds": 1, "scale": 2, "tpcb_clients": 4, "tasks": 200, "max_clients": 1000},
    "full": {"seconds": 20, "rounds": 2, "scale": 50, "tpcb_clients": 16, "tasks": 2000, "max_clients": 1000},
}
WORK = "/run/celery-stack-bench"
BENCH_PORT = 5499
APP_ENV = "/etc/celery-stack/app.env"
_q = shlex.quote

# Runs one pgbench on the host and reports its output, the client's CPU time
# and PgBouncer's CPU time over the run (all pgbouncer processes).
PGBENCH_RUNNER = r"""
import base64, json, os, resource, subprocess, sys, time
argv, extra = json.loads(base64.b64decode(sys.argv[1]))
def cpu(pid):
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None
pids = subprocess.run(["pidof", "pgbouncer"], capture_output=True, text=True).stdout.split()
before = {pid: cpu(pid) for pid in pids}
started = time.monotonic()
run = subprocess.run(argv, capture_output=True, text=True, env=dict(os.environ, **extra))
wall = time.monotonic() - started
after = {pid: cpu(pid) for pid in pids}
bouncer = sum(after[p] - before[p] for p in pids if before[p] is not None and after[p] is not None)
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"rc": run.returncode, "output": run.stdout + run.stderr, "wall": wall,
                  "pgbouncer_cpu_percent": round(100 * bouncer / wall, 1),
                  "client_cpu_percent": round(100 * (usage.ru_utime + usage.ru_stime) / wall, 1)}))
"""

# The bare Celery side: a no-op task that counts itself in Redis; run as the
# worker (celery -A noopbench worker) and as the producer (python noopbench.py N).
NOOP_APP = r'''
import json, os, sys, time
import redis
from celery import Celery

QUEUE = os.environ["BENCH_QUEUE"]
app = Celery("noopbench", broker=os.environ["CELERY_BROKER_URL"])
app.conf.update(task_default_queue=QUEUE, task_ignore_result=True, broker_connection_retry_on_startup=True)
counter = redis.Redis.from_url(os.environ["CELERY_BROKER_URL"])


@app.task(name="bench.noop")
def noop():
    counter.incr(QUEUE + ":done")


if __name__ == "__main__":
    count = int(sys.argv[1])
    counter.delete(QUEUE + ":done")
    started = time.monotonic()
    with app.producer_or_acquire() as producer:
        for _ in range(count):
            noop.apply_async(producer=producer)
    sent = time.monotonic() - started
    while int(counter.get(QUEUE + ":done") or 0) < count:
        if time.monotonic() - started > 600:
            sys.exit("the no-op tasks did not all run in 600 s")
        time.sleep(0.02)
    seconds = time.monotonic() - started
    counter.delete(QUEUE + ":done")
    print(json.dumps({"tasks": count, "seconds": seconds, "enqueue_seconds": sent}))
'''


def run(host, command: str, what: str) -> str:
    result = host.run(command)
    if result.rc != 0:
        raise RuntimeError(f"{what} failed (rc {result.rc}): {(result.stderr or result.stdout)[-2000:]}")
    return result.stdout


def pgbench(host, args: list[str], env: dict[str, str], nofile: int = 4096) -> dict:
    packed = base64.b64encode(json.dumps([["pgbench", *args], env]).encode()).decode()
    out = run(host, f"bash -c {_q(f'ulimit -n {nofile}; exec python3 -c {_q(PGBENCH_RUNNER)} {packed}')}", "pgbench")
    raw = json.loads(out)
    if raw["rc"] != 0:
        raise RuntimeError(f"pgbench {' '.join(args)} exited {raw['rc']}: {raw['output'][-2000:]}")
    parsed = bench.parse_pgbench(raw["output"])
    parsed.update(pgbouncer_cpu_percent=raw["pgbouncer_cpu_percent"], client_cpu_percent=raw["client_cpu_percent"])
    return parsed


def connections(host, plan: dict, size: dict, results: dict) -> None:
    """PgBouncer vs direct, connect-per-request and persistent; then 1,000 clients through PgBouncer."""
    pg, bouncer = plan["postgresql"], plan["pgbouncer"]
    # Direct clients must fit next to PgBouncer's server connections and the reserved slots.
    headroom = int(pg["max_connections"]) - int(pg["superuser_reserved_connections"]) - int(bouncer["max_db_connections"]) - 3
    clients = max(1, min(50, headroom))
    run(host, f"mkdir -p {WORK} && printf 'SELECT 1;\\n' > {WORK}/select1.sql", "script")
    env = {"PGPASSWORD": secret("postgresql_app_password"), "PGSSLMODE": "disable"}
    common = ["-h", "127.0.0.1", "-U", "app", "-n", "-j", "2", "-T", str(size["seconds"]), "-f", f"{WORK}/select1.sql"]
    measured: dict[str, dict] = {}
    for mode, flags in (("connect_per_request", ["-C"]), ("persistent", [])):
        for target, port in (("pgbouncer", 6432), ("direct", 5432)):
            runs = [pgbench(host, [*common, "-p", str(port), "-c", str(clients), *flags, "app"], env)
                    for _ in range(size["rounds"])]
            measured[f"{mode}/{target}"] = {
                "tps": bench.median([r["tps"] for r in runs]), "failed": sum(r["failed"] for r in runs),
                "errors": sum(r["errors"] for r in runs), "runs": runs,
            }
        results["comparisons"].append(bench.comparison(
            mode, f"PgBouncer, {clients} clients", measured[f"{mode}/pgbouncer"]["tps"],
            f"direct PostgreSQL, {clients} clients", measured[f"{mode}/direct"]["tps"], "tps",
            pgbouncer=measured[f"{mode}/pgbouncer"], direct=measured[f"{mode}/direct"],
        ))
    many = size["max_clients"]
    if int(bouncer["max_client_conn"]) < many:
        results["notes"].append(f"1,000 clients skipped: the plan's max_client_conn is {bouncer['max_client_conn']}")
        return
    crowd = pgbench(host, [*common, "-p", "6432", "-c", str(many), "app"], env, nofile=many * 2 + 256)
    results["crowd"] = crowd
    results["notes"].append(
        f"{many} concurrent clients through PgBouncer: {crowd['transactions']} transactions, "
        f"{crowd['failed']} failed, {crowd['errors']} errors, {crowd['tps']:.0f} tps"
    )


def tuned_vs_defaults(host, plan: dict, size: dict, results: dict) -> None:
    """pgbench tpcb-like on a scratch cluster: Debian's defaults vs the plan's settings, alternating."""
    version = str(plan["inputs"]["postgresql_version"])
    settings = plan["postgresql"]
    conf = f"/etc/postgresql/{version}/bench/conf.d/50-plan.conf"
    lines = "".join(f"{k} = '{v}'\n" for k, v in sorted(settings.items()))
    socket = ["-h", "/var/run/postgresql", "-p", str(BENCH_PORT)]
    clients = max(1, min(size["tpcb_clients"], int(settings["max_connections"]) - int(settings["superuser_reserved_connections"]) - 2))
    # pg_dropcluster leaves conf.d/50-plan.conf (not its file) and so the directory.
    drop = f"(pg_dropcluster --stop {version} bench 2>/dev/null || true) && rm -rf /etc/postgresql/{version}/bench"
    run(host, drop, "drop an old scratch cluster")
    try:
        run(host, f"pg_createcluster {version} bench -p {BENCH_PORT} >/dev/null && pg_ctlcluster {version} bench start",
            "pg_createcluster")
        started = time.monotonic()
        run(host, "runuser -u postgres -- pgbench -i -q " + " ".join(socket) + f" -s {size['scale']} postgres", "pgbench -i")
        init_seconds = time.monotonic() - started
        tps: dict[str, list[float]] = {"defaults": [], "tuned": []}
        for _ in range(size["rounds"]):
            for config in ("defaults", "tuned"):
                write = (f"printf %s {_q(lines)} > {conf} && chown postgres: {conf}" if config == "tuned"
                         else f"rm -f {conf}")
                run(host, f"{write} && pg_ctlcluster {version} bench restart", f"restart with {config}")
                command = ("runuser -u postgres -- pgbench -n -b tpcb-like -j 2 " + " ".join(socket)
                           + f" -c {clients} -T {size['seconds']} postgres")
                out = run(host, command, f"pgbench tpcb-like ({config})")
                parsed = bench.parse_pgbench(out)
                if parsed["failed"]:
                    raise RuntimeError(f"pgbench tpcb-like ({config}): {parsed['failed']} failed transactions")
                tps[config].append(parsed["tps"])
        shown = run(host, f"runuser -u postgres -- psql -X -At {' '.join(socket)} -c 'SHOW shared_buffers'", "SHOW")
    finally:
        run(host, drop, "drop the scratch cluster")
    results["comparisons"].append(bench.comparison(
        "tuned_vs_defaults", "plan's settings", bench.median(tps["tuned"]), "Debian's defaults",
        bench.median(tps["defaults"]), "tps", scale=size["scale"], clients=clients, runs=tps,
        init_seconds=round(init_seconds, 1), last_shared_buffers=shown.strip(),
    ))


def end_to_end(host, plan: dict, size: dict, results: dict) -> None:
    """Write tasks through nginx until every row exists, vs a bare Celery no-op worker."""
    count, queues = size["tasks"], plan["celery"]["routes"]
    pools = plan["celery"]["pools"]
    concurrency = sum(int(p["concurrency"]) for p in pools)

    def through_nginx(by_source: bool) -> tuple[float, float]:
        """Seconds from the first POST to the last row, and to the last POST's answer."""
        prefix = f"bench-{uuid.uuid4().hex[:8]}-"
        # 200 client addresses, ~10 requests each: under nginx's per-address limit.
        addresses = sources(200, offset=1200)
        requests = [{"method": "POST", "path": "/api/tasks", "source": addresses[i % len(addresses)],
                     "body": {"kind": "write", "key": f"{prefix}{i}", "queue": queues[i % len(queues)]}}
                    for i in range(count)]
        started = time.monotonic()
        answers = https(host, requests, workers=16, by_source=by_source)
        enqueued = time.monotonic() - started
        refused = [a for a in answers if a[0] != 202]
        if refused:
            raise RuntimeError(f"{len(refused)} of {count} POSTs were not accepted: {refused[:3]}")
        while (done := rows_with_prefix(host, prefix)) < count:
            if time.monotonic() - started > 600:
                raise RuntimeError(f"only {done} of {count} rows after 600 s")
            time.sleep(0.2)
        return time.monotonic() - started, enqueued

    # Clients that keep their connection (the compared figure), then clients
    # that open a new TLS connection for almost every request.
    e2e_seconds, enqueue_seconds = through_nginx(by_source=True)
    new_tls_seconds, new_tls_enqueue_seconds = through_nginx(by_source=False)

    image = run(host, "docker inspect --format '{{.Config.Image}}' celery-worker-" + pools[0]["name"], "image").strip()
    queue = f"bench-noop-{uuid.uuid4().hex[:8]}"
    name = f"celery-stack-bench-{queue}"
    run(host, f"mkdir -p {WORK}/noop && printf %s {_q(NOOP_APP)} > {WORK}/noop/noopbench.py && chmod -R a+rX {WORK}", "noop app")
    docker = (f"docker run --network host --env-file {APP_ENV} -e BENCH_QUEUE={queue} -v {WORK}/noop:/bench:ro "
              f"-w /bench -e PYTHONPATH=/bench")
    try:
        run(host, f"{docker} -d --name {name} {image} celery -A noopbench worker -Q {queue} "
                  f"--concurrency={concurrency} -l INFO --without-mingle --without-gossip", "noop worker")
        deadline = time.monotonic() + 120
        while "ready." not in host.run(f"docker logs {name} 2>&1").stdout:
            if time.monotonic() > deadline:
                raise RuntimeError("the no-op worker was not ready after 120 s")
            time.sleep(0.5)
        bare = json.loads(run(host, f"{docker} --rm {image} python /bench/noopbench.py {count}", "noop producer"))
    finally:
        host.run(f"docker rm -f {name}")
        host.run(f"REDISCLI_AUTH={_q(secret('redis_broker_admin_password'))} redis-cli --user admin --no-auth-warning "
                 f"DEL {queue} {queue}:done")
    results["comparisons"].append(bench.comparison(
        "end_to_end", f"{count} write tasks via nginx, keep-alive", count / e2e_seconds,
        f"bare Celery no-op, concurrency {concurrency}", count / bare["seconds"], "tasks/s",
        e2e_seconds=round(e2e_seconds, 2), enqueue_seconds=round(enqueue_seconds, 2),
        new_tls_connections_tasks_per_second=round(count / new_tls_seconds, 1),
        new_tls_connections_enqueue_seconds=round(new_tls_enqueue_seconds, 2),
        bare_seconds=round(bare["seconds"], 2), bare_enqueue_seconds=round(bare["enqueue_seconds"], 2),
        queues=queues, pools={p["name"]: p["concurrency"] for p in pools},
    ))


def converge(results: dict) -> None:
    """The local host from scratch (make down; make up), then the idempotent re-run."""
    def playbook(*args: str) -> tuple[float, str]:
        started = time.monotonic()
        done = subprocess.run(["ansible-playbook", *args], cwd=ROOT, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"ansible-playbook {' '.join(args)}: {done.stdout[-3000:]}")
        return time.monotonic() - started, done.stdout

    playbook("playbooks/local-host.yml", "-e", "local_host_state=absent")
    playbook("playbooks/local-host.yml")
    seconds, _ = playbook("-i", "inventories/local", "playbooks/site.yml")
    again, out = playbook("-i", "inventories/local", "playbooks/site.yml")
    recap = re.search(r"ok=(\d+)\s+changed=(\d+)", out)
    changed = int(recap.group(2)) if recap else None
    results["times"].append(bench.time_row("converge_seconds", seconds, connection="community.docker.docker"))
    results["times"].append(bench.time_row("idempotent_seconds", again, changed=changed,
                                           tasks=int(recap.group(1)) if recap else None))
    if changed != 0:
        raise RuntimeError(f"the re-run changed {changed} tasks")


def measure(host, size_name: str, with_converge: bool = False) -> dict:
    """Every comparison on ``host`` (a testinfra host); returns the results (see celery_stack.bench)."""
    size = SIZES[size_name]
    results: dict = {"size": size_name, "comparisons": [], "times": [], "notes": [],
                     "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if with_converge:
        converge(results)
    plan = json.loads(host.file(PLAN_FILE).content_string)
    cpus, memory = host.run("nproc").stdout.strip(), host.run("free -g | awk '/^Mem:/ {print $2}'").stdout.strip()
    results.update(host=host.backend.get_hostname(), machine=f"{cpus} CPUs, {memory} GiB")
    connections(host, plan, size, results)
    tuned_vs_defaults(host, plan, size, results)
    end_to_end(host, plan, size, results)
    return results


def save(results: dict) -> Path:
    folder = ROOT / ".build" / "bench"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{results['size']}-{results['started'].replace(':', '')}.json"
    text = json.dumps(results, indent=2, sort_keys=True) + "\n"
    path.write_text(text)
    (folder / f"latest-{results['size']}.json").write_text(text)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    parser.add_argument("--converge", action="store_true", help="also time a converge from scratch and a re-run")
    parser.add_argument("--inventory", default=str(ROOT / "inventories" / "local"))
    parser.add_argument("--host", default="celery-stack-local")
    parser.add_argument("--no-fail", action="store_true", help="exit 0 even when a target is missed")
    args = parser.parse_args()
    os.environ.setdefault("ANSIBLE_CONFIG", str(ROOT / "ansible.cfg"))
    import testinfra

    host = testinfra.get_host(f"ansible://{args.host}", ansible_inventory=args.inventory)
    results = measure(host, args.size, with_converge=args.converge)
    path = save(results)
    print(bench.render(results))
    print(f"\nwritten: {path.relative_to(ROOT)}")
    missed = bench.unmet(results)
    if missed:
        print(f"targets missed: {', '.join(missed)}")
    return 1 if missed and not args.no_fail else 0


if __name__ == "__main__":
    sys.exit(main())
