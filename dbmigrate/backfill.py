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

Offline (``--sql``, ``--dry-run``, ``check``) it renders a comment saying how it runs and the
set-based ``UPDATE`` it is equivalent to. Under plain Alembic it runs the same keyset batches in
the revision's own transaction, with no online protection at all.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import json
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from typing import Any

import structlog
from sqlalchemy import Column, MetaData, Table, func, inspect, select, text, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.sql.elements import ColumnElement

from alembic import op
from dbmigrate import database, online
from dbmigrate.database import WRITE_TRANSACTIONS, Capabilities, connection_lost
from dbmigrate.errors import ConnectionLost, LockTimeout, MigrationFailed
from dbmigrate.history import backfills_table, create_missing, now
from dbmigrate.masking import redact
from dbmigrate.observability import bind
from dbmigrate.settings import Settings

log = structlog.get_logger("dbmigrate.backfill")

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
PROGRESS_INTERVAL = 5.0  # seconds between progress log lines
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
        },
    )
    backfill_id = int(row.inserted_primary_key[0])  # type: ignore[index]
    triggers = _create_triggers(connection, spec, backfill_id)
    spec = dataclasses.replace(spec, triggers=triggers)
    connection.execute(update(queue.table).where(queue.table.c.id == backfill_id).values(spec=spec.as_json()))
    log.info("backfill queued: it runs once the step commits", table=spec.describe(), backfill=backfill_id)


def _sql(expression: str | ColumnElement[Any], dialect: Any) -> str:
    if isinstance(expression, str):
        return expression.strip()
    return str(expression.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))


def _spec(connection: Connection, table: str, schema: str | None, key: str | None, values: dict[str, str]) -> Spec:
    """Check the table, its key and the target columns against the database; find the columns the values read."""
    inspector = inspect(connection)
    where = f"{schema}.{table}" if schema else table
    if not inspector.has_table(table, schema=schema):
        raise ValueError(f"dbmigrate.backfill(): there is no table {where}.")
    columns = [column["name"] for column in inspector.get_columns(table, schema=schema)]
    missing = [column for column in values if column not in columns]
    if missing:
        raise ValueError(
            f"dbmigrate.backfill(): {where} has no column {', '.join(missing)}; add it before the backfill."
        )
    if key is None:
        primary = inspector.get_pk_constraint(table, schema=schema).get("constrained_columns") or []
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

    def as_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["spec"] = dataclasses.asdict(self.spec)
        data["table"] = self.spec.describe()
        data["description"] = self.describe()
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

    def ensure(self) -> None:
        """Create the table if missing; under the run lock."""
        create_missing(self.control, self.table, "backfills")
        self._exists = True

    def _there(self, connection: Connection) -> bool:
        if not self._exists:
            self._exists = inspect(connection).has_table(self.table.name, schema=self.table.schema)
        return self._exists

    def unfinished(self, connection: Connection | None = None) -> list[Backfill]:
        """Every backfill not done yet, oldest first (none when the table does not exist)."""
        connection = connection if connection is not None else self.control
        if not self._there(connection):
            return []
        query = select(self.table).where(self.table.c.state.not_in([DONE, CANCELLED])).order_by(self.table.c.id)
        return [_backfill(row._mapping) for row in connection.execute(query)]

    def with_triggers(self, connection: Connection | None = None) -> list[Backfill]:
        """Every backfill whose sync trigger is still installed (finished ones included), oldest first."""
        connection = connection if connection is not None else self.control
        if not self._there(connection):
            return []
        query = select(self.table).where(self.table.c.trigger_dropped_at.is_(None)).order_by(self.table.c.id)
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
    )


class Worker:
    """Runs queued backfills to the end on a connection of its own, batch by batch; call under the run lock."""

    def __init__(self, engine: Engine, caps: Capabilities, settings: Settings, queue: Queue, run_id: str) -> None:
        self.engine = engine
        self.caps = caps
        self.settings = settings
        self.queue = queue
        self.run_id = run_id
        self.connection: Connection | None = None
        self.dbapi: Any = None
        self.server_id: int | None = None

    def work_through(self, reverting: Collection[str] = ()) -> list[Backfill]:
        """Finish every unfinished backfill, oldest first, but those the upgrades of ``reverting`` queued (the
        downgrade about to run cancels them); the ones it finished.

        Raises :class:`MigrationFailed` (a batch failed: progress so far is kept), :class:`LockTimeout`
        (a batch could not get its locks after every retry) or :class:`ConnectionLost`.
        """
        pending = [
            item for item in self.queue.unfinished() if not (item.direction == "upgrade" and item.revision in reverting)
        ]
        if not pending:
            return []
        connection = self._connect()
        for item in pending:
            self._run(connection, item)
        return pending

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

    def _run(self, connection: Connection, item: Backfill) -> None:
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
        item.rows_estimated = item.rows_done + int(estimate)
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
        while True:
            began = time.monotonic()
            try:
                with connection.begin():
                    count, upper = _batch(connection, spec, item.last_key, size)
                    if count:
                        connection.execute(
                            progress.values(
                                last_key=json.dumps(upper, default=str),
                                rows_done=table.c.rows_done + count,
                                batches=table.c.batches + 1,
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
            done_here += count
            took = max(time.monotonic() - began, 1e-6)
            # Aim the next batch at the target duration, changing its size at most twofold per batch.
            size = int(min(MAX_BATCH, size * 2, max(size / 2, size * target / took, MIN_BATCH)))
            if time.monotonic() - last_report >= PROGRESS_INTERVAL:
                last_report = time.monotonic()
                self._report(item, done_here, last_report - started)
            time.sleep(self.settings.backfill_pause)
        log.info(
            "backfill done",
            backfill=item.id,
            table=where,
            rows_done=item.rows_done,
            batches=item.batches,
            duration_s=round(time.monotonic() - started, 2),
        )

    def _report(self, item: Backfill, done_here: int, elapsed: float) -> None:
        rate = done_here / elapsed if elapsed > 0 else 0.0
        left = max(0, (item.rows_estimated or 0) - item.rows_done)
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
                "Run `dbmigrate upgrade` again later to resume, or raise --max-lock-retries / --lock-timeout."
            )
        return MigrationFailed(
            f"Backfill {item.id} of {where} (revision {item.revision}) failed in the batch after key "
            f"{item.last_key if item.last_key is not None else '(start)'}: {reason}. The revision's schema change "
            f"is applied and the {item.rows_done} row(s) of earlier batches are kept; the trigger keeps rows the "
            "application writes in sync meanwhile. Fix the data and run `dbmigrate upgrade` again: it resumes with "
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
