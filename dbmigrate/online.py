"""Keeping the database online while a step runs: timeouts, polite lock waits, retries.

The PostgreSQL lock queue is the danger: an ``ALTER TABLE`` waiting for a long transaction queues
an ACCESS EXCLUSIVE request that blocks every later query on the table. So before a step, when a
long transaction holds locks at all, we find the tables the step will lock and wait, *without
queueing*, while an older transaction holds a lock on one of them; then the step runs with a short
``lock_timeout``, and a lock timeout rolls the step back and retries it with exponential backoff and
jitter.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterable
from typing import Any

import structlog
import tenacity
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from dbmigrate.database import Capabilities
from dbmigrate.settings import Settings

log = structlog.get_logger("dbmigrate.online")

# A transaction younger than this is an ordinary application transaction: it will be gone long
# before our lock_timeout, so it is worth trying. Older ones are what stall a lock queue.
LONG_TRANSACTION_MS = 200
POLL_INTERVAL = 0.1

_SQLGLOT_DIALECTS = {"postgresql": "postgres", "mysql": "mysql", "mariadb": "mysql", "sqlite": "sqlite"}


def session_statements(caps: Capabilities, settings: Settings, server_version: str = "") -> list[str]:
    """SQL that puts a migration session's lock and statement timeouts in place."""
    lock_ms = max(1, int(settings.lock_timeout * 1000))
    statement_ms = max(0, int(settings.statement_timeout * 1000))
    if caps.is_postgresql:
        return [f"SET lock_timeout = {lock_ms}", f"SET statement_timeout = {statement_ms}"]
    if caps.is_mysql:
        seconds = max(1, round(settings.lock_timeout))
        statements = [f"SET SESSION lock_wait_timeout = {seconds}", f"SET SESSION innodb_lock_wait_timeout = {seconds}"]
        if "mariadb" in server_version.lower():
            statements.append(f"SET SESSION max_statement_time = {settings.statement_timeout:g}")
        return statements
    return [f"PRAGMA busy_timeout = {lock_ms}"]


def tables_locked_by(sql: str, caps: Capabilities) -> set[str]:
    """Existing tables whose reads or writes a chunk of SQL would block while it runs.

    DDL counts (ALTER, non-concurrent CREATE INDEX, DROP, TRUNCATE, foreign keys on both sides);
    tables created in the same chunk do not. SQL that cannot be parsed yields nothing: the
    ``lock_timeout`` still bounds what such a step can do to the application.
    """
    import sqlglot  # imported here: only a run that meets a long transaction needs the parser
    from sqlglot import exp

    logging.getLogger("sqlglot").setLevel(logging.ERROR)  # opaque commands lock nothing we track: no warning

    try:
        statements = sqlglot.parse(sql, read=_SQLGLOT_DIALECTS.get(caps.name, caps.name))
    except sqlglot.errors.ParseError:
        return set()
    created: set[str] = set()
    locked: set[str] = set()
    for statement in statements:
        if isinstance(statement, exp.Create) and statement.args.get("kind") == "TABLE":
            table = statement.find(exp.Table)
            if table is not None:
                created.add(_qualified(table))
            # A new table's foreign keys lock the tables they reference (SHARE ROW EXCLUSIVE).
            locked.update(_qualified(ref) for ref in statement.find_all(exp.Table) if ref is not table)
            continue
        if isinstance(statement, exp.Create) and statement.args.get("concurrently"):
            continue
        if isinstance(statement, (exp.Alter, exp.Create, exp.Drop, exp.TruncateTable)):
            locked.update(_qualified(table) for table in statement.find_all(exp.Table))
    return locked - created


def _qualified(table: Any) -> str:
    return f"{table.db}.{table.name}" if table.db else table.name


@dataclasses.dataclass
class LockWaits:
    """What a step spent waiting for locks: polite waits before it, and lock-timeout retries."""

    count: int = 0
    waited_ms: int = 0

    def add(self, seconds: float) -> None:
        self.count += 1
        self.waited_ms += int(seconds * 1000)


