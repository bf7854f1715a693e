"""Online backfills: fill columns of an existing table in short, resumable, throttled batches.

A revision calls :func:`backfill` next to its ``op.*`` calls. Under dbmigrate it does not update a
row there: inside the step's own transaction it records the backfill in dbmigrate's backfills table
and installs a sync trigger, so that rows the application inserts, or whose source columns it
updates, get their target computed from then on. Both commit with the step's DDL. Once the step has
committed (its locks released), the runner works through the queue: keyset batches by the table's
key, each batch and its progress row in one short transaction with the step's ``lock_timeout``, an
adaptive batch size aimed at ``backfill_batch_time``, a pause between batches. A killed run loses
nothing and does nothing twice: the next run resumes after the last committed batch. When the last
batch commits the backfill is done; its trigger stays until the next revision step is applied (the
previous application version, which does not write the filled columns, may still be writing until
then), or until the revision is downgraded.

With ``defer_backfills`` the upgrade leaves the queue to ``dbmigrate backfill run`` (a CronJob, an
off-peak window): that run takes the same run lock, works in a time budget, and stops at a batch
boundary when the budget is used up (state ``paused``); the next run resumes there.

Offline (``--sql``, ``--dry-run``, ``check``) it renders a comment saying how it runs and the
set-based ``UPDATE`` it is equivalent to. Under plain Alembic it runs the same keyset batches in
the revision's own transaction, with no online protection at all.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import json
import re
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy import Column, MetaData, Table, func, inspect, or_, select, text, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.sql.elements import ColumnElement

from alembic import op
from dbmigrate import database, online
from dbmigrate import history as hist
from dbmigrate._version import __version__
from dbmigrate.database import WRITE_TRANSACTIONS, Capabilities, connection_lost
from dbmigrate.errors import ConfigurationError, ConnectionLost, LockTimeout, MigrationFailed
from dbmigrate.history import backfills_table, create_missing, now
from dbmigrate.masking import redact
from dbmigrate.observability import ProgressBar, bind, format_seconds
from dbmigrate.settings import Settings

log = structlog.get_logger("dbmigrate.backfill")

QUEUED, RUNNING, PAUSED, DONE, FAILED, CANCELLED = "queued", "running", "paused", "done", "failed", "cancelled"
PROGRESS_INTERVAL = 5.0  # seconds between progress log lines
BAR_INTERVAL = 0.2  # seconds between redraws of the progress bar on a terminal
FIRST_BATCH = 100  # rows; the batch size then follows the measured duration, between these bounds:
MIN_BATCH = 10  # a batch's commit costs the same for 1 row as for 10: smaller ones only add commits
MAX_BATCH = 50_000
_SQLGLOT_DIALECTS = {"postgresql": "postgres", "mysql": "mysql", "mariadb": "mysql", "sqlite": "sqlite"}


@dataclasses.dataclass(frozen=True)
class Spec:
    """What a backfill fills: ``values`` maps each target column to SQL over the row's own columns."""

    table: str
    schema: str | None
    key: str
    values: dict[str, str]
    reads: list[str]  # the columns the values read
    sources: list[str]  # those of them that are not targets: the application's updates of these re-fire the trigger
    triggers: list[str]

    def as_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, data: str) -> Spec:
        return cls(**json.loads(data))

    def describe(self) -> str:
        where = f"{self.schema}.{self.table}" if self.schema else self.table
        return f"{where} ({', '.join(self.values)})"


@dataclasses.dataclass(frozen=True)
class Queueing:
    """How a revision running under dbmigrate's runner queues its backfills (set by the runner around env.py)."""

    table: Table
    run_id: str
    direction: str
    revision: Callable[[], str]
    deferred: bool = False  # left to `dbmigrate backfill run` rather than run after the step
    on_queued: Callable[[], None] | None = None  # told before each backfill is queued


_queueing: contextvars.ContextVar[Queueing | None] = contextvars.ContextVar("dbmigrate_backfill_queue", default=None)


@contextlib.contextmanager
def queueing(queue: Queueing) -> Iterator[None]:
    """While the block runs, :func:`backfill` queues its work in ``queue`` instead of running it in the step."""
    token = _queueing.set(queue)
    try:
        yield
    finally:
        _queueing.reset(token)


