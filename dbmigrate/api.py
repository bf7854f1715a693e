"""The public API: each function is the recipe of one command; the work lives in the layers below.

Every function takes either a ready :class:`~dbmigrate.settings.Settings` or the same options as
keyword arguments (``dbmigrate.upgrade(database_url=..., wait_timeout=30)``), resolved like the CLI's
flags (keyword > ``DBMIGRATE_*`` environment > config files > defaults).
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

import structlog
from alembic.runtime.migration import RevisionStep
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from dbmigrate import backfill, database, readiness, scripts
from dbmigrate import history as hist
from dbmigrate._version import __version__
from dbmigrate.deadline import Deadline
from dbmigrate.errors import ConfigurationError, ConnectionLost, DbmigrateError, NotReady, RepairNeeded, Terminated
from dbmigrate.locking import lock_is_free
from dbmigrate.masking import mask_url
from dbmigrate.observability import RunReport, publish_metrics, write_termination_message
from dbmigrate.readiness import Readiness

if TYPE_CHECKING:
    from dbmigrate.checks import Report
from dbmigrate.rollback import Backup
from dbmigrate.runner import (
    LOST_CAUSES,
    RollbackResult,
    Runner,
    RunResult,
    describe,
    interrupted_status,
    new_identity,
    repair_message,
)
from dbmigrate.settings import Settings

# Loaded with the API, so before dbmigrate/__init__.py binds the name ``verify`` to the function below:
# a submodule imported later would rebind the package's attribute to itself.
from dbmigrate.verify import VerifyResult
from dbmigrate.verify import run as run_verify

log = structlog.get_logger("dbmigrate")


@dataclasses.dataclass
class Status:
    """Where the database stands against the scripts, and what the last run did."""

    database: str
    current: list[str]
    heads: list[str]
    pending: list[str]
    ahead: list[str]
    at_head: bool
    run_in_progress: bool
    last_run: list[dict[str, Any]]
    needs_repair: str | None
    kept_ahead: str | None = None  # why a rollback left the database ahead of these scripts on purpose
    backfills: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # those not finished yet

    def as_dict(self) -> dict[str, Any]:
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}


def upgrade(
    target: str = "head", *, dry_run: bool = False, settings: Settings | None = None, **options: Any
) -> RunResult:
    """Take the database to ``target`` (default ``head``), one revision per transaction.

    Safe to call from any number of processes at once: one applies, the others wait for the run
    lock and find nothing left to do. ``dry_run`` returns the plan and its SQL without writing.
    """
    return _migrate(target, upgrade=True, dry_run=dry_run, settings=settings, options=options)


def downgrade(target: str, *, dry_run: bool = False, settings: Settings | None = None, **options: Any) -> RunResult:
    """Take the database down to ``target`` (a revision, ``-1`` or ``base``) with the same safety as upgrade."""
    return _migrate(target, upgrade=False, dry_run=dry_run, settings=settings, options=options)


def status(*, settings: Settings | None = None, **options: Any) -> Status:
    """Current revision(s), the scripts' heads, pending revisions, the last run, and any repair needed.

    Only reads. A step whose run died mid-step (its row still says 'running') is shown as the next
    run will record it: failed (rolled back), applied (it had committed) or partial (MySQL), with why.
    """
    with _session(settings, options) as runner:
        current = runner.current_heads()
        code_heads = scripts.heads(runner.script)
        ahead = scripts.unknown_revisions(runner.script, current)
        pending = [] if ahead else [scripts.step_revision(s) for s in _pending(runner, current)]
        lock_free = lock_is_free(runner.control, runner.caps, runner.lock_scope(), runner.identity)
        interrupted = runner.interrupted_steps()
        applied = runner.applied_revisions(current) if interrupted else set()
        settled: dict[int, hist.Entry] = {}
        for entry in interrupted:
            state, error = interrupted_status(entry, applied)
            settled[entry.id] = dataclasses.replace(entry, status=state, error=error)
        # Read after those runs were found dead: a row still 'running' now stays so until the next run
        # settles it (one that settled it meanwhile shows as it did), and runs started since are not in it.
        last_run = [
            settled.get(entry.id, entry) if entry.status == hist.RUNNING else entry
            for entry in runner.history.last_run()
        ]
        partials = runner.history.unresolved_partials()
        partials += [entry for entry in settled.values() if entry.status == hist.PARTIAL]
        needs_repair = repair_message(partials[0]) if partials else None
        kept = runner.kept_ahead(current) if ahead else None
        return Status(
            database=mask_url(runner.engine.url),
            current=list(current),
            heads=list(code_heads),
            pending=pending,
            ahead=ahead,
            at_head=not ahead and set(current) == set(code_heads),
            run_in_progress=not lock_free,
            last_run=[entry.as_dict() for entry in last_run],
            needs_repair=needs_repair,
            kept_ahead=f"rollback run {kept.run_id}: {kept.note}" if kept else None,
            backfills=[_interrupted(item, lock_free).as_dict() for item in runner.backfills.unfinished()],
        )


def _interrupted(item: backfill.Backfill, lock_free: bool) -> backfill.Backfill:
    """A backfill still marked running while no run holds the lock: its run died, the next one resumes it."""
    if lock_free and item.state == backfill.RUNNING:
        return dataclasses.replace(item, state="interrupted")
    return item


def wait_until_ready(
    revision: str | None = None,
    *,
    exact: bool = False,
    timeout: float = 300.0,
    settings: Settings | None = None,
    **options: Any,
) -> Readiness:
    """Block until the database is reachable and at ``revision`` (default: the scripts' heads).

    A database ahead of it on a chain descending from it counts as ready unless ``exact``.
    Raises :class:`NotReady` (exit 3) after ``timeout`` seconds, the wait for the database included,
    :class:`DeadlineReached` (exit 3) when the run's ``deadline`` comes first, and :class:`RepairNeeded`
    (exit 5) at once when a partial step blocks every later upgrade.
    """
    started = time.monotonic()
    resolved = dataclasses.replace(_settings(settings, options), wait_timeout=timeout)
    with _session(resolved, {}) as runner:
        ends = min(started + timeout, time.monotonic() + runner.deadline.left())
        cut = ends < started + timeout  # the run's deadline comes first
        expected = [revision] if revision else list(scripts.heads(runner.script))
        current = runner.current_heads()
        listener = readiness.Listener(runner.control, runner.caps)
        interval, last_progress = 0.05, -readiness.PROGRESS_INTERVAL
        while True:
            filling = [item.describe() for item in runner.backfills.unfinished()]
            state = readiness.assess(current, expected, runner.script, runner.history, exact, filling)
            now = time.monotonic()
            if state.ready:
                log.info("schema ready", detail=state.describe())
                return state
            partials = runner.history.unresolved_partials()
            if partials:
                raise RepairNeeded(
                    f"The schema will not become ready by itself ({state.describe()}), so waiting stops here. "
                    + repair_message(partials[0])
                )
            if now >= ends and cut:
                raise runner.deadline.reached(f"waiting for the schema ({state.describe()})")
            if now >= ends:
                raise NotReady(
                    f"The schema was not ready within {timeout:g}s: {state.describe()}. Check the "
                    "migration Job (dbmigrate status, dbmigrate history), or raise --timeout."
                )
            if now - last_progress >= readiness.PROGRESS_INTERVAL:
                last_progress = now
                log.info("waiting for the schema", detail=state.describe())
            woke = listener.wait(min(interval, ends - now))
            if woke:
                log.info("notified: a migration run finished")
            interval = 0.05 if woke else min(interval * 2, readiness.MAX_POLL_INTERVAL)
            current = runner.read_heads()


def is_ready(
    revision: str | None = None,
    *,
    exact: bool = False,
    cache_seconds: float = 5.0,
    settings: Settings | None = None,
    **options: Any,
) -> bool:
    """For readiness probes: whether the schema is ready, by one cheap query, cached for a few seconds.

    Never raises for an unreachable database: that is simply not ready.
    """
    resolved = _settings(settings, options)
    key = (str(resolved.config_file), resolved.database_url, revision, exact)
    cached = _readiness_cache.get(key)
    if cached is not None and time.monotonic() - cached[0] < cache_seconds:
        return cached[1]
    try:
        probe = _probe_for(resolved)
        expected = [revision] if revision else list(scripts.heads(probe.script))
        with probe.engine.connect() as connection:
            current = readiness.version_context(connection, "alembic_version", None).get_current_heads()
            history = hist.History(connection, resolved.history_table, resolved.table_schema)
            queue = backfill.Queue(connection, resolved.backfills_table, resolved.table_schema)
            filling = [item.describe() for item in queue.unfinished()]
            ready = readiness.assess(current, expected, probe.script, history, exact, filling).ready
    except (DbmigrateError, SQLAlchemyError) as exc:
        log.debug("readiness probe failed", error=str(exc))
        ready = False
    _readiness_cache[key] = (time.monotonic(), ready)
    return ready


@dataclasses.dataclass(frozen=True)
class _Probe:
    script: ScriptDirectory
    engine: Engine


_readiness_cache: dict[tuple[object, ...], tuple[float, bool]] = {}
_probes: dict[tuple[str, str | None], _Probe] = {}


def _probe_for(settings: Settings) -> _Probe:
    """The scripts and a small pooled engine, built once per process for probes."""
    key = (str(settings.config_file), settings.database_url)
    if key not in _probes:
        config = scripts.load_config(settings)
        url = settings.resolved_url(scripts.ini_url(config))
        _probes[key] = _Probe(scripts.load_scripts(config), database.create(url, pooled=True))
    return _probes[key]


def check(
    revision_range: str | None = None,
    *,
    all_revisions: bool = False,
    dialect: str | None = None,
    settings: Settings | None = None,
    **options: Any,
) -> Report:
    """What revisions would do to a live database: data-loss, blocking and breaking findings.

    By default the revisions pending on the configured database (which is then only read);
    ``all_revisions`` or ``revision_range`` (``A:B``: those an upgrade from A to B runs) need no
    database when ``dialect`` is given, and otherwise take the dialect from the configured URL.
    """
    from dbmigrate.checks import check as check_revisions

    resolved = _settings(settings, options)
    if all_revisions or revision_range:
        config = scripts.load_config(resolved)
        script = scripts.load_scripts(config)
        ids = scripts.revision_range(script, revision_range)
        if dialect is None:
            dialect = database.parse_url(resolved.resolved_url(scripts.ini_url(config))).get_backend_name()
        return check_revisions(config, script, ids, dialect, resolved.non_transactional_revisions)
    with _session(resolved, {}) as runner:
        current = runner.current_heads()
        scripts.ensure_known(runner.script, current)
        ids = [scripts.step_revision(step) for step in _pending(runner, current)]
        return check_revisions(
            runner.config, runner.script, ids, dialect or runner.caps.name, resolved.non_transactional_revisions
        )


def verify(
    revision_range: str | None = None,
    *,
    url: str | None = None,
    with_data: bool = False,
    settings: Settings | None = None,
    **options: Any,
) -> VerifyResult:
    """Round-trip each revision: upgrade, downgrade, upgrade again, comparing the schema each time.

    Runs on a scratch database created beside the configured one (same server; a temporary file
    for SQLite) and dropped afterwards, or on ``url``, a throwaway database used from the state it
    is in and never dropped (what dbmigrate's own steps made there beside the schema is removed).
    All revisions by default, or ``revision_range`` (``A:B``). With ``with_data`` a row seeded in
    every table before each downgrade must come back. The problems are in the result
    (``result.raise_if_problems()`` raises :class:`VerificationFailed`, exit 4).
    """
    resolved = _settings(settings, options)
    try:
        result = run_verify(
            resolved,
            revision_range,
            url=url,
            with_data=with_data,
            upgrade=upgrade,
            downgrade=downgrade,
            repair=repair,
        )
    except DbmigrateError as exc:
        write_termination_message(resolved.termination_log, f"dbmigrate verify failed: {exc}")
        raise
    write_termination_message(resolved.termination_log, result.summary())
    return result


def history(limit: int | None = 50, *, settings: Settings | None = None, **options: Any) -> list[hist.Entry]:
    """The newest ``limit`` history rows, newest first (empty before the first run)."""
    with _session(settings, options) as runner:
        return runner.history.entries(limit=limit)


def repair(resolution: str, *, settings: Settings | None = None, **options: Any) -> hist.Entry:
    """Mark a partially applied step as repaired by hand.

    ``resolution="reverted"``: its statements were undone; the revision runs again on the next
    upgrade. ``resolution="applied"``: the rest was finished by hand; the revision is stamped.
    """
    if resolution not in ("reverted", "applied"):
        raise ConfigurationError("repair needs --reverted or --applied.")
    with _session(settings, options) as runner, runner.locked():
        runner.history.ensure()
        runner.settle_interrupted()
        partials = runner.history.unresolved_partials()
        if not partials:
            raise ConfigurationError("Nothing to repair: no step is partially applied.")
        entry = partials[0]
        if resolution == "applied":
            runner.stamp(entry.revision if entry.direction == "upgrade" else (entry.from_revision or "base"))
        row = runner.history.start(
            run_id=runner.identity.run_id,
            revision=entry.revision,
            from_revision=entry.revision,
            direction="repair",
            runner=runner.identity.runner,
            dbmigrate_version=__version__,
            app_version=runner.settings.app_version,
        )
        runner.history.finish(row, hist.REPAIRED, error=f"marked {resolution} by hand after partial run {entry.run_id}")
        return runner.history.entries(limit=1)[0]


def rollback(
    to: str = "code-head", *, schema: str = "auto", settings: Settings | None = None, **options: Any
) -> RollbackResult:
    """Roll the database back to ``to`` (default: the heads of these scripts) without losing data.

    Revisions the scripts lack are run from dbmigrate's archive (refused, exit 4, when an entry is
    tampered with or, with an archive key, not signed by it or not the version its signed manifest
    lists). ``schema="auto"`` keeps the newer
    schema unless a revision above the target is breaking for the older code; ``"always"``
    downgrades, ``"never"`` keeps. A downgrade backs up the data it drops first.
    """
    return _locked_run(_settings(settings, options), "rollback", lambda runner: runner.rollback(to, schema))


def backups(*, settings: Settings | None = None, **options: Any) -> list[Backup]:
    """Every copy of data taken before a step that would lose it, newest first."""
    with _session(settings, options) as runner:
        return runner.backups.all()


def restore_backup(backup_id: int, *, settings: Settings | None = None, **options: Any) -> Backup:
    """Put a backup's values back into its table now (by primary key); the table and columns must exist."""
    with _session(settings, options) as runner, runner.locked():
        backup = runner.backups.get(backup_id)
        with runner.engine.begin() as connection:
            restored = runner.backups.restore(backup, connection)
        if restored is None:
            raise ConfigurationError(
                f"Backup {backup_id} cannot be restored: {backup.source_table} or one of its columns "
                f"({', '.join(backup.columns or ()) or 'all'}) does not exist now."
            )
        return runner.backups.get(backup_id)


def drop_backup(backup_id: int, *, settings: Settings | None = None, **options: Any) -> Backup:
    """Delete a backup's copy of the data for good (its registry row stays, marked dropped)."""
    with _session(settings, options) as runner, runner.locked():
        runner.backups.drop(runner.backups.get(backup_id))
        return runner.backups.get(backup_id)


def _report(runner: Runner, command: str, outcome: str, exit_code: int) -> RunReport:
    """This run's metrics, read back from the history table (so failures are described too)."""
    if not (runner.settings.pushgateway or runner.settings.metrics_textfile):
        return RunReport(command, runner.identity.run_id, outcome, exit_code)
    try:
        current = runner.read_heads()  # one query: the run already learnt where env.py keeps the version table
        pending = len(_pending(runner, current))
        steps = [e.as_dict() for e in runner.history.entries(run_id=runner.identity.run_id)]
        runs = runner.history.runs_by_outcome()
    except (DbmigrateError, SQLAlchemyError):
        return RunReport(command, runner.identity.run_id, outcome, exit_code)
    return RunReport(command, runner.identity.run_id, outcome, exit_code, steps, current, pending, runs)


def _migrate(
    target: str, *, upgrade: bool, dry_run: bool, settings: Settings | None, options: dict[str, Any]
) -> RunResult:
    resolved = _settings(settings, options)
    if dry_run:
        with _session(resolved, {}) as runner:
            return runner.dry_run(target, upgrade)
    command = "upgrade" if upgrade else "downgrade"
    return _locked_run(resolved, command, lambda runner: runner.migrate(target, upgrade))


_Result = TypeVar("_Result", RunResult, RollbackResult)


def _locked_run(settings: Settings, command: str, work: Callable[[Runner], _Result]) -> _Result:
    """``work`` under the run lock; its outcome goes to the termination message and metrics, failures too."""
    report = RunReport(command, "", "error", ConfigurationError.exit_code)
    try:
        with _session(settings, {}) as runner:
            try:
                with runner.locked():
                    result = work(runner)
            except (DbmigrateError, Terminated) as exc:
                report = _report(runner, command, "error", exc.exit_code)
                raise
            report = _report(runner, command, result.outcome, 0)
    except (DbmigrateError, Terminated) as exc:
        write_termination_message(settings.termination_log, f"dbmigrate {command} failed: {exc}")
        _publish(settings, dataclasses.replace(report, exit_code=exc.exit_code))
        raise
    write_termination_message(settings.termination_log, result.summary())
    _publish(settings, report)
    return result


def _publish(settings: Settings, report: RunReport) -> None:
    publish_metrics(report, settings.pushgateway, settings.metrics_grouping, settings.metrics_textfile)


def _pending(runner: Runner, current: tuple[str, ...]) -> list[RevisionStep]:
    try:
        return scripts.plan(runner.script, "heads", current, upgrade=True)
    except ConfigurationError:
        return []


def _settings(settings: Settings | None, options: dict[str, Any]) -> Settings:
    if settings is not None and options:
        raise ConfigurationError("Pass either settings or keyword options, not both.")
    return settings if settings is not None else Settings.load(**options)


@contextlib.contextmanager
def _session(settings: Settings | None, options: dict[str, Any]) -> Iterator[Runner]:
    """Config, scripts, engine and the control connection for one command; all closed after."""
    resolved = _settings(settings, options)
    identity = new_identity(resolved)  # first: what loading the scripts logs carries the run id too
    config = scripts.load_config(resolved)
    script = scripts.load_scripts(config)
    url = resolved.resolved_url(scripts.ini_url(config))
    scripts.point_at(config, url)
    engine = database.create(url)
    deadline = Deadline(resolved.deadline)
    try:
        with database.transactional_sqlite_ddl():
            with deadline.within(resolved.wait_timeout, "waiting for the database to accept connections") as limit:
                control = database.connect(engine, limit).execution_options(isolation_level="AUTOCOMMIT")
            caps = database.capabilities(engine)
            if caps.is_postgresql:
                # History rows need not wait for their own fsync: a killed process loses none of them
                # (the server has them), and the steps themselves still commit durably.
                control.exec_driver_sql("SET synchronous_commit = off")
            runner = Runner(resolved, config, script, engine, caps, control, __version__, identity, deadline)
            try:
                yield runner
            except (DbmigrateError, SQLAlchemyError) as exc:
                lost = None if isinstance(exc, (ConnectionLost, RepairNeeded)) else database.connection_lost(exc)
                if lost is None:
                    raise
                raise ConnectionLost(
                    f"The connection to the database at {mask_url(url)} was lost ({describe(lost)}): {LOST_CAUSES}. "
                    "No migration step was under way; nothing is half-done. Run the command again once the database "
                    "is back; a Kubernetes Job retries exit 3 by itself."
                ) from exc
            finally:
                runner.control.close()
    finally:
        engine.dispose()
