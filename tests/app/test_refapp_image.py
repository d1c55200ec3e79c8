"""The reference app image (compose/app), checked with Docker only.

No PostgreSQL, PgBouncer or Redis is started here (there is no registry to
pull them from): these tests prove what the image alone can prove — it
imports, applies its Celery configuration from the environment, refuses bad
configuration, reports unreachable dependencies on /healthz, and runs
unprivileged. The full chain is exercised once the compose stack runs on a
converged host.

    .venv/bin/pytest tests/app -v

The image is built (or reused: every layer is cached) by
scripts/build-app-image.sh as celery-stack/app:0.0.0-test; set
REFAPP_IMAGE=celery-stack/app:VERSION to test an existing image instead.
Skipped when Docker is unavailable.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TEST_VERSION = "0.0.0-test"
APP_UID = 10001
SECRET = "pw-must-not-leak"
# Closed ports on the container's own loopback (it runs with --network none).
DOWN_ENV = {
    "DATABASE_URL": f"postgresql://app:{SECRET}@127.0.0.1:1/app",
    "CELERY_BROKER_URL": f"redis://app:{SECRET}@127.0.0.1:2/0",
    "CELERY_RESULT_BACKEND": f"redis://app:{SECRET}@127.0.0.1:3/1",
}


def _docker_ok() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "info"], capture_output=True, timeout=60).returncode == 0


pytestmark = pytest.mark.skipif(not _docker_ok(), reason="docker is not available")


def docker(*args: str, check: bool = True, timeout: int = 120) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        pytest.fail(f"docker {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def env_args(env: dict[str, str]) -> list[str]:
    return [arg for name, value in env.items() for arg in ("-e", f"{name}={value}")]


def run_python(image: str, code: str, env: dict[str, str] | None = None, check: bool = True):
    return docker("run", "--rm", "--network", "none", *env_args(env or {}), image, "python", "-c", code, check=check)


@pytest.fixture(scope="module")
def image() -> str:
    given = os.environ.get("REFAPP_IMAGE")
    if given:
        docker("image", "inspect", given)
        return given
    proc = subprocess.run(
        [str(ROOT / "scripts/build-app-image.sh"), TEST_VERSION],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if proc.returncode != 0:
        pytest.fail(f"scripts/build-app-image.sh failed:\n{proc.stdout}\n{proc.stderr}")
    return f"celery-stack/app:{TEST_VERSION}"


HTTP = """
import json, sys, urllib.error, urllib.request
method, path, body = sys.argv[1], sys.argv[2], sys.argv[3]
request = urllib.request.Request("http://127.0.0.1:8000" + path, method=method,
    data=body.encode() if body else None, headers={"Content-Type": "application/json"})
try:
    with urllib.request.urlopen(request, timeout=30) as response:
        status, text = response.status, response.read().decode()
except urllib.error.HTTPError as exc:
    status, text = exc.code, exc.read().decode()
