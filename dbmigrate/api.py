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
from dbmigrate.errors import (
    ConfigurationError,
    ConnectionLost,
    DbmigrateError,
    NotReady,
    PermissionDenied,
    RepairNeeded,
    Terminated,
)
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

    Only reads and creates nothing (on PostgreSQL and MySQL it takes no lock either; on SQLite it locks the
    lock file for an instant): SELECT on the version table and dbmigrate's history and backfills tables is all
    it needs (:class:`PermissionDenied`, exit 2, names a missing grant). A step whose run died mid-step (its
    row still says 'running') is shown as the next run will record it: failed (rolled back), applied (it had
    committed) or partial (MySQL), with why.
    """
    with _session(settings, options, only_reads="status") as runner:
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


@dataclasses.dataclass
class BackfillRun:
    """What ``backfill run`` did: its work on each backfill, and where every backfill stands after it."""

    run_id: str
    outcome: str  # done (queue empty), paused (time budget used up), nothing-to-do, outside-window
    message: str
    segments: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    backfills: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # those not finished yet

    def summary(self) -> str:
        """One paragraph for humans and for the pod's termination message."""
        return f"dbmigrate backfill run {self.run_id}: {self.message}" if self.run_id else self.message

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "summary": self.summary()}


def backfill_run(
    max_duration: float | str | None = None,
    window: str | None = None,
    *,
    settings: Settings | None = None,
    **options: Any,
) -> BackfillRun:
    """Work through the queued backfills under the run lock (upgrades and other runs wait), in a time budget.

    ``max_duration`` (seconds, or ``"30m"``, ``"1h30m"``) and ``window`` (``"01:00-05:00"``, UTC, may
    cross midnight) bound it: when the time is up it stops at a batch boundary and the backfill in
    progress is ``paused``; the next run resumes it (a run commits one batch at least, however short its
    budget). Outside ``window`` it does nothing. A batch that fails raises as in :func:`upgrade`
    (progress so far is kept); :class:`LockTimeout` (exit 3) when another run holds the lock longer
    than ``lock_wait_timeout``.
    """
    resolved = _settings(settings, options)
    budget = backfill.parse_duration(max_duration) if isinstance(max_duration, str) else max_duration
    if budget is not None and budget <= 0:
        raise ConfigurationError(f"max_duration must be more than 0, not {max_duration!r}.")
    if window is not None:
        span = backfill.Window.parse(window)
        at = hist.now()
        left = span.seconds_left(at)
        if left is None:
            result = BackfillRun(
                "", "outside-window", f"it is {at:%H:%M} UTC, outside the window {span.text} (UTC): nothing done."
            )
            log.info("outside the backfill window: nothing done", window=span.text, now_utc=f"{at:%H:%M}")
            write_termination_message(resolved.termination_log, result.summary())
            return result
        budget = left if budget is None else min(budget, left)
    # The budget counts from the start: a run that waited for the lock has that much less time.
    deadline = None if budget is None else time.monotonic() + budget

    def work(runner: Runner) -> BackfillRun:
        segments = runner.run_backfills(deadline)
        left = runner.backfills.unfinished()
        if not segments and not left:
            outcome, message = "nothing-to-do", "no backfill is queued."
        elif left:
            outcome = "paused"
            message = f"the time budget is used up; {len(left)} backfill(s) left for the next run."
        else:
            outcome, message = "done", f"{len(segments)} backfill(s) worked on, every one done."
        return BackfillRun(
            runner.identity.run_id,
            outcome,
            message,
            [dataclasses.asdict(segment) for segment in segments],
            [item.as_dict() for item in left],
        )

    return _locked_run(resolved, "backfill run", work)


