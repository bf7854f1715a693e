"""dbmigrate's own table: one row per revision step of every run, kept after the Job is gone.

Rows are written on the run's control connection, in autocommit, so that a step that fails and
rolls back still leaves its ``failed`` row behind. Where DDL is transactional, a step's ``applied``
update (and the next step's ``running`` row) go into the step's own transaction instead, given as
``within``: they commit exactly when the step does. ``alembic_version`` is only ever read.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    Column,
    DateTime,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    bindparam,
    func,
    inspect,
    select,
    update,
)
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.exc import NoSuchTableError, SQLAlchemyError
from sqlalchemy.types import TypeDecorator, TypeEngine

from dbmigrate.database import connection_lost
from dbmigrate.errors import ConfigurationError
from dbmigrate.masking import redact

RUNNING, APPLIED, FAILED, PARTIAL, REPAIRED = "running", "applied", "failed", "partial", "repaired"
KEPT = "kept"  # a rollback that kept the newer schema on purpose
ROLLBACK = "rollback"  # the direction of a rollback's decision row
BACKFILL = "backfill"  # the direction of the row of one run's work on one backfill (its status: done, paused, failed)

# One step's statements are kept within MySQL's TEXT (65,535 bytes), the newest first; each is cut
# at _MAX_STATEMENT_CHARS, its full length noted, so that a reader knows the text is not whole.
_STATEMENTS_BYTES = 60_000
_MAX_STATEMENT_CHARS = 8000
_MAX_ERROR_CHARS = 4000


class _Timestamp(TypeDecorator[datetime]):
    """DATETIME with microseconds on MySQL/MariaDB (whose default drops them), the plain type elsewhere."""

    impl = DateTime
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name in ("mysql", "mariadb"):
            from sqlalchemy.dialects.mysql import DATETIME  # the MySQL dialect loads only when it is used

            return dialect.type_descriptor(DATETIME(fsp=6))
        return dialect.type_descriptor(DateTime())


class _LongText(TypeDecorator[str]):
    """MEDIUMTEXT on MySQL/MariaDB (TEXT stops at 64 KB there), TEXT elsewhere."""

    impl = Text
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name in ("mysql", "mariadb"):
            from sqlalchemy.dialects.mysql import MEDIUMTEXT

            return dialect.type_descriptor(MEDIUMTEXT())
        return dialect.type_descriptor(Text())


def archive_table(name: str, schema: str | None) -> Table:
    """Every applied revision's script, so that an older image can still downgrade through it."""
    return Table(
        name,
        MetaData(),
        Column("revision", String(255), primary_key=True),
        Column("down_revisions", Text, nullable=False),  # a JSON list
        Column("filename", String(255), nullable=False),
        Column("source", _LongText, nullable=False),
        Column("sha256", String(64), nullable=False),
        # HMAC-SHA256 with DBMIGRATE_ARCHIVE_KEY over (revision, down revisions, sha256): the format that
        # earlier dbmigrate versions verify, still written so that an older image's dbmigrate can roll back.
        Column("signature", String(64)),
        Column("archived_at", _Timestamp, nullable=False),
        Column("run_id", String(32), nullable=False),
        # Added later, so nullable: a table created without them gets them on the next upgrade.
        Column("version", Integer),  # per revision, one more each time its archived source changes
        Column("seal", String(64)),  # HMAC-SHA256 over the entry with its run_id and version (rollback.py)
        schema=schema,
    )


def backups_table(name: str, schema: str | None) -> Table:
    """One row per copy of data taken before a step that would lose it."""
    return Table(
        name,
        MetaData(),
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("run_id", String(32), nullable=False),
        Column("revision", String(255), nullable=False),
        Column("direction", String(16), nullable=False),
        Column("source_table", String(255), nullable=False),
        Column("columns", Text),  # a JSON list; NULL: the whole table
        Column("key_columns", Text, nullable=False),  # a JSON list (the primary key), may be empty
        Column("backup_table", String(255), nullable=False),
        Column("row_count", Integer, nullable=False),
        Column("status", String(16), nullable=False),
        Column("created_at", _Timestamp, nullable=False),
        Column("restored_at", _Timestamp),
        Column("restored_rows", Integer),
        schema=schema,
    )


