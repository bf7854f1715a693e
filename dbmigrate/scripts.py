"""The Alembic bridge: the project's Config and scripts, plans, and running its own ``env.py``.

dbmigrate never replaces Alembic's behaviour: the user's ``env.py`` runs as it would under
``alembic upgrade``. We only hand it our connection (``config.attributes["connection"]``, which the
Alembic cookbook's env.py uses) and wrap ``context.configure`` so that each revision runs in its own
transaction and each step passes through our runner.
"""

from __future__ import annotations

import io
import re
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, redirect_stdout
from pathlib import Path
from typing import Any

from alembic.config import Config
from alembic.runtime.environment import EnvironmentContext
from alembic.runtime.migration import MigrationContext, RevisionStep
from alembic.script import ScriptDirectory
from alembic.script.revision import RevisionError
from alembic.util import CommandError
from alembic.util.pyfiles import pyc_file_from_path
from sqlalchemy.engine import Connection

from dbmigrate.errors import ConfigurationError, DbmigrateError
from dbmigrate.masking import redact
from dbmigrate.observability import errors_only, logging_kept
from dbmigrate.settings import Settings

StepSource = Callable[[tuple[str, ...]], Iterable[RevisionStep]]
ConfigureHook = Callable[[dict[str, Any]], None]


class DatabaseAhead(ConfigurationError):
    """The database is at a revision the scripts do not contain: newer code migrated it."""


def load_config(settings: Settings) -> Config:
    """The project's Alembic Config; raises :class:`ConfigurationError` when it does not exist."""
    path = settings.config_file
    if not path.is_file():
        raise ConfigurationError(
            f"Alembic config file {path} not found. Run dbmigrate where alembic.ini is, or pass "
            "-c/--config PATH (or set DBMIGRATE_CONFIG)."
        )
    config = Config(str(path))
    config.output_buffer = io.StringIO()
    return config


def ini_url(config: Config) -> str | None:
    """Alembic's own ``sqlalchemy.url`` from the ini file, if any."""
    return config.get_main_option("sqlalchemy.url") or None


def point_at(config: Config, url: str) -> None:
    """Make the project's env.py connect to ``url`` (configparser needs ``%`` doubled)."""
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))


def load_scripts(config: Config) -> ScriptDirectory:
    """Load env.py's source and every revision file now, so a broken one is reported before anything runs."""
    script: ScriptDirectory | None = None
    try:
        script = ScriptDirectory.from_config(config)
        _check_env_py(script, config)
        with logging_kept():  # a revision may import its project, which may set up logging as it loads
            script.revision_map.heads  # noqa: B018 -- forces every revision file to be imported
        return script
    except CommandError as exc:
        raise ConfigurationError(
            f"Cannot load the migration scripts: {str(exc).strip().rstrip('.')}. "
            f"Check script_location in {config.config_file_name}."
        ) from None
    except SyntaxError as exc:
        raise ConfigurationError(
            f"Revision file {exc.filename} has a syntax error at line {exc.lineno}: {exc.msg}. "
            "Fix the file; nothing was run."
        ) from None
    except DbmigrateError:
        raise
    except Exception as exc:  # noqa: BLE001 - a revision file can raise anything on import
        where = _failing_file(exc, script.dir) if script is not None else None
        raise ConfigurationError(
            f"A revision file{f' ({where})' if where else ''} failed to load: {type(exc).__name__}: "
            f"{redact(str(exc))}. Fix it; nothing was run."
        ) from None


def _check_env_py(script: ScriptDirectory, config: Config) -> None:
    """env.py must exist and compile (it runs later, once connected: fail before that)."""
    path = Path(script.dir) / "env.py"
    if not path.is_file():
        if pyc_file_from_path(path) is None:
            raise ConfigurationError(
                f"The migration scripts directory {script.dir} has no env.py. Check script_location in "
                f"{config.config_file_name}, or create the directory with `alembic init`."
            )
        return
    try:
        compile(path.read_bytes(), str(path), "exec", dont_inherit=True)
    except SyntaxError as exc:
        raise ConfigurationError(
            f"{path} has a syntax error at line {exc.lineno}: {exc.msg}. Fix the file; nothing was run."
        ) from None


def _failing_file(exc: BaseException, scripts_dir: str) -> str | None:
    """The innermost file of the traceback that lies in the scripts directory: the revision that raised."""
    root = Path(scripts_dir).resolve()
    found = None
    for frame, _ in traceback.walk_tb(exc.__traceback__):
        path = Path(frame.f_code.co_filename).resolve()
        if path.is_relative_to(root):
            found = str(path)
    return found


