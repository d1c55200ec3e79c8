"""PostgreSQL access through PgBouncer in transaction pooling mode.

PgBouncer gives a client a server connection for one transaction at a time,
so nothing may outlive a transaction on the server side:

* ``prepare_threshold=None``: psycopg never creates named server-side
  prepared statements (a statement prepared in one server connection does
  not exist in the next one; Debian 12's PgBouncer 1.18 cannot track them,
  1.21+ only with max_prepared_statements). Parameters are still bound
  server-side through the unnamed statement, which is transaction-safe.
* autocommit: every statement is its own short transaction; no idle
  transaction holds a server connection.
* no SET, LISTEN, advisory locks, temporary tables or WITH HOLD cursors:
  session state would stick to whichever server connection ran it. Per-role
  settings such as statement_timeout belong in ``ALTER ROLE ... SET``.

The API opens one short connection per request (cheap: PgBouncer keeps the
server connections); each Celery worker process keeps one connection (a
per-process pool of size 1, created lazily after the fork, dropped and
re-opened after an error). A client connection costs PgBouncer a few kB and
no PostgreSQL backend, which is what the capacity plan's max_client_conn
counts.
"""

from __future__ import annotations

import os
from datetime import datetime
from typing import Any

import psycopg

DEFAULT_URL = "postgresql://refapp@127.0.0.1:6432/refapp"

TABLE_SQL = """
CREATE TABLE IF NOT EXISTS refapp_rows (
    key text PRIMARY KEY,
    written_at timestamptz NOT NULL DEFAULT now(),
    attempts integer NOT NULL DEFAULT 1,
    runs integer NOT NULL DEFAULT 1
)
"""
# Tables created before the runs column existed.
UPGRADE_SQL = "ALTER TABLE refapp_rows ADD COLUMN IF NOT EXISTS runs integer NOT NULL DEFAULT 1"
# The first run inserts the row; every later run of the same key (a
# redelivery, a duplicate) only counts itself in runs: at-least-once
# delivery made visible, without a second row.
INSERT_SQL = (
    "INSERT INTO refapp_rows (key, attempts) VALUES (%s, %s) "
    "ON CONFLICT (key) DO UPDATE SET runs = refapp_rows.runs + 1 RETURNING runs"
)


def database_url(url: str | None = None) -> str:
    """``url``, else DATABASE_URL, as libpq understands it (an SQLAlchemy "+driver" suffix is dropped)."""
    url = (url or "").strip() or os.environ.get("DATABASE_URL", "").strip() or DEFAULT_URL
    scheme, sep, rest = url.partition("://")
    return f"{scheme.split('+', 1)[0]}{sep}{rest}" if sep else url


def connect(url: str | None = None, *, application_name: str = "refapp", timeout: int = 5) -> psycopg.Connection:
    """A PgBouncer-safe connection: autocommit, no server-side prepared statements."""
    return psycopg.connect(
        database_url(url),
        autocommit=True,
        prepare_threshold=None,
        connect_timeout=max(2, int(timeout)),  # libpq's minimum is 2 s
        application_name=application_name,
    )


_conn: psycopg.Connection | None = None
_conn_pid: int | None = None


def worker_connection() -> psycopg.Connection:
    """The connection of this process, opened on first use after a fork."""
    global _conn, _conn_pid
    if _conn is not None and _conn_pid != os.getpid():
        _conn = None  # inherited through fork: never use (or close) the parent's socket
    if _conn is not None and (_conn.closed or _conn.broken):
        close_worker_connection()
    if _conn is None:
        _conn = connect(application_name="refapp-worker")
        _conn_pid = os.getpid()
    return _conn


def close_worker_connection() -> None:
    global _conn
    conn, _conn = _conn, None
    if conn is not None and _conn_pid == os.getpid():
        try:
            conn.close()
        except psycopg.Error:
            pass


def insert_row(key: str, attempts: int = 1) -> bool:
    """Insert the row ``key`` once; True if this call inserted it.

    Idempotent: a task redelivered after a worker restart, or retried, runs
    this again and finds the row, so every key is written exactly once; the
    row's ``runs`` counts the runs that reached the database.
    """
    try:
        cur = worker_connection().execute(INSERT_SQL, (key, attempts))
        return cur.fetchone()[0] == 1
    except psycopg.OperationalError:
        close_worker_connection()  # the next attempt reconnects
        raise


def count_rows(url: str | None = None) -> int:
    with connect(url, application_name="refapp-api") as conn:
        return conn.execute("SELECT count(*) FROM refapp_rows").fetchone()[0]


def get_row(key: str, url: str | None = None) -> dict[str, Any] | None:
    with connect(url, application_name="refapp-api") as conn:
        row = conn.execute(
            "SELECT key, written_at, attempts, runs FROM refapp_rows WHERE key = %s", (key,)
        ).fetchone()
    if row is None:
        return None
    written_at: datetime = row[1]
    return {"key": row[0], "written_at": written_at.isoformat(), "attempts": row[2], "runs": row[3]}


def ping(url: str | None = None, timeout: int = 2) -> None:
    """SELECT 1 through DATABASE_URL; raises on any failure."""
    with connect(url, application_name="refapp-healthz", timeout=timeout) as conn:
        conn.execute("SELECT 1").fetchone()