def backfill(
    table: str,
    values: Mapping[str, str | ColumnElement[Any]],
    *,
    key: str | None = None,
    schema: str | None = None,
) -> None:
    """Fill ``values``' columns of every row of ``table`` online, in keyset batches after the step commits.

    ``values`` maps each target column to an SQL expression over the row's own (unqualified)
    columns: a string of SQL for the database at hand, or a SQLAlchemy column expression. ``key``
    is a unique, ordered column to walk the table by, by default its single-column primary key.
    Call it from a revision's ``upgrade()`` or ``downgrade()``, after the DDL that adds the targets.

    Under dbmigrate, rows the application writes from now on get their targets computed by a trigger,
    which the next run applying a later revision drops (or this revision's downgrade): the application
    must write the targets itself from the release that contains the revision on. Offline it renders the
    equivalent ``UPDATE``. Under plain Alembic it runs the batches at once, in the revision's transaction
    (no online protection). A call that cannot work (no such table or column, no usable key) raises
    :class:`ValueError`, which fails the step.
    """
    context = op.get_context()
    dialect = context.dialect
    rendered = {column: _sql(expression, dialect) for column, expression in values.items()}
    if not rendered:
        raise ValueError("dbmigrate.backfill() needs at least one column in values.")
    preparer = dialect.identifier_preparer
    name = preparer.format_table(Table(table, MetaData(), schema=schema))
    if context.as_sql:
        assignments = ", ".join(f"{preparer.quote(column)} = {sql}" for column, sql in rendered.items())
        op.execute(
            f"-- dbmigrate.backfill: {table} runs online after this step commits, in short keyset batches "
            "(target duration per batch: backfill_batch_time), each its own transaction; a trigger keeps rows "
            "written meanwhile in sync until it is done. Equivalent to:"
        )
        op.execute(f"UPDATE {name} SET {assignments}")
        return
    connection = op.get_bind()
    spec = _spec(connection, table, schema, key, rendered)
    queue = _queueing.get()
    if queue is None:
        _run_in_place(connection, spec)
        return
    if queue.on_queued is not None:
        queue.on_queued()
    row = connection.execute(
        queue.table.insert(),
        {
            "run_id": queue.run_id,
            "revision": queue.revision(),
            "direction": queue.direction,
            "table_schema": schema,
            "table_name": table,
            "spec": spec.as_json(),
            "state": QUEUED,
            "rows_done": 0,
            "batches": 0,
            "lock_retries": 0,
            "queued_at": now(),
            "deferred": 1 if queue.deferred else 0,
        },
    )
    backfill_id = int(row.inserted_primary_key[0])  # type: ignore[index]
    triggers = _create_triggers(connection, spec, backfill_id)
    spec = dataclasses.replace(spec, triggers=triggers)
    connection.execute(update(queue.table).where(queue.table.c.id == backfill_id).values(spec=spec.as_json()))
    if queue.deferred:
        log.info("backfill queued for `dbmigrate backfill run` (deferred)", table=spec.describe(), backfill=backfill_id)
    else:
        log.info("backfill queued: it runs once the step commits", table=spec.describe(), backfill=backfill_id)


def _sql(expression: str | ColumnElement[Any], dialect: Any) -> str:
    if isinstance(expression, str):
        return expression.strip()
    return str(expression.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))


def _spec(connection: Connection, table: str, schema: str | None, key: str | None, values: dict[str, str]) -> Spec:
    """Check the table, its key and the target columns against the database; find the columns the values read."""
    where = f"{schema}.{table}" if schema else table
    shape = _shape(connection, table, schema)
    if shape is None:
        raise ValueError(f"dbmigrate.backfill(): there is no table {where}.")
    columns, primary = shape
    missing = [column for column in values if column not in columns]
    if missing:
        raise ValueError(
            f"dbmigrate.backfill(): {where} has no column {', '.join(missing)}; add it before the backfill."
        )
    if key is None:
        if len(primary) != 1:
            raise ValueError(
                f"dbmigrate.backfill(): {where} has {'a composite' if primary else 'no'} primary key; name a unique, "
                "ordered column to walk it by with key=..."
            )
        key = primary[0]
    elif key not in columns:
        raise ValueError(f"dbmigrate.backfill(): {where} has no column {key} (key=).")
    read = set().union(*(_columns_read(sql, connection.dialect.name) for sql in values.values()))
    reads = [column for column in columns if column in read]
    sources = [column for column in reads if column not in values]
    return Spec(table=table, schema=schema, key=key, values=values, reads=reads, sources=sources, triggers=[])


def _shape(connection: Connection, table: str, schema: str | None) -> tuple[list[str], list[str]] | None:
    """The table's columns in order, and its primary key's; None when there is no such table.

    On PostgreSQL by one plain catalog query: it runs after the revision's DDL, under that DDL's
    ACCESS EXCLUSIVE lock, and compiling the inspector's queries costs a fresh process tens of
    milliseconds, which every application query on the table would wait out.
    """
    if connection.dialect.name == "postgresql":
        name = connection.dialect.identifier_preparer.format_table(Table(table, MetaData(), schema=schema))
        rows = connection.exec_driver_sql(
            "SELECT a.attname, i.indrelid IS NOT NULL FROM pg_attribute a LEFT JOIN pg_index i "
            "ON i.indrelid = a.attrelid AND i.indisprimary AND a.attnum = ANY (i.indkey) "
            "WHERE a.attrelid = to_regclass(%(name)s) AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
            {"name": name},
        ).all()
        if not rows:
            return None
        return [row[0] for row in rows], [row[0] for row in rows if row[1]]
    inspector = inspect(connection)
    if not inspector.has_table(table, schema=schema):
        return None
    columns = [column["name"] for column in inspector.get_columns(table, schema=schema)]
    return columns, inspector.get_pk_constraint(table, schema=schema).get("constrained_columns") or []


