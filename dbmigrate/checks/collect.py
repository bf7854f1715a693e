"""What each revision step really executes, statement by statement, with the line that caused it.

Each step (a revision's ``upgrade()`` or ``downgrade()``) runs through the project's ``env.py`` in
Alembic's offline (``--sql``) mode, all steps of one direction in one pass, rendered for the chosen
dialect whatever URL the env.py would use. Every statement Alembic emits is captured together with
the innermost line of the revision file on the call stack at that moment, so loops, ``if``
branches on the dialect and helper functions (in the revision file or imported from elsewhere) are
seen exactly as they run.

Covered:
  * every ``op.*`` call and ``op.execute(...)`` with raw SQL (kept as written; the rules parse it);
  * ``op.get_bind().execute(...)``, ``op.get_bind().exec_driver_sql(...)`` and SQLAlchemy DDL run
    on the bind (``table.create(bind)``, ``metadata.create_all(bind)``): offline, the bind records
    what it is given instead of sending it, and answers every query with an empty result, as an
    empty database would (no rows, a ``rowcount`` of 0), so loops over rows and batch loops end;
  * an ORM ``Session(bind=op.get_bind())``: it connects to the offline bind inside the migration's
    transaction, so its bulk ``update()``/``delete()`` and flushed objects are recorded too;
  * ``batch_alter_table`` on SQLite, ``recreate="auto"`` (the default) or ``"always"``: offline there
    is no table to reflect, so the batch is rendered as the plain ``ALTER TABLE`` statements it
    stands for (its intent), as ``recreate="never"`` would (with ``copy_from`` too: the table copy
    and swap it would render are not what the revision means to do to the data);
  * the type a column had before ``op.alter_column`` (or a batch's ``alter_column``) changed it: the
    call's ``existing_type=`` (autogenerate always writes it), else the type an earlier
    ``create_table``/``add_column``/``alter_column`` of the same pass gave the column, is kept on
    the statements the call emits (:attr:`Statement.existing_type`), with the type it sets
    (:attr:`Statement.new_type`); a PostgreSQL enum is written with its values, which its name
    in the statement does not show. Raw SQL that names a table
    (``op.execute``, the bind) makes the pass forget what it knew of that table's columns.

Not covered (the step is reported in :attr:`StepStatements.error` with the statements seen before):
  * a revision that needs what a query returns beyond "no rows" (``.scalar_one()``);
  * ``sqlalchemy.inspect(op.get_bind())``: there is no database to inspect;
  * ``batch_alter_table(recreate="always")`` without ``copy_from`` on PostgreSQL and MySQL;
  * raw DBAPI cursors (``bind.connection.cursor()``), which the offline bind does not offer (the
    step stops there, reported in ``error``);
  * ``batch_alter_table`` statements point at the ``with`` line: Alembic runs them when the block ends.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import os
import re
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

from alembic.config import Config
from alembic.operations.batch import BatchOperationsImpl
from alembic.runtime.migration import RevisionStep
from alembic.script import Script, ScriptDirectory
from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from sqlalchemy.engine import Dialect
from sqlalchemy.engine.mock import MockConnection
from sqlalchemy.engine.result import IteratorResult, SimpleResultMetaData
from sqlalchemy.sql import sqltypes
from sqlalchemy.sql.compiler import Compiled
from sqlalchemy.sql.ddl import ExecutableDDLElement
from sqlalchemy.sql.type_api import TypeEngine

from alembic import context as alembic_context
from dbmigrate.errors import ConfigurationError, EnvironmentRefused
from dbmigrate.masking import redact
from dbmigrate.scripts import render_offline

Direction = Literal["upgrade", "downgrade"]

# SQLAlchemy URLs that make env.py render for a dialect without importing any driver.
DIALECT_URLS = {"postgresql": "postgresql://", "mysql": "mysql://", "mariadb": "mysql://", "sqlite": "sqlite://"}


@dataclasses.dataclass(frozen=True)
class Statement:
    """One chunk of SQL a step executes (it may hold several statements) and the revision line behind it."""

    sql: str
    line: int
    # For statements an alter_column call emitted: the column's type before the call, rendered for
    # the dialect (None when unknown), whether the call was given a new type (``type_=``), and that
    # type, rendered the same way.
    existing_type: str | None = None
    changes_type: bool = False
    new_type: str | None = None
    # Emitted inside ``op.get_context().autocommit_block()``: online, it runs outside any transaction.
    autocommit: bool = False


@dataclasses.dataclass(frozen=True)
class StepStatements:
    """Everything one direction of one revision executes, in order.

    ``error`` is None when the step ran to its end offline; otherwise it says why it stopped, and
    ``statements`` holds what it executed before.
    """

    revision: str
    direction: Direction
    path: Path
    statements: tuple[Statement, ...]
    error: str | None = None


class _Recorder(io.StringIO):
    """Alembic's offline output buffer: keeps each statement written while the revision file is on the stack.

    Alembic writes its own statements too (``alembic_version`` updates, the transaction around a
    migration, ``-- Running upgrade`` comments); no revision frame is on the stack then, so they
    are left out.
    """

    def __init__(self, revision_path: Path) -> None:
        super().__init__()
        self._revision_path = _real_path(revision_path)
        self.statements: list[Statement] = []
        self.column_types = _ColumnTypes()
        # Set while an alter_column call runs: what its statements carry (existing type, type change, new type).
        self.altering: tuple[str | None, bool, str | None] = (None, False, None)
        self.autocommit = False  # set while the revision is inside an autocommit block

    def follow(self, revision_path: Path) -> list[Statement]:
        """From now on record for another revision file; returns what was recorded for the previous one."""
        recorded, self.statements = self.statements, []
        self._revision_path = _real_path(revision_path)
        return recorded

    def write(self, chunk: str) -> int:
        self.record(chunk)
        return len(chunk)

    def record(self, sql: str) -> None:
        """Keep ``sql`` with the revision line that caused it, if the revision caused it."""
        sql = sql.strip()
        line = self._revision_line()
        if sql and line is not None:
            self.statements.append(Statement(sql, line, *self.altering, autocommit=self.autocommit))

    def _revision_line(self) -> int | None:
        frame = sys._getframe(1)
        while frame is not None:
            if _real_path(frame.f_code.co_filename) == self._revision_path:
                return frame.f_lineno
            frame = frame.f_back  # type: ignore[assignment]
        return None


class _ColumnTypes:
    """The column types one offline pass has seen declared: ``(table, column) -> type`` (``schema.table``)."""

    def __init__(self) -> None:
        self._tables: dict[str, dict[str, TypeEngine[Any]]] = {}

    def __bool__(self) -> bool:
        return bool(self._tables)

    def get(self, table: str, column: str) -> TypeEngine[Any] | None:
        return self._tables.get(table, {}).get(column)

    def set(self, table: str, column: str, type_: TypeEngine[Any] | None) -> None:
        if type_ is None:
            self.forget(table, column)
        else:
            self._tables.setdefault(table, {})[column] = type_

    def forget(self, table: str, column: str | None = None) -> None:
        if column is None:
            self._tables.pop(table, None)
        else:
            self._tables.get(table, {}).pop(column, None)

    def forget_mentioned(self, sql: str) -> None:
        """Raw SQL may change any column of a table it names: forget those tables."""
        if self:
            words = {word.lower() for word in _WORDS.findall(sql)}
            for table in [t for t in self._tables if t.rsplit(".", 1)[-1].lower() in words]:
                del self._tables[table]


_WORDS = re.compile(r"[\w$]+")


@functools.lru_cache(maxsize=4096)
def _real_path(path: str | Path) -> str:
    """Resolved once per file: the recorder asks for every frame of every statement."""
    return os.path.realpath(path)


def collect(
    config: Config, script: ScriptDirectory, revision: str, direction: Direction, dialect: str
) -> StepStatements:
    """The statements ``revision``'s upgrade or downgrade executes when rendered for ``dialect``.

    ``dialect`` is one of :data:`DIALECT_URLS`; any other raises :class:`ConfigurationError`.
    An exception raised by env.py or the revision while rendering does not propagate: it ends the
    step and is described in ``error``. :class:`EnvironmentRefused` does: env.py cannot be used at all.
    """
    url = DIALECT_URLS.get(dialect)
    if url is None:
        raise ConfigurationError(f"Unknown dialect '{dialect}' for check; use one of postgresql, mysql, sqlite.")
    found = script.get_revision(revision)
    if found is None:
        raise ConfigurationError(f"Revision {revision} is not in the migration scripts.")
    path = Path(found.path)
    recorder = _Recorder(path)
    step = RevisionStep(script.revision_map, found, direction == "upgrade")
    error = None
    try:
        with _batches_as_intent(dialect):
            render_offline(
                config,
                script,
                _recording_step(step, recorder, dialect),
                recorder,
                starting_rev=_starting_revision(found, direction),
                destination_rev=revision,
                on_configure=_render_for(url),
            )
    except EnvironmentRefused:
        raise  # not this revision's doing: no revision can be checked through this env.py
    except sa_exc.NoInspectionAvailable:
        error = (
            "it inspects the live database (sqlalchemy.inspect(op.get_bind())), which an offline check cannot "
            "answer; only the statements it ran before that were checked"
        )
    except Exception as exc:  # noqa: BLE001 - env.py and revisions can raise anything offline
        error = f"{type(exc).__name__}: {redact(str(exc)).strip()}"
    return StepStatements(revision, direction, path, tuple(recorder.statements), error)


def collect_pass(
    config: Config, script: ScriptDirectory, revisions: Sequence[str], direction: Direction, dialect: str
) -> list[StepStatements]:
    """One direction of ``revisions`` (a plan, in upgrade order) in one offline pass, in the order it runs.

    Upgrades run oldest first, downgrades newest first. One env.py run for the whole pass; when a
    step cannot run offline the pass stops there, and the rest is collected step by step (see
    :func:`collect`).
    """
    ordered = list(revisions) if direction == "upgrade" else list(reversed(revisions))
    url = DIALECT_URLS.get(dialect)
    if url is None or not ordered:
        return [collect(config, script, revision, direction, dialect) for revision in ordered]
    found = [script.get_revision(revision) for revision in ordered]
    steps = [RevisionStep(script.revision_map, r, direction == "upgrade") for r in found if r is not None]
    recorder = _Recorder(Path(steps[0].revision.path))
    collected: list[StepStatements] = []

    def each_step(context: Any) -> Iterator[RevisionStep]:
        for step in steps:
            path = Path(step.revision.path)
            recorder.follow(path)
            yield step
            collected.append(StepStatements(step.revision.revision, direction, path, tuple(recorder.statements)))

    # A step that stops the pass is collected again on its own below, where its error is kept.
    with contextlib.suppress(Exception), _batches_as_intent(dialect):
        render_offline(
            config,
            script,
            _recording_steps(each_step, recorder, dialect),
            recorder,
            starting_rev=_starting_revision(steps[0].revision, direction),
            destination_rev=ordered[-1],
            on_configure=_render_for(url),
        )
    rest = ordered[len(collected) :]
    return collected + [collect(config, script, revision, direction, dialect) for revision in rest]


def collect_all(
    config: Config, script: ScriptDirectory, revisions: Sequence[str], dialect: str
) -> Iterator[StepStatements]:
    """For each revision in order, its upgrade then its downgrade; one offline pass per direction."""
    downgrades = {step.revision: step for step in collect_pass(config, script, revisions, "downgrade", dialect)}
    for upgrade in collect_pass(config, script, revisions, "upgrade", dialect):
        yield upgrade
        yield downgrades[upgrade.revision]


def _starting_revision(revision: Script, direction: Direction) -> str | None:
    if direction == "downgrade":
        return revision.revision
    return ",".join(revision._normalized_down_revisions) or None


def _render_for(url: str) -> Any:
    """A ``context.configure`` hook that makes env.py render for the dialect of ``url``."""

    def override(options: dict[str, Any]) -> None:
        # env.py picks its own URL (often DATABASE_URL); the dialect under check wins.
        options.pop("connection", None)
        options.pop("dialect_name", None)
        options["url"] = url

    return override


def _recording_step(step: RevisionStep, recorder: _Recorder, dialect: str) -> Any:
    """The step source for run_env; before yielding the step it prepares the offline context."""

    def one_step(context: Any) -> Iterator[RevisionStep]:
        yield step

    return _recording_steps(one_step, recorder, dialect)


def _recording_steps(steps_of: Any, recorder: _Recorder, dialect: str) -> Any:
    """A step source for run_env that prepares the offline context, then yields ``steps_of(context)``."""

    def steps(_: tuple[str, ...]) -> Iterator[RevisionStep]:
        context = alembic_context.get_context()
        bind = _RecordingBind(context.dialect, _recording_execute(context.dialect, recorder))
        context.connection = bind  # type: ignore[assignment]
        context.impl.connection = bind  # type: ignore[assignment]
        if dialect == "sqlite":
            # No live table to reflect: render a batch as the ALTER statements it stands for.
            context.impl.requires_recreate_in_batch = lambda batch_op: False  # type: ignore[method-assign]
        _track_column_types(context.impl, recorder)
        _track_autocommit_blocks(context, recorder)
        yield from steps_of(context)

    return steps


def _track_autocommit_blocks(context: Any, recorder: _Recorder) -> None:
    """Make the statements a revision emits inside ``op.get_context().autocommit_block()`` say so.

    ``op.get_context()`` is this context: the block is wrapped on the instance, for this pass only.
    """
    autocommit_block = context.autocommit_block

    @contextlib.contextmanager
    def tracked() -> Iterator[None]:
        with autocommit_block():
            recorder.autocommit = True
            try:
                yield
            finally:
                recorder.autocommit = False

    context.autocommit_block = tracked


@contextlib.contextmanager
def _batches_as_intent(dialect: str) -> Iterator[None]:
    """While a SQLite pass renders: every offline batch runs its operations as plain ALTER statements.

    ``recreate="auto"`` asks the impl (see ``_recording_steps``); ``"always"`` does not, so the
    batch's own decision is replaced for the duration of the pass, for offline contexts only.
    """
    if dialect != "sqlite":
        yield
        return
    should_recreate = BatchOperationsImpl._should_recreate

    def offline_intent(batch: BatchOperationsImpl) -> bool:
        return False if batch.operations.migration_context.as_sql else should_recreate(batch)

    BatchOperationsImpl._should_recreate = offline_intent  # type: ignore[method-assign, assignment]
    try:
        yield
    finally:
        BatchOperationsImpl._should_recreate = should_recreate  # type: ignore[method-assign]


def _track_column_types(impl: Any, recorder: _Recorder) -> None:
    """Wrap the offline impl so that alter_column's statements carry the column's existing type.

    Dialect impls reach their parent's methods through ``super()``, so each wrapper runs once per
    op; batch operations reach the impl through ``getattr``, so they are seen too.
    """
    types = recorder.column_types
    dialect = impl.dialect
    originals: dict[str, Any] = {}

    def alter_column(table_name: str, column_name: str, **kw: Any) -> Any:
        table = _qualified(table_name, kw.get("schema"))
        existing = kw.get("existing_type")
        before = sqltypes.to_instance(existing) if existing is not None else types.get(table, column_name)
        after = sqltypes.to_instance(kw["type_"]) if kw.get("type_") is not None else before
        changes_type = kw.get("type_") is not None
        recorder.altering = (
            _render_type(before, dialect),
            changes_type,
            _render_type(after, dialect) if changes_type else None,
        )
        try:
            return originals["alter_column"](table_name, column_name, **kw)
        finally:
            recorder.altering = (None, False, None)
            types.forget(table, column_name)
            types.set(table, kw.get("name") or column_name, after)

    # Known after the op: what it runs on the bind (a CREATE TYPE for an enum) may name the table.
    def create_table(table: Any, **kw: Any) -> Any:
        created = originals["create_table"](table, **kw)
        name = _qualified(table.name, table.schema)
        types.forget(name)
        for column in table.columns:
            types.set(name, column.name, column.type)
        return created

    def add_column(table_name: str, column: Any, **kw: Any) -> Any:
        added = originals["add_column"](table_name, column, **kw)
        types.set(_qualified(table_name, kw.get("schema")), column.name, column.type)
        return added

    def drop_table(table: Any, **kw: Any) -> Any:
        types.forget(_qualified(table.name, table.schema))
        return originals["drop_table"](table, **kw)

    def drop_column(table_name: str, column: Any, **kw: Any) -> Any:
        types.forget(_qualified(table_name, kw.get("schema")), column.name)
        return originals["drop_column"](table_name, column, **kw)

    def rename_table(old_table_name: str, new_table_name: str, schema: str | None = None) -> Any:
        types.forget(_qualified(old_table_name, schema))
        types.forget(_qualified(new_table_name, schema))
        return originals["rename_table"](old_table_name, new_table_name, schema)

    def execute(sql: Any, *args: Any, **kw: Any) -> Any:
        if types:
            types.forget_mentioned(sql if isinstance(sql, str) else str(_compile(sql, dialect)))
        return originals["execute"](sql, *args, **kw)

    wrappers = {
        "alter_column": alter_column,
        "create_table": create_table,
        "add_column": add_column,
        "drop_table": drop_table,
        "drop_column": drop_column,
        "rename_table": rename_table,
        "execute": execute,
    }
    for name, wrapper in wrappers.items():
        originals[name] = getattr(impl, name)
        setattr(impl, name, wrapper)


def _qualified(table: str, schema: str | None) -> str:
    """A table's name as the rules name it: ``schema.table`` or ``table``."""
    return f"{schema}.{table}" if schema else str(table)


