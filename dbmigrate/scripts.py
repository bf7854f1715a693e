"""The Alembic bridge: the project's Config and scripts, plans, and running its own ``env.py``.

dbmigrate never replaces Alembic's behaviour: the user's ``env.py`` runs as it would under
``alembic upgrade``. We only hand it our connection (``config.attributes["connection"]``, which the
Alembic cookbook's env.py uses) and wrap ``context.configure`` so that each revision runs in its own
transaction and each step passes through our runner.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic.config import Config
from alembic.runtime.environment import EnvironmentContext
from alembic.runtime.migration import MigrationContext, RevisionStep
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy.engine import Connection

from dbmigrate.errors import ConfigurationError, DbmigrateError
from dbmigrate.masking import redact
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
    """Load every revision file now, so a broken one is reported before anything runs."""
    try:
        script = ScriptDirectory.from_config(config)
        script.revision_map.heads  # noqa: B018 -- forces every revision file to be imported
    except CommandError as exc:
        raise ConfigurationError(
            f"Cannot load the migration scripts: {exc}. Check script_location in {config.config_file_name}."
        ) from None
    except SyntaxError as exc:
        raise ConfigurationError(
            f"Revision file {exc.filename} has a syntax error at line {exc.lineno}: {exc.msg}. "
            "Fix the file; nothing was run."
        ) from None
    except Exception as exc:  # noqa: BLE001 - a revision file can raise anything on import
        raise ConfigurationError(
            f"A revision file failed to load: {type(exc).__name__}: {redact(str(exc))}. Fix it; nothing was run."
        ) from None
    return script


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
        raise ConfigurationError(_explain_plan_error(str(exc), target)) from None


def stamp_steps(script: ScriptDirectory, revision: str, current: Sequence[str]) -> list[Any]:
    """The steps of ``alembic stamp revision`` from ``current``."""
    try:
        return script._stamp_revs(revision, tuple(current))
    except CommandError as exc:
        raise ConfigurationError(_explain_plan_error(str(exc), revision)) from None


def _explain_plan_error(alembic_message: str, target: str) -> str:
    if "Multiple head" in alembic_message or "multiple heads" in alembic_message.lower():
        return (
            f"The scripts have more than one head, so '{target}' is ambiguous ({alembic_message}). "
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
    environment = EnvironmentContext(
        config,
        script,
        fn=migrations_fn,
        as_sql=as_sql,
        starting_rev=starting_rev,
        destination_rev=destination_rev,
        **context_options,
    )
    if on_configure is not None:
        # Alembic's module proxy (``alembic.context``) exposes the instance's attributes, so an
        # instance-level wrapper is what env.py's ``context.configure(...)`` calls.
        configure = environment.configure

        def configure_with_hook(**options: Any) -> None:
            on_configure(options)
            configure(**options)

        environment.configure = configure_with_hook  # type: ignore[method-assign,assignment]
    try:
        with environment:
            script.run_env()
    finally:
        config.attributes.pop("connection", None)


_RUNNING = re.compile(r"^-- Running (?:upgrade|downgrade) .*$", re.MULTILINE)


def render_sql(
    config: Config, script: ScriptDirectory, planned: Sequence[RevisionStep], current: Sequence[str]
) -> list[str]:
    """The SQL each planned step emits, rendered offline by env.py (Alembic's ``--sql`` mode).

    Returns one string per step. Raises :class:`ConfigurationError` when env.py or a revision
    cannot run offline (for example one that reads data with ``op.get_bind()``).
    """
    if not planned:
        return []
    buffer = io.StringIO()
    config.output_buffer = buffer
    starting = ",".join(current) if current else None

    def replay(_: tuple[str, ...]) -> Iterator[RevisionStep]:
        yield from planned

    try:
        with _quiet_alembic_logger():
            run_env(
                config, script, replay, as_sql=True, starting_rev=starting, destination_rev=step_revision(planned[-1])
            )
    except DbmigrateError:
        raise
    except Exception as exc:  # noqa: BLE001 - env.py and revisions can raise anything offline
        raise ConfigurationError(f"Cannot render the SQL offline: {type(exc).__name__}: {redact(str(exc))}") from None
    finally:
        config.output_buffer = io.StringIO()
    text = buffer.getvalue()
    starts = [m.start() for m in _RUNNING.finditer(text)]
    chunks = [text[start:end] for start, end in zip(starts, [*starts[1:], len(text)], strict=True)]
    if len(chunks) != len(planned):
        return [text] * len(planned)
    return chunks


@contextmanager
def _quiet_alembic_logger() -> Iterator[None]:
    import logging

    logger = logging.getLogger("alembic.runtime.migration")
    previous = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(previous)
