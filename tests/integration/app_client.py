"""Helpers of the application-tier checks (test_app.py, test_faults.py).

Requests go through nginx from inside the host, from many loopback source
addresses (127.0.0.0/8 is all local), so that nginx's per-client rate limits
stay what the inventory sets while a test plays many clients. Measurements
are printed and written to .build/measurements/<host>-app.json.
"""
from __future__ import annotations

import base64
import json
import os
import shlex
import subprocess
import zlib

import pytest
from stack import ROOT

COMPOSE_FILE = "/opt/celery-stack/compose.yaml"
CELERY_COMPOSE_FILE = "/opt/celery-stack/celery.yaml"
RELEASE_FILE = "/etc/celery-stack/release.json"
APP_MODULE = "refapp.celery_app"
MEASUREMENTS = ROOT / ".build" / "measurements"


def require_all_in_one(inventory_vars: dict) -> None:
    """Skip hosts without the application tier (the bookworm scenario) or not all-in-one."""
    if not inventory_vars.get("celery_stack_application", True):
        pytest.skip("celery_stack_application is false on this host: host services only")
    groups = inventory_vars.get("group_names", [])
    if "web" not in groups or "workers" not in groups:
        pytest.skip("these checks need an all-in-one host (web and workers)")


def record(host, name: str, values: dict) -> None:
    """Print a measurement and keep it in .build/measurements/<host>-app.json."""
    MEASUREMENTS.mkdir(parents=True, exist_ok=True)
    path = MEASUREMENTS / f"{host.backend.get_hostname()}-app.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data[name] = values
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    print(f"\nMEASURED {name}: {json.dumps(values, sort_keys=True)}")


# A small HTTPS client for many requests from many loopback addresses, run
# with the host's python3 (stdlib only). argv[1]: JSON list of requests
# {method, path, body?, source?}, zlib-compressed and base64-encoded (one
# argument may not exceed 128 KiB); prints a JSON list of [status, body|error, seconds].
# argv[3] "by-source": each thread takes all requests of one source address
# at a time, in order, on one keep-alive connection (clients that keep their
# connection); default: any thread takes the next request, so most requests
# open a new TLS connection (many short-lived clients).
CLIENT = r"""
import base64, http.client, json, ssl, sys, threading, time, queue, zlib
requests = json.loads(zlib.decompress(base64.b64decode(sys.argv[1]))); workers = int(sys.argv[2])
by_source = len(sys.argv) > 3 and sys.argv[3] == "by-source"
context = ssl._create_unverified_context()
results = [None] * len(requests); jobs = queue.Queue()
groups = {}
for index, request in enumerate(requests):
    groups.setdefault(request.get("source", "127.0.0.1") if by_source else index, []).append(index)
for group in groups.values():
    jobs.put(group)
def work():
    connections = {}
    while True:
        try:
            group = jobs.get_nowait()
        except queue.Empty:
            return
        for index in group:
            send(connections, index)
def send(connections, index):
    request = requests[index]; source = request.get("source", "127.0.0.1")
    started = time.monotonic()
    for attempt in (1, 2):
        conn = connections.get(source)
        if conn is None:
            conn = connections[source] = http.client.HTTPSConnection(
                "127.0.0.1", 443, timeout=30, context=context, source_address=(source, 0))
        try:
            body = json.dumps(request["body"]) if "body" in request else None
            headers = {"Content-Type": "application/json"} if body else {}
            conn.request(request["method"], request["path"], body=body, headers=headers)
            answer = conn.getresponse(); data = answer.read().decode()
            results[index] = [answer.status, data, round(time.monotonic() - started, 4)]
            break
        except (OSError, http.client.HTTPException) as exc:
            conn.close(); connections.pop(source, None)
            results[index] = [0, f"{type(exc).__name__}: {exc}", round(time.monotonic() - started, 4)]
threads = [threading.Thread(target=work) for _ in range(workers)]
[t.start() for t in threads]; [t.join() for t in threads]
print(json.dumps(results))
"""


def sources(count: int, offset: int = 0) -> list[str]:
    """Loopback client addresses 127.0.<a>.<b> (never 127.0.0.1, the test's own)."""
    return [f"127.0.{1 + (offset + i) // 250}.{1 + (offset + i) % 250}" for i in range(count)]


def client_command(requests: list[dict], workers: int, by_source: bool = False) -> str:
    """The shell command that runs CLIENT on the host for these requests."""
    packed = base64.b64encode(zlib.compress(json.dumps(requests).encode())).decode()
    return f"python3 -c {_q(CLIENT)} {packed} {workers}" + (" by-source" if by_source else "")


def https(host, requests: list[dict], workers: int = 16, by_source: bool = False) -> list[list]:
    result = host.run(client_command(requests, workers, by_source))
    assert result.rc == 0, result.stderr
    return json.loads(result.stdout)


_q = shlex.quote


def psql(host, sql: str) -> str:
    result = host.run(f"runuser -u postgres -- psql -X -At -d app -c {_q(sql)}")
    assert result.rc == 0, result.stderr
    return result.stdout.strip()


def rows_with_prefix(host, prefix: str) -> int:
    return int(psql(host, f"SELECT count(*) FROM refapp_rows WHERE key LIKE '{prefix}%'"))


def celery(host, pool: str, *args: str):
    """Run `celery --app ... <args>` inside a pool's container (its environment, its broker)."""
    return host.run(
        f"docker exec celery-worker-{pool} celery --app={APP_MODULE} " + " ".join(_q(a) for a in args)
    )


def task_state(host, task_id: str, source: str) -> str:
    status, body, _ = https(host, [{"method": "GET", "path": f"/api/tasks/{task_id}", "source": source}], 1)[0]
    assert status == 200, body
    return json.loads(body)["state"]


def exclusive_pool(pools: list[dict]) -> dict:
    """The last pool of the plan whose queues no other pool consumes (stopping it leaves them unconsumed)."""
    shared = {q for p in pools for q in p["queues"] if sum(q in o["queues"] for o in pools) > 1}
    return next(p for p in reversed(pools) if not set(p["queues"]) & shared)


def ansible_playbook(playbook: str, *args: str) -> subprocess.CompletedProcess:
    """Run one of the repository's playbooks against the Molecule instance."""
    inventory = os.environ.get("MOLECULE_INVENTORY_FILE")
    assert inventory, "MOLECULE_INVENTORY_FILE is not set: run these checks with `molecule verify`"
    return subprocess.run(
        ["ansible-playbook", "-i", inventory, str(ROOT / "playbooks" / playbook), *args],
        capture_output=True,
        text=True,
        timeout=1800,
    )
