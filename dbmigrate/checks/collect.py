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
    the result has the statement's columns, so it reads like a real one (``.all()`` is ``[]``,
    ``.scalar()``, ``.first()`` and ``.one_or_none()`` are None);
  * an ORM ``Session(bind=op.get_bind())`` (or a ``sessionmaker`` on it): it connects to the
    offline bind inside the migration's transaction, so its queries (``session.query(Model)``,
    ``session.execute(select(...))``, ``session.get``, ``scalars()``) answer as an empty database
    would, and its bulk ``update()``/``delete()`` and flushed objects are recorded; a flushed
    object gets the primary key it was given, else the one an empty table would number it with
    (1, 2, ...), and the ORM's own UPDATE or DELETE by primary key (of an object it holds, or a
    bulk UPDATE by primary key) matches one row per key, as the ORM checks. Models may be
    declarative, typed (``DeclarativeBase``) or automapped from tables the revision declares;
  * loops: a statement caused by a line inside a ``for`` or ``while`` loop (or a comprehension) of
    the revision file is marked :attr:`Statement.in_loop`, read from the file's source. Offline a
    loop over query results runs once or not at all, so what it repeats online is known by that;
  * ``dbmigrate.backfill()``: what it renders offline is marked :attr:`Statement.online_backfill`
    (online it fills in batches after the step commits, not in the step);
  * ``batch_alter_table`` on SQLite, ``recreate="auto"`` (the default) or ``"always"``: offline there
    is no table to reflect, so the batch is rendered as the plain ``ALTER TABLE`` statements it
    stands for (its intent), as ``recreate="never"`` would (with ``copy_from`` too: the table copy
    and swap it would render are not what the revision means to do to the data);
  * the type a column had before ``op.alter_column`` (or a batch's ``alter_column``) changed it: the
    call's ``existing_type=`` (autogenerate always writes it), else the type an earlier
    ``create_table``/``add_column``/``alter_column`` of the same pass gave the column, is kept on
    the statements the call emits (:attr:`Statement.existing_type`), with the type it sets
    (:attr:`Statement.new_type`); a PostgreSQL enum is written with its name and its values, which
    the statement does not show. Raw SQL that names a table (``op.execute``, the bind) makes the
    pass forget what it knew of that table's columns, unless it only writes rows; a step that
    cannot run to its end offline, of the tables its revision file names. A downgrade pass starts
    from the types the upgrades of the same revisions left.

Not covered (the step is reported in :attr:`StepStatements.error`, at the revision's line, with
the statements seen before):
  * a revision that needs what a query returns beyond "no rows" (``.scalar_one()``), or that reads
    back, after a commit, an object its Session wrote (nothing is stored offline);
  * the database's schema: ``sqlalchemy.inspect(op.get_bind())`` (``has_table``, ``get_columns``...),
    tables reflected with ``autoload_with=`` and automap's ``prepare(autoload_with=)``. An empty
    answer would be wrong here: revisions ask the schema to decide which DDL to run (``if
    has_table(...): drop_table(...)``), and "no such table" would hide that DDL from the check;
  * ``batch_alter_table(recreate="always")`` without ``copy_from`` on PostgreSQL and MySQL;
  * raw DBAPI cursors (``bind.connection.cursor()``), which the offline bind does not offer;
  * ``batch_alter_table`` statements point at the ``with`` line: Alembic runs them when the block ends.

A step can also stop on the revision's own error (:attr:`StepError.in_revision`): an undefined name,
or a Python error its own code raises (TypeError, AttributeError...) before the offline bind
answered anything, which a live database would meet too.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import functools
import io
import itertools
import os
import re
import sys
import traceback
from collections.abc import Iterator, Mapping, Sequence
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
from sqlalchemy.sql import operators, sqltypes
from sqlalchemy.sql.compiler import Compiled
from sqlalchemy.sql.ddl import ExecutableDDLElement
from sqlalchemy.sql.dml import Delete, Update
from sqlalchemy.sql.elements import BinaryExpression, BindParameter, BooleanClauseList
from sqlalchemy.sql.schema import Column
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
    # Caused by a line inside a loop of the revision file (``for``, ``while``, a comprehension): offline
    # a loop driven by query results runs once or not at all, online it repeats its queries.
    in_loop: bool = False
    # Rendered by ``dbmigrate.backfill()``: online, it runs in batches after the step commits, not in it.
    online_backfill: bool = False


@dataclasses.dataclass(frozen=True)
class StepError:
    """Why a step stopped before its end offline, told from the revision's side.

    ``line`` is the revision file's line that was running (None when the revision was not on the
    stack: env.py or Alembic stopped). ``reason`` quotes that line and says what it needed or did.
    ``in_revision`` is True when the revision itself is wrong (an undefined name, or a Python error
    raised by its own code before any query was answered offline): it would fail the same way on a
    live database.
    """

    line: int | None
    reason: str
    in_revision: bool = False


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
    error: StepError | None = None


class _Recorder(io.StringIO):
    """Alembic's offline output buffer: keeps each statement written while the revision file is on the stack.

    Alembic writes its own statements too (``alembic_version`` updates, the transaction around a
    migration, ``-- Running upgrade`` comments); no revision frame is on the stack then, so they
    are left out.
    """

    def __init__(self, revision_path: Path, column_types: _ColumnTypes | None = None) -> None:
        super().__init__()
        self._revision_path = _real_path(revision_path)
        self.statements: list[Statement] = []
        self.column_types = column_types if column_types is not None else _ColumnTypes()
        # The revision line of the first statement that went through the bind: from there on the revision
        # may be acting on what an empty database answered offline (no rows, no row changed).
        self.first_answer: int | None = None
        # Set while an alter_column call runs: what its statements carry (existing type, type change, new type).
        self.altering: tuple[str | None, bool, str | None] = (None, False, None)
        self.autocommit = False  # set while the revision is inside an autocommit block

    def follow(self, revision_path: Path) -> list[Statement]:
        """From now on record for another revision file; returns what was recorded for the previous one."""
        recorded, self.statements = self.statements, []
        self.first_answer = None
        self._revision_path = _real_path(revision_path)
        return recorded

    def write(self, chunk: str) -> int:
        self.record(chunk)
        return len(chunk)

    def record(self, sql: str) -> None:
        """Keep ``sql`` with the revision line that caused it, if the revision caused it."""
        sql = sql.strip()
        line, through_backfill = self._revision_frame()
        if sql and line is not None:
            self.statements.append(
                Statement(
                    sql,
                    line,
                    *self.altering,
                    autocommit=self.autocommit,
                    # Only a statement that reads or writes rows is judged by its loop (BL007, BL008): the
                    # revision's source is parsed for those only.
                    in_loop=_MAY_TOUCH_ROWS.search(sql) is not None and line in _loop_lines(self._revision_path),
                    online_backfill=through_backfill,
                )
            )

    def answered(self) -> None:
        """The bind has just answered the revision (with an empty result)."""
        if self.first_answer is None:
            self.first_answer = self._revision_frame()[0]

    def _revision_frame(self) -> tuple[int | None, bool]:
        """The innermost revision line on the stack (None: the revision is not), and whether a
        ``dbmigrate.backfill()`` call is between it and the caller."""
        frame = sys._getframe(1)
        through_backfill = False
        while frame is not None:
            if _real_path(frame.f_code.co_filename) == self._revision_path:
                return frame.f_lineno, through_backfill
            code = frame.f_code
            through_backfill = through_backfill or (
                code.co_name == "backfill" and _real_path(code.co_filename) == _BACKFILL_MODULE
            )
            frame = frame.f_back  # type: ignore[assignment]
        return None, False


# Every word a statement that reads or writes rows has, wherever it stands (DDL rarely has one).
_MAY_TOUCH_ROWS = re.compile(r"\b(?:UPDATE|DELETE|INSERT|SELECT|WITH)\b", re.IGNORECASE)
# dbmigrate.backfill's own file, named without importing it (it imports the runner's modules).
_BACKFILL_MODULE = os.path.realpath(Path(__file__).parent.parent / "backfill.py")


def _loop_lines(path: str) -> frozenset[int]:
    """The lines of the file at ``path`` that are part of a loop (its header included), read once per version."""
    try:
        stat = os.stat(path)
    except OSError:
        return frozenset()
    return _loop_lines_of(path, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=256)
def _loop_lines_of(path: str, _mtime: int, _size: int) -> frozenset[int]:
    try:
        tree = ast.parse(Path(path).read_bytes())
    except (OSError, SyntaxError, ValueError):
        return frozenset()  # the revision cannot run at all: its step reports why
    loops = (ast.For, ast.AsyncFor, ast.While, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)
    return frozenset(
        line
        for node in ast.walk(tree)
        if isinstance(node, loops)
        for line in range(node.lineno, (node.end_lineno or node.lineno) + 1)
    )


class _ColumnTypes:
    """The column types one offline pass has seen declared: ``(table, column) -> type`` (``schema.table``)."""

    def __init__(self) -> None:
        self._tables: dict[str, dict[str, TypeEngine[Any]]] = {}

    def __bool__(self) -> bool:
        return bool(self._tables)

    def copy(self) -> _ColumnTypes:
        # A table's columns are replaced, never changed in place (below): copies share them. The offline pass
        # copies before every step, and a long chain declares thousands of columns.
        copied = _ColumnTypes()
        copied._tables = dict(self._tables)
        return copied

    def get(self, table: str, column: str) -> TypeEngine[Any] | None:
        return self._tables.get(table, {}).get(column)

    def set(self, table: str, column: str, type_: TypeEngine[Any] | None) -> None:
        if type_ is None:
            self.forget(table, column)
        else:
            self._tables[table] = {**self._tables.get(table, {}), column: type_}

    def forget(self, table: str, column: str | None = None) -> None:
        if column is None:
            self._tables.pop(table, None)
        elif column in self._tables.get(table, {}):
            self._tables[table] = {name: type_ for name, type_ in self._tables[table].items() if name != column}

    def forget_mentioned(self, sql: str) -> None:
        """Raw SQL may change any column of a table it names: forget those tables.

        Statements that only write rows (INSERT, UPDATE, DELETE: a backfill) change no column's type.
        """
        if self and not all(_ROW_CHANGE.match(part) for part in sql.split(";") if part.strip()):
            self.forget_named(sql)

    def forget_named(self, text: str) -> None:
        """Forget every table ``text`` names (as a word)."""
        words = {word.lower() for word in _WORDS.findall(text)}
        for table in [t for t in self._tables if t.rsplit(".", 1)[-1].lower() in words]:
            del self._tables[table]


_WORDS = re.compile(r"[\w$]+")
# A statement that writes rows, after any leading comments. A chunk is split at every ';' (one in a
# string literal too): a part that does not start this way makes the chunk forget, as DDL would.
_ROW_CHANGE = re.compile(r"\s*(?:(?:--[^\n]*\n|/\*.*?\*/)\s*)*(?:INSERT|UPDATE|DELETE)\b", re.IGNORECASE | re.DOTALL)


@functools.lru_cache(maxsize=4096)
def _real_path(path: str | Path) -> str:
    """Resolved once per file: the recorder asks for every frame of every statement."""
    return os.path.realpath(path)


def collect(
    config: Config,
    script: ScriptDirectory,
    revision: str,
    direction: Direction,
    dialect: str,
    column_types: _ColumnTypes | None = None,
) -> StepStatements:
    """The statements ``revision``'s upgrade or downgrade executes when rendered for ``dialect``.

    ``dialect`` is one of :data:`DIALECT_URLS`; any other raises :class:`ConfigurationError`.
    An exception raised by env.py or the revision while rendering does not propagate: it ends the
    step and is described in ``error``. :class:`EnvironmentRefused` does: env.py cannot be used at all.
    ``column_types`` holds the column types known before the step (updated with what it declares).
    """
    url = DIALECT_URLS.get(dialect)
    if url is None:
        raise ConfigurationError(f"Unknown dialect '{dialect}' for check; use one of postgresql, mysql, sqlite.")
    found = script.get_revision(revision)
    if found is None:
        raise ConfigurationError(f"Revision {revision} is not in the migration scripts.")
    path = Path(found.path)
    recorder = _Recorder(path, column_types)
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
    except Exception as exc:  # noqa: BLE001 - env.py and revisions can raise anything offline
        error = _stopped(exc, path, recorder)
    return StepStatements(revision, direction, path, tuple(recorder.statements), error)


# Python errors that a revision's own code raises when it is wrong. Raised in the revision before the
# offline bind answered anything, they would be raised on a live database too. Not KeyError or
# ImportError: a missing environment variable or package of the environment check runs in is no
# error of the revision's.
_REVISION_BUGS = (NameError, SyntaxError, TypeError, AttributeError, IndexError, ZeroDivisionError)

# What the offline machinery is called in SQLAlchemy's messages, and what it is to the revision.
_OFFLINE_NAMES = re.compile(
    r"<class '(?:[\w.]+\.)?(?P<a>_RecordingBind|_SessionConnection|_EmptyResult|_Executed|_MigrationTransaction)'>"
    r"|'(?P<b>_RecordingBind|_SessionConnection|_EmptyResult|_Executed|_MigrationTransaction)' object"
    r"|\b(?P<c>_RecordingBind|_SessionConnection|_EmptyResult|_Executed|_MigrationTransaction)\b"
)
_OFFLINE_WORDS = {
    "_RecordingBind": "the offline connection",
    "_SessionConnection": "the offline connection",
    "_MigrationTransaction": "the offline connection's transaction",
    "_EmptyResult": "the offline (empty) query result",
    "_Executed": "the offline (empty) query result",
}


def _stopped(exc: Exception, path: Path, recorder: _Recorder) -> StepError:
    """What ``exc``, raised while the step rendered, means for the revision at ``path``."""
    frames = traceback.extract_tb(exc.__traceback__)
    mine = [frame for frame in frames if _real_path(frame.filename) == _real_path(path)]
    line = mine[-1].lineno if mine else None
    at = f"`{mine[-1].line.strip()}`" if mine and mine[-1].line else "the step"
    raised_by_revision = bool(mine) and frames[-1] is mine[-1]
    said = f"{type(exc).__name__}: {_in_user_words(redact(str(exc)).strip())}"
    if isinstance(exc, sa_exc.NoInspectionAvailable):
        return StepError(
            line,
            f"{at} reads the database's schema (the SQLAlchemy inspector, or a table or automap reflected "
            "with autoload_with=), which an offline check does not have; what the step does after it was not "
            "checked",
        )
    if isinstance(exc, sa_exc.NoResultFound):
        return StepError(
            line,
            f"{at} needs a row from a query, and offline every query answers as an empty database would, with "
            "no rows; what the step does after it was not checked",
        )
    if isinstance(exc, AttributeError) and isinstance(exc.obj, (_RecordingBind, _EmptyResult, _Executed)):
        return StepError(
            line,
            f"{at} uses `{exc.name}` of the migration's connection or of a query result, which an offline check "
            "cannot offer (offline, statements are recorded, not sent to a database); what the step does after "
            "it was not checked",
        )
    # Not imported for this: the ORM (a third of SQLAlchemy's import time) is loaded only by revisions that use it.
    orm_exc = sys.modules.get("sqlalchemy.orm.exc")
    if orm_exc is not None and isinstance(exc, orm_exc.ObjectDeletedError):
        return StepError(
            line,
            f"{at} reads back an object the Session wrote (after a commit it loads it again), and offline nothing "
            "is stored: every query answers as an empty database would; what the step does after it was not "
            "checked",
        )
    if _OFFLINE_NAMES.search(str(exc)):
        return StepError(
            line,
            f"{at} hands the migration's connection to code that needs a live database connection, and offline "
            f"that connection only records statements ({said}); what the step does after it was not checked",
        )
    # A name is undefined whatever a query answered; a local variable may be unbound because a loop
    # over offline rows never ran.
    undefined_name = isinstance(exc, NameError | SyntaxError) and not isinstance(exc, UnboundLocalError)
    own_code = raised_by_revision and isinstance(exc, _REVISION_BUGS) and recorder.first_answer is None
    if mine and (undefined_name or own_code):
        return StepError(line, f"{at} raises {said}", in_revision=True)
    if recorder.first_answer is not None:
        return StepError(
            line,
            f"{at} raised {said}, after the statement at line {recorder.first_answer} was answered offline "
            "as an empty database would (no rows, no row changed); what the step does after it was not checked",
        )
    return StepError(line, f"{at} could not run offline: {said}; what the step does after it was not checked")


def _in_user_words(message: str) -> str:
    """``message`` with the offline machinery's class names replaced by what they stand for."""
    return _OFFLINE_NAMES.sub(lambda m: _OFFLINE_WORDS[m.group("a") or m.group("b") or m.group("c")], message)


def collect_pass(
    config: Config, script: ScriptDirectory, revisions: Sequence[str], direction: Direction, dialect: str
) -> list[StepStatements]:
    """One direction of ``revisions`` (a plan, in upgrade order) in one offline pass, in the order it runs.

    Upgrades run oldest first, downgrades newest first. One env.py run for the whole pass; when a
    step cannot run offline it is collected on its own (see :func:`collect`), and the pass resumes
    after it. A downgrade pass first renders the upgrades (not reported): a downgrade changes the
    columns from the types the upgrades declared.
    """
    column_types = _ColumnTypes()
    if direction == "downgrade":
        column_types = _collect_pass(config, script, revisions, "upgrade", dialect, column_types)[1]
    return _collect_pass(config, script, revisions, direction, dialect, column_types)[0]


def collect_all(
    config: Config, script: ScriptDirectory, revisions: Sequence[str], dialect: str
) -> Iterator[StepStatements]:
    """For each revision in order, its upgrade then its downgrade; one offline pass per direction.

    The downgrade pass starts from the column types the upgrade pass left.
    """
    upgrades, known = _collect_pass(config, script, revisions, "upgrade", dialect, _ColumnTypes())
    downgraded = _collect_pass(config, script, revisions, "downgrade", dialect, known)[0]
    downgrades = {step.revision: step for step in downgraded}
    for upgrade in upgrades:
        yield upgrade
        yield downgrades[upgrade.revision]


def _collect_pass(
    config: Config,
    script: ScriptDirectory,
    revisions: Sequence[str],
    direction: Direction,
    dialect: str,
    column_types: _ColumnTypes,
) -> tuple[list[StepStatements], _ColumnTypes]:
    """:func:`collect_pass` from the column types known before it; also returns the types it leaves."""
    ordered = list(revisions) if direction == "upgrade" else list(reversed(revisions))
    url = DIALECT_URLS.get(dialect)
    if url is None:
        return [collect(config, script, revision, direction, dialect) for revision in ordered], column_types
    collected: list[StepStatements] = []
    while len(collected) < len(ordered):
        done, started, column_types = _render_pass(
            config, script, ordered[len(collected) :], direction, dialect, url, column_types
        )
        collected += done
        # The step that stopped the pass is collected on its own, where its error is kept, and the
        # pass resumes after it; when env.py stopped before any step, each step says why on its own.
        for revision in ordered[len(collected) : len(collected) + 1] if started else ordered[len(collected) :]:
            collected.append(_collect_alone(config, script, revision, direction, dialect, column_types))
    return collected, column_types


def _collect_alone(
    config: Config,
    script: ScriptDirectory,
    revision: str,
    direction: Direction,
    dialect: str,
    column_types: _ColumnTypes,
) -> StepStatements:
    """:func:`collect` with the types known before the step, updated with what it declares."""
    step = collect(config, script, revision, direction, dialect, column_types)
    if step.error is not None:
        # What it runs after the point where it stopped is unknown: any table its file names may change.
        column_types.forget_named(step.path.read_text(encoding="utf-8", errors="replace"))
    return step


def _render_pass(
    config: Config,
    script: ScriptDirectory,
    ordered: Sequence[str],
    direction: Direction,
    dialect: str,
    url: str,
    column_types: _ColumnTypes,
) -> tuple[list[StepStatements], bool, _ColumnTypes]:
    """Render ``ordered`` (in run order) in one env.py run, until the end or the step that stops it.

    Returns the steps that ran to their end, whether a step started (False: env.py stopped before
    the first one), and the column types before the step that stopped the pass (after the last
    step when none did).
    """
    found = [script.get_revision(revision) for revision in ordered]
    steps = [RevisionStep(script.revision_map, r, direction == "upgrade") for r in found if r is not None]
    recorder = _Recorder(Path(steps[0].revision.path), column_types)
    collected: list[StepStatements] = []
    started = False
    before_step = column_types

    def each_step(context: Any) -> Iterator[RevisionStep]:
        nonlocal started, before_step
        for step in steps:
            path = Path(step.revision.path)
            recorder.follow(path)
            before_step, started = recorder.column_types.copy(), True
            yield step
            collected.append(StepStatements(step.revision.revision, direction, path, tuple(recorder.statements)))
        before_step = recorder.column_types

    # A step that stops the pass is collected again on its own by the caller, where its error is kept.
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
    return collected, started, before_step


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

    A PostgreSQL enum is written as ``name ENUM('a', 'b')``: its DDL only names the type, and the
    name says whether two declarations are one type (a change between them changes nothing),
    while the values say what a change to another type keeps.
    """
    if type_ is None:
        return None
    try:
        rendered: str | None = str(type_.compile(dialect=dialect))
    except Exception:  # noqa: BLE001 - a type of another dialect, or one that needs arguments (a name) here
        rendered = None
    if isinstance(type_, sqltypes.Enum) and type_.native_enum and dialect.name == "postgresql":
        values = ", ".join("'" + str(value).replace("'", "''") + "'" for value in type_.enums)
        return f"{rendered} ENUM({values})" if rendered else f"ENUM({values})"
    return rendered


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

    def execute(self, obj: Any, parameters: Any = None, execution_options: Any = None) -> Any:
        result = super().execute(obj, parameters, execution_options)
        result.rowcount = _rows_matched(result.context.compiled.statement, result.context.parameters)
        return result

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
    # An empty table numbers its first rows 1, 2, 3...: what a flushed ORM object gets as its key.
    next_keys: dict[str, Iterator[int]] = {}

    def execute(construct: Any, parameters: Any = None) -> _EmptyResult:
        # Named values, one set or several (executemany); positional ones (driver SQL) name no column.
        if isinstance(parameters, Mapping):
            given = [dict(parameters)]
        elif isinstance(parameters, list | tuple) and all(isinstance(p, Mapping) for p in parameters):
            given = [dict(p) for p in parameters]
        else:
            given = []
        compiled = _compile(construct, dialect, given)
        sql = str(compiled)
        recorder.column_types.forget_mentioned(sql)
        recorder.record(sql)
        recorder.answered()
        return _EmptyResult(compiled, given, next_keys)

    return execute


class _EmptyResult(IteratorResult[Any]):
    """What an empty database answers: no rows, no row changed (batch loops end), for Core and ORM callers.

    The result has the statement's columns, so it can be read by column, ORM entity or name
    (``.all()``, ``.scalar()``, ``.first()``, ``scalars()``, a Session's queries) and gives nothing.
    An INSERT reports the primary keys it was given, or those an empty table would generate.
    """

    returned_defaults = None
    returned_defaults_rows = None

    def __init__(
        self, compiled: Compiled, parameters: list[dict[str, Any]], next_keys: dict[str, Iterator[int]]
    ) -> None:
        columns = getattr(compiled, "_result_columns", None) or []
        keys = [column.keyname for column in columns]
        super().__init__(SimpleResultMetaData(keys, extra=[column.objects for column in columns] or None), iter([]))
        self._executed = self.context = _Executed(compiled, parameters)
        self._next_keys = next_keys
        self.rowcount = 0

    @functools.cached_property
    def inserted_primary_key_rows(self) -> list[tuple[Any, ...]]:
        """One primary key per row inserted (none for other statements); numbered once, when first read."""
        executed = self._executed
        if not executed.isinsert:
            return []
        return [_inserted_key(executed.compiled, values, self._next_keys) for values in executed.compiled_parameters]

    @property
    def inserted_primary_key(self) -> tuple[Any, ...] | None:
        return self.inserted_primary_key_rows[0] if len(self.inserted_primary_key_rows) == 1 else None

    def prefetch_cols(self) -> list[Any]:
        return []

    def postfetch_cols(self) -> list[Any]:
        return []


def _rows_matched(statement: Any, parameters: list[dict[str, Any]]) -> int:
    """How many rows a statement the Session sends changes offline: none, except the ORM's own by key.

    The ORM writes an object it holds, and runs a bulk UPDATE by primary key (``session.execute(
    update(Model), [...])``), as ``UPDATE ... WHERE pk = :table_pk`` or ``DELETE ... WHERE pk = :pk``
    per key set, and checks that each matched one row: offline, each does. Any other statement
    changes nothing, so loops that run until no row changes end.
    """
    if not parameters or not isinstance(statement, Update | Delete):
        return 0
    compared = set()
    pending = list(statement._where_criteria)
    while pending:
        criterion = pending.pop()
        if isinstance(criterion, BooleanClauseList) and criterion.operator is operators.and_:
            pending.extend(criterion.clauses)
        elif (
            isinstance(criterion, BinaryExpression)
            and criterion.operator is operators.eq
            and isinstance(criterion.left, Column)
            and isinstance(criterion.right, BindParameter)
            and criterion.right.key == (criterion.left.key if isinstance(statement, Delete) else criterion.left._label)
        ):
            compared.add(criterion.left.name)
        else:
            return 0
    primary_key = {column.name for column in statement.table.primary_key}
    return len(parameters) if primary_key and primary_key <= compared else 0


def _inserted_key(
    compiled: Compiled, values: Mapping[str, Any], next_keys: dict[str, Iterator[int]]
) -> tuple[Any, ...]:
    """The primary key of a row ``compiled`` inserts: the values given, else the next number of its table."""
    table = compiled.statement.table  # type: ignore[union-attr]
    counter = next_keys.setdefault(table.fullname, itertools.count(1))
    return tuple(values[c.key] if values.get(c.key) is not None else next(counter) for c in table.primary_key)


class _Executed:
    """The parts of an execution context that Core and ORM callers read after a statement ran."""

    _is_server_side = False

    def __init__(self, compiled: Compiled, parameters: list[dict[str, Any]]) -> None:
        self.compiled = compiled
        self.parameters = parameters
        self.executemany = len(parameters) > 1
        self.isinsert = bool(getattr(compiled, "isinsert", False))
        self.isupdate = bool(getattr(compiled, "isupdate", False))
        self.isdelete = bool(getattr(compiled, "isdelete", False))

    @functools.cached_property
    def compiled_parameters(self) -> list[Mapping[str, Any]]:
        """The values of each execution; only the ORM reads them (raw SQL may lack some, which is fine unread)."""
        return [self.compiled.construct_params(values) or {} for values in self.parameters or [{}]]


def _compile(construct: Any, dialect: Dialect, parameters: Sequence[dict[str, Any]] = ()) -> Compiled:
    """A construct given to the bind, compiled; values inlined where SQLAlchemy can render them.

    With ``parameters`` (passed to ``execute()`` apart from the statement) it is compiled for them,
    as the engine would: placeholders, and an INSERT or UPDATE names the columns given.
    """
    if isinstance(construct, str):
        construct = text(construct)
    if isinstance(construct, ExecutableDDLElement):
        return construct.compile(dialect=dialect)
    if parameters:
        return construct.compile(dialect=dialect, column_keys=list(parameters[0]))  # type: ignore[no-any-return]
    try:
        return construct.compile(dialect=dialect, compile_kwargs={"literal_binds": True})  # type: ignore[no-any-return]
    except sa_exc.CompileError:
        # Bound values that have no literal form: placeholders still parse.
        return construct.compile(dialect=dialect)  # type: ignore[no-any-return]