def backfills_table(name: str, schema: str | None) -> Table:
    """One row per backfill a revision step queued: what it fills and how far it got."""
    return Table(
        name,
        MetaData(),
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("run_id", String(32), nullable=False),  # the run whose step queued it
        Column("revision", String(255), nullable=False),
        Column("direction", String(16), nullable=False),
        Column("table_schema", String(255)),
        Column("table_name", String(255), nullable=False),
        Column("spec", _LongText, nullable=False),  # JSON: key, values (column -> SQL), source columns, triggers
        Column("state", String(16), nullable=False),
        Column("last_key", Text),  # JSON: the key of the last row of the last committed batch; NULL: none yet
        Column("rows_done", Integer, nullable=False, default=0),
        Column("rows_estimated", Integer),
        Column("batches", Integer, nullable=False, default=0),
        Column("lock_retries", Integer, nullable=False, default=0),
        Column("queued_at", _Timestamp, nullable=False),
        Column("started_at", _Timestamp),
        Column("updated_at", _Timestamp),
        Column("finished_at", _Timestamp),
        Column("last_run_id", String(32)),  # the run that worked on it last
        Column("error", Text),
        # The sync trigger outlives the last batch: rows the previous application version writes during the
        # rollout that follows stay in sync. The next upgrade that applies a later revision drops it.
        Column("trigger_dropped_at", _Timestamp),
        # Added later, so nullable (see create_missing).
        Column("deferred", Integer),  # 1: queued by an upgrade that left it to `dbmigrate backfill run`
        Column("busy_ms", Integer),  # time spent in its batches, every run together: its rate is rows_done / busy
        schema=schema,
    )


def history_table(name: str, schema: str | None) -> Table:
    """The history table's definition (created on first use)."""
    return Table(
        name,
        MetaData(),
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("run_id", String(32), nullable=False, index=True),
        Column("revision", String(255), nullable=False),
        Column("from_revision", String(255)),
        Column("direction", String(16), nullable=False),
        Column("status", String(16), nullable=False),
        Column("started_at", _Timestamp, nullable=False),
        Column("finished_at", _Timestamp),
        Column("duration_ms", Integer),
        Column("attempts", Integer, nullable=False, default=1),
        Column("lock_waits", Integer, nullable=False, default=0),
        Column("lock_wait_ms", Integer, nullable=False, default=0),
        Column("statements", Text),
        Column("error", Text),
        Column("note", Text),
        Column("runner", String(255), nullable=False),
        Column("dbmigrate_version", String(32), nullable=False),
        Column("app_version", String(64)),
        schema=schema,
    )


