"""The reference tasks.

Every task may run more than once: with acks_late a task is acknowledged only
when it ends, so a worker killed (or restarted) in the middle of it, or a
broker redelivery after visibility_timeout, runs it again. The writes are
therefore idempotent: one row per key, whatever the number of runs.
"""

from __future__ import annotations

import logging
import time

import psycopg
from celery.signals import worker_process_shutdown

from refapp import db
from refapp.celery_app import app

log = logging.getLogger(__name__)

SLEEP_STEP = 0.5  # seconds: long_task stays responsive to time limits and shutdown

# Lost connections (PgBouncer or PostgreSQL restarting, a failover) are retried
# with exponential backoff; the idempotent insert makes the retry safe.
_RETRY = {
    "autoretry_for": (psycopg.OperationalError,),
    "retry_backoff": 1,
    "retry_backoff_max": 60,
    "retry_jitter": True,
    "max_retries": 5,
}


@app.task(name="refapp.write_row", bind=True, **_RETRY)
def write_row(self, key: str) -> bool:
    """Write the row ``key`` once; returns whether this run inserted it."""
    inserted = db.insert_row(key, attempts=self.request.retries + 1)
    log.info("refapp.write_row key=%s inserted=%s", key, inserted)
    return inserted


@app.task(name="refapp.long_task", bind=True, **_RETRY)
def long_task(self, key: str, seconds: float) -> bool:
    """Work for ``seconds`` (sleeping in small steps), then write the row ``key`` once.

    Killed or restarted midway, the task is redelivered and starts over; the
    row is still written exactly once.
    """
    deadline = time.monotonic() + max(0.0, float(seconds))
    while (remaining := deadline - time.monotonic()) > 0:
        time.sleep(min(SLEEP_STEP, remaining))
    inserted = db.insert_row(key, attempts=self.request.retries + 1)
    log.info("refapp.long_task key=%s seconds=%s inserted=%s", key, seconds, inserted)
    return inserted


@app.task(name="refapp.fail_task")
def fail_task() -> None:
    """Always fails: proves that failures reach the result backend and Flower."""
    raise RuntimeError("refapp.fail_task fails on purpose")


@worker_process_shutdown.connect
def _close_connection(**_: object) -> None:
    db.close_worker_connection()
