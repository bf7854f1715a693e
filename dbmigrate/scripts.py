"""The Alembic bridge: the project's Config and scripts, plans, and running its own ``env.py``.

dbmigrate never replaces Alembic's behaviour: the user's ``env.py`` runs as it would under
``alembic upgrade``. We only hand it our connection (``config.attributes["connection"]``, which the
Alembic cookbook's env.py uses) and wrap ``context.configure`` so that each revision runs in its own
transaction and each step passes through our runner. An env.py under which that cannot hold (one
that migrates another database, or several) is refused before anything runs.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, redirect_stdout
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

from dbmigrate.database import database_identity
from dbmigrate.errors import ConfigurationError, DbmigrateError, EnvironmentRefused
from dbmigrate.masking import mask_url, redact
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
    pyproject = path.parent / "pyproject.toml"  # Alembic's [tool.alembic], beside the ini as dbmigrate's own table
    config = Config(str(path), toml_file=str(pyproject) if pyproject.is_file() else None)
    config.output_buffer = io.StringIO()
    if settings.tenant_schema is not None:
        # What `alembic -x tenant=SCHEMA` gives env.py: context.get_x_argument(as_dictionary=True)["tenant"].
        config.cmd_opts = argparse.Namespace(x=[f"tenant={settings.tenant_schema}"])
    if not config.get_alembic_option("script_location") and (path.parent / "env.py").is_file():
        # Flask-Migrate's layout: the ini lives in the scripts directory and names no script_location.
        config.set_main_option("script_location", str(path.parent).replace("%", "%%"))
    return config


def ini_url(config: Config) -> str | None:
    """Alembic's own ``sqlalchemy.url`` from the ini file, if any."""
    return config.get_main_option("sqlalchemy.url") or None


def point_at(config: Config, url: str) -> None:
    """Make the project's env.py connect to ``url`` (configparser needs ``%`` doubled)."""
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))


_shared: dict[tuple[str | None, ...], ScriptDirectory] | None = None


def share_loaded_scripts() -> None:
    """From now on, this process loads each scripts directory once and keeps it (a fleet worker, which runs
    target after target of one project: their scripts are the same files, read at the first target)."""
    global _shared
    _shared = {}


def load_scripts(config: Config) -> ScriptDirectory:
    """Load env.py's source and every revision file now, so a broken one is reported before anything runs."""
    if _shared is None:
        return _load_scripts(config)
    key = (
        config.config_file_name,
        config.get_alembic_option("script_location"),
        config.get_alembic_option("version_locations"),
    )
    if key not in _shared:
        _shared[key] = _load_scripts(config)
    return _shared[key]


def _load_scripts(config: Config) -> ScriptDirectory:
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
            "code, migrated by a newer release. To run this code, run `dbmigrate rollback` with it (or deploy it "
            "with `dbmigrate upgrade --when-ahead rollback`): it takes the database back to these scripts from the "
            "revisions archived in the database, keeping the newer schema when this code can run on it and copying "
            "aside what a downgrade drops. Or deploy that release's image."
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


class SharedConnection(Connection):
    """The connection dbmigrate hands env.py as ``config.attributes["connection"]``.

    A SQLAlchemy 2 connection that also answers ``connect()`` as a SQLAlchemy 1.x connection did,
    because the Alembic cookbook's older env.py calls ``connectable.connect()`` on whatever it finds
    there. It is a real :class:`~sqlalchemy.engine.Connection` (not a proxy), so env.py, Alembic and
    revisions can inspect it, listen to it or bind a Session to it like any other.
    """

    def __enter__(self) -> SharedConnection:
        return self

    def connect(self) -> AbstractContextManager[SharedConnection]:
        """This same connection, in a context that leaves it open: dbmigrate closes it after env.py.

        SQLAlchemy 1.x returned a "branch" whose closing did not close its parent; handing back the
        connection itself keeps everything env.py runs inside dbmigrate's transaction per revision,
        timeouts and history.
        """
        return contextlib.nullcontext(self)