def kept_statements(statements: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The statements a history row keeps: the newest that fit the column, passwords masked.

    Each carries its ``position`` in the step (1 for the first); one longer than
    ``_MAX_STATEMENT_CHARS`` is cut there and carries its full ``length``.
    """
    kept: list[dict[str, Any]] = []
    size = 2
    for position in range(len(statements), 0, -1):
        sql = redact(statements[position - 1]["sql"])
        entry = {**statements[position - 1], "sql": sql[:_MAX_STATEMENT_CHARS], "position": position}
        if len(sql) > _MAX_STATEMENT_CHARS:
            entry["length"] = len(sql)
        size += len(json.dumps(entry).encode()) + 2
        if size > _STATEMENTS_BYTES:
            break
        kept.append(entry)
    return kept[::-1]


def now() -> datetime:
    """UTC, without tzinfo: every backend stores it the same way."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


@dataclasses.dataclass(frozen=True)
class Entry:
    """One history row, as read back."""

    id: int
    run_id: str
    revision: str
    from_revision: str | None
    direction: str
    status: str
    started_at: datetime
    finished_at: datetime | None
    duration_ms: int | None
    attempts: int
    lock_waits: int
    lock_wait_ms: int
    statements: list[dict[str, Any]]
    error: str | None
    note: str | None
    runner: str
    dbmigrate_version: str
    app_version: str | None

    def as_dict(self) -> dict[str, Any]:
        data = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
        data["started_at"] = self.started_at.isoformat() + "Z"
        data["finished_at"] = self.finished_at.isoformat() + "Z" if self.finished_at else None
        return data


class History:
    """Reads and writes the history table through an autocommit connection."""

    def __init__(self, connection: Connection, name: str, schema: str | None) -> None:
        self.connection = connection
        self.table = history_table(name, schema)
        self._exists = False
        # Built once: a run writes two rows' worth of statements per step.
        self._insert_row = self.table.insert()
        self._update_row = update(self.table).where(self.table.c.id == bindparam("row_id"))

    def exists(self) -> bool:
        # Once there, the table stays for the rest of the command: ask the catalog only until then.
        if not self._exists:
            self._exists = inspect(self.connection).has_table(self.table.name, schema=self.table.schema)
        return self._exists

    def ensure(self) -> None:
        """Create the table, its index and newer columns if missing (see :func:`create_missing`); under the run lock."""
        create_missing(self.connection, self.table, "history")

    def start(
        self,
        *,
        run_id: str,
        revision: str,
        from_revision: str,
        direction: str,
        runner: str,
        dbmigrate_version: str,
        app_version: str | None,
        within: Connection | None = None,
        started_at: datetime | None = None,
        status: str = RUNNING,
    ) -> int:
        """Record that a step is starting (at ``started_at``, default now); returns the row id to finish it with.

        A row that is never 'running' (a run stopped before its first step) starts with its final ``status``.

        With ``within``, the row is written in that connection's open transaction and exists only
        once it commits.
        """
        result = self._on(within).execute(
            self._insert_row,
            {
                "run_id": run_id,
                "revision": revision,
                "from_revision": from_revision or None,
                "direction": direction,
                "status": status,
                "started_at": started_at or now(),
                "attempts": 1,
                "lock_waits": 0,
                "lock_wait_ms": 0,
                "runner": runner,
                "dbmigrate_version": dbmigrate_version,
                "app_version": app_version,
            },
        )
        return int(result.inserted_primary_key[0])  # type: ignore[index]

    def progress(self, row_id: int, *, attempts: int, lock_waits: int, lock_wait_ms: int) -> None:
        self._update(row_id, attempts=attempts, lock_waits=lock_waits, lock_wait_ms=lock_wait_ms)

    def record_statements(self, row_id: int, statements: Sequence[dict[str, Any]]) -> None:
        """Keep the statements of a step that commit on their own (non-transactional DDL)."""
        self._update(row_id, statements=json.dumps(kept_statements(statements)))

    def finish(
        self,
        row_id: int,
        status: str,
        started_at: datetime | None = None,
        error: str | None = None,
        *,
        within: Connection | None = None,
        note: str | None = None,
        **counters: int,
    ) -> bool:
        """Close a row with its status; ``counters`` (attempts, lock_waits, lock_wait_ms) in the same update.

        With ``within``, the update runs on that connection, in its open transaction, and commits
        or rolls back with it. False when there is no such row.
        """
        finished = now()
        values: dict[str, Any] = {"status": status, "finished_at": finished, **counters}
        if started_at is not None:
            values["duration_ms"] = int((finished - started_at).total_seconds() * 1000)
        if error is not None:
            values["error"] = redact(error)[:_MAX_ERROR_CHARS]
        if note is not None:
            values["note"] = redact(note)[:_MAX_ERROR_CHARS]
        return self._update(row_id, within=within, **values) > 0

    def _update(self, row_id: int, *, within: Connection | None = None, **values: Any) -> int:
        """Update row ``row_id``; returns how many rows matched (SQLAlchemy counts matched rows on MySQL too)."""
        return self._on(within).execute(self._update_row, {"row_id": row_id, **values}).rowcount

    def _on(self, within: Connection | None) -> Connection:
        """Where a write goes: into ``within``'s open transaction, else autocommit on the control connection."""
        return within if within is not None else self.connection

    def entries(
        self,
        limit: int | None = None,
        run_id: str | None = None,
        status: str | None = None,
        direction: str | None = None,
    ) -> list[Entry]:
        """Newest first."""
        if not self.exists():
            return []
        query = select(self.table).order_by(self.table.c.id.desc())
        if direction is not None:
            query = query.where(self.table.c.direction == direction)
        if run_id is not None:
            query = query.where(self.table.c.run_id == run_id)
        if status is not None:
            query = query.where(self.table.c.status == status)
        if limit is not None:
            query = query.limit(limit)
        return [_entry(row._mapping) for row in self.connection.execute(query)]

    def last_run(self) -> list[Entry]:
        """The rows of the most recent run, oldest first."""
        newest = self.entries(limit=1)
        if not newest:
            return []
        return list(reversed(self.entries(run_id=newest[0].run_id)))

    def runs_by_outcome(self) -> dict[str, int]:
        """How many runs ended with each status (the status of each run's last step; backfill rows are not steps)."""
        if not self.exists():
            return {}
        steps = select(func.max(self.table.c.id)).where(self.table.c.direction != BACKFILL)
        last_ids = steps.group_by(self.table.c.run_id).scalar_subquery()
        query = (
            select(self.table.c.status, func.count()).where(self.table.c.id.in_(last_ids)).group_by(self.table.c.status)
        )
        return {status: int(count) for status, count in self.connection.execute(query)}

    def unresolved_partials(self) -> list[Entry]:
        """Partial steps with no later step of the same revision: the database needs repair."""
        unresolved = []
        for entry in self.entries(status=PARTIAL):
            later = select(self.table.c.id).where(
                self.table.c.revision == entry.revision, self.table.c.id > entry.id, self.table.c.direction != BACKFILL
            )
            if self.connection.execute(later.limit(1)).first() is None:
                unresolved.append(entry)
        return unresolved


def create_missing(connection: Connection, table: Table, what: str) -> None:
    """Create ``table`` and then each of its indexes, those missing; :class:`ConfigurationError` if that fails.

    Each is checked on its own: on an autocommit connection they commit separately, and a run killed
    between the two must not leave an index missing for good. A failed attempt is made once more:
    runs on other version tables hold other run locks, and one may have created the same table (or
    index) at the same moment, which the second attempt finds there. A lost connection is no such race:
    an attempt on the dead connection would only fail with a consequence of it, hiding the cause.
    """
    for attempt in range(2):
        try:
            present = column_names(connection, table)  # one catalog query tells both: the usual run finds all
            if present is None:
                table.create(connection)  # and its indexes: a race with another creator fails, the retry finds it
                return
            for index in table.indexes:
                if not _index_exists(connection, table, index.name):
                    index.create(connection, checkfirst=True)
            _add_missing_columns(connection, table, present)
            return
        except SQLAlchemyError as exc:
            if attempt or connection_lost(exc) is not None:
                raise _cannot_create(table, what, exc) from None


def column_names(connection: Connection, table: Table) -> set[str] | None:
    """The names of ``table``'s columns in the database; None when the table is not there.

    One plain query where a failed statement harms nothing (not inside a PostgreSQL transaction): a
    fresh process pays for compiling the inspector's catalog queries, several times a plain
    alembic run's own queries.
    """
    autocommit = connection.get_execution_options().get("isolation_level") == "AUTOCOMMIT"
    if autocommit or connection.dialect.name != "postgresql":
        name = connection.dialect.identifier_preparer.format_table(table)
        try:
            result = connection.exec_driver_sql(f"SELECT * FROM {name} WHERE 1 = 0")
        except SQLAlchemyError as exc:
            if connection_lost(exc) is not None:
                raise
            return None  # not there (or not readable: creating it then says why)
        names = set(result.keys())
        result.close()
        return names
    try:
        return {column["name"] for column in inspect(connection).get_columns(table.name, schema=table.schema)}
    except NoSuchTableError:
        return None


def _index_exists(connection: Connection, table: Table, name: str | None) -> bool:
    """Whether the index is there, by one plain catalog query where there is one; False: let SQLAlchemy check."""
    if name is None:
        return False
    quote = connection.dialect.identifier_preparer.quote
    if connection.dialect.name == "postgresql":
        qualified = f"{quote(table.schema)}.{quote(name)}" if table.schema else quote(name)
        return (
            connection.exec_driver_sql("SELECT to_regclass(%(name)s) IS NOT NULL", {"name": qualified}).scalar() is True
        )
    if connection.dialect.name == "sqlite" and table.schema is None:
        found = connection.exec_driver_sql("SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = ?", (name,))
        return found.first() is not None
    return False


def _add_missing_columns(connection: Connection, table: Table, present: set[str]) -> None:
    # Columns added after a table's first release are nullable: ADD COLUMN needs no default on any backend.
    preparer = connection.dialect.identifier_preparer
    for column in table.columns:
        if column.name not in present:
            kind = column.type.compile(dialect=connection.dialect)
            connection.exec_driver_sql(
                f"ALTER TABLE {preparer.format_table(table)} ADD COLUMN {preparer.format_column(column)} {kind}"
            )


def _cannot_create(table: Table, what: str, exc: SQLAlchemyError) -> ConfigurationError:
    where = f"{table.schema}.{table.name}" if table.schema else table.name
    return ConfigurationError(
        f"Cannot create or update dbmigrate's {what} table {where}: {redact(str(getattr(exc, 'orig', exc)))}. "
        "Check --table-schema (the schema must exist) and that the user may create and alter tables."
    )


def _entry(row: Any) -> Entry:
    values = dict(row)
    values["statements"] = json.loads(values["statements"]) if values.get("statements") else []
    return Entry(**values)