print(json.dumps({"status": status, "body": json.loads(text)}))
"""


class Api:
    """The API container, reached from inside (python urllib: no curl in the image)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def request(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        proc = docker("exec", self.name, "python", "-c", HTTP, method, path, json.dumps(body) if body else "")
        answer = json.loads(proc.stdout)
        return answer["status"], answer["body"]


@pytest.fixture(scope="module")
def api(image: str):
    name = f"refapp-test-{uuid.uuid4().hex[:8]}"
    docker("run", "-d", "--name", name, "--network", "none", *env_args(DOWN_ENV), image)
    try:
        deadline = time.monotonic() + 90  # uvicorn starts in 1-3 s; the machine may be busy
        while True:
            probe = docker("exec", name, "python", "-m", "refapp.healthcheck", check=False)
            if "Connection refused" not in probe.stdout or time.monotonic() > deadline:
                break
            if docker("inspect", "-f", "{{.State.Running}}", name).stdout.strip() != "true":
                pytest.fail(f"the API container exited:\n{docker('logs', name, check=False).stderr}")
            time.sleep(1)
        yield Api(name)
    finally:
        docker("rm", "-f", name, check=False)


def test_modules_import(image: str) -> None:
    proc = run_python(image, "import refapp.api, refapp.tasks, refapp.celery_app, refapp.migrate, flower; print('ok')")
    assert proc.stdout.strip() == "ok"


CONFIG_DUMP = """
import json
from refapp.celery_app import app
app.loader.import_default_modules()
keys = ["broker_url", "result_backend", "task_serializer", "result_serializer", "accept_content",
        "result_accept_content", "timezone", "enable_utc", "task_acks_late", "task_reject_on_worker_lost",
        "worker_prefetch_multiplier", "task_soft_time_limit", "task_time_limit", "broker_transport_options",
        "broker_connection_retry_on_startup", "worker_send_task_events", "task_send_sent_event",
        "task_track_started", "result_expires", "task_default_queue", "task_default_priority", "task_routes",
        "result_backend_always_retry", "result_backend_max_retries"]
conf = {key: app.conf[key] for key in keys}
conf["result_expires"] = int(conf["result_expires"].total_seconds()) if hasattr(conf["result_expires"], "total_seconds") \\
    else conf["result_expires"]
conf["backend_class"] = type(app.backend).__name__
conf["long_task_queue"] = app.amqp.router.route({}, "refapp.long_task")["queue"].name
conf["tasks"] = sorted(name for name in app.tasks if name.startswith("refapp."))
print(json.dumps(conf))
"""


def test_celery_config_comes_from_env(image: str) -> None:
    env = {
        "CELERY_BROKER_URL": "redis://app:secret@broker:6379/0",
        "CELERY_RESULT_BACKEND": "redis://app:secret@cache:6380/1",
        "CELERY_PREFETCH_MULTIPLIER": "4",
        "CELERY_SOFT_TIME_LIMIT": "50",
        "CELERY_TIME_LIMIT": "60",
        "CELERY_VISIBILITY_TIMEOUT": "7200",
        "CELERY_RESULT_EXPIRES": "600",
        "CELERY_DEFAULT_QUEUE": "high",
        "CELERY_DEFAULT_PRIORITY": "5",
        "CELERY_TASK_ROUTES": json.dumps({"refapp.long_task": {"queue": "low"}}),
    }
    conf = json.loads(run_python(image, CONFIG_DUMP, env).stdout)
    assert conf["broker_url"] == env["CELERY_BROKER_URL"]
    assert conf["result_backend"] == env["CELERY_RESULT_BACKEND"]
    assert (conf["task_serializer"], conf["result_serializer"]) == ("json", "json")
    assert conf["accept_content"] == ["json"] and conf["result_accept_content"] == ["json"]
    assert (conf["timezone"], conf["enable_utc"]) == ("UTC", True)
    assert conf["task_acks_late"] is True and conf["task_reject_on_worker_lost"] is True
    assert conf["worker_prefetch_multiplier"] == 4
    assert (conf["task_soft_time_limit"], conf["task_time_limit"]) == (50, 60)
    assert conf["broker_transport_options"] == {
        "visibility_timeout": 7200,
        "queue_order_strategy": "priority",
        "priority_steps": list(range(10)),
        "sep": ":",
        "socket_connect_timeout": 5,
        "socket_timeout": 30,
        "socket_keepalive": True,
    }
    assert conf["broker_connection_retry_on_startup"] is True
    assert conf["worker_send_task_events"] and conf["task_send_sent_event"] and conf["task_track_started"]
    assert conf["result_expires"] == 600
    assert conf["task_default_queue"] == "high"
    assert conf["task_default_priority"] == 5
    assert conf["task_routes"] == {"refapp.long_task": {"queue": "low"}}
    assert conf["long_task_queue"] == "low"
    assert conf["backend_class"] == "ResultBackend"  # no SUBSCRIBE at send time, reads fail fast
    # a worker retries storing STARTED/results instead of dropping the task (celery#8588)
    assert (conf["result_backend_always_retry"], conf["result_backend_max_retries"]) == (True, 20)
    assert conf["tasks"] == ["refapp.fail_task", "refapp.long_task", "refapp.write_row"]


def test_celery_config_defaults(image: str) -> None:
    conf = json.loads(run_python(image, CONFIG_DUMP).stdout)
    assert conf["worker_prefetch_multiplier"] == 1
    assert (conf["task_soft_time_limit"], conf["task_time_limit"]) == (300, 360)
    assert conf["broker_transport_options"]["visibility_timeout"] == 3600
    assert conf["task_default_queue"] == "default"
    assert conf["task_routes"] is None and conf["task_default_priority"] is None
    assert conf["long_task_queue"] == "default"


def test_processes_without_limits_accept_a_short_visibility_timeout(image: str) -> None:
    # The API, beat and Flower run no task: only a worker's own limits must fit.
    conf = json.loads(run_python(image, CONFIG_DUMP, {"CELERY_VISIBILITY_TIMEOUT": "180"}).stdout)
    assert conf["broker_transport_options"]["visibility_timeout"] == 180


REFUSALS = """
from refapp.celery_app import ConfigError, config_from_env
for env in [
    {"CELERY_TIME_LIMIT": "300", "CELERY_SOFT_TIME_LIMIT": "300"},
    {"CELERY_TIME_LIMIT": "900", "CELERY_VISIBILITY_TIMEOUT": "600"},
    {"CELERY_PREFETCH_MULTIPLIER": "4", "CELERY_TIME_LIMIT": "1000", "CELERY_VISIBILITY_TIMEOUT": "3600"},
    {"CELERY_PREFETCH_MULTIPLIER": "0"},
    {"CELERY_SOFT_TIME_LIMIT": "five"},
    {"CELERY_DEFAULT_PRIORITY": "10"},
    {"CELERY_TASK_ROUTES": "{not json"},
    {"CELERY_TASK_ROUTES": '{"refapp.long_task": "low"}'},
]:
    try:
        config_from_env(env)
        print("ACCEPTED", env)
    except ConfigError as exc:
        print(exc)
"""


def test_bad_celery_config_is_refused_naming_the_variable(image: str) -> None:
    lines = run_python(image, REFUSALS).stdout.splitlines()
    assert not [line for line in lines if line.startswith("ACCEPTED")], lines
    assert lines[0] == "CELERY_TIME_LIMIT=300 must be greater than CELERY_SOFT_TIME_LIMIT=300"
    assert lines[1].startswith(
        "CELERY_VISIBILITY_TIMEOUT=600 must exceed CELERY_TIME_LIMIT=900 x CELERY_PREFETCH_MULTIPLIER=1"
    )
    assert "= 4000 s" in lines[2]
    assert lines[3] == "CELERY_PREFETCH_MULTIPLIER=0 must be >= 1"
    assert lines[4] == "CELERY_SOFT_TIME_LIMIT='five' is not an integer"
    assert lines[5] == "CELERY_DEFAULT_PRIORITY=10 must be between 0 and 9"
    assert lines[6].startswith("CELERY_TASK_ROUTES is not valid JSON")
    assert lines[7].startswith("CELERY_TASK_ROUTES must be a JSON object")
    # ... and a worker (any process importing the app) does not start with it.
    proc = run_python(
        image, "import refapp.celery_app", {"CELERY_TIME_LIMIT": "10", "CELERY_SOFT_TIME_LIMIT": "20"}, check=False
    )
    assert proc.returncode != 0 and "CELERY_TIME_LIMIT=10 must be greater" in proc.stderr


BEAT = """
import json
from refapp.celery_app import ConfigError, config_from_env
good = {"heartbeat": {"task": "refapp.write_row", "every": 30, "args": ["hb"], "options": {"queue": "low"}},
        "nightly": {"task": "refapp.fail_task", "crontab": {"minute": 0, "hour": 2}}}
schedule = config_from_env({"CELERY_BEAT_SCHEDULE": json.dumps(good)})["beat_schedule"]
print(json.dumps({name: [e["task"], repr(e["schedule"]), e["args"], e["options"]] for name, e in schedule.items()}))
for bad in [
    "[1]",
    {"x": {"every": 5}},
    {"x": {"task": "t", "every": 5, "crontab": {"minute": 1}}},
    {"x": {"task": "t", "every": -1}},
    {"x": {"task": "t", "crontab": {"minute": "99"}}},
    {"x": {"task": "t", "every": 5, "queue": "low"}},
]:
    try:
        config_from_env({"CELERY_BEAT_SCHEDULE": bad if isinstance(bad, str) else json.dumps(bad)})
        print("ACCEPTED", bad)
    except ConfigError as exc:
        print(exc)
"""


def test_beat_schedule_comes_from_env(image: str) -> None:
    first, *refusals = run_python(image, BEAT).stdout.splitlines()
    schedule = json.loads(first)
    assert schedule["heartbeat"][0] == "refapp.write_row"
    assert schedule["heartbeat"][1] == "30.0"
    assert schedule["heartbeat"][2:] == [["hb"], {"queue": "low"}]
    assert schedule["nightly"][1].startswith("<crontab: 0 2 ")
    assert not [line for line in refusals if line.startswith("ACCEPTED")], refusals
    assert refusals[0].startswith("CELERY_BEAT_SCHEDULE must be a JSON object")
    assert refusals[1] == "CELERY_BEAT_SCHEDULE['x'] must be an object with a task name"
    assert refusals[2] == "CELERY_BEAT_SCHEDULE['x'] needs exactly one of every (seconds) or crontab"
    assert refusals[3].startswith("CELERY_BEAT_SCHEDULE['x'].every=-1 must be a positive")
    assert refusals[4].startswith("CELERY_BEAT_SCHEDULE['x'].crontab is invalid")
    assert refusals[5].startswith("CELERY_BEAT_SCHEDULE['x'] has unknown keys ['queue']")


def test_healthz_names_both_failing_components(api: Api) -> None:
    status, body = api.request("GET", "/healthz")
    assert status == 503
    assert set(body) == {"database", "broker"}
    assert body["database"].startswith("error") and body["broker"].startswith("error")
    assert SECRET not in json.dumps(body)


def test_version_comes_from_the_image(api: Api, image: str) -> None:
    status, body = api.request("GET", "/version")
    labels = json.loads(docker("image", "inspect", "-f", "{{json .Config.Labels}}", image).stdout)
    assert status == 200
    assert body == {"version": labels["org.opencontainers.image.version"]}
    if not os.environ.get("REFAPP_IMAGE"):
        assert body == {"version": TEST_VERSION}


def test_api_answers_503_not_500_when_dependencies_are_down(api: Api) -> None:
    start = time.monotonic()
    status, body = api.request("POST", "/api/tasks", {"kind": "write", "key": "k1", "queue": "high", "priority": 3})
    assert (status, body) == (503, {"detail": {"broker": "unavailable"}})
    assert time.monotonic() - start < 20  # kombu's short publish retries, no hang
    assert api.request("GET", "/api/rows/count") == (503, {"detail": {"database": "unavailable"}})
    assert api.request("GET", "/api/tasks/some-id") == (503, {"detail": {"result_backend": "unavailable"}})


@pytest.mark.parametrize(
    "body",
    [
        {"kind": "write", "key": "k", "priority": 10},
        {"kind": "write", "key": "k", "priority": -1},
        {"kind": "write"},
        {"kind": "fail", "seconds": 1},
        {"kind": "sleep", "key": "k"},
        {"kind": "write", "key": "k", "queue": "bad queue"},
    ],
)
def test_bad_task_requests_are_rejected(api: Api, body: dict) -> None:
    status, _ = api.request("POST", "/api/tasks", body)
    assert status == 422


PROCESS_UIDS = """
import json, os
processes = []
for pid in sorted(int(p) for p in os.listdir("/proc") if p.isdigit()):
    try:
        cmd = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\\0", b" ").decode().strip()
        processes.append([pid, os.stat(f"/proc/{pid}").st_uid, cmd])
    except OSError:
        pass  # gone meanwhile
print(json.dumps(processes))
"""


def test_runs_unprivileged(api: Api, image: str) -> None:
    assert docker("image", "inspect", "-f", "{{.Config.User}}", image).stdout.strip() == f"{APP_UID}:{APP_UID}"
    processes = json.loads(docker("exec", api.name, "python", "-c", PROCESS_UIDS).stdout)
    assert [(pid, uid) for pid, uid, cmd in processes if cmd.startswith("tini --")] == [(1, APP_UID)]
    assert [
        uid
        for pid, uid, cmd in processes
        if cmd.startswith("/opt/venv/bin/python3 /opt/venv/bin/uvicorn refapp.api:app")
    ] == [APP_UID]
    assert {uid for pid, uid, cmd in processes} == {APP_UID}, processes
    # The code and the venv are root's, not writable by the app; no wheelhouse left in the image.
    check = "import os; print(os.access('/app/refapp', os.W_OK), os.access('/opt/venv/lib', os.W_OK), os.path.exists('/wheels'))"
    assert docker("exec", api.name, "python", "-c", check).stdout.split() == ["False", "False", "False"]


def test_migrate_fails_cleanly_without_database(image: str) -> None:
    proc = docker(
        "run",
        "--rm",
        "--network",
        "none",
        *env_args({**DOWN_ENV, "MIGRATE_WAIT_SECONDS": "0"}),
        image,
        "python",
        "-m",
        "refapp.migrate",
        check=False,
    )
    assert proc.returncode == 1
    assert "migration failed: OperationalError" in proc.stderr
