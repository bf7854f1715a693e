"""Is the schema ready for this code? Waiting for it, and answering readiness probes cheaply.

Ready means the database is at the expected revisions (by default the heads of the scripts this
application ships), or, unless ``exact``, ahead of them on a chain that descends from them: an older
application version keeps working on a newer, compatible schema after a rollback. Revisions the
scripts do not contain are followed back through dbmigrate's history, which records where each
applied revision came from.

On PostgreSQL a finished run sends ``NOTIFY dbmigrate`` and waiters ``LISTEN``, so they wake at
once; polling with backoff stays as the fallback and is all other databases use.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterable, Sequence

import structlog
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError

from dbmigrate import history as hist
from dbmigrate.database import Capabilities

log = structlog.get_logger("dbmigrate.readiness")

CHANNEL = "dbmigrate"
PROGRESS_INTERVAL = 5.0
MAX_POLL_INTERVAL = 2.0


@dataclasses.dataclass(frozen=True)
class Readiness:
    """Where the database stands against what the code expects."""

    ready: bool
    current: tuple[str, ...]
    expected: tuple[str, ...]
    pending: int
    ahead: bool
    run_in_progress: str
    filling: tuple[str, ...] = ()  # backfills not finished yet: the schema is there, its data not yet
    # Deferred backfills not finished yet: they do not hold readiness back (the code must not need their data).
    deferred: tuple[str, ...] = ()

    def describe(self) -> str:
        current = ", ".join(self.current) or "base"
        text_ = f"database at {current}, expecting {', '.join(self.expected) or 'base'}"
        if self.filling and not self.pending:
            return text_ + ", data still being filled: " + "; ".join(self.filling)
        if self.ready:
            text_ += (" (ahead, on a chain descending from it)" if self.ahead else "") + ": ready"
            if self.deferred:
                text_ += "; data still being filled by deferred backfill(s): " + "; ".join(self.deferred)
            return text_
        text_ += f", {self.pending} revision(s) pending"
        if self.run_in_progress:
            text_ += f", {self.run_in_progress}"
        return text_

    def as_dict(self) -> dict[str, object]:
        return {
            **dataclasses.asdict(self),
            "current": list(self.current),
            "expected": list(self.expected),
            "filling": list(self.filling),
            "deferred": list(self.deferred),
        }


def version_context(connection: Connection, version_table: str, version_table_schema: str | None) -> MigrationContext:
    """A MigrationContext that only reads alembic_version (wherever env.py puts it)."""
    return MigrationContext.configure(
        connection, opts={"version_table": version_table, "version_table_schema": version_table_schema}
    )


def assess(
    current: Sequence[str],
    expected: Sequence[str],
    script: ScriptDirectory,
    history: hist.History,
    exact: bool,
    filling: Sequence[str] = (),
    deferred: Sequence[str] = (),
) -> Readiness:
    """Compare the database's revisions with the expected ones; not ready either while ``filling`` names
    backfills that have not finished (their revision's step is applied, its data not filled yet).

    ``deferred`` names unfinished backfills an upgrade left to ``dbmigrate backfill run``: the schema is
    ready without them, and the answer says that their data is still being filled.
    """
    current_set, expected_set = set(current), set(expected)
    ancestry = ancestors(current, script, history)
    if current_set == expected_set:
        ready, ahead = True, False
    elif exact:
        ready, ahead = False, False
    else:
        ready = expected_set <= ancestry
        ahead = ready
    pending = 0 if ready else _count_pending(script, current, expected)
    ready = ready and not filling
    running = "" if ready else _run_in_progress(history)
    return Readiness(
        ready, tuple(sorted(current)), tuple(sorted(expected)), pending, ahead, running, tuple(filling), tuple(deferred)
    )


def ancestors(current: Iterable[str], script: ScriptDirectory, history: hist.History) -> set[str]:
    """Every revision at or below ``current``: from the scripts, and through history for unknown ones."""
    seen: set[str] = set()
    todo = list(current)
    came_from: dict[str, list[str]] | None = None
    while todo:
        revision = todo.pop()
        if revision in seen:
            continue
        seen.add(revision)
        if revision in script.revision_map._revision_map:
            script_revision = script.get_revision(revision)
            if script_revision is not None:
                todo.extend(script_revision._all_down_revisions)
            continue
        if came_from is None:
            came_from = _history_links(history)
        todo.extend(came_from.get(revision, []))
    return seen


def _history_links(history: hist.History) -> dict[str, list[str]]:
    links: dict[str, list[str]] = {}
    try:
        entries = history.entries(status=hist.APPLIED)
    except SQLAlchemyError:
        return links
    for entry in entries:
        if entry.direction == "upgrade" and entry.from_revision:
            links.setdefault(entry.revision, entry.from_revision.split(","))
    return links


def _count_pending(script: ScriptDirectory, current: Sequence[str], expected: Sequence[str]) -> int:
    try:
        return len(script._upgrade_revs(",".join(expected) or "base", tuple(current)))  # type: ignore[arg-type]
    except Exception:  # noqa: BLE001 - the count is informational; an unknown revision is not an error here
        return len(set(expected) - set(current))


def _run_in_progress(history: hist.History) -> str:
    try:
        running = history.entries(limit=1, status=hist.RUNNING)
    except SQLAlchemyError:
        return ""
    if not running:
        return ""
    row = running[0]
    return f"run {row.run_id} in progress since {row.started_at:%H:%M:%S} UTC ({row.direction} {row.revision})"


class Listener:
    """Wakes a waiter when a run finishes: PostgreSQL LISTEN on psycopg 3; plain sleeping elsewhere."""

    def __init__(self, connection: Connection, caps: Capabilities) -> None:
        self.driver = None
        raw = connection.connection.driver_connection
        if caps.is_postgresql and hasattr(raw, "notifies"):
            connection.exec_driver_sql(f"LISTEN {CHANNEL}")
            self.driver = raw

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; returns True when a run announced itself finished."""
        if self.driver is None:
            time.sleep(seconds)
            return False
        for _ in self.driver.notifies(timeout=seconds, stop_after=1):
            return True
        return False


def announce(connection: Connection, caps: Capabilities, run_id: str, heads: Sequence[str]) -> None:
    """Tell waiters that a run finished (PostgreSQL NOTIFY; a no-op elsewhere)."""
    if caps.is_postgresql:
        payload = json.dumps({"run_id": run_id, "heads": list(heads)})
        connection.execute(text("SELECT pg_notify(:channel, :payload)"), {"channel": CHANNEL, "payload": payload})
