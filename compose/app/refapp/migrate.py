"""One-shot, idempotent migration: create the table refapp_rows (or add its runs column).

    python -m refapp.migrate

Connects to MIGRATION_DATABASE_URL, or DATABASE_URL when unset (a plain
CREATE TABLE IF NOT EXISTS in autocommit works through PgBouncer in
transaction mode too). Waits up to MIGRATE_WAIT_SECONDS (default 30) for the
database to accept connections, so that it can run as the first container of
a stack. Exits 0 when the table exists (created now or before), 1 otherwise.
"""

from __future__ import annotations

import logging
import os
import sys
import time

import psycopg
from psycopg import errors

from refapp import db

log = logging.getLogger("refapp.migrate")


def _wait_seconds() -> float:
    raw = os.environ.get("MIGRATE_WAIT_SECONDS", "").strip() or "30"
    try:
        return max(0.0, float(raw))
    except ValueError:
        raise SystemExit(f"refapp.migrate: MIGRATE_WAIT_SECONDS={raw!r} is not a number") from None


def migrate(url: str, wait_seconds: float) -> None:
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            with db.connect(url, application_name="refapp-migrate") as conn:
                try:
                    conn.execute(db.TABLE_SQL)
                except (errors.UniqueViolation, errors.DuplicateTable):
                    # Two migrations racing on CREATE TABLE IF NOT EXISTS: the
                    # other one created it, which is all we want.
                    pass
                conn.execute(db.UPGRADE_SQL)
                conn.execute("SELECT 1 FROM refapp_rows LIMIT 1")
            return
        except psycopg.OperationalError as exc:
            if time.monotonic() >= deadline:
                raise
            log.warning("database not ready (%s), retrying", str(exc).strip().splitlines()[0])
            time.sleep(1)


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    url = db.database_url(os.environ.get("MIGRATION_DATABASE_URL"))
    try:
        migrate(url, _wait_seconds())
    except psycopg.Error as exc:
        log.error("migration failed: %s: %s", type(exc).__name__, str(exc).strip())
        return 1
    log.info("table refapp_rows is in place")
    return 0


if __name__ == "__main__":
    sys.exit(main())