def _columns_read(sql: str, dialect: str) -> set[str]:
    import sqlglot
    from sqlglot import exp

    try:
        parsed = sqlglot.parse_one(sql, read=_SQLGLOT_DIALECTS.get(dialect, dialect))
    except sqlglot.errors.ParseError as exc:
        raise ValueError(f"dbmigrate.backfill(): cannot parse the value expression {sql!r}: {exc}") from None
    return {column.name for column in parsed.find_all(exp.Column)}


# -- sync triggers -----------------------------------------------------------------------------


def _create_triggers(connection: Connection, spec: Spec, backfill_id: int) -> list[str]:
    """Install the triggers that compute the targets of rows written while the backfill runs; their names."""
    preparer = connection.dialect.identifier_preparer
    name = f"dbmigrate_backfill_{backfill_id}"
    table = preparer.format_table(Table(spec.table, MetaData(), schema=spec.schema))
    targets = list(spec.values)
    quoted_sources = ", ".join(preparer.quote(column) for column in spec.sources)
    dialect = connection.dialect.name
    if dialect == "postgresql":
        function = f"{preparer.quote_schema(spec.schema)}.{name}" if spec.schema else name
        into = ", ".join(f"NEW.{preparer.quote(column)}" for column in targets)
        expressions = ", ".join(spec.values.values())
        # The row as a one-row relation named like the table: the expressions read its columns unchanged.
        connection.exec_driver_sql(
            f"CREATE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $dbmigrate$ BEGIN "
            f"SELECT {expressions} INTO {into} FROM (SELECT NEW.*) AS {preparer.quote(spec.table)}; "
            "RETURN NEW; END $dbmigrate$"
        )
        events = f"INSERT OR UPDATE OF {quoted_sources}" if spec.sources else "INSERT"
        connection.exec_driver_sql(
            f"CREATE TRIGGER {name} BEFORE {events} ON {table} FOR EACH ROW EXECUTE PROCEDURE {function}()"
        )
        return [name]
    if dialect in ("mysql", "mariadb"):
        # The row as a one-row derived table named like the table: the expressions read its columns unchanged.
        row = ", ".join(f"NEW.{preparer.quote(column)} AS {preparer.quote(column)}" for column in spec.reads)
        alias = preparer.quote(spec.table)
        assignments = ", ".join(
            f"NEW.{preparer.quote(column)} = (SELECT {sql}"
            + (f" FROM (SELECT {row}) AS {alias})" if spec.reads else ")")
            for column, sql in spec.values.items()
        )
        connection.exec_driver_sql(f"CREATE TRIGGER {name}_ins BEFORE INSERT ON {table} FOR EACH ROW SET {assignments}")
        if not spec.sources:
            return [f"{name}_ins"]
        # MySQL has no UPDATE OF: compare the sources, so the backfill's own updates (targets only) pass through.
        changed = " OR ".join(f"NOT (NEW.{c} <=> OLD.{c})" for c in map(preparer.quote, spec.sources))
        connection.exec_driver_sql(
            f"CREATE TRIGGER {name}_upd BEFORE UPDATE ON {table} FOR EACH ROW "
            f"IF {changed} THEN SET {assignments}; END IF"
        )
        return [f"{name}_ins", f"{name}_upd"]
    # SQLite: no BEFORE trigger can change NEW; update the row right after (triggers may not qualify tables).
    own = preparer.quote(spec.table)
    assignments = ", ".join(f"{preparer.quote(column)} = {sql}" for column, sql in spec.values.items())
    body = f"UPDATE {own} SET {assignments} WHERE {preparer.quote(spec.key)} = NEW.{preparer.quote(spec.key)};"
    prefix = f"{preparer.quote_schema(spec.schema)}." if spec.schema else ""
    connection.exec_driver_sql(f"CREATE TRIGGER {prefix}{name}_ins AFTER INSERT ON {own} FOR EACH ROW BEGIN {body} END")
    if not spec.sources:
        return [f"{name}_ins"]
    connection.exec_driver_sql(
        f"CREATE TRIGGER {prefix}{name}_upd AFTER UPDATE OF {quoted_sources} ON {own} FOR EACH ROW BEGIN {body} END"
    )
    return [f"{name}_ins", f"{name}_upd"]


def _drop_triggers(connection: Connection, spec: Spec) -> None:
    preparer = connection.dialect.identifier_preparer
    table = preparer.format_table(Table(spec.table, MetaData(), schema=spec.schema))
    prefix = f"{preparer.quote_schema(spec.schema)}." if spec.schema else ""
    for trigger in spec.triggers:
        if connection.dialect.name == "postgresql":
            connection.exec_driver_sql(f"DROP TRIGGER IF EXISTS {trigger} ON {table}")
            connection.exec_driver_sql(f"DROP FUNCTION IF EXISTS {prefix}{trigger}()")
        else:
            connection.exec_driver_sql(f"DROP TRIGGER IF EXISTS {prefix}{trigger}")


# -- batches -----------------------------------------------------------------------------------


def _run_in_place(connection: Connection, spec: Spec) -> None:
    """Plain Alembic: the same keyset batches, in the revision's own transaction (nothing is online then)."""
    last: Any = None
    size = 1000
    while True:
        count, last = _batch(connection, spec, last, size)
        if not count:
            return