def _render_type(type_: TypeEngine[Any] | None, dialect: Dialect) -> str | None:
    """``type_`` as the dialect's DDL writes it, or None when it has none there.

    A PostgreSQL enum is written as ``ENUM('a', 'b')``: its DDL names the type, and what a change
    keeps or loses is in the values.
    """
    if type_ is None:
        return None
    if isinstance(type_, sqltypes.Enum) and type_.native_enum and dialect.name == "postgresql":
        return "ENUM(" + ", ".join("'" + str(value).replace("'", "''") + "'" for value in type_.enums) + ")"
    try:
        return str(type_.compile(dialect=dialect))
    except Exception:  # noqa: BLE001 - a type of another dialect, or one that needs arguments here
        return None


class _RecordingBind(MockConnection):
    """The offline bind: SQL given to ``execute`` or ``exec_driver_sql`` is recorded, not sent."""

    def exec_driver_sql(self, statement: str, parameters: Any = None, execution_options: Any = None) -> Any:
        return self._execute_impl(statement, parameters)

    def execute(self, obj: Any, parameters: Any = None, execution_options: Any = None) -> Any:
        return self._execute_impl(obj, parameters)

    def connect(self, **_: Any) -> _SessionConnection:
        return _SessionConnection(self.dialect, self._execute_impl)