def backfill_status(*, settings: Settings | None = None, **options: Any) -> list[backfill.Backfill]:
    """Every backfill ever queued, oldest first, with its progress, rate and estimate; only reads.

    One still marked running while no run holds the lock is shown as ``interrupted``: the next run resumes it.
    """
    with _session(settings, options) as runner:
        items = runner.backfills.all()
        if not any(item.state == backfill.RUNNING for item in items):
            return items
        lock_free = lock_is_free(runner.control, runner.caps, runner.lock_scope(), runner.identity)
        return [_interrupted(item, lock_free) for item in items]


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
    Only reads, takes no lock and creates nothing: the application's own database user will do, with
    SELECT on the version table and dbmigrate's history and backfills tables (and LISTEN on PostgreSQL).
    A missing table is "not ready yet"; a missing grant raises :class:`PermissionDenied` (exit 2) at once.
    """
    started = time.monotonic()
    resolved = dataclasses.replace(_settings(settings, options), wait_timeout=timeout)
    with _session(resolved, {}, only_reads="wait") as runner:
        ends = min(started + timeout, time.monotonic() + runner.deadline.left())
        cut = ends < started + timeout  # the run's deadline comes first
        expected = [revision] if revision else list(scripts.heads(runner.script))
        current = runner.current_heads()
        listener = readiness.Listener(runner.control, runner.caps)
        interval, last_progress = 0.05, -readiness.PROGRESS_INTERVAL
        while True:
            filling, deferred = _filling(runner.backfills)
            state = readiness.assess(current, expected, runner.script, runner.history, exact, filling, deferred)
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

    Never raises for an unreachable database: that is simply not ready. It only reads, like
    :func:`wait_until_ready`; a grant the database user lacks is not ready either, and logged as a warning
    that names it.
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
            filling, deferred = _filling(queue)
            ready = readiness.assess(current, expected, probe.script, history, exact, filling, deferred).ready
    except (DbmigrateError, SQLAlchemyError) as exc:
        denied = _lacking_privilege(resolved, resolved.database_url, "is_ready", exc)
        if denied is not None:
            log.warning("readiness probe denied", error=str(denied))
        else:
            log.debug("readiness probe failed", error=str(exc))
        ready = False
    _readiness_cache[key] = (time.monotonic(), ready)
    return ready


def _filling(queue: backfill.Queue) -> tuple[list[str], list[str]]:
    """Unfinished backfills: those that hold readiness back (run by the upgrade), and the deferred ones."""
    unfinished = queue.unfinished()
    return (
        [item.describe() for item in unfinished if not item.deferred],
        [item.describe() for item in unfinished if item.deferred],
    )


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
        entries = runner.history.entries(run_id=runner.identity.run_id)
        steps = [e.as_dict() for e in entries if e.direction != hist.BACKFILL]  # backfills have metrics of their own
        runs = runner.history.runs_by_outcome()
        backfills = [item.as_dict() for item in runner.backfills.with_triggers()]
    except (DbmigrateError, SQLAlchemyError):
        return RunReport(command, runner.identity.run_id, outcome, exit_code)
    return RunReport(command, runner.identity.run_id, outcome, exit_code, steps, current, pending, runs, backfills)


def _migrate(
    target: str, *, upgrade: bool, dry_run: bool, settings: Settings | None, options: dict[str, Any]
) -> RunResult:
    resolved = _settings(settings, options)
    if dry_run:
        with _session(resolved, {}) as runner:
            return runner.dry_run(target, upgrade)
    command = "upgrade" if upgrade else "downgrade"
    return _locked_run(resolved, command, lambda runner: runner.migrate(target, upgrade))


_Result = TypeVar("_Result", RunResult, RollbackResult, BackfillRun)


def _locked_run(settings: Settings, command: str, work: Callable[[Runner], _Result]) -> _Result:
    """``work`` under the run lock; its outcome goes to the termination message and metrics, failures too."""
    report = RunReport(command, "", "error", ConfigurationError.exit_code)
    try:
        with _session(settings, {}) as runner:
            try:
                with runner.locked():
                    result = work(runner)
            except (DbmigrateError, Terminated) as exc:
                if isinstance(exc, DbmigrateError):
                    exc.run_id = runner.identity.run_id
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


def _lacking_privilege(
    settings: Settings, url: str | None, command: str, exc: BaseException
) -> PermissionDenied | None:
    """For a command that only reads: the privilege ``exc`` says the database user lacks, as an error that
    names it and the grant that gives it; None when ``exc`` is about something else."""
    denied = database.permission_denied(exc)
    if denied is None:
        return None
    user = (database.parse_url(url).username if url else None) or "the application's user"
    schema = f"{settings.table_schema}." if settings.table_schema else ""
    tables = ", ".join(
        ["alembic_version", *(schema + name for name in (settings.history_table, settings.backfills_table))]
    )
    return PermissionDenied(
        f"The database user {user} may not read what {command} needs ({describe(denied)}). It needs SELECT on "
        f"the version table and dbmigrate's tables, nothing more: GRANT SELECT ON {tables} TO {user} (the "
        "version table is the one env.py names, alembic_version by default). The least-privilege guide shows "
        "the grants that also cover tables created later."
    )


@contextlib.contextmanager
def _session(settings: Settings | None, options: dict[str, Any], only_reads: str = "") -> Iterator[Runner]:
    """Config, scripts, engine and the control connection for one command; all closed after.

    ``only_reads`` names a command that only reads: a privilege it lacks raises :class:`PermissionDenied`.
    """
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
            if resolved.tenant_schema is not None:
                database.require_schema(control, resolved.tenant_schema)
            if caps.is_postgresql:
                # History rows need not wait for their own fsync: a killed process loses none of them
                # (the server has them), and the steps themselves still commit durably.
                control.exec_driver_sql("SET synchronous_commit = off")
            runner = Runner(resolved, config, script, engine, caps, control, __version__, identity, deadline)
            try:
                yield runner
            except (DbmigrateError, SQLAlchemyError) as exc:
                denied = (
                    None
                    if isinstance(exc, PermissionDenied) or not only_reads
                    else _lacking_privilege(resolved, url, f"dbmigrate {only_reads}", exc)
                )
                if denied is not None:
                    raise denied from exc
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