def wait_for_lock_holders(
    control: Connection, tables: Iterable[str], own_pids: Iterable[int], max_wait: float, waits: LockWaits
) -> None:
    """PostgreSQL: wait, without taking any lock, while long transactions hold locks on ``tables``.

    Gives up after ``max_wait`` seconds and lets the step try anyway: its ``lock_timeout`` bounds
    how long the application can be held up.
    """
    names = sorted(tables)
    if not names:
        return
    started = time.monotonic()
    reported = False
    while True:
        holders = _long_lock_holders(control, names, list(own_pids))
        waited = time.monotonic() - started
        if not holders:
            if reported:
                waits.add(waited)
                log.info("conflicting transactions finished", tables=names, waited_s=round(waited, 2))
            return
        if waited >= max_wait:
            waits.add(waited)
            log.warning(
                "still blocked after the conflict wait; trying with lock_timeout",
                tables=names,
                holders=holders,
                waited_s=round(waited, 1),
            )
            return
        if not reported:
            reported = True
            log.info("waiting for long transactions holding locks on the step's tables", tables=names, holders=holders)
        time.sleep(POLL_INTERVAL)


class LongTransactionWatch:
    """PostgreSQL: whether any other session's long transaction holds a lock on a table of this database.

    Asked before each step; only when it says yes does a run work out which tables its steps lock
    (rendering and parsing their SQL). Steps come fast, so the answer is reused for a short while:
    it counts transactions already half as old as "long", so none that is long by the time a step
    starts can slip through.
    """

    REUSE_SECONDS = LONG_TRANSACTION_MS / 2000

    def __init__(self, control: Connection) -> None:
        self.control = control
        self.asked_at = -self.REUSE_SECONDS
        self.answer = False

    def any_hold_locks(self, own_pids: Iterable[int]) -> bool:
        now = time.monotonic()
        if self.answer or now - self.asked_at >= self.REUSE_SECONDS:
            self.answer = _any_long_lock_holder(self.control, own_pids, LONG_TRANSACTION_MS / 2000)
            self.asked_at = now
        return self.answer


def _any_long_lock_holder(control: Connection, own_pids: Iterable[int], min_age: float) -> bool:
    return (
        control.execute(
            text(
                "SELECT 1 FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                "WHERE l.granted AND l.locktype = 'relation' "
                "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
                "AND NOT (a.pid = ANY(CAST(:own AS int[]))) AND a.pid <> pg_backend_pid() "
                "AND a.xact_start < clock_timestamp() - make_interval(secs => :min_age) LIMIT 1"
            ),
            {"own": list(own_pids), "min_age": min_age},
        ).first()
        is not None
    )


def _long_lock_holders(control: Connection, names: list[str], own_pids: list[int]) -> list[str]:
    rows = control.execute(
        text(
            "SELECT DISTINCT a.pid, a.state, a.application_name, l.relation::regclass::text AS rel, "
            "EXTRACT(EPOCH FROM clock_timestamp() - a.xact_start) AS age "
            "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.granted AND l.locktype = 'relation' "
            "AND l.relation = ANY(SELECT to_regclass(n) FROM unnest(CAST(:names AS text[])) AS n) "
            "AND NOT (a.pid = ANY(CAST(:own AS int[]))) AND a.pid <> pg_backend_pid() "
            "AND a.xact_start < clock_timestamp() - make_interval(secs => :min_age)"
        ),
        {"names": names, "own": own_pids, "min_age": LONG_TRANSACTION_MS / 1000},
    ).all()
    return [
        f"pid {r.pid} ({r.state}, {r.application_name or 'no name'}) on {r.rel} for {float(r.age):.1f}s" for r in rows
    ]


def is_lock_timeout(exc: BaseException, caps: Capabilities) -> bool:
    """Whether a step failed only because it could not get a lock in time (safe to retry)."""
    if not isinstance(exc, DBAPIError):
        return False
    orig = exc.orig
    if caps.is_postgresql:
        return getattr(orig, "sqlstate", None) == "55P03" or getattr(orig, "pgcode", None) == "55P03"
    if caps.is_mysql:
        return orig is not None and bool(orig.args) and orig.args[0] == 1205
    return "database is locked" in str(orig)


def retry_backoff() -> tenacity.wait.wait_base:
    """Exponential backoff with jitter between attempts of a step that hit a lock timeout."""
    return tenacity.wait_exponential_jitter(multiplier=0.5, max=30.0, jitter=0.5)