def heads(script: ScriptDirectory) -> tuple[str, ...]:
    """The head revisions of the scripts, sorted."""
    return tuple(sorted(script.get_heads()))


def unknown_revisions(script: ScriptDirectory, revisions: Iterable[str]) -> list[str]:
    """Those of ``revisions`` that the scripts do not contain."""
    return [rev for rev in revisions if rev not in script.revision_map._revision_map]


def ensure_known(script: ScriptDirectory, current: Sequence[str]) -> None:
    """Raise :class:`DatabaseAhead` when the database stands at a revision the scripts lack."""
    unknown = unknown_revisions(script, current)
    if unknown:
        raise DatabaseAhead(
            f"The database is at revision {', '.join(unknown)}, which these migration scripts do not "
            f"contain (their heads: {', '.join(heads(script)) or 'none'}): the database is ahead of this "
            "code, migrated by a newer release. Deploy that release's image, or roll the database back "
            "with the newer image's scripts (dbmigrate downgrade REVISION)."
        )


def plan(script: ScriptDirectory, target: str, current: Sequence[str], upgrade: bool) -> list[RevisionStep]:
    """The steps that take the database from ``current`` to ``target``, in order."""
    ensure_known(script, current)
    try:
        if upgrade:
            return script._upgrade_revs(target, tuple(current))  # type: ignore[arg-type]
        return script._downgrade_revs(target, tuple(current))  # type: ignore[arg-type]
    except CommandError as exc:
        raise ConfigurationError(_explain_plan_error(str(exc), target, heads(script))) from None


def revision_range(script: ScriptDirectory, spec: str | None) -> list[str]:
    """Revision ids oldest first: all of them (``spec`` None), or ``A:B``, those an upgrade from A to B runs."""
    try:
        if spec is None:
            return [r.revision for r in reversed(list(script.walk_revisions("base", "heads")))]
        lower, separator, upper = spec.partition(":")
        if not separator or not upper:
            raise ConfigurationError(f"A range is LOWER:UPPER (for example base:head or 0002:0005), not {spec!r}.")
        lower = lower or "base"
        for top in script.get_revisions(upper):
            if top is not None and not _descends(script, top.revision, lower):
                raise ConfigurationError(
                    f"The range {spec!r} is empty for head {top.revision}: it does not descend from {lower}, so no "
                    "upgrade from the lower end runs it. Name a lower end it descends from (or base)."
                )
        return [r.revision for r in reversed(list(script.iterate_revisions(upper, lower)))]
    except (CommandError, RevisionError) as exc:
        raise ConfigurationError(f"Cannot resolve the range {spec!r}: {exc}") from None


def _descends(script: ScriptDirectory, revision: str, ancestor: str) -> bool:
    """Whether ``revision`` is ``ancestor`` or above it (every revision is above base)."""
    if ancestor == "base":
        return True
    resolved = {r.revision for r in script.get_revisions(ancestor) if r is not None}
    return any(r.revision in resolved for r in script.revision_map.iterate_revisions(revision, "base"))


def stamp_steps(script: ScriptDirectory, revision: str, current: Sequence[str]) -> list[Any]:
    """The steps of ``alembic stamp revision`` from ``current``."""
    try:
        return script._stamp_revs(revision, tuple(current))
    except CommandError as exc:
        raise ConfigurationError(_explain_plan_error(str(exc), revision, heads(script))) from None


def _explain_plan_error(alembic_message: str, target: str, script_heads: Sequence[str]) -> str:
    if "Multiple head" in alembic_message or "multiple heads" in alembic_message.lower():
        return (
            f"The scripts have more than one head ({', '.join(script_heads)}), so '{target}' is ambiguous "
            f"({alembic_message}). "
            "Merge them with `alembic merge heads`, or upgrade to `heads` to apply every branch."
        )
    return f"Cannot plan a migration to '{target}': {alembic_message}"


def step_revision(step: RevisionStep) -> str:
    """The revision a step applies (upgrade) or removes (downgrade)."""
    return str(step.revision.revision)


def step_from(step: RevisionStep) -> str:
    """The revision(s) the database is at before the step, comma separated ('' for base)."""
    revisions = step.from_revisions
    return ",".join(revisions) if revisions else ""


def step_path(step: RevisionStep) -> Path:
    """The revision file a step runs."""
    return Path(step.revision.path)


