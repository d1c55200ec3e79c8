"""The Celery application, configured only from environment variables.

Every variable is documented in compose/app/README.md. Values that are not
per-deployment (serializers, acks_late, events, ...) are fixed here on
purpose: they are what makes redelivery safe and monitoring possible, and the
capacity plan (celery_stack/plan.py) assumes them.

Start a worker with `celery -A refapp.celery_app worker -Q high,default`,
beat with `celery -A refapp.celery_app beat`, Flower with
`celery -A refapp.celery_app flower`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from celery import Celery, states
from celery.backends.redis import RedisBackend
from celery.schedules import crontab

# Redis priorities: kombu emulates them with one list per step; 0 is the
# HIGHEST priority and 9 the lowest (the reverse of RabbitMQ).
PRIORITY_STEPS = list(range(10))

DEFAULTS = {
    "CELERY_BROKER_URL": "redis://127.0.0.1:6379/0",
    "CELERY_RESULT_BACKEND": "redis://127.0.0.1:6380/1",
    "CELERY_DEFAULT_QUEUE": "default",
    "CELERY_PREFETCH_MULTIPLIER": "1",
    "CELERY_SOFT_TIME_LIMIT": "300",
    "CELERY_TIME_LIMIT": "360",
    "CELERY_VISIBILITY_TIMEOUT": "3600",
    "CELERY_RESULT_EXPIRES": "86400",
}


class ConfigError(ValueError):
    """An environment variable has a value the app cannot run with."""


def _get(env: Mapping[str, str], name: str) -> str:
    value = env.get(name, "").strip()
    return value if value else DEFAULTS[name]


def _int(env: Mapping[str, str], name: str, minimum: int, maximum: int | None = None) -> int:
    raw = _get(env, name)
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer") from None
    if value < minimum or (maximum is not None and value > maximum):
        bounds = f">= {minimum}" if maximum is None else f"between {minimum} and {maximum}"
        raise ConfigError(f"{name}={value} must be {bounds}")
    return value


def _json(env: Mapping[str, str], name: str) -> tuple[Any, str] | None:
    """The parsed JSON value of ``name`` and its text, or None when unset."""
    raw = env.get(name, "").strip()
    if not raw:
        return None
    try:
        return json.loads(raw), raw
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{name} is not valid JSON: {exc}") from None


def _routes(env: Mapping[str, str]) -> dict[str, Any] | None:
    parsed = _json(env, "CELERY_TASK_ROUTES")
    if parsed is None:
        return None
    routes, raw = parsed
    if not isinstance(routes, dict) or not all(
        isinstance(route, dict) and isinstance(route.get("queue"), str) and route["queue"] for route in routes.values()
    ):
        expected = '{"task name or glob": {"queue": "name", ...}}'
        raise ConfigError(f"CELERY_TASK_ROUTES must be a JSON object {expected}, got {raw!r}")
    return routes


CRONTAB_FIELDS = ("minute", "hour", "day_of_week", "day_of_month", "month_of_year")
BEAT_ENTRY_KEYS = {"task", "every", "crontab", "args", "kwargs", "options"}


def _beat_schedule(env: Mapping[str, str]) -> dict[str, Any] | None:
    """beat_schedule from CELERY_BEAT_SCHEDULE (JSON), e.g.

    {"nightly-backup": {"task": "app.backup", "crontab": {"minute": 0, "hour": 2}},
     "heartbeat": {"task": "refapp.write_row", "every": 30, "args": ["hb"], "options": {"queue": "low"}}}

    Each entry has ``task`` and exactly one of ``every`` (seconds) or
    ``crontab`` (Celery's crontab fields, UTC); ``args``, ``kwargs`` and
    ``options`` (apply_async options such as queue) are optional.
    """
    parsed = _json(env, "CELERY_BEAT_SCHEDULE")
    if parsed is None:
        return None
    entries, raw = parsed
    if not isinstance(entries, dict):
        raise ConfigError(f"CELERY_BEAT_SCHEDULE must be a JSON object of entries by name, got {raw!r}")
    schedule: dict[str, Any] = {}
    for name, entry in entries.items():
        where = f"CELERY_BEAT_SCHEDULE[{name!r}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("task"), str) or not entry["task"]:
            raise ConfigError(f"{where} must be an object with a task name")
        unknown = set(entry) - BEAT_ENTRY_KEYS
        if unknown:
            raise ConfigError(f"{where} has unknown keys {sorted(unknown)}; known: {sorted(BEAT_ENTRY_KEYS)}")
        if ("every" in entry) == ("crontab" in entry):
            raise ConfigError(f"{where} needs exactly one of every (seconds) or crontab")
        if "every" in entry:
            every = entry["every"]
            if isinstance(every, bool) or not isinstance(every, (int, float)) or every <= 0:
                raise ConfigError(f"{where}.every={every!r} must be a positive number of seconds")
            when: Any = float(every)
        else:
            fields = entry["crontab"]
            if not isinstance(fields, dict) or set(fields) - set(CRONTAB_FIELDS):
                raise ConfigError(f"{where}.crontab must be an object with keys among {list(CRONTAB_FIELDS)}")
            try:
                when = crontab(**{key: str(value) for key, value in fields.items()})
            except ValueError as exc:
                raise ConfigError(f"{where}.crontab is invalid: {exc}") from None
        args, kwargs, options = entry.get("args", []), entry.get("kwargs", {}), entry.get("options", {})
        if not isinstance(args, list) or not isinstance(kwargs, dict) or not isinstance(options, dict):
            raise ConfigError(f"{where}: args must be a list, kwargs and options objects")
        schedule[name] = {"task": entry["task"], "schedule": when, "args": args, "kwargs": kwargs, "options": options}
    return schedule


def config_from_env(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Celery settings for the environment ``env`` (default: os.environ).

    Raises ConfigError naming the variable when a value is unusable, so that
    a wrong deployment fails at start instead of misbehaving under load.
    """
    env = os.environ if env is None else env
    prefetch = _int(env, "CELERY_PREFETCH_MULTIPLIER", 1)
    soft = _int(env, "CELERY_SOFT_TIME_LIMIT", 1)
    hard = _int(env, "CELERY_TIME_LIMIT", 1)
    visibility = _int(env, "CELERY_VISIBILITY_TIMEOUT", 1)
    if hard <= soft:
        raise ConfigError(f"CELERY_TIME_LIMIT={hard} must be greater than CELERY_SOFT_TIME_LIMIT={soft}")
    # With acks_late a task is acknowledged when it ends; a reserved (prefetched)
    # task waits behind the others. Redis redelivers any unacknowledged task
    # after visibility_timeout, so a shorter one runs tasks twice while they run.
    # Checked where the limits are given, i.e. for a worker: the API, beat and
    # Flower run no task, and the defaults are not their limits.
    worker_limits = bool(env.get("CELERY_TIME_LIMIT", "").strip())
    if worker_limits and visibility <= hard * prefetch:
        raise ConfigError(
            f"CELERY_VISIBILITY_TIMEOUT={visibility} must exceed CELERY_TIME_LIMIT={hard} x "
            f"CELERY_PREFETCH_MULTIPLIER={prefetch} = {hard * prefetch} s, or running tasks are redelivered"
        )
    config: dict[str, Any] = {
        "broker_url": _get(env, "CELERY_BROKER_URL"),
        "result_backend": _get(env, "CELERY_RESULT_BACKEND"),
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "timezone": "UTC",
        "enable_utc": True,
        # Redelivery instead of loss: acknowledge after the task ran, and give
        # a task back to the queue when its worker process dies under it.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": prefetch,
        "task_soft_time_limit": soft,
        "task_time_limit": hard,
        "broker_transport_options": {
            "visibility_timeout": visibility,
            "queue_order_strategy": "priority",
            "priority_steps": PRIORITY_STEPS,
            "sep": ":",
            # Without a socket timeout a publish waits forever on a broker
            # connection that vanished without a FIN (failover, NAT, firewall);
            # kombu's BRPOP blocks 1 s at a time, well below it.
            "socket_connect_timeout": 5,
            "socket_timeout": 30,
            "socket_keepalive": True,
        },
        "broker_connection_retry_on_startup": True,
        # A task whose acknowledgement cannot reach a lost broker will be
        # redelivered anyway: stop it rather than run it twice at once.
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        # Events for Flower and monitoring; STARTED state for the API.
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "task_track_started": True,
        "result_expires": _int(env, "CELERY_RESULT_EXPIRES", 1),
        # Fail fast instead of hanging a request for redis-py's 120 s default.
        "redis_socket_connect_timeout": 5,
        "redis_socket_timeout": 10,
        # Result stores retry a lost cache instance (see ResultBackend):
        # backoff with full jitter from 10 ms up to 10 s, 20 retries.
        "result_backend_always_retry": True,
        "result_backend_max_retries": 20,
        "result_backend_base_sleep_between_retries_ms": 10,
        "result_backend_max_sleep_between_retries_ms": 10000,
        "task_default_queue": _get(env, "CELERY_DEFAULT_QUEUE"),
    }
    if env.get("CELERY_DEFAULT_PRIORITY", "").strip():
        config["task_default_priority"] = _int(env, "CELERY_DEFAULT_PRIORITY", 0, 9)
    routes = _routes(env)
    if routes is not None:
        config["task_routes"] = routes
    beat_schedule = _beat_schedule(env)
    if beat_schedule is not None:
        config["beat_schedule"] = beat_schedule
    return config


class ResultBackend(RedisBackend):
    """Celery's Redis result backend, adjusted to the cache instance going away.

    * No subscription at send time. The Redis backend SUBSCRIBEs to a task's
      result channel whenever a process sends a task, in case it later waits
      on ``.get()``. The API never waits (clients poll GET /api/tasks/{id}),
      and that subscription made the cache instance a hard dependency of
      enqueueing: with it down, POST /api/tasks hung ~20 s, failed, and left
      the process's result consumer unusable ("The Celery application must be
      restarted"). ``.get()`` still works: it reads the stored result before
      it subscribes.
    * Writes retry, reads do not. A worker stores STARTED before the task
      body runs (task_track_started); if that fails the task is acknowledged
      and lost (celery/celery#8588), so stores retry a lost connection
      (result_backend_always_retry, result_backend_max_retries: about a
      minute). Reads (the API's GET /api/tasks/{id}) fail at once instead of
      holding a request for that minute.
    """

    def on_task_call(self, producer, task_id):
        return {}

    def get_task_meta(self, task_id, cache=True):
        # BaseBackend.get_task_meta without the retry loop (stores keep theirs).
        self._ensure_not_eager()
        if cache and task_id in self._cache:
            return self._cache[task_id]
        meta = self._get_task_meta_for(task_id)
        if cache and meta.get("status") == states.SUCCESS:
            self._cache[task_id] = meta
        return meta


app = Celery("refapp", include=["refapp.tasks"])
app.conf.update(config_from_env())
# redis:// and rediss:// result backend URLs use ResultBackend.
app.loader.override_backends = {
    **app.loader.override_backends,
    "redis": "refapp.celery_app:ResultBackend",
    "rediss": "refapp.celery_app:ResultBackend",
}