def run_env(
    config: Config,
    script: ScriptDirectory,
    steps: StepSource,
    *,
    connection: SharedConnection | None = None,
    on_configure: ConfigureHook | None = None,
    as_sql: bool = False,
    starting_rev: str | None = None,
    destination_rev: str | None = None,
    **context_options: Any,
) -> None:
    """Run the project's env.py once; ``steps`` receives the database's heads, yields the steps.

    Online, env.py finds ``connection`` in ``config.attributes["connection"]``. Whatever connection
    it configures must reach the same database, and only one: otherwise :class:`EnvironmentRefused`
    is raised before any step runs.
    With ``FLASK_APP`` set, env.py runs inside that Flask application's context, as under ``flask db``.
    ``context_options`` go to Alembic's MigrationContext (for example ``dont_mutate=True``).
    """

    def migrations_fn(current: Any, context: MigrationContext) -> Iterable[RevisionStep]:
        return steps(tuple(current or ()))

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
    # Alembic's module proxy (``alembic.context``) exposes the instance's attributes, so instance-level
    # wrappers are what env.py's ``context.configure(...)`` and ``context.run_migrations(...)`` call.
    configure, run_migrations = environment.configure, environment.run_migrations

    with contextlib.ExitStack() as stack:
        if connection is not None:
            config.attributes["connection"] = connection
            stack.callback(config.attributes.pop, "connection", None)
        restore_logging = stack.enter_context(logging_kept())
        configured = False

        def configure_with_hook(**options: Any) -> None:
            nonlocal configured
            configured = True
            restore_logging()  # env.py's own logging set-up has run by now: from here on, lines keep dbmigrate's format
            if "upgrade_token" in options or "downgrade_token" in options:
                raise EnvironmentRefused(_SEVERAL_DATABASES)
            theirs = options.get("connection")
            if connection is not None and isinstance(theirs, Connection) and theirs is not connection:
                _refuse_another_database(connection, theirs)
            if on_configure is not None:
                on_configure(options)
            configure(**options)

        def run_migrations_checked(**kw: Any) -> None:
            if kw:  # arguments for the revisions' upgrade(engine_name): one database per run cannot give them
                raise EnvironmentRefused(_SEVERAL_DATABASES)
            run_migrations()

        environment.configure = configure_with_hook  # type: ignore[method-assign,assignment]
        environment.run_migrations = run_migrations_checked  # type: ignore[method-assign]
        stack.enter_context(_flask_app_context())
        try:
            with environment:
                script.run_env()
        except RuntimeError as exc:
            # Flask's words when current_app is read with no app loaded; a revision's own use of it fails its step.
            if configured or "outside of application context" not in str(exc):
                raise
            raise EnvironmentRefused(_NO_FLASK_APP) from None


_SEVERAL_DATABASES = (
    "env.py migrates several databases in one run (Alembic's multidb template: context.configure(upgrade_token=...) "
    "and context.run_migrations(engine_name=...) for each database). dbmigrate migrates one database per run, with "
    "its own run lock, version table and history, so it cannot keep its promises for the others. Give each "
    "database its own Alembic environment (alembic init -t generic) and run dbmigrate once per database (-c "
    "each alembic.ini), or keep running this one with plain alembic. Nothing was run."
)


def _refuse_another_database(ours: Connection, theirs: Connection) -> None:
    """Refuse an env.py whose own connection reaches a database other than the one dbmigrate migrates.

    dbmigrate's run lock, history rows and (for verify) scratch database would all be elsewhere.
    """
    if database_identity(theirs) == database_identity(ours):
        return
    raise EnvironmentRefused(
        f"env.py connects to {mask_url(theirs.engine.url)}, not to {mask_url(ours.engine.url)}, the database dbmigrate "
        "was given: it builds its engine from a URL of its own (an app config, another variable), so dbmigrate's "
        "run lock, history and verify would protect another database than the one migrated. Either use the "
        'connection dbmigrate passes, as the Alembic cookbook does: `connectable = config.attributes.get("connection") '
        "or <your engine>`, or give dbmigrate the URL env.py uses (DATABASE_URL or --database-url). Nothing was run."
    )


_NO_FLASK_APP = (
    "env.py uses Flask's current_app (Flask-Migrate's env.py), and no Flask application is loaded. Set FLASK_APP "
    "to your application, as for `flask db upgrade` (for example FLASK_APP='myapp:create_app()'): dbmigrate then "
    "runs env.py inside its application context. Nothing was run."
)


@contextmanager
def _flask_app_context() -> Iterator[None]:
    """With ``FLASK_APP`` set, the app it names is loaded and its context pushed, as ``flask db upgrade`` does.

    Flask-Migrate's env.py reads ``current_app``. The app is created anew for each env.py run, so it
    sees the environment of that moment (verify points ``DATABASE_URL`` at its scratch database).
    """
    app_path = os.environ.get("FLASK_APP")
    if not app_path:
        yield
        return
    from flask.cli import ScriptInfo  # only projects that name a Flask app need Flask

    app = ScriptInfo(app_import_path=app_path, set_debug_flag=False).load_app()
    with app.app_context():
        yield


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