def run_env(
    config: Config,
    script: ScriptDirectory,
    steps: StepSource,
    *,
    connection: Connection | None = None,
    on_configure: ConfigureHook | None = None,
    as_sql: bool = False,
    starting_rev: str | None = None,
    destination_rev: str | None = None,
    **context_options: Any,
) -> None:
    """Run the project's env.py once; ``steps`` receives the database's heads, yields the steps.

    ``context_options`` go to Alembic's MigrationContext (for example ``dont_mutate=True``).
    """

    def migrations_fn(current: Any, context: MigrationContext) -> Iterable[RevisionStep]:
        return steps(tuple(current or ()))

    if connection is not None:
        config.attributes["connection"] = connection
    # The Alembic cookbook's env.py skips fileConfig when its caller owns logging; others are undone.
    config.attributes["configure_logger"] = False
    environment = EnvironmentContext(
        config,
        script,
        fn=migrations_fn,
        as_sql=as_sql,
        starting_rev=starting_rev,
        destination_rev=destination_rev,
        **context_options,
    )
    # Alembic's module proxy (``alembic.context``) exposes the instance's attributes, so an
    # instance-level wrapper is what env.py's ``context.configure(...)`` calls.
    configure = environment.configure

    def configure_with_hook(**options: Any) -> None:
        restore_logging()  # env.py's own logging set-up has run by now: from here on, lines keep dbmigrate's format
        if on_configure is not None:
            on_configure(options)
        configure(**options)

    environment.configure = configure_with_hook  # type: ignore[method-assign,assignment]
    try:
        with logging_kept() as restore_logging, environment:
            script.run_env()
    finally:
        config.attributes.pop("connection", None)


_RUNNING = re.compile(r"^-- Running (?:upgrade|downgrade) .*$", re.MULTILINE)


def render_sql(
    config: Config, script: ScriptDirectory, planned: Sequence[RevisionStep], current: Sequence[str]
) -> list[str]:
    """The SQL each planned step emits, rendered offline by env.py (Alembic's ``--sql`` mode).

    Returns one string per step. A step that cannot run offline (one that reads data through
    ``op.get_bind()``, or SQLite batch mode that reflects a table) gets a ``-- cannot render``
    comment with the reason instead; the other steps are still rendered.
    """
    if not planned:
        return []
    try:
        return _split_by_step(_render(config, script, planned, current), len(planned))
    except ConfigurationError:
        pass
    rendered = []
    for step in planned:
        before = [step_from(step)] if step_from(step) else []
        try:
            rendered.append(_render(config, script, [step], before))
        except ConfigurationError as exc:
            rendered.append(f"-- {step.short_log}\n-- cannot render offline: {exc}\n")
    return rendered


def render_offline(
    config: Config,
    script: ScriptDirectory,
    steps: StepSource,
    output: io.StringIO,
    *,
    starting_rev: str | None,
    destination_rev: str,
    on_configure: ConfigureHook | None = None,
) -> None:
    """Run env.py in Alembic's offline (``--sql``) mode, writing to ``output``; raises what env.py raises."""
    previous = config.output_buffer
    config.output_buffer = output
    try:
        with _offline_chatter_dropped():
            run_env(
                config,
                script,
                steps,
                as_sql=True,
                on_configure=on_configure,
                starting_rev=starting_rev,
                destination_rev=destination_rev,
            )
    finally:
        config.output_buffer = previous


def _render(config: Config, script: ScriptDirectory, planned: Sequence[RevisionStep], current: Sequence[str]) -> str:
    buffer = io.StringIO()

    def replay(_: tuple[str, ...]) -> Iterator[RevisionStep]:
        yield from planned

    try:
        render_offline(
            config,
            script,
            replay,
            buffer,
            starting_rev=",".join(current) if current else None,
            destination_rev=step_revision(planned[-1]),
        )
    except DbmigrateError:
        raise
    except Exception as exc:  # noqa: BLE001 - env.py and revisions can raise anything offline
        raise ConfigurationError(f"{type(exc).__name__}: {redact(str(exc))}") from None
    return buffer.getvalue()


def _split_by_step(text: str, count: int) -> list[str]:
    starts = [m.start() for m in _RUNNING.finditer(text)]
    if len(starts) != count:
        return [text] * count
    return [text[start:end] for start, end in zip(starts, [*starts[1:], len(text)], strict=True)]


@contextmanager
def _offline_chatter_dropped() -> Iterator[None]:
    """What revisions print, and what Alembic and they log up to warnings, is dropped while rendering offline.

    Alembic would say "Running upgrade" and a revision might report rows it touched, or warn
    about what its offline branch cannot do, though nothing runs; the lines that matter come when
    the step really runs. Logged errors still show.
    """
    with errors_only(), redirect_stdout(io.StringIO()):
        yield