class _SessionConnection(_RecordingBind):
    """The offline bind as an ORM ``Session(bind=op.get_bind())`` connects to it.

    The Session's transaction is the migration's own, which it leaves alone. The bind itself keeps
    no transaction methods: Alembic tells an offline bind by their absence.
    """

    def in_transaction(self) -> bool:
        return False

    def begin(self) -> _MigrationTransaction:
        return _MigrationTransaction()

    def close(self) -> None:
        pass


class _MigrationTransaction:
    """What the Session commits or rolls back: nothing of its own."""

    is_active = True

    def commit(self) -> None:
        pass

    def rollback(self) -> None:
        pass

    def close(self) -> None:
        pass


def _recording_execute(dialect: Dialect, recorder: _Recorder) -> Any:
    def execute(construct: Any, parameters: Any = None) -> _EmptyResult:
        compiled = _compile(construct, dialect)
        sql = str(compiled)
        recorder.column_types.forget_mentioned(sql)
        recorder.record(sql)
        return _EmptyResult(compiled)

    return execute


class _EmptyResult(IteratorResult[Any]):
    """What an empty database answers: no rows, no row changed (batch loops end), for Core and ORM callers."""

    rowcount = 0

    def __init__(self, compiled: Compiled) -> None:
        super().__init__(SimpleResultMetaData([]), iter([]))
        self.context = _Executed(compiled)

    def prefetch_cols(self) -> list[Any]:
        return []

    def postfetch_cols(self) -> list[Any]:
        return []


@dataclasses.dataclass(frozen=True)
class _Executed:
    """The parts of an execution context that the ORM reads after a bulk UPDATE or DELETE."""

    compiled: Compiled

    @property
    def compiled_parameters(self) -> list[Any]:
        return [self.compiled.construct_params()]


def _compile(construct: Any, dialect: Dialect) -> Compiled:
    """A construct given to the bind, compiled; values inlined where SQLAlchemy can render them."""
    if isinstance(construct, str):
        construct = text(construct)
    if isinstance(construct, ExecutableDDLElement):
        return construct.compile(dialect=dialect)
    try:
        return construct.compile(dialect=dialect, compile_kwargs={"literal_binds": True})  # type: ignore[no-any-return]
    except sa_exc.CompileError:
        # Parameters passed separately to execute(): placeholders still parse.
        return construct.compile(dialect=dialect)  # type: ignore[no-any-return]