def _batch(connection: Connection, spec: Spec, last: Any, size: int) -> tuple[int, Any]:
    """Update the next ``size`` rows after key ``last`` (None: from the start); (rows, the batch's last key)."""
    table = Table(spec.table, MetaData(), Column(spec.key), *map(Column, spec.values), schema=spec.schema)
    key = table.c[spec.key]
    window = select(key).order_by(key).limit(size)
    if last is not None:
        window = window.where(key > last)
    window_sq = window.subquery()
    count, upper = connection.execute(select(func.count(), func.max(window_sq.c[spec.key]))).one()
    if not count:
        return 0, last
    bounds = key <= upper if last is None else (key > last) & (key <= upper)
    values = {table.c[column]: text(sql) for column, sql in spec.values.items()}
    connection.execute(update(table).where(bounds).values(values))
    return int(count), upper


@dataclasses.dataclass
class Backfill:
    """One row of the backfills table, as read back."""

    id: int
    run_id: str
    revision: str
    direction: str
    table_schema: str | None
    table_name: str
    spec: Spec
    state: str
    last_key: Any
    rows_done: int
    rows_estimated: int | None
    batches: int
    lock_retries: int
    error: str | None
    deferred: bool = False
    busy_ms: int = 0  # time runs spent on it so far (batches, retries and pauses; not the time between runs)
    queued_at: datetime | None = None
    updated_at: datetime | None = None
    last_run_id: str | None = None

    @property
    def rows_left(self) -> int | None:
        """Rows still to do, by the estimate its last run took when it began (None before any run)."""
        return None if self.rows_estimated is None else max(0, self.rows_estimated - self.rows_done)

    @property
    def rate(self) -> float | None:
        """Rows per second while runs work on it (the pauses between batches in, the time between runs out); None
        before the first batch."""
        return self.rows_done / (self.busy_ms / 1000) if self.busy_ms and self.rows_done else None

    @property
    def eta_s(self) -> float | None:
        """Seconds of batch work still needed at :attr:`rate` (0 when done, None when unknown)."""
        if self.state == DONE:
            return 0.0
        left, rate = self.rows_left, self.rate
        return None if left is None or not rate else left / rate

    def as_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["spec"] = dataclasses.asdict(self.spec)
        data["table"] = self.spec.describe()
        data["description"] = self.describe()
        data["rows_left"] = self.rows_left
        data["rows_per_s"] = round(self.rate, 1) if self.rate is not None else None
        data["eta_s"] = round(self.eta_s, 1) if self.eta_s is not None else None
        for name in ("queued_at", "updated_at"):
            data[name] = data[name].isoformat() + "Z" if data[name] is not None else None
        return data

    def describe(self) -> str:
        estimated = f" of about {self.rows_estimated}" if self.rows_estimated is not None else ""
        return (
            f"backfill {self.id} of {self.spec.describe()} ({self.direction} {self.revision}): {self.state}, "
            f"{self.rows_done}{estimated} row(s) done" + (f"; error: {self.error}" if self.error else "")
        )


