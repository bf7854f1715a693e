"""What each revision step really executes, statement by statement, with the line that caused it.

Each step (a revision's ``upgrade()`` or ``downgrade()``) runs on its own through the project's
``env.py`` in Alembic's offline (``--sql``) mode, rendered for the chosen dialect whatever URL the
env.py would use. Every statement Alembic emits is captured together with the innermost line of the
revision file on the call stack at that moment, so loops, ``if`` branches on the dialect and helper
functions (in the revision file or imported from elsewhere) are seen exactly as they run.

Covered:
  * every ``op.*`` call and ``op.execute(...)`` with raw SQL (kept as written; the rules parse it);
  * ``op.get_bind().execute(...)`` and SQLAlchemy DDL run on the bind (``table.create(bind)``,
    ``metadata.create_all(bind)``): offline, the bind records what it is given instead of sending
    it, and answers every query with an empty result, as an empty database would, so loops over
    rows end;
  * ``batch_alter_table`` on SQLite with ``recreate="auto"`` (the default): offline there is no
    table to reflect, so the batch is rendered as the plain ``ALTER TABLE`` statements it stands for
    (its intent), as ``recreate="never"`` would.

Not covered (the step is reported in :attr:`StepStatements.error` with the statements seen before):
  * a revision that uses what a query returns beyond "no rows" (``.scalar_one()``, ``rowcount``);
  * ``batch_alter_table(recreate="always")`` without ``copy_from`` on any dialect;
  * ``bind.exec_driver_sql(...)`` and raw DBAPI cursors (``bind.connection.cursor()``), which the
    offline bind does not offer (the step stops there, reported in ``error``);
  * ``batch_alter_table`` statements point at the ``with`` line: Alembic runs them when the block ends.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

from alembic.config import Config
from alembic.runtime.migration import RevisionStep
from alembic.script import Script, ScriptDirectory
from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from sqlalchemy.engine import Dialect
from sqlalchemy.engine.mock import MockConnection
from sqlalchemy.engine.result import IteratorResult, SimpleResultMetaData
from sqlalchemy.sql.ddl import ExecutableDDLElement

from alembic import context as alembic_context
from dbmigrate.errors import ConfigurationError
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
        self._revision_path = os.path.realpath(revision_path)
        self._is_revision_file: dict[str, bool] = {}
        self.statements: list[Statement] = []

    def follow(self, revision_path: Path) -> list[Statement]:
        """From now on record for another revision file; returns what was recorded for the previous one."""
        recorded, self.statements = self.statements, []
        self._revision_path = os.path.realpath(revision_path)
        self._is_revision_file = {}
        return recorded

    def write(self, chunk: str) -> int:
        self.record(chunk)
        return len(chunk)

    def record(self, sql: str) -> None:
        """Keep ``sql`` with the revision line that caused it, if the revision caused it."""
        sql = sql.strip()
        line = self._revision_line()
        if sql and line is not None:
            self.statements.append(Statement(sql, line))

    def _revision_line(self) -> int | None:
        frame = sys._getframe(1)
        while frame is not None:
            filename = frame.f_code.co_filename
            known = self._is_revision_file.get(filename)
            if known is None:
                known = self._is_revision_file[filename] = os.path.realpath(filename) == self._revision_path
            if known:
                return frame.f_lineno
            frame = frame.f_back  # type: ignore[assignment]
        return None


def collect(
    config: Config, script: ScriptDirectory, revision: str, direction: Direction, dialect: str
) -> StepStatements:
    """The statements ``revision``'s upgrade or downgrade executes when rendered for ``dialect``.

    ``dialect`` is one of :data:`DIALECT_URLS`; any other raises :class:`ConfigurationError`.
    An exception raised by env.py or the revision while rendering does not propagate: it ends the
    step and is described in ``error``.
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
        render_offline(
            config,
            script,
            _recording_step(step, recorder, dialect),
            recorder,
            starting_rev=_starting_revision(found, direction),
            destination_rev=revision,
            on_configure=_render_for(url),
        )
    except Exception as exc:  # noqa: BLE001 - env.py and revisions can raise anything offline
        error = f"{type(exc).__name__}: {redact(str(exc)).strip()}"
    return StepStatements(revision, direction, path, tuple(recorder.statements), error)


def collect_upgrades(
    config: Config, script: ScriptDirectory, revisions: Sequence[str], dialect: str
) -> list[StepStatements]:
    """The upgrades of ``revisions`` (a plan, in order) in one offline pass; for the upgrade gate.

    One env.py run for the whole plan; when a step cannot run offline the pass stops there, and
    the rest is collected step by step (see :func:`collect`).
    """
    url = DIALECT_URLS.get(dialect)
    if url is None or not revisions:
        return [collect(config, script, revision, "upgrade", dialect) for revision in revisions]
    found = [script.get_revision(revision) for revision in revisions]
    steps = [RevisionStep(script.revision_map, revision, True) for revision in found if revision is not None]
    recorder = _Recorder(Path(steps[0].revision.path))
    collected: list[StepStatements] = []

    def each_step(context: Any) -> Iterator[RevisionStep]:
        for step in steps:
            path = Path(step.revision.path)
            recorder.follow(path)
            yield step
            collected.append(StepStatements(step.revision.revision, "upgrade", path, tuple(recorder.statements)))

    # A step that stops the pass is collected again on its own below, where its error is kept.
    with contextlib.suppress(Exception):
        render_offline(
            config,
            script,
            _recording_steps(each_step, recorder, dialect),
            recorder,
            starting_rev=_starting_revision(steps[0].revision, "upgrade"),
            destination_rev=revisions[-1],
            on_configure=_render_for(url),
        )
    rest = revisions[len(collected) :]
    return collected + [collect(config, script, revision, "upgrade", dialect) for revision in rest]


def collect_all(
    config: Config, script: ScriptDirectory, revisions: Sequence[str], dialect: str
) -> Iterator[StepStatements]:
    """For each revision in order, its upgrade then its downgrade (see :func:`collect`)."""
    for revision in revisions:
        yield collect(config, script, revision, "upgrade", dialect)
        yield collect(config, script, revision, "downgrade", dialect)


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
        bind = MockConnection(context.dialect, _recording_execute(context.dialect, recorder))
        context.connection = bind  # type: ignore[assignment]
        context.impl.connection = bind  # type: ignore[assignment]
        if dialect == "sqlite":
            # No live table to reflect: render a batch as the ALTER statements it stands for.
            context.impl.requires_recreate_in_batch = lambda batch_op: False  # type: ignore[method-assign]
        yield from steps_of(context)

    return steps


def _recording_execute(dialect: Dialect, recorder: _Recorder) -> Any:
    def execute(construct: Any, parameters: Any = None) -> IteratorResult[Any]:
        recorder.record(_compile(construct, dialect))
        return IteratorResult(SimpleResultMetaData([]), iter([]))

    return execute


def _compile(construct: Any, dialect: Dialect) -> str:
    """SQL text for a construct given to the bind; values inlined where SQLAlchemy can render them."""
    if isinstance(construct, str):
        construct = text(construct)
    if isinstance(construct, ExecutableDDLElement):
        return str(construct.compile(dialect=dialect))
    try:
        return str(construct.compile(dialect=dialect, compile_kwargs={"literal_binds": True}))
    except sa_exc.CompileError:
        # Parameters passed separately to execute(): placeholders still parse.
        return str(construct.compile(dialect=dialect))
