"""The HTTP side of the reference app (FastAPI, served by uvicorn).

Endpoints (compose/app/README.md has the details):

* ``POST /api/tasks``       enqueue refapp.write_row / long_task / fail_task
* ``GET /api/tasks/{id}``   state and result from the result backend
* ``GET /api/rows/count``   rows written so far; ``GET /api/rows/{key}`` one row
* ``GET /healthz``          SELECT 1 through PgBouncer and PING the broker
* ``GET /version``          APP_VERSION

Handlers that talk to the broker or the database are plain ``def``: FastAPI
runs them in its thread pool, so blocking I/O never stalls the event loop.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Literal

import psycopg
import redis
from celery.result import AsyncResult
from fastapi import FastAPI, HTTPException
from fastapi.responses import JSONResponse
from kombu.exceptions import OperationalError as BrokerError
from pydantic import BaseModel, ConfigDict, Field, model_validator

from refapp import db, tasks
from refapp.celery_app import app as celery_app

log = logging.getLogger("refapp.api")
if not logging.getLogger().handlers and not log.handlers:
    # uvicorn configures only its own loggers: give refapp's a format like theirs.
    _handler = logging.StreamHandler()
    _handler.setFormatter(logging.Formatter("%(levelname)s:     %(name)s: %(message)s"))
    log.addHandler(_handler)
    log.setLevel(logging.INFO)

DEFAULT_LONG_SECONDS = 1.0


def _healthz_timeout() -> int:
    try:
        return max(1, int(os.environ.get("HEALTHZ_TIMEOUT", "2")))
    except ValueError:
        return 2


class TaskRequest(BaseModel):
    """Body of POST /api/tasks."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["write", "long", "fail"]
    # None: the task's route (CELERY_TASK_ROUTES) or CELERY_DEFAULT_QUEUE.
    queue: str | None = Field(default=None, min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.:-]+$")
    # Redis priorities: 0 is the highest, 9 the lowest.
    priority: int | None = Field(default=None, ge=0, le=9)
    key: str | None = Field(default=None, min_length=1, max_length=200)
    seconds: float | None = Field(default=None, ge=0, le=86400)

    @model_validator(mode="after")
    def _check_kind(self) -> TaskRequest:
        if self.kind in ("write", "long") and self.key is None:
            raise ValueError(f"key is required for kind {self.kind!r}")
        if self.kind != "long" and self.seconds is not None:
            raise ValueError("seconds applies to kind 'long' only")
        return self


app = FastAPI(title="celery-stack reference app", version=os.environ.get("APP_VERSION", "unknown"))


@app.post("/api/tasks", status_code=202)
def create_task(request: TaskRequest) -> dict[str, str]:
    if request.kind == "write":
        task, args = tasks.write_row, [request.key]
    elif request.kind == "long":
        seconds = DEFAULT_LONG_SECONDS if request.seconds is None else request.seconds
        task, args = tasks.long_task, [request.key, seconds]
    else:
        task, args = tasks.fail_task, []
    options: dict[str, Any] = {}
    if request.queue is not None:
        options["queue"] = request.queue
    if request.priority is not None:
        options["priority"] = request.priority
    try:
        result = task.apply_async(args=args, **options)
    except BrokerError as exc:
        log.error("enqueue %s failed: %s", task.name, exc)
        raise HTTPException(status_code=503, detail={"broker": "unavailable"}) from None
    return {"id": result.id}


@app.get("/api/tasks/{task_id}")
def get_task(task_id: str) -> dict[str, Any]:
    result = AsyncResult(task_id, app=celery_app)
    try:
        state = result.state
        value = result.result
    except (redis.RedisError, OSError) as exc:
        log.error("result backend failed for %s: %s", task_id, exc)
        raise HTTPException(status_code=503, detail={"result_backend": "unavailable"}) from None
    if isinstance(value, BaseException):
        value = f"{type(value).__name__}: {value}"
    elif state == "STARTED":
        value = None  # the worker's meta (hostname, pid), not a result
    return {"id": task_id, "state": state, "result": value}


@app.get("/api/rows/count")
def rows_count() -> dict[str, int]:
    try:
        return {"count": db.count_rows()}
    except psycopg.Error as exc:
        log.error("count rows failed: %s", exc)
        raise HTTPException(status_code=503, detail={"database": "unavailable"}) from None


@app.get("/api/rows/{key}")
def row(key: str) -> dict[str, Any]:
    try:
        found = db.get_row(key)
    except psycopg.Error as exc:
        log.error("read row failed: %s", exc)
        raise HTTPException(status_code=503, detail={"database": "unavailable"}) from None
    if found is None:
        raise HTTPException(status_code=404, detail={"key": key, "error": "no such row"})
    return found


def _check(component: str, probe) -> str:
    try:
        probe()
    except Exception as exc:  # noqa: BLE001 - any failure makes the component unhealthy
        # Details (hosts, ports) go to the log, not to whoever can reach /healthz.
        log.warning("healthz: %s failed: %s: %s", component, type(exc).__name__, exc)
        return f"error: {type(exc).__name__}"
    return "ok"


def _ping_broker(timeout: int) -> None:
    client = redis.Redis.from_url(celery_app.conf.broker_url, socket_connect_timeout=timeout, socket_timeout=timeout)
    try:
        client.ping()
    finally:
        client.close()


@app.get("/healthz")
def healthz() -> JSONResponse:
    timeout = _healthz_timeout()
    status = {
        "database": _check("database", lambda: db.ping(timeout=timeout)),
        "broker": _check("broker", lambda: _ping_broker(timeout)),
    }
    healthy = all(value == "ok" for value in status.values())
    return JSONResponse(status, status_code=200 if healthy else 503)


@app.get("/version")
def version() -> dict[str, str]:
    return {"version": os.environ.get("APP_VERSION", "unknown")}