class Queue:
    """The backfills table: queued work, worked through after each step and at the start of a run."""

    def __init__(self, control: Connection, name: str, schema: str | None) -> None:
        self.control = control
        self.table = backfills_table(name, schema)
        self._exists = False  # once there, the table stays for the rest of the command: ask the catalog until then
        self._idle = False  # nothing unfinished and no trigger installed, known under the run lock: see settle()
        # Asked before and after every step: made once.
        self._unfinished = self.table.c.state.not_in([DONE, CANCELLED])
        self._with_trigger = self.table.c.trigger_dropped_at.is_(None)

    def ensure(self) -> None:
        """Create the table if missing; under the run lock."""
        create_missing(self.control, self.table, "backfills")
        self._exists = True

    def _there(self, connection: Connection) -> bool:
        if not self._exists:
            self._exists = inspect(connection).has_table(self.table.name, schema=self.table.schema)
        return self._exists

    def all(self) -> list[Backfill]:
        """Every backfill ever queued, oldest first (none when the table does not exist)."""
        if not self._there(self.control):
            return []
        return [_backfill(row._mapping) for row in self.control.execute(select(self.table).order_by(self.table.c.id))]

    def unfinished(self, connection: Connection | None = None) -> list[Backfill]:
        """Every backfill not done yet, oldest first (none when the table does not exist)."""
        return self._where(self._unfinished, connection)

    def with_triggers(self, connection: Connection | None = None) -> list[Backfill]:
        """Every backfill whose sync trigger is still installed (finished ones included), oldest first."""
        return self._where(self._with_trigger, connection)

    def settle(self) -> None:
        """Under the run lock, after :meth:`ensure`: when no backfill is unfinished and no sync trigger is
        installed, say so without asking again for the rest of the run, until :meth:`queued`.

        Only the run holding the lock writes the queue, and the runner asks before and after every step.
        """
        self._idle = not self._where(or_(self._unfinished, self._with_trigger), None)

    def queued(self) -> None:
        """A backfill is being queued: the queue is no longer known to be idle."""
        self._idle = False

    def _where(self, condition: ColumnElement[bool], connection: Connection | None) -> list[Backfill]:
        connection = connection if connection is not None else self.control
        if self._idle or not self._there(connection):
            return []
        query = select(self.table).where(condition).order_by(self.table.c.id)
        return [_backfill(row._mapping) for row in connection.execute(query)]

    def trigger_tables(self) -> set[str]:
        """The tables that sync triggers of finished backfills are still on (``schema.table`` or ``table``)."""
        return {
            f"{item.table_schema}.{item.table_name}" if item.table_schema else item.table_name
            for item in self.with_triggers()
            if item.state == DONE
        }

    def retire(self, connection: Connection, item: Backfill) -> None:
        """Drop a finished backfill's sync trigger, in ``connection``'s transaction: a later revision is applied,
        by which time the application version that did not write the filled columns itself is gone."""
        _drop_triggers(connection, item.spec)
        connection.execute(update(self.table).where(self.table.c.id == item.id).values(trigger_dropped_at=now()))
        log.info("backfill trigger dropped: a later revision is being applied", backfill=item.id)

    def retire_all(self, connection: Connection) -> None:
        """:meth:`retire` every finished backfill's trigger in ``connection``'s open transaction (a step's)."""
        for item in self.with_triggers(connection):
            if item.state == DONE:
                self.retire(connection, item)

    def cancel_for(self, connection: Connection, revision: str) -> None:
        """In a downgrade step of ``revision``, before its own DDL: stop what its upgrade's backfills left running.

        The downgrade removes what they fill; their triggers go first, since they name its columns. An
        unfinished one is cancelled. Runs in the step's transaction where DDL is transactional, so a
        downgrade that fails keeps them as they were.
        """
        for item in self.with_triggers(connection):
            if item.revision == revision and item.direction == "upgrade":
                _drop_triggers(connection, item.spec)
                state = item.state if item.state == DONE else CANCELLED
                connection.execute(
                    update(self.table)
                    .where(self.table.c.id == item.id)
                    .values(state=state, trigger_dropped_at=now(), updated_at=now())
                )
                log.info("backfill trigger dropped: its revision is being downgraded", backfill=item.id, state=state)


def _backfill(row: Any) -> Backfill:
    return Backfill(
        id=row["id"],
        run_id=row["run_id"],
        revision=row["revision"],
        direction=row["direction"],
        table_schema=row["table_schema"],
        table_name=row["table_name"],
        spec=Spec.from_json(row["spec"]),
        state=row["state"],
        last_key=json.loads(row["last_key"]) if row["last_key"] is not None else None,
        rows_done=row["rows_done"],
        rows_estimated=row["rows_estimated"],
        batches=row["batches"],
        lock_retries=row["lock_retries"],
        error=row["error"],
        deferred=bool(row["deferred"]),
        busy_ms=row["busy_ms"] or 0,
        queued_at=row["queued_at"],
        updated_at=row["updated_at"],
        last_run_id=row["last_run_id"],
    )


@dataclasses.dataclass
class Segment:
    """What one run did to one backfill; also its row in the history table (direction ``backfill``)."""

    backfill: int
    revision: str
    table: str
    outcome: str = FAILED  # done, paused or failed
    rows: int = 0
    batches: int = 0
    lock_retries: int = 0
    seconds: float = 0.0

    def note(self, item: Backfill) -> str:
        """The history row's note: this run's share and where the backfill stands."""
        estimated = f" of about {item.rows_estimated}" if item.rows_estimated is not None else ""
        return (
            f"backfill {self.backfill} of {self.table}: {self.rows} row(s) in {self.batches} batch(es) this run, "
            f"{self.lock_retries} lock retry(ies); {item.rows_done}{estimated} row(s) done in all"
        )


class Worker:
    """Runs queued backfills on a connection of its own, batch by batch; call under the run lock.

    Each backfill a run works on gets a history row (direction ``backfill``) when ``history`` is given;
    ``command`` is what the messages tell the reader to run again to resume.
    """

    def __init__(
        self,
        engine: Engine,
        caps: Capabilities,
        settings: Settings,
        queue: Queue,
        run_id: str,
        history: hist.History | None = None,
        command: str = "dbmigrate upgrade",
    ) -> None:
        self.engine = engine
        self.caps = caps
        self.settings = settings
        self.queue = queue
        self.run_id = run_id
        self.history = history
        self.command = command
        self.connection: Connection | None = None
        self.dbapi: Any = None
        self.server_id: int | None = None
        self.segments: list[Segment] = []
        self.bar = ProgressBar.for_terminal(settings.log_format)

    def work_through(self, reverting: Collection[str] = (), deadline: float | None = None) -> list[Backfill]:
        """Finish every unfinished backfill, oldest first, but those the upgrades of ``reverting`` queued (the
        downgrade about to run cancels them); the ones it worked on (see :attr:`segments` for what it did).

        With ``deadline`` (a :func:`time.monotonic` value) it stops at the first batch boundary after it, once
        it has committed one batch at least (so every run makes progress): the backfill in progress is left
        ``paused``, those after it as they were; the next run resumes.

        Raises :class:`MigrationFailed` (a batch failed: progress so far is kept), :class:`LockTimeout`
        (a batch could not get its locks after every retry) or :class:`ConnectionLost`.
        """
        pending = [
            item for item in self.queue.unfinished() if not (item.direction == "upgrade" and item.revision in reverting)
        ]
        if not pending:
            return []
        connection = self._connect()
        worked = []
        for item in pending:
            if deadline is not None and time.monotonic() >= deadline and self._progressed():
                log.info("time budget used up: backfill left for the next run", backfill=item.id, state=item.state)
                break
            worked.append(item)
            if not self._run(connection, item, deadline):
                break
        return worked

    def _progressed(self) -> bool:
        """Whether this worker has committed a batch yet (of a backfill it finished or left)."""
        return any(segment.batches for segment in self.segments)

    def drop_finished_triggers(self) -> None:
        """MySQL/MariaDB, before an upgrade applies a later revision: :meth:`Queue.retire` each finished
        backfill's trigger in a short transaction of its own, with the lock timeout and retries of a batch.

        (Where DDL is transactional, the next step's own transaction drops them instead: see the runner.)
        """
        finished = [item for item in self.queue.with_triggers() if item.state == DONE]
        if not finished:
            return
        connection = self._connect()
        for item in finished:
            backoff = online.retry_backoff()
            for attempt in range(self.settings.max_lock_retries + 1):
                try:
                    with connection.begin():
                        self.queue.retire(connection, item)
                    break
                except SQLAlchemyError as exc:
                    if not online.is_lock_timeout(exc, self.caps) or attempt == self.settings.max_lock_retries:
                        raise self._failed(item, exc, mark=False) from exc
                    time.sleep(float(backoff(_Attempt(attempt + 1))))  # type: ignore[arg-type]

    def cancel(self) -> None:
        """End the batch in flight from another thread (the signal watcher): its transaction rolls back."""
        if self.dbapi is not None:
            database.cancel_statement(self.engine, self.caps, self.dbapi, self.server_id)

    def close(self) -> None:
        if self.connection is not None:
            with contextlib.suppress(SQLAlchemyError):
                self.connection.close()
            self.connection = self.dbapi = None

    def _connect(self) -> Connection:
        if self.connection is not None:
            return self.connection
        connection = self.engine.connect()
        server_version = ""
        if self.caps.is_mysql:
            server_version = str(connection.execute(text("SELECT VERSION()")).scalar())
            self.server_id = int(connection.execute(text("SELECT CONNECTION_ID()")).scalar_one())
        for statement in online.session_statements(self.caps, self.settings, server_version):
            connection.exec_driver_sql(statement)
        if connection.in_transaction():
            connection.commit()
        if self.caps.name == "sqlite":
            # Each batch takes SQLite's write lock when it begins: its count and update see no writer in between.
            connection = connection.execution_options(**{WRITE_TRANSACTIONS: True})
        self.connection, self.dbapi = connection, connection.connection.dbapi_connection
        return connection

    def _run(self, connection: Connection, item: Backfill, deadline: float | None) -> bool:
        """Work on ``item`` until it is done (True) or ``deadline`` passes (False: paused); its history row too."""
        segment = Segment(item.id, item.revision, item.spec.describe())
        started_at, began = now(), time.monotonic()
        row = None
        if self.history is not None:
            row = self.history.start(
                run_id=self.run_id,
                revision=item.revision,
                from_revision="",
                direction=hist.BACKFILL,
                runner=self.settings.runner,
                dbmigrate_version=__version__,
                app_version=self.settings.app_version,
                started_at=started_at,
            )
        error: str | None = None
        try:
            finished = self._batches(connection, item, deadline, segment)
            segment.outcome = DONE if finished else PAUSED
            return finished
        except BaseException as exc:  # recorded, then raised as it was
            error = str(exc)
            raise
        finally:
            self.bar.end()
            segment.seconds = time.monotonic() - began
            self.segments.append(segment)
            if self.history is not None and row is not None:
                with contextlib.suppress(SQLAlchemyError):  # the connection may be what failed
                    self.history.finish(
                        row,
                        segment.outcome,
                        started_at,
                        error,
                        note=segment.note(item),
                        lock_waits=segment.lock_retries,
                    )

    def _batches(self, connection: Connection, item: Backfill, deadline: float | None, segment: Segment) -> bool:
        """The batches of ``item``, counted in ``segment``: True once it is done, False when paused at ``deadline``."""
        bind(revision=item.revision)
        table, spec = self.queue.table, item.spec
        progress = update(table).where(table.c.id == item.id)
        where = spec.describe()
        with connection.begin():
            estimate = connection.execute(_remaining(spec, item.last_key)).scalar_one()
            connection.execute(
                progress.values(
                    state=RUNNING,
                    rows_estimated=item.rows_done + int(estimate),
                    started_at=func.coalesce(table.c.started_at, now()),
                    updated_at=now(),
                    last_run_id=self.run_id,
                    error=None,
                )
            )
        item.rows_estimated, item.state = item.rows_done + int(estimate), RUNNING
        log.info(
            "backfill resuming" if item.batches else "backfill starting",
            backfill=item.id,
            table=where,
            revision=item.revision,
            rows_done=item.rows_done,
            rows_estimated=item.rows_estimated,
        )
        size, target = FIRST_BATCH, max(0.001, self.settings.backfill_batch_time)
        backoff, retries = online.retry_backoff(), 0
        started, last_report, done_here = time.monotonic(), time.monotonic(), 0
        mark = started  # the time since this mark, until a batch commits, is what the batch cost (see Backfill.rate)
        while True:
            if deadline is not None and time.monotonic() >= deadline and (segment.batches or self._progressed()):
                with connection.begin():
                    connection.execute(progress.values(state=PAUSED, updated_at=now()))
                item.state = PAUSED
                self.bar.end()
                log.info(
                    f"backfill paused: the time budget is used up; the next `{self.command}` resumes it",
                    backfill=item.id,
                    table=where,
                    rows_done=item.rows_done,
                    rows_estimated=item.rows_estimated,
                )
                return False
            began, busy = time.monotonic(), 0
            try:
                with connection.begin():
                    count, upper = _batch(connection, spec, item.last_key, size)
                    if count:
                        busy = int((time.monotonic() - mark) * 1000)
                        connection.execute(
                            progress.values(
                                last_key=json.dumps(upper, default=str),
                                rows_done=table.c.rows_done + count,
                                batches=table.c.batches + 1,
                                busy_ms=func.coalesce(table.c.busy_ms, 0) + busy,
                                updated_at=now(),
                            )
                        )
                    else:
                        connection.execute(progress.values(state=DONE, finished_at=now(), updated_at=now()))
            except SQLAlchemyError as exc:
                if online.is_lock_timeout(exc, self.caps) and retries < self.settings.max_lock_retries:
                    retries += 1
                    size = max(MIN_BATCH, size // 2)  # smaller batches hold fewer row locks, and wait for fewer
                    delay = float(backoff(_Attempt(retries)))  # type: ignore[arg-type]
                    self._count_lock_retry(item.id)
                    segment.lock_retries += 1
                    self.bar.end()
                    log.warning(
                        "backfill batch hit a lock timeout, retrying with a smaller batch",
                        backfill=item.id,
                        attempt=retries,
                        batch_rows=size,
                        retry_in_s=round(delay, 2),
                    )
                    time.sleep(delay)
                    continue
                raise self._failed(item, exc) from exc
            if not count:
                break
            retries = 0
            item.last_key, item.rows_done, item.batches = upper, item.rows_done + count, item.batches + 1
            segment.rows, segment.batches = segment.rows + count, segment.batches + 1
            done_here += count
            took = max(time.monotonic() - began, 1e-6)
            item.busy_ms += busy
            mark = time.monotonic()
            # Aim the next batch at the target duration, changing its size at most twofold per batch.
            size = int(min(MAX_BATCH, size * 2, max(size / 2, size * target / took, MIN_BATCH)))
            # On a terminal the bar shows progress; elsewhere (a pod's JSON logs) a line every few seconds.
            interval = BAR_INTERVAL if self.bar.enabled else PROGRESS_INTERVAL
            if time.monotonic() - last_report >= interval:
                last_report = time.monotonic()
                self._report(item, done_here, last_report - started)
            time.sleep(self.settings.backfill_pause)
        item.state = DONE
        self.bar.end()
        log.info(
            "backfill done",
            backfill=item.id,
            table=where,
            rows_done=item.rows_done,
            batches=item.batches,
            duration_s=round(time.monotonic() - started, 2),
        )
        return True

    def _report(self, item: Backfill, done_here: int, elapsed: float) -> None:
        rate = done_here / elapsed if elapsed > 0 else 0.0
        left = max(0, (item.rows_estimated or 0) - item.rows_done)
        if self.bar.enabled:
            eta = f"ETA {format_seconds(left / rate)}" if rate else "ETA ?"
            self.bar.show(
                f"backfill {item.id} {item.spec.table}",
                item.rows_done,
                item.rows_estimated or item.rows_done,
                f"{rate:,.0f} rows/s, {eta}",
            )
            return
        log.info(
            "backfill progress",
            backfill=item.id,
            table=item.spec.describe(),
            rows_done=item.rows_done,
            rows_estimated=item.rows_estimated,
            rows_per_s=round(rate, 1),
            eta_s=round(left / rate, 1) if rate else None,
        )

    def _count_lock_retry(self, backfill_id: int) -> None:
        table = self.queue.table
        self.queue.control.execute(
            update(table).where(table.c.id == backfill_id).values(lock_retries=table.c.lock_retries + 1)
        )

    def _failed(
        self, item: Backfill, exc: SQLAlchemyError, *, mark: bool = True
    ) -> MigrationFailed | LockTimeout | ConnectionLost:
        """Record why the batch failed, unless not ``mark`` (progress so far stays), and say what to do."""
        reason = _describe(exc)
        where = item.spec.describe()
        if connection_lost(exc) is not None:
            return ConnectionLost(
                f"The connection to the database was lost during backfill {item.id} of {where} (revision "
                f"{item.revision}) after {item.rows_done} row(s) ({reason}). Every committed batch is kept; run the "
                "command again to resume after the last one. A Kubernetes Job retries exit 3 by itself."
            )
        table = self.queue.table
        with contextlib.suppress(SQLAlchemyError):
            if mark:  # on the control connection: the batch's own rolled back
                self.queue.control.execute(
                    update(table)
                    .where(table.c.id == item.id)
                    .values(state=FAILED, error=redact(reason)[:4000], updated_at=now())
                )
        if online.is_lock_timeout(exc, self.caps):
            return LockTimeout(
                f"Backfill {item.id} of {where} (revision {item.revision}) could not get its locks after "
                f"{self.settings.max_lock_retries} retries ({reason}); {item.rows_done} row(s) are done and kept. "
                f"Run `{self.command}` again later to resume, or raise --max-lock-retries / --lock-timeout."
            )
        return MigrationFailed(
            f"Backfill {item.id} of {where} (revision {item.revision}) failed in the batch after key "
            f"{item.last_key if item.last_key is not None else '(start)'}: {reason}. The revision's schema change "
            f"is applied and the {item.rows_done} row(s) of earlier batches are kept; the trigger keeps rows the "
            f"application writes in sync meanwhile. Fix the data and run `{self.command}` again: it resumes with "
            "that batch. To change the expression instead, downgrade the revision (which cancels the backfill) "
            "and upgrade with the corrected file."
        )


def _remaining(spec: Spec, last: Any) -> Any:
    table = Table(spec.table, MetaData(), Column(spec.key), schema=spec.schema)
    query = select(func.count()).select_from(table)
    return query if last is None else query.where(table.c[spec.key] > last)


class _Attempt:
    """The one field of tenacity's RetryCallState that its wait strategies read."""

    def __init__(self, attempt_number: int) -> None:
        self.attempt_number = attempt_number


def _describe(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    lines = [line.strip() for line in str(orig).strip().splitlines() if line.strip()]
    return redact(f"{type(orig).__name__}: {' '.join(lines[:3])}")[:1000] if lines else type(orig).__name__


# -- time budgets ------------------------------------------------------------------------------

_DURATION = re.compile(r"(?:(?P<h>\d+(?:\.\d+)?)h)?(?:(?P<m>\d+(?:\.\d+)?)m)?(?:(?P<s>\d+(?:\.\d+)?)s?)?")
_WINDOW = re.compile(r"(?P<h1>\d{1,2}):(?P<m1>\d{2})-(?P<h2>\d{1,2}):(?P<m2>\d{2})")


def parse_duration(text: str) -> float:
    """Seconds from ``"90"``, ``"90s"``, ``"30m"``, ``"1h30m"``; :class:`ConfigurationError` for anything else."""
    match = _DURATION.fullmatch(text.strip().lower())
    if not text.strip() or match is None:
        raise ConfigurationError(f"--max-duration takes seconds or a duration such as 30m or 1h30m, not {text!r}.")
    hours, minutes, seconds = (float(match[name] or 0) for name in ("h", "m", "s"))
    total = hours * 3600 + minutes * 60 + seconds
    if total <= 0:
        raise ConfigurationError(f"--max-duration must be more than 0, not {text!r}.")
    return total


@dataclasses.dataclass(frozen=True)
class Window:
    """A daily time window in UTC, ``HH:MM-HH:MM``; one whose end is earlier than its start crosses midnight."""

    start: int  # minutes after midnight, UTC
    end: int
    text: str

    @classmethod
    def parse(cls, text: str) -> Window:
        """:class:`ConfigurationError` unless ``text`` is two different times of day, ``01:00-05:00``."""
        match = _WINDOW.fullmatch(text.strip())
        if match is None or int(match["h1"]) > 23 or int(match["h2"]) > 24 or int(match["m1"]) > 59:
            raise ConfigurationError(f"--window takes HH:MM-HH:MM in UTC, such as 01:00-05:00, not {text!r}.")
        if int(match["m2"]) > 59 or (int(match["h2"]) == 24 and int(match["m2"])):
            raise ConfigurationError(f"--window takes HH:MM-HH:MM in UTC, such as 01:00-05:00, not {text!r}.")
        start = int(match["h1"]) * 60 + int(match["m1"])
        end = (int(match["h2"]) * 60 + int(match["m2"])) % 1440
        if start == end:
            raise ConfigurationError(f"--window {text!r} starts where it ends; leave it out to run at any time.")
        return cls(start, end, text.strip())

    def seconds_left(self, at: datetime) -> float | None:
        """Seconds from ``at`` (UTC) to the window's end, or None when ``at`` is outside the window."""
        minute = at.hour * 60 + at.minute + (at.second + at.microsecond / 1e6) / 60
        length = (self.end - self.start) % 1440
        into = (minute - self.start) % 1440
        return None if into >= length else (length - into) * 60
