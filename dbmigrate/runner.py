"""Applies a plan one revision at a time: guard -> step -> record, under the run lock.

Each revision runs in its own transaction inside the project's own env.py. Around every step the
runner records a history row (on its own autocommit connection), waits politely for conflicting
locks, and retries a step that hit a lock timeout. What a run did comes back as a
:class:`RunResult`; nothing here prints or exits.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import re
import time
import uuid
import weakref
from collections.abc import Collection, Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any

import structlog
from alembic.config import Config
from alembic.runtime.migration import RevisionStep
from alembic.script import ScriptDirectory
from alembic.util import to_tuple
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from alembic import context as alembic_context
from dbmigrate import backfill, database, online, readiness, scripts, termination
from dbmigrate import history as hist
from dbmigrate.database import WRITE_TRANSACTIONS, Capabilities, connection_lost, track_statements
from dbmigrate.deadline import Deadline
from dbmigrate.errors import (
    ConfigurationError,
    ConnectionLost,
    DbmigrateError,
    DeadlineReached,
    EnvironmentRefused,
    LockTimeout,
    MigrationFailed,
    RepairNeeded,
    Terminated,
    UnsafeMigration,
)
from dbmigrate.locking import DEFAULT_VERSION_TABLE, Identity, Scope, live_runs, run_lock, utcnow
from dbmigrate.masking import mask_url, redact
from dbmigrate.observability import bind, unbind
from dbmigrate.rollback import (
    POLICIES,
    Archive,
    Backup,
    Backups,
    Loss,
    decide,
    in_transaction_block,
    losses,
    missing_from_scripts,
    refuse_tampered,
    with_archived,
)
from dbmigrate.scripts import DatabaseAhead
from dbmigrate.settings import Settings

if TYPE_CHECKING:
    from dbmigrate.checks import NotAnalysed, Report
    from dbmigrate.checks.collect import Direction
    from dbmigrate.checks.watch import OnlineLoss, StatementWatch

log = structlog.get_logger("dbmigrate.runner")

# After a signal, how long to wait for the server to end the migration session: well inside a pod's
# default 30 s grace period. After a lost connection, how long to try to reconnect for the history row.
SESSION_END_TIMEOUT = 15.0
RECONNECT_TIMEOUT = 10.0
LOCK_WAIT = "lock-wait"  # the direction of the history row of a run stopped while it waited for the run lock

# What ends a session under a run, for the messages that say so.
LOST_CAUSES = (
    "the server was restarted or failed over, an administrator ended the session, or the network cut the connection"
)
# The offline check of a plan, per scripts object. A fleet worker shares one across its targets (see
# scripts.share_loaded_scripts): targets of one project on one server reach the same plan, and rendering it
# offline again for each would tell nothing new. A single run's scripts, and their entry, go with the run.
_CHECKED: weakref.WeakKeyDictionary[ScriptDirectory, dict[tuple[Any, ...], Report]] = weakref.WeakKeyDictionary()
_UNHELD_WRITERS = (
    "the backup was copied just before the step, outside its transaction (DDL commits on its own on this "
    "connection): writes the application committed in between are not in it"
)
_UNHELD_WRITERS_OUTSIDE = (
    "the backup was copied just before the revision's first statement that changes the schema or names the "
    "table, on its own (the revision runs outside a transaction): writes the application committed in between "
    "are not in it"
)
_CONCURRENTLY = re.compile(r"\bCONCURRENTLY\b", re.IGNORECASE)
# PostgreSQL's "cannot run inside a transaction block" (SQLSTATE 25001), SQLite's "cannot VACUUM from
# within a transaction".
_NEEDS_NO_TRANSACTION = re.compile(r"inside a transaction block|from within a transaction", re.IGNORECASE)
_AUTOCOMMIT_REFUSED = (
    'env.py hands Alembic a connection in AUTOCOMMIT mode (create_engine(..., isolation_level="AUTOCOMMIT"), or '
    '.execution_options(isolation_level="AUTOCOMMIT") on its engine or connection): every statement would commit '
    "on its own, so a revision that fails half-way could not be rolled back and dbmigrate's transaction per revision "
    "would be a false promise. Remove that isolation_level setting from env.py. A revision that must run outside a "
    "transaction (CREATE INDEX CONCURRENTLY) puts those statements in `with op.get_context().autocommit_block():`. "
    "Nothing was run."
)
_WATCHED = (
    "every statement it runs is watched: data one would lose is backed up just before it runs, or the step is "
    "refused when the revision does not declare the loss"
)
_DECLARE_THE_LOSS = (
    'If the loss is intended, add `# dbmigrate: allow-data-loss reason="..."` to the revision file, or run with '
    "--allow-data-loss"
)
_AUTOCOMMITTING = ("CREATE", "ALTER", "DROP", "RENAME", "TRUNCATE")
# Not tracked as a step's statements: reads, and (SQLite, where dbmigrate emits BEGIN itself) transaction control.
_NOT_TRACKED = ("SELECT", "SHOW", "SET", "DESCRIBE", "EXPLAIN", "PRAGMA", "BEGIN", "COMMIT", "ROLLBACK")


@dataclasses.dataclass
class StepResult:
    """What happened to one revision step."""

    revision: str
    from_revision: str
    direction: str
    status: str
    attempts: int = 1
    lock_waits: int = 0
    lock_wait_ms: int = 0
    duration_ms: int = 0
    error: str | None = None


@dataclasses.dataclass
class Ahead:
    """An upgrade found the database ahead of its scripts and, by ``when_ahead``, rolled back to them."""

    decision: str  # "kept" or "downgraded"
    reason: str
    from_archive: list[str]


@dataclasses.dataclass
class RunResult:
    """What a run did: where the database was, where it is, and every step on the way."""

    run_id: str
    direction: str
    target: str
    before: tuple[str, ...]
    after: tuple[str, ...]
    steps: list[StepResult] = dataclasses.field(default_factory=list)
    sql: list[dict[str, str]] = dataclasses.field(default_factory=list)
    dry_run: bool = False
    ahead: Ahead | None = None

    @property
    def outcome(self) -> str:
        if self.dry_run:
            return "dry-run"
        if self.ahead is not None:
            return self.ahead.decision
        if not self.steps:
            return "nothing-to-do"
        return self.steps[-1].status

    def summary(self) -> str:
        """One paragraph for humans and for the pod's termination message."""
        before = ", ".join(self.before) or "base"
        after = ", ".join(self.after) or "base"
        if self.dry_run:
            count = len(self.sql)
            return (
                f"dbmigrate {self.direction} --dry-run: {count} revision(s) would run, from {before} to {self.target}."
            )
        if self.ahead is not None:
            decided = _decided(self.ahead.decision, before, after, self.ahead.reason)
            return f"dbmigrate upgrade run {self.run_id}: {decided}"
        if not self.steps:
            return f"dbmigrate {self.direction} run {self.run_id}: nothing to do, the database is at {after}."
        applied = sum(1 for s in self.steps if s.status == hist.APPLIED)
        waits = sum(s.lock_waits for s in self.steps)
        verb = "applied" if self.direction == "upgrade" else "reverted"
        text_ = (
            f"dbmigrate {self.direction} run {self.run_id}: {applied} revision(s) {verb}, from {before} to {after}"
            f" ({waits} lock wait(s))."
        )
        last = self.steps[-1]
        if last.status != hist.APPLIED:
            text_ += f" Revision {last.revision} {last.status}: {last.error}"
        return text_

    def as_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["outcome"] = self.outcome
        data["before"], data["after"] = list(self.before), list(self.after)
        return data


@dataclasses.dataclass
class RollbackResult:
    """What a rollback decided and did: kept the newer schema, downgraded, or found nothing to do."""

    run_id: str
    target: str
    before: tuple[str, ...]
    after: tuple[str, ...]
    decision: str  # "nothing-to-do", "kept" or "downgraded"
    reason: str
    from_archive: list[str] = dataclasses.field(default_factory=list)
    downgrade: RunResult | None = None

    @property
    def outcome(self) -> str:
        return self.decision

    def summary(self) -> str:
        before, after = ", ".join(self.before) or "base", ", ".join(self.after) or "base"
        return f"dbmigrate rollback run {self.run_id}: {_decided(self.decision, before, after, self.reason)}"

    def as_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["outcome"] = self.outcome
        data["before"], data["after"] = list(self.before), list(self.after)
        return data


def _decided(decision: str, before: str, after: str, reason: str) -> str:
    """A rollback's decision and its reason, in one sentence."""
    if decision == "nothing-to-do":
        return f"nothing to do, the database is at {after}."
    verb = "kept the schema at" if decision == "kept" else f"downgraded from {before} to"
    return f"{verb} {after}: {reason}"


def new_identity(settings: Settings) -> Identity:
    """A fresh run id for this invocation, bound to every log line from here on."""
    identity = Identity(run_id=uuid.uuid4().hex[:12], runner=settings.runner, started=utcnow())
    bind(run_id=identity.run_id)
    return identity


class Runner:
    """One run against one database: holds the control connection, the lock and the history."""

    def __init__(
        self,
        settings: Settings,
        config: Config,
        script: ScriptDirectory,
        engine: Engine,
        caps: Capabilities,
        control: Connection,
        version: str,
        identity: Identity,
        deadline: Deadline,
    ) -> None:
        self.settings = settings
        self.deadline = deadline
        self.config = config
        self.script = script
        self.engine = engine
        self.caps = caps
        self.control = control
        self.version = version
        self.identity = identity
        self.history = hist.History(control, settings.history_table, settings.table_schema)
        self.archive = Archive(control, settings.archive_table, settings.table_schema, settings.archive_key)
        self.backups = Backups(control, caps, settings.backups_table, settings.table_schema, settings.backup_schema)
        self.backfills = backfill.Queue(control, settings.backfills_table, settings.table_schema)
        self._version_table: tuple[str, str | None] | None = None  # as env.py configures it; see current_heads

    # -- reading --------------------------------------------------------------------------------

    def current_heads(self) -> tuple[str, ...]:
        """The database's current revision(s), read through env.py without changing anything.

        Also learns where env.py keeps them (:attr:`version_table`).
        """
        heads, self._version_table = self._read_through_env_py()
        return heads

    @property
    def version_table(self) -> tuple[str, str | None]:
        """``(version_table, version_table_schema)`` as env.py configures them; runs env.py once if not known yet."""
        if self._version_table is None:
            _, self._version_table = self._read_through_env_py()
        return self._version_table

    def _read_through_env_py(self) -> tuple[tuple[str, ...], tuple[str, str | None]]:
        found: list[tuple[str, ...]] = []
        configured: list[tuple[str, str | None]] = []

        def capture(current: tuple[str, ...]) -> list[RevisionStep]:
            found.append(current)
            return []

        def remember_version_table(options: dict[str, Any]) -> None:
            configured.append(
                (options.get("version_table") or DEFAULT_VERSION_TABLE, options.get("version_table_schema"))
            )

        with scripts.SharedConnection(self.engine) as connection, _env_py_errors():
            scripts.run_env(
                self.config,
                self.script,
                capture,
                connection=connection,
                on_configure=remember_version_table,
                dont_mutate=True,
            )
        heads = tuple(sorted(found[0])) if found else ()
        return heads, configured[0] if configured else (DEFAULT_VERSION_TABLE, None)

    def read_heads(self) -> tuple[str, ...]:
        """The database's revision(s) by one query on the control connection (env.py runs first only to learn
        where the version table is, when no earlier call did)."""
        context = readiness.version_context(self.control, *self.version_table)
        return tuple(sorted(context.get_current_heads()))

    # -- faults ---------------------------------------------------------------------------------

    def reconnect(self, timeout: float = RECONNECT_TIMEOUT) -> bool:
        """Replace a broken control connection (history rows go on it); False when none comes within ``timeout``.

        The run lock held by the old session is gone with it: call only to record what happened.
        """
        try:
            control = database.connect(self.engine, timeout).execution_options(isolation_level="AUTOCOMMIT")
        except DbmigrateError:
            return False
        with contextlib.suppress(SQLAlchemyError):
            self.control.close()
        self.control = self.history.connection = self.archive.connection = self.backups.connection = control
        self.backfills.control = control
        return True

    def heads_after_fault(self, timeout: float = RECONNECT_TIMEOUT) -> tuple[str, ...] | None:
        """After a lost connection: the database's revision(s), read on a new control connection when the old
        one is gone too (waiting up to ``timeout`` for the database to be back); None when they cannot be read."""
        with contextlib.suppress(SQLAlchemyError):
            return self.read_heads()
        # Whatever the old connection's error says (a failed attempt to reopen it may read "connection
        # refused"), the database was just lost: wait for it.
        if not self.reconnect(timeout):
            return None
        with contextlib.suppress(SQLAlchemyError):
            return self.read_heads()
        return None

    def end_session(self, server_id: int | None, timeout: float = SESSION_END_TIMEOUT) -> bool:
        """Make sure the server ended session ``server_id`` (statement cancelled, transaction rolled back).

        Ends it from the control connection if it is still there, then waits until the server no
        longer lists it, at most ``timeout`` seconds. True once it is gone; SQLite has no such session.
        """
        if server_id is None or not (self.caps.is_postgresql or self.caps.is_mysql):
            return True
        if self.control.invalidated and not self.reconnect():
            return False
        if self.caps.is_postgresql:
            end = "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid = :id"
            listed = "SELECT COUNT(*) FROM pg_stat_activity WHERE pid = :id"
        else:
            end = "SELECT 1"  # KILL takes no parameters: run below when the session is still listed
            listed = "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = :id"
        deadline = time.monotonic() + timeout
        try:
            if self.caps.is_mysql and self.control.execute(text(listed), {"id": server_id}).scalar():
                with contextlib.suppress(SQLAlchemyError):  # it may end by itself in the meantime
                    self.control.exec_driver_sql(f"KILL {int(server_id)}")
            self.control.execute(text(end), {"id": server_id})
            while self.control.execute(text(listed), {"id": server_id}).scalar():
                if time.monotonic() >= deadline:
                    return False
                time.sleep(0.05)
        except SQLAlchemyError as exc:
            log.warning("could not confirm that the server ended the migration session", error=describe(exc))
            return False
        return True

    # -- running --------------------------------------------------------------------------------

    def dry_run(self, target: str, upgrade: bool) -> RunResult:
        """The plan and its SQL, rendered offline; the database is only read."""
        current = self.current_heads()
        planned = scripts.plan(self.script, target, current, upgrade)
        rendered = scripts.render_sql(self.config, self.script, planned, current)
        return RunResult(
            run_id=self.identity.run_id,
            direction=_direction(upgrade),
            target=target,
            before=current,
            after=current,
            dry_run=True,
            sql=[
                {"revision": scripts.step_revision(s), "from": scripts.step_from(s), "sql": sql}
                for s, sql in zip(planned, rendered, strict=True)
            ],
        )

    def lock_scope(self) -> Scope:
        """What the run lock protects: this database's version table (env.py runs first if it is not known yet).

        A version table env.py leaves unqualified is in the tenant schema, when there is one (search_path).
        """
        table, schema = self.version_table
        return Scope(self.engine.url.database, table, schema or self.settings.tenant_schema)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """The run lock for this database's version table, waiting up to ``lock_wait_timeout`` (and no longer than
        the run's deadline: then a history row says so, when the table exists)."""
        with contextlib.ExitStack() as stack:
            try:
                with self.deadline.within(self.settings.lock_wait_timeout, "waiting for another run's lock") as limit:
                    lock = run_lock(self.control, self.caps, self.lock_scope(), self.identity, limit, self.running_step)
                    stack.enter_context(lock)
            except DeadlineReached as exc:
                exc.message += f" The lock is held by {self.running_step() or 'another run'}."
                self._record_stop(exc)
                raise
            yield

    def _record_stop(self, exc: DbmigrateError) -> None:
        """A failed history row for a run stopped while it waited for the run lock, at the database's revision.

        Only when the history table exists (it is created under the run lock), and not on SQLite, where the run
        holding the lock may hold the database's single write lock too: the row would wait for it.
        """
        try:
            if self.caps.name == "sqlite" or not self.history.exists():
                return
            heads = ",".join(self.read_heads()) or "base"
            row = self.history.start(
                run_id=self.identity.run_id,
                revision=heads,
                from_revision=heads,
                direction=LOCK_WAIT,
                runner=self.identity.runner,
                dbmigrate_version=self.version,
                app_version=self.settings.app_version,
                status=hist.FAILED,
            )
            self.history.finish(row, hist.FAILED, error=str(exc))
        except SQLAlchemyError as error:
            log.warning("could not record the stop in history", error=describe(error))

    def running_step(self) -> str:
        """What the lock holder is applying, from its 'running' history row (empty if unknown)."""
        try:
            rows = self.history.entries(limit=1, status=hist.RUNNING)
        except SQLAlchemyError:
            return ""
        if not rows:
            return ""
        row = rows[0]
        return (
            f"run {row.run_id} by {row.runner}, {row.direction} {row.revision} since "
            f"{row.started_at:%Y-%m-%d %H:%M:%S} UTC"
        )

    def stamp(self, revision: str) -> None:
        """Set alembic_version to ``revision`` the way ``alembic stamp`` does; call under the lock."""
        with scripts.SharedConnection(self.engine) as connection:
            scripts.run_env(
                self.config,
                self.script,
                lambda current: scripts.stamp_steps(self.script, revision, current),
                connection=connection,
            )

    def migrate(self, target: str, upgrade: bool) -> RunResult:
        """Take the database to ``target``; call while holding :meth:`locked`."""
        try:
            self.history.ensure()
            self.settle_interrupted()
            self.refuse_if_needs_repair()
            if upgrade and self._reverts(target):
                return self._revert(target)
            self.backfills.ensure()
            self.backfills.settle()
            # A killed run's backfills finish before anything else is applied (those a downgrade reverts, cancelled).
            # Where DDL is not transactional, finished backfills' triggers go before the next step, on their own.
            retire = upgrade and not self.caps.transactional_ddl and bool(self.backfills.trigger_tables())
            unfinished = self.backfills.unfinished()
            if retire or unfinished:
                planned = [scripts.step_revision(s) for s in self._plan(target, upgrade)]
                if unfinished and self.settings.defer_backfills and not planned:
                    log.info(
                        "backfills stay queued for `dbmigrate backfill run`: nothing to apply",
                        backfills=[item.id for item in unfinished],
                    )
                else:
                    if unfinished and self.settings.defer_backfills:
                        # A later revision may rely on the data (a NOT NULL, a unique index) or change the table
                        # under the backfill: the queue is worked through first, online, batch by batch.
                        log.info(
                            "finishing queued backfills before applying a later revision",
                            backfills=[item.id for item in unfinished],
                            revisions=planned,
                        )
                    # Where DDL is not transactional, finished triggers go before a later step (those finished now too).
                    later = upgrade and not self.caps.transactional_ddl and bool(planned)
                    self.finish_backfills(reverting=() if upgrade else planned, later_steps=later)
            result = _Migration(self, target, upgrade).run()
            if upgrade:
                self.archive_applied(result.after)
            return result
        finally:
            unbind("revision")

    def _reverts(self, target: str) -> bool:
        """Whether this upgrade to ``target`` is a revert that ``when_ahead`` lets roll back instead of refusing:
        the database stands at revisions these scripts lack, and no rollback kept it there on purpose yet (then
        the upgrade has nothing to do)."""
        if self.settings.when_ahead == "refuse" or target not in ("head", "heads"):
            return False
        current = self.current_heads()
        return bool(scripts.unknown_revisions(self.script, current)) and self.kept_ahead(current) is None

    def _revert(self, target: str) -> RunResult:
        """The database is ahead of these scripts (an older image was deployed: a GitOps revert, a
        ``helm upgrade`` to an older tag): roll back to their head as ``dbmigrate rollback`` does, with
        ``--schema auto`` (when_ahead ``rollback``) or ``never`` (``keep``). Its history row says so."""
        policy = "never" if self.settings.when_ahead == "keep" else "auto"
        rolled = self.rollback("code-head", policy, revert=True)
        steps = rolled.downgrade.steps if rolled.downgrade is not None else []
        ahead = Ahead(rolled.decision, rolled.reason, rolled.from_archive)
        return RunResult(self.identity.run_id, "upgrade", target, rolled.before, rolled.after, steps, ahead=ahead)

    def rollback(self, to: str, policy: str, *, revert: bool = False) -> RollbackResult:
        """Take the database back to ``to`` (``code-head``: these scripts' head) without losing data.

        Revisions newer than these scripts come from the archive. ``policy`` (auto, always, never)
        decides whether the schema is downgraded or kept; call while holding :meth:`locked`. With
        ``revert`` (an upgrade that found the database ahead), the database must be ahead of ``to``
        on its own chain, else :class:`DatabaseAhead` (exit 2); the history row says it was ahead.
        """
        if policy not in POLICIES:
            raise ConfigurationError(f"--schema is one of {', '.join(POLICIES)}, not {policy!r}.")
        try:
            self.history.ensure()
            self.settle_interrupted()
            self.refuse_if_needs_repair()
            current = self.current_heads()
            target = self._rollback_target(to)
            entries, manifest = self.archive.read()
            archived = missing_from_scripts(current, self.script, entries, manifest.listings or {})
            refuse_tampered(archived, self.settings.archive_key, manifest)
            code_scripts = self.script
            with with_archived(code_scripts, archived) as merged:
                self.script = merged
                try:
                    note = self._ahead_of(current, target) if revert else ""
                    return self._roll_back(current, target, policy, [entry.revision for entry in archived], note)
                finally:
                    self.script = code_scripts
        finally:
            unbind("revision")

    def _plan(self, target: str, upgrade: bool) -> list[RevisionStep]:
        return scripts.plan(self.script, target, self.current_heads(), upgrade)

    def run_backfills(self, deadline: float | None) -> list[backfill.Segment]:
        """``dbmigrate backfill run``: work through the queue until it is empty or ``deadline`` (a
        :func:`time.monotonic` value) passes, then stop at a batch boundary; call while holding :meth:`locked`.

        Sync triggers stay: the next upgrade that applies a later revision drops those of finished backfills.
        """
        try:
            self.history.ensure()
            self.settle_interrupted()
            self.backfills.ensure()
            return self.finish_backfills(deadline=deadline, command="dbmigrate backfill run", record=True)
        finally:
            unbind("revision")

    def finish_backfills(
        self,
        *,
        reverting: Collection[str] = (),
        later_steps: bool = False,
        deadline: float | None = None,
        command: str = "dbmigrate upgrade",
        record: bool = False,
    ) -> list[backfill.Segment]:
        """Run every queued backfill to its end, batch by batch (see :mod:`dbmigrate.backfill`); under the lock.

        Those the upgrades of ``reverting`` queued are left to the downgrade, which cancels them. With
        ``later_steps`` (an upgrade is about to apply a later revision; MySQL/MariaDB only), finished
        backfills' sync triggers are dropped too. With ``deadline``, stops at the first batch boundary after
        it (the backfill is left paused). A signal cancels the batch in flight: its transaction rolls back,
        every batch before it stays. Returns what it did to each backfill; with ``record`` (a run of its own,
        not part of a migration's steps) each is a history row too.
        """
        history = self.history if record else None
        worker = backfill.Worker(
            self.engine, self.caps, self.settings, self.backfills, self.identity.run_id, history, command
        )
        try:
            with termination.cancelling(worker.cancel):
                worker.work_through(reverting, deadline)
                if later_steps:
                    worker.drop_finished_triggers()
        except Terminated as exc:
            exc.message = (
                f"dbmigrate was stopped by {exc.signal_name} (the pod is being stopped, or Ctrl-C) during a "
                "backfill: the batch in flight was rolled back, every batch before it and every step before stays. "
                "Run the command again to resume the backfill after its last committed batch."
            )
            raise
        finally:
            worker.close()
        return worker.segments

    def _rollback_target(self, to: str) -> str:
        if to != "code-head":
            return to
        code_heads = scripts.heads(self.script)
        if len(code_heads) > 1:
            raise ConfigurationError(
                f"These scripts have {len(code_heads)} heads ({', '.join(code_heads)}); name the revision to roll "
                "back to with --to."
            )
        return code_heads[0] if code_heads else "base"

    def _ahead_of(self, current: tuple[str, ...], target: str) -> str:
        """Why an upgrade to ``target`` rolls back instead: the database is ahead of it on its own chain (the
        scripts, with the archived revisions, lead from ``current`` down to it). Raises :class:`DatabaseAhead`
        when it is not."""
        below = {r.revision for r in self.script.revision_map.iterate_revisions(current, "base") if r is not None}
        at = ", ".join(current)
        if target not in below:
            raise DatabaseAhead(
                f"The database is at revision {at}, which does not descend from these scripts' head {target}: it "
                "was migrated on another branch of revisions, not just further along this one, so an upgrade "
                "cannot roll it back. Deploy the image that has revision(s) "
                f"{at}, or downgrade the database to {target}'s chain with that image (dbmigrate downgrade)."
            )
        return (
            f"upgrade --when-ahead {self.settings.when_ahead}: the database was at {at}, ahead of these scripts' "
            f"head {target} on its own chain (an older image was deployed); "
        )

    def _roll_back(
        self, current: tuple[str, ...], target: str, policy: str, archived: list[str], note: str = ""
    ) -> RollbackResult:
        result = RollbackResult(self.identity.run_id, target, current, current, "nothing-to-do", "", archived)
        revisions = [scripts.step_revision(s) for s in scripts.plan(self.script, target, current, upgrade=False)]
        if not revisions:
            result.reason = f"the database is at or below {target}"
            log.info("rollback: nothing to do", heads=list(current), target=target)
            return result
        breaking = []
        if policy == "auto":
            from dbmigrate.checks import check_steps

            report = check_steps(self.config, self.script, revisions[::-1], "upgrade", self.caps.name)
            breaking = [f for f in report.findings if f.category == "breaking"]
        downgrade, reason = decide(policy, revisions, target, breaking)
        result.reason = note + reason
        log.info(
            "rollback decision",
            decision="downgrade" if downgrade else "keep the schema",
            reason=result.reason,
            target=target,
            revisions=revisions,
            from_archive=archived,
        )
        row = self.history.start(
            run_id=self.identity.run_id,
            revision=",".join(current),
            from_revision=target,
            direction=hist.ROLLBACK,
            runner=self.identity.runner,
            dbmigrate_version=self.version,
            app_version=self.settings.app_version,
        )
        started = hist.now()
        if not downgrade:
            self.history.finish(row, hist.KEPT, started, note=result.reason)
            result.decision = "kept"
            return result
        try:
            result.downgrade = _Migration(self, target, upgrade=False).run()
        except DbmigrateError as exc:
            self.history.finish(row, hist.FAILED, started, error=str(exc), note=result.reason)
            raise
        self.history.finish(row, hist.APPLIED, started, note=result.reason)
        result.decision, result.after = "downgraded", result.downgrade.after
        return result

    def archive_applied(self, heads: tuple[str, ...]) -> None:
        """Archive the script of every revision at or below ``heads`` that these scripts contain."""
        if scripts.unknown_revisions(self.script, heads):
            return  # the database is ahead of these scripts: the newer image archived its revisions
        revisions = [r.revision for r in self.script.revision_map.iterate_revisions(heads, "base") if r is not None]
        stored = self.archive.store(self.script, revisions, self.identity.run_id)
        if stored:
            log.info("revision scripts archived", revisions=stored)

    def kept_ahead(self, current: tuple[str, ...]) -> hist.Entry | None:
        """The rollback that kept the database at ``current`` on purpose, if that is the last rollback."""
        last = self.history.entries(limit=1, direction=hist.ROLLBACK)
        if last and last[0].status == hist.KEPT and last[0].revision == ",".join(current):
            return last[0]
        return None

    def interrupted_steps(self) -> list[hist.Entry]:
        """The 'running' rows that no live run will finish: the run that wrote them died, newest first.

        Asked of each row's run rather than of this run lock: projects with other version tables
        (other locks) may share the history table and be migrating right now.
        """
        running = self.history.entries(status=hist.RUNNING)
        alive = live_runs(self.control, self.caps, {entry.run_id for entry in running})
        return [entry for entry in running if entry.run_id not in alive]

    def settle_interrupted(self) -> list[hist.Entry]:
        """Name the steps of runs that died mid-step (their rows still say 'running').

        Where DDL is transactional the database rolled the step back; on MySQL, a step that had
        started a DDL statement may have committed part of itself, and is marked partial. Call
        while holding the lock, so that no run of this version table can start meanwhile.
        """
        settled = []
        running = self.interrupted_steps()
        applied = self.applied_revisions(self.current_heads()) if running else set()
        for entry in running:
            status, error = interrupted_status(entry, applied)
            self.history.finish(entry.id, status, error=error)
            if status == hist.FAILED:  # rolled back: the data its backups copied is still in place
                self.backups.discard(
                    b for b in self.backups.pending() if (b.run_id, b.revision) == (entry.run_id, entry.revision)
                )
            log.warning(
                "settled a step of an interrupted run", revision=entry.revision, run=entry.run_id, status=status
            )
            settled.append(entry)
        return settled

    def applied_revisions(self, heads: tuple[str, ...]) -> set[str]:
        """Every revision at or below ``heads`` (through history for revisions the scripts lack)."""
        return readiness.ancestors(heads, self.script, self.history)

    def refuse_if_needs_repair(self) -> None:
        partials = self.history.unresolved_partials()
        if partials:
            raise RepairNeeded(repair_message(partials[0]))


def interrupted_status(entry: hist.Entry, applied: set[str]) -> tuple[str, str]:
    """How to record a step whose run died: ('applied', 'failed' or 'partial', explanation).

    ``applied`` is every revision the database holds now: a step whose version update committed
    before the run died is done, whatever its history row says. A backfill's row is failed: its batch
    in flight rolled back, and the next run resumes after the last committed one.
    """
    if entry.direction == hist.BACKFILL:
        return hist.FAILED, (
            f"The run ({entry.run_id} on {entry.runner}) was interrupted during this backfill; its batch in flight "
            "was rolled back, and the next run resumes after the last committed batch."
        )
    if (entry.revision in applied) == (entry.direction == "upgrade"):
        return hist.APPLIED, (
            f"The run ({entry.run_id} on {entry.runner}) was interrupted after this step committed; "
            "alembic_version shows it done."
        )
    committed, in_doubt = split_committed(entry.statements)
    if committed or in_doubt:
        return hist.PARTIAL, (
            f"The run ({entry.run_id} on {entry.runner}) was interrupted during revision {entry.revision} after "
            f"statements that commit on their own had started ({_why_they_commit(committed, in_doubt)}); they "
            "cannot be rolled back."
        )
    return hist.FAILED, (
        f"The run ({entry.run_id} on {entry.runner}) was interrupted during this step; its transaction was "
        "rolled back by the database, so the revision is not applied and will run again."
    )


def repair_message(entry: hist.Entry) -> str:
    """What a partial step left behind, statement by statement, and the commands that repair it."""
    committed, in_doubt = split_committed(entry.statements)
    listed = " ".join(f"[{s.get('position', i)}] {_as_kept(s)}" for i, s in enumerate(committed, 1))
    first_kept = committed[0].get("position", 1) if committed else 1
    earlier = (
        f" (the step's first {first_kept - 1} statement(s) committed too; history keeps only the last ones)"
        if first_kept > 1
        else ""
    )
    doubt = ""
    if in_doubt:
        doubt = f" In doubt (started, outcome unknown): {_as_kept(in_doubt)}."
        if _CONCURRENTLY.search(in_doubt["sql"]):
            doubt += (
                " A CONCURRENTLY statement that fails or is cancelled can leave an INVALID index behind "
                "(see pg_index.indisvalid): drop it with DROP INDEX CONCURRENTLY."
            )
    cut = [*committed, *([in_doubt] if in_doubt else [])]
    full_text = (
        f" Where a statement is cut or not kept, `{_rendering_command(entry)}` prints the revision's full SQL."
        if first_kept > 1 or any("length" in s for s in cut)
        else ""
    )
    return (
        f"The database needs repair: revision {entry.revision} ({entry.direction}, run {entry.run_id}) was partially "
        f"applied: statements that commit on their own ({_why_they_commit(committed, in_doubt)}) cannot be rolled "
        f"back. Statements that committed{earlier}: {listed or 'none confirmed'}.{doubt}{full_text} "
        "Repair it with `dbmigrate repair`: `dbmigrate repair --reverted` once those statements are undone by hand "
        "(the revision then runs again on the next upgrade), or `dbmigrate repair --applied` once the rest of the "
        "revision is finished by hand (which stamps it)."
    )


def _as_kept(statement: dict[str, Any]) -> str:
    """A recorded statement as written, ending with a mark where history cut it."""
    sql = str(statement["sql"]).strip()
    if "length" in statement:
        return f"{sql} [CUT HERE: {len(statement['sql'])} of its {statement['length']} characters are kept]"
    return sql


def _rendering_command(entry: hist.Entry) -> str:
    if entry.direction != "upgrade":
        return f"alembic downgrade {entry.revision}:{entry.revision}-1 --sql"
    if entry.from_revision and "," not in entry.from_revision:
        return f"alembic upgrade {entry.from_revision}:{entry.revision} --sql"
    return f"alembic upgrade {entry.revision} --sql"  # from base: a merge point has no single start


def split_committed(statements: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """A statement that commits on its own commits everything before it, then itself; later ones roll back.

    That is DDL on MySQL/MariaDB (an implicit commit before and after it) and any statement run outside a
    transaction (an autocommit block, a non-transactional revision: entering it committed the step's
    transaction so far). Returns the statements that surely committed, and the one in doubt (started,
    neither confirmed nor seen failing: the process died), if any.
    """
    last = max((i for i, s in enumerate(statements) if _commits(s)), default=-1)
    if last < 0:
        return [], None
    own = statements[last]
    committed = statements[:last] + ([own] if own.get("done") else [])
    in_doubt = None if own.get("done") or own.get("failed") else own
    return committed, in_doubt


def _commits(statement: dict[str, Any]) -> str | None:
    """Why ``statement`` commits on its own ("ddl" on MySQL/MariaDB, "autocommit" outside a transaction), or None.

    Rows written before statements carried this were only ever written on MySQL/MariaDB, for their DDL.
    """
    if "commits" in statement:
        return statement["commits"]  # type: ignore[no-any-return]
    return "ddl" if _is_ddl(statement["sql"]) else None


def _why_they_commit(committed: list[dict[str, Any]], in_doubt: dict[str, Any] | None) -> str:
    reasons = {_commits(s) for s in [*committed, *([in_doubt] if in_doubt else [])]}
    why = []
    if "ddl" in reasons:
        why.append("MySQL/MariaDB commit DDL on their own")
    if "autocommit" in reasons:
        why.append("they ran outside a transaction, in an autocommit block or a non-transactional revision")
    return "; ".join(why)


def _is_ddl(sql: str) -> bool:
    return sql.lstrip().upper().startswith(_AUTOCOMMITTING)


def _direction(upgrade: bool) -> str:
    return "upgrade" if upgrade else "downgrade"


# Where a lock timeout in env.py's own transaction, outside any step, counts its retries.
_BETWEEN_STEPS = ""


class _Migration:
    """One upgrade or downgrade: env.py runs, a step fails on a lock timeout, env.py runs again."""

    def __init__(self, runner: Runner, target: str, upgrade: bool) -> None:
        self.runner = runner
        self.settings = runner.settings
        self.caps = runner.caps
        self.target = target
        self.upgrade = upgrade
        self.result = RunResult(
            run_id=runner.identity.run_id, direction=_direction(upgrade), target=target, before=(), after=()
        )
        self.rows: dict[str, int] = {}
        self.upcoming: RevisionStep | None = None  # the step after the current one in the plan
        self.prestarted: tuple[str, int] | None = None  # its 'running' row, written in the current step
        self.results: dict[str, StepResult] = {}
        self.waits: dict[str, online.LockWaits] = {}
        self.started_at: dict[str, datetime] = {}
        self.tables: dict[str, set[str]] = {}
        self.current: RevisionStep | None = None
        self.statements: list[dict[str, Any]] = []
        self.migration_connection: Connection | None = None
        self.migration_pid: int | None = None  # the server's id of the migration session (not SQLite)
        self.migration_dbapi: Any = None  # the driver's connection, for a cancel from the signal watcher
        self.external_transaction = False
        self.heads_after: tuple[str, ...] | None = None
        self.seen: list[RevisionStep] = []
        self.applied_within_step: StepResult | None = None
        self.losses: dict[str, list[Any]] = {}  # revision -> the data-loss findings of its step, backed up first
        self.taken: dict[str, list[Backup]] = {}
        self.backup_due: str | None = None  # the revision whose copy waits for its first write (no transaction)
        self.outside: dict[str, str | None] = {}  # revision -> why it runs outside a transaction (None: inside)
        self.pending_backups: list[Backup] = []
        self.notes: dict[str, list[str]] = {}
        # Steps the gate could not analyse offline: their statements are watched as they run (_watch_statement).
        self.unanalysed: dict[str, NotAnalysed] = {}
        self.declared: dict[str, str | None] = {}  # revision -> its allow-data-loss reason
        self.refused_categories: set[str] = set()
        self.watch: StatementWatch | None = None  # the current step's, when it is not analysed
        self.watching = False  # the watch's own queries and copies run on the same connection: not watched
        self.covered: list[Loss] = []  # what the current step has backed up (or the gate will) so far
        self.refusal: str | None = None  # why the current step was refused while it ran
        self.long_transactions = online.LongTransactionWatch(runner.control) if self.caps.is_postgresql else None
        self._retries: dict[str, int] = {}
        self.out_of_time = False  # a lock-timeout retry would have ended past the run's deadline

    def run(self) -> RunResult:
        runner = self.runner
        # One query: env.py already ran once for this command, to name the version table the lock protects.
        self.result.before = runner.read_heads()
        kept = runner.kept_ahead(self.result.before) if self.upgrade else None
        if kept is not None and scripts.unknown_revisions(runner.script, self.result.before):
            log.info(
                "nothing to do: a rollback kept the database ahead of these scripts on purpose",
                heads=list(self.result.before),
                rollback_run=kept.run_id,
                reason=kept.note,
            )
            self.result.after = self.result.before
            return self.result
        self._gate(scripts.plan(runner.script, self.target, self.result.before, self.upgrade))
        self.pending_backups = runner.backups.pending()
        backoff = online.retry_backoff()
        while True:
            try:
                with (
                    termination.cancelling(self._cancel_in_flight),
                    backfill.queueing(self._queueing()),
                    scripts.SharedConnection(runner.engine) as connection,
                ):
                    scripts.run_env(
                        runner.config, runner.script, self._steps, connection=connection, on_configure=self._configure
                    )
                self._flush_deferred()
                if self.external_transaction and not self.settings.defer_backfills:  # env.py's has committed only now
                    runner.finish_backfills()
                break
            except _TablesNeeded:
                self._find_tables_to_lock()
            except Terminated as exc:
                self._terminated(exc)
                raise
            except DbmigrateError:
                raise
            except Exception as exc:  # a step failed: record it, then retry or stop
                step = self.current
                lost = connection_lost(exc)
                if lost is not None:
                    raise self._lost(step, lost) from exc
                if step is None and online.is_lock_timeout(exc, self.caps):
                    if self._retry_after_lock_timeout(None, exc, backoff):
                        continue
                    raise self._no_lock_between_steps(exc) from exc
                if step is None:
                    raise MigrationFailed(f"The migration environment (env.py) failed: {describe(exc)}") from exc
                if self.refusal is not None:
                    raise self._refused(step) from exc
                if not self._retry_after_lock_timeout(step, exc, backoff):
                    raise self._fail(step, exc) from exc
        if self.heads_after is None:  # nothing ran: the database is where it was
            self.heads_after = self.result.before
        self.result.after = tuple(sorted(self.heads_after))
        readiness.announce(runner.control, self.caps, runner.identity.run_id, self.result.after)
        log.info(
            "run finished",
            outcome=self.result.outcome,
            before=list(self.result.before),
            after=list(self.result.after),
            steps=len(self.result.steps),
        )
        return self.result

    def _queueing(self) -> backfill.Queueing:
        """Where the revisions' ``dbmigrate.backfill()`` calls queue their work, tagged with the step running."""

        def revision() -> str:
            assert self.current is not None, "a backfill is queued from a revision's step"
            return scripts.step_revision(self.current)

        return backfill.Queueing(
            self.runner.backfills.table,
            self.runner.identity.run_id,
            self.result.direction,
            revision,
            self.settings.defer_backfills,
            self.runner.backfills.queued,
        )

    # -- the gate ---------------------------------------------------------------------------------

    def _gate(self, planned: list[RevisionStep]) -> None:
        """Refuse the plan when a revision would lose data (or hit another refused category) unintended.

        Notes, per revision, the data-loss findings that proceed: their data is backed up first.
        Downgrades lose data by design (what the upgrade added goes); they are refused only when
        backups are off and the loss is not allowed.
        """
        if not planned:
            return
        from dbmigrate.checks import check_steps  # parsing rules load only when there is a plan

        revisions = [scripts.step_revision(s) for s in planned]
        configured = self.settings.non_transactional_revisions
        unknown = set(configured) - {r.revision for r in self.runner.script.walk_revisions()} if configured else set()
        if unknown:
            log.warning(
                "non_transactional_revisions names revisions these scripts do not have (full ids are matched)",
                revisions=sorted(unknown),
            )
        direction: Direction = "upgrade" if self.upgrade else "downgrade"
        config, script = self.runner.config, self.runner.script
        options = config.cmd_opts.x if config.cmd_opts is not None and config.cmd_opts.x else []
        # What env.py can tell targets apart by offline: the dialect, the server and user, and -x (a tenant).
        seen_as = self.runner.engine.url.set(database="", password=None).render_as_string()
        key = (seen_as, tuple(revisions), direction, tuple(configured), tuple(options))
        reports = _CHECKED.setdefault(script, {})
        if key not in reports:
            reports[key] = check_steps(
                config, script, revisions if self.upgrade else revisions[::-1], direction, self.caps.name, configured
            )
        report = reports[key]
        refused_categories = {c.strip() for c in self.settings.refuse_findings.split(",") if c.strip()} | {"directive"}
        if self.settings.allow_data_loss or not self.upgrade:
            refused_categories.discard("data-loss")
        self.refused_categories = refused_categories
        unprotected = not self.settings.backup and not self.settings.allow_data_loss
        refused, unbacked = [], []
        for finding in report.findings:
            if finding.category == "data-loss" and (finding.allowed or "data-loss" not in refused_categories):
                if unprotected:
                    unbacked.append(finding)
                    continue
                self.losses.setdefault(finding.revision, []).append(finding)
                why = "intended data loss" if finding.allowed else "data loss allowed by --allow-data-loss"
                log.info(
                    why + ("; backed up first" if self.settings.backup else "; no backup (--no-backup)"),
                    revision=finding.revision,
                    rule=finding.rule,
                    reason=finding.allowed_reason,
                )
            elif not self.upgrade:
                continue  # a downgrade undoes its upgrade: only what it loses matters here
            elif finding.category in refused_categories:
                refused.append(finding)
            else:
                log.warning(
                    "check finding",
                    revision=finding.revision,
                    rule=finding.rule,
                    category=finding.category,
                    message=finding.message,
                    file=f"{finding.file}:{finding.line}",
                )
        self._unanalysed(planned, report.not_analysed, refuse=bool(refused or unbacked))
        if unbacked and not refused:
            first = unbacked[0]
            raise UnsafeMigration(
                f"Refusing to {self.result.direction}: revision {first.revision} ({first.file}:{first.line}) "
                f"{first.rule}: {first.message} Backups are off (--no-backup). Nothing was applied. Run without "
                "--no-backup to have dbmigrate copy the data aside first (losing it without a copy takes "
                "--allow-data-loss as well)."
            )
        if refused:
            from dbmigrate.checks.rules import RULES, alternative

            first = refused[0]
            advice = first.suggestion
            if first.category == "data-loss" and RULES[first.rule].safe_way:  # dbmigrate's own way first
                advice = (
                    _DECLARE_THE_LOSS
                    + ": either way dbmigrate copies the data aside before the step, and `dbmigrate rollback` or "
                    "`dbmigrate backups restore` brings it back"
                    if self.settings.backup
                    else "Run without --no-backup, so that dbmigrate copies the data aside before the step, and "
                    + _DECLARE_THE_LOSS[0].lower()
                    + _DECLARE_THE_LOSS[1:]
                ) + (". " + alternative(first.rule, first.table, first.column))
            raise UnsafeMigration(
                f"Refusing to upgrade: revision {first.revision} ({first.file}:{first.line}) {first.rule} "
                f"{first.category}: {first.message} Nothing was applied. {advice}"
                + (f" ({len(refused) - 1} more finding(s): dbmigrate check.)" if len(refused) > 1 else "")
            )

    def _unanalysed(self, planned: list[RevisionStep], missing: Collection[NotAnalysed], refuse: bool) -> None:
        """Steps the offline pass could not see to their end: refused (--refuse-unanalysed) or watched as they run.

        ``refuse``: the gate refuses the plan anyway, for a finding; that refusal is the one reported.
        """
        from dbmigrate.checks.directives import read_directives

        paths = {scripts.step_revision(step): scripts.step_path(step) for step in planned}
        if missing and self.upgrade and self.settings.refuse_unanalysed and not refuse:
            first = next(iter(missing))
            raise UnsafeMigration(
                f"Refusing to upgrade: revision {first.revision} ({first.where}) could not be analysed offline, so "
                f"{first.unseen()} is unknown ({first.reason}), and --refuse-unanalysed is set. Nothing was applied. "
                "Make the step render offline (guard what needs real query results or inspects the database with "
                "`if not op.get_context().as_sql:`), or run without --refuse-unanalysed to have its statements "
                "watched as they run."
                + (f" ({len(missing) - 1} more step(s): dbmigrate check.)" if len(missing) > 1 else "")
            )
        for step in missing:
            self.unanalysed[step.revision] = step
            self.declared[step.revision] = read_directives(paths[step.revision]).allow_data_loss_reason
            log.warning(
                "revision could not be checked offline",
                revision=step.revision,
                file=step.where,
                unseen=step.unseen(),
                reason=step.reason,
                protection=_WATCHED,
            )

    # -- watching what a step not analysed offline executes ----------------------------------------

    def _watch_statement(self, sql: str) -> None:
        """Before a statement of a step the gate could not analyse runs: back up what it would lose, or refuse it."""
        watch = self.watch
        if watch is None or self.current is None or self.watching:
            return
        if self.refusal is not None:
            raise _Refused(self.refusal)  # the revision went on after a refusal (it caught the error): not further
        self.watching = True
        try:
            for loss in watch.losses(sql):
                self._protect(scripts.step_revision(self.current), loss)
        finally:
            self.watching = False

    def _protect(self, revision: str, loss: OnlineLoss) -> None:
        columns = set(loss.columns or ())
        if any(c.table == loss.table and (c.columns is None or columns <= set(c.columns)) for c in self.covered):
            return  # the gate saw it, or an earlier statement of the step lost the same data: copied already
        declared = self.declared.get(revision)
        if not self.settings.backup and not self.settings.allow_data_loss:
            why = "backups are off (--no-backup), and losing data without a backup needs --allow-data-loss as well"
        elif self.upgrade and "data-loss" in self.refused_categories and declared is None:
            why = (
                'the revision does not declare it intended (# dbmigrate: allow-data-loss reason="...") and '
                "--allow-data-loss is not set"
            )
        else:
            why = None
        where = self.unanalysed[revision].where
        if why is not None:
            self.refusal = (
                f"{loss.rule}: {loss.message} This statement was about to run in a step that could not be analysed "
                f"offline ({where}), and {why}."
            )
            log.warning("data loss refused while the step ran", rule=loss.rule, table=loss.table, message=loss.message)
            raise _Refused(self.refusal)
        self.covered.append(Loss(loss.table, loss.columns))
        log.warning(
            "data loss seen while the step ran (not analysed offline)",
            rule=loss.rule,
            message=loss.message,
            file=where,
            reason=(declared or "data loss allowed by --allow-data-loss") if self.upgrade else None,
        )
        if not self.settings.backup:
            return
        if loss.rule == "DL007":
            log.warning("data loss that no backup covers", rule=loss.rule, message=loss.message)
            return
        self._copy_aside(revision, [Loss(loss.table, loss.columns)], prepare=True)

    # -- env.py hooks -------------------------------------------------------------------------------

    def _configure(self, options: dict[str, Any]) -> None:
        options["transaction_per_migration"] = True
        options["on_version_apply"] = (*to_tuple(options.get("on_version_apply"), default=()), self._version_applied)
        connection = options.get("connection")
        if connection is None:
            return
        if database.autocommits(connection):
            raise EnvironmentRefused(_AUTOCOMMIT_REFUSED)
        self.migration_connection = connection
        self.external_transaction = connection.in_transaction()
        server_version = ""
        if self.caps.is_mysql:
            server_version = str(connection.execute(text("SELECT VERSION()")).scalar())
        for statement in online.session_statements(self.caps, self.settings, server_version):
            connection.exec_driver_sql(statement)
        if self.caps.is_postgresql:
            self.migration_pid = int(connection.execute(text("SELECT pg_backend_pid()")).scalar_one())
        elif self.caps.is_mysql:
            self.migration_pid = int(connection.execute(text("SELECT CONNECTION_ID()")).scalar_one())
        self.migration_dbapi = connection.connection.dbapi_connection
        # First: a statement it refuses must not be recorded as started before it is refused.
        track_statements(connection, before=self._watch_statement)
        # Every dialect: a statement may commit on its own (MySQL DDL, anything outside a transaction).
        track_statements(connection, before=self._statement_starting, after=self._statement_done)
        if not self.external_transaction:
            connection.commit()

    def _version_applied(self, *, heads: Collection[str], **_: Any) -> None:
        if self.refusal is not None:
            raise _Refused(self.refusal)  # the revision caught the refusal and went on: the step must not commit
        self.heads_after = tuple(heads)
        step, connection = self.current, self.migration_connection
        if step is None or connection is None:
            return
        self._restore(step, connection)
        if self.external_transaction or not self.caps.transactional_ddl:
            return
        if scripts.step_revision(step) in self.rows:
            # Alembic calls this inside the step's transaction, right after it moves alembic_version:
            # the 'applied' row then commits atomically with the step, and so does the next step's
            # 'running' row (still written before that step starts): two autocommit round trips fewer.
            self.applied_within_step = self._finish_row(step, hist.APPLIED, within=connection)
            upcoming = self.upcoming
            if upcoming is not None and scripts.step_revision(upcoming) not in self.rows:
                self.prestarted = (scripts.step_revision(upcoming), self._insert_row(upcoming, within=connection))

    def _steps(self, current: tuple[str, ...]) -> Iterator[RevisionStep]:
        planned = scripts.plan(self.runner.script, self.target, current, self.upgrade)
        if not planned:
            log.info("nothing to do", heads=list(current), target=self.target)
        for position, step in enumerate(planned):
            self.upcoming = planned[position + 1] if position + 1 < len(planned) else None
            self._before(step)
            yield step
            self._after(step)
        unbind("revision")

    def _before(self, step: RevisionStep) -> None:
        revision = scripts.step_revision(step)
        # The step is under way from here: a fault or a signal in what follows (the polite wait among
        # them) is recorded against it, and its row's duration counts from its first attempt.
        self.current = step
        if revision not in self.started_at:
            self.seen.append(step)
            self.started_at[revision] = hist.now()
        connection = self.migration_connection
        if connection is not None and not self.external_transaction and connection.in_transaction():
            # Alembic's version-table check opened a transaction; end it so that no snapshot or lock
            # of ours is held while we wait, and so SQLite's single writer is free for history rows.
            connection.commit()
        self.statements = []
        self.backup_due = None
        self.applied_within_step = None
        bind(revision=revision)
        outside = self._outside_transaction(step)
        if outside is not None and self.external_transaction:
            raise EnvironmentRefused(
                f"Revision {revision} must run outside a transaction ({outside}), but env.py runs every revision "
                "in one transaction of its own (it begins one around context.configure or run_migrations, e.g. "
                "`with engine.begin() as connection:`), which no revision can leave. Use `with engine.connect() as "
                "connection:` and `with context.begin_transaction():` as `alembic init` writes them. Nothing of this "
                "revision was run."
            )
        waits = self.waits.setdefault(revision, online.LockWaits())
        own = [self.migration_pid] if self.migration_pid else []
        watch = self.long_transactions
        if watch is not None and revision not in self.tables and watch.any_hold_locks(own):
            raise _TablesNeeded  # before anything of this step ran: env.py runs again once they are known
        if revision in self.tables and self.upgrade:
            self.tables[revision] |= self.runner.backfills.trigger_tables()  # the step drops their triggers first
        if self.tables.get(revision):
            conflict_wait = self.runner.deadline.cap(self.settings.lock_conflict_wait)
            online.wait_for_lock_holders(self.runner.control, self.tables[revision], own, conflict_wait, waits)
        if revision not in self.rows and not self.external_transaction:
            self._start_row(step)
        self.notes[revision] = []
        self.refusal = None
        self.covered = losses(self.losses.get(revision, []))[0]
        self.watch = None
        if revision in self.unanalysed:
            from dbmigrate.checks.watch import StatementWatch

            self.watch = StatementWatch(self.caps.name, self._columns_now)
            self.runner.backups.discard(self.taken.pop(revision, []))  # a retry's copies are taken again
        if outside is not None:
            self.notes[revision].append(f"ran outside a transaction: {outside}")
            self._run_outside_transaction(step)
        backs_up = revision in self.losses and self.settings.backup
        if connection is not None and self.caps.name == "sqlite":
            # A copy must see the last committed data and no writer after it: take the write lock first.
            may_copy = backs_up or (self.watch is not None and self.settings.backup)
            connection.execution_options(**{WRITE_TRANSACTIONS: may_copy})
        if backs_up:
            self._back_up_first(step)
        if self._obsolete_triggers(revision):
            self._backfill_triggers_first(step)
        log.info(
            "applying revision" if self.upgrade else "reverting revision",
            from_revision=scripts.step_from(step),
            file=scripts.step_path(step).name,
        )

    def _outside_transaction(self, step: RevisionStep) -> str | None:
        """Why ``step`` runs outside a transaction (its file's directive, or the setting), or None: it runs in one."""
        revision = scripts.step_revision(step)
        if revision not in self.outside:
            from dbmigrate.checks.directives import read_directives  # the checks load only when a step runs

            reason = read_directives(scripts.step_path(step)).non_transactional_reason
            if reason is not None:
                self.outside[revision] = f'its file says so: "{reason}"'
            elif revision in self.settings.non_transactional_revisions:
                self.outside[revision] = "listed in non_transactional_revisions"
            else:
                self.outside[revision] = None
        return self.outside[revision]

    def _run_outside_transaction(self, step: RevisionStep) -> None:
        """Make the step's upgrade() or downgrade() run in Alembic's autocommit block: each statement commits alone.

        Entering the block commits the step's transaction so far (nothing of the step yet); after it,
        Alembic begins a new transaction for the version update, which our 'applied' row joins.
        """
        migrate = step.migration_fn

        @functools.wraps(migrate)
        def outside_transaction(**kwargs: Any) -> Any:
            with alembic_context.get_context().autocommit_block():
                return migrate(**kwargs)

        step.migration_fn = outside_transaction

    def _back_up_first(self, step: RevisionStep) -> None:
        """Make the step copy aside what it is about to lose as its first action (again on a retry).

        Where no transaction holds the copy and the step together (MySQL DDL, a revision run outside a
        transaction), the copy is taken as late as it can be: just before the step's first statement
        that changes the schema or names a table it loses (see :meth:`_statement_starting`).
        """
        revision = scripts.step_revision(step)
        self.runner.backups.discard(self.taken.pop(revision, []))
        self.runner.backups.prepare()
        if not self.caps.transactional_ddl or self.outside.get(revision):
            self.backup_due = revision  # taken by _statement_starting, as late as it can be
            return
        migrate = step.migration_fn

        @functools.wraps(migrate)
        def backed_up_first(**kwargs: Any) -> Any:
            self._back_up(revision)
            return migrate(**kwargs)

        step.migration_fn = backed_up_first

    def _obsolete_triggers(self, revision: str) -> bool:
        """Whether the step must drop sync triggers first (asked outside its transaction, which stays untouched
        otherwise: on SQLite even a read there would hold off other writers until it commits)."""
        if self.upgrade:
            return self.caps.transactional_ddl and bool(self.runner.backfills.trigger_tables())
        return any(item.revision == revision for item in self.runner.backfills.with_triggers())

    def _backfill_triggers_first(self, step: RevisionStep) -> None:
        """Make the step first drop the sync triggers it makes obsolete, in its own transaction.

        An upgrade step drops those of finished backfills (where DDL is transactional, so that they go
        with the step or not at all); a downgrade step those its own upgrade installed, cancelling
        that backfill if unfinished.
        """
        revision, migrate = scripts.step_revision(step), step.migration_fn

        @functools.wraps(migrate)
        def triggers_dropped_first(**kwargs: Any) -> Any:
            connection = self.migration_connection
            if connection is not None and self.upgrade:
                self.runner.backfills.retire_all(connection)
            elif connection is not None:
                self.runner.backfills.cancel_for(connection, revision)
            return migrate(**kwargs)

        step.migration_fn = triggers_dropped_first

    def _back_up(self, revision: str) -> None:
        """Copy aside what the step is about to lose, inside its transaction where DDL is transactional.

        There the copy and the step commit or roll back together, and on PostgreSQL writers to the
        table wait from the copy until the step commits: nothing committed before the step's change
        is missing from the copy. MySQL/MariaDB commit DDL on their own, and a revision run outside a
        transaction commits every statement, so there the copy runs on its own just before the step's
        first change and writes that commit in between are not in it (noted on the step).
        """
        found, uncopyable = losses(self.losses[revision])
        self._copy_aside(revision, found)
        for finding in uncopyable:
            log.warning("data loss that no backup covers", rule=finding.rule, message=finding.message)

    def _copy_aside(self, revision: str, found: list[Loss], prepare: bool = False) -> None:
        """Copy ``found`` aside (see :meth:`_back_up`); ``prepare``: create the registry and location first."""
        migration = self.migration_connection
        within = self.caps.transactional_ddl and migration is not None and in_transaction_block(migration)
        connection = migration if within and migration is not None else self.runner.control
        if prepare:
            self.runner.backups.prepare(connection)
        for loss in found:
            backup = self.runner.backups.take(
                loss, connection, run_id=self.runner.identity.run_id, revision=revision, direction=self.result.direction
            )
            if backup is None:
                continue
            if not within:  # committed already: discarded by hand if the step rolls back
                self.taken.setdefault(revision, []).append(backup)
            self.notes[revision].append("backed up " + backup.describe())
            log.info(
                "data backed up before the step",
                table=backup.source_table,
                rows=backup.row_count,
                backup=backup.backup_table,
            )
        if found and not within:
            unheld = _UNHELD_WRITERS_OUTSIDE if self.outside.get(revision) else _UNHELD_WRITERS
            if unheld not in self.notes[revision]:
                self.notes[revision].append(unheld)
                log.warning(unheld)

    def _columns_now(self, table: str) -> dict[str, str | None]:
        """``table``'s columns and their types now, as the step's own connection sees them (inside its transaction).

        Empty when there is no such table: the statement naming it fails on its own.
        """
        connection = self.migration_connection
        assert connection is not None
        schema, _, name = table.rpartition(".")
        inspector = inspect(connection)
        if not inspector.has_table(name, schema=schema or None):
            return {}
        return {c["name"]: _type_sql(c["type"], connection) for c in inspector.get_columns(name, schema=schema or None)}

    def _restore(self, step: RevisionStep, connection: Connection) -> None:
        """Put back what the other direction of this revision backed up, now that its tables and columns are back."""
        revision = scripts.step_revision(step)
        for backup in reversed(self.pending_backups):  # the last copied came from the first dropped
            if backup.revision != revision or backup.direction == self.result.direction:
                continue
            restored = self.runner.backups.restore(backup, connection)
            if restored is None:
                log.warning("backup not restored: its table or columns are not there", backup=backup.backup_table)
                continue
            self.notes.setdefault(revision, []).append(f"restored {restored} row(s) from {backup.backup_table}")
            log.info("data restored from backup", table=backup.source_table, rows=restored, backup=backup.backup_table)

    def _after(self, step: RevisionStep) -> None:
        if self.external_transaction:
            return  # committed only when env.py's own transaction ends: see _flush_deferred
        applied, self.applied_within_step = self.applied_within_step, None
        prestarted, self.prestarted = self.prestarted, None
        if applied is not None and applied.revision == scripts.step_revision(step):
            self._note(applied)
            if prestarted is not None:  # committed with this step
                self.rows[prestarted[0]] = prestarted[1]
        else:
            self._record(step, hist.APPLIED)
        self.current = None
        # The step has committed and released its locks: its backfills run now, before the next step. Deferred,
        # they wait for `dbmigrate backfill run`, unless a later step follows in this run: that one may rely on
        # the data or change the table under the backfill, so the queue is worked through first all the same.
        later = self.upgrade and self.upcoming is not None and not self.caps.transactional_ddl
        if not self.settings.defer_backfills:
            self.runner.finish_backfills(later_steps=later)
        elif self.upcoming is not None and self.runner.backfills.unfinished():
            log.info(
                "finishing queued backfills before applying a later revision",
                revision=scripts.step_revision(self.upcoming),
            )
            self.runner.finish_backfills(later_steps=later)

    def _flush_deferred(self) -> None:
        if self.external_transaction:
            for step in self.seen:
                if scripts.step_revision(step) not in self.results:
                    self._record(step, hist.APPLIED)
        self.current = None

    def _record(self, step: RevisionStep, status: str, error: str | None = None) -> StepResult:
        return self._note(self._finish_row(step, status, error))

    def _finish_row(
        self, step: RevisionStep, status: str, error: str | None = None, within: Connection | None = None
    ) -> StepResult:
        """Close the step's history row (on the control connection unless ``within``); the result to note."""
        revision = scripts.step_revision(step)
        waits = self.waits.get(revision, online.LockWaits())
        started = self.started_at[revision]
        result = StepResult(
            revision=revision,
            from_revision=scripts.step_from(step),
            direction=self.result.direction,
            status=status,
            attempts=self._attempts(revision),
            lock_waits=waits.count,
            lock_wait_ms=waits.waited_ms,
            duration_ms=int((hist.now() - started).total_seconds() * 1000),
            error=error,
        )
        finish = functools.partial(
            self.runner.history.finish,
            status=status,
            started_at=started,
            error=error,
            within=within,
            note="; ".join(self.notes.get(revision, [])) or None,
            attempts=result.attempts,
            lock_waits=waits.count,
            lock_wait_ms=waits.waited_ms,
        )
        if not finish(self.rows.get(revision) or self._start_row(step)) and within is None:
            # The row is gone: a server crash lost its asynchronous commit (PostgreSQL, see api._session)
            # before anything flushed it. Write it again, or the step would not be on record at all.
            self.rows[revision] = self._insert_row(step, started_at=started)
            finish(self.rows[revision])
        return result

    def _note(self, result: StepResult) -> StepResult:
        """Count a step whose history row is closed (and committed) in the run's result, and log it."""
        self.results[result.revision] = result
        self.result.steps.append(result)
        log.log(
            logging.INFO if result.status == hist.APPLIED else logging.ERROR,
            "revision " + result.status,
            duration_ms=result.duration_ms,
            attempts=result.attempts,
            lock_waits=result.lock_waits,
        )
        return result

    def _start_row(self, step: RevisionStep) -> int:
        self.rows[scripts.step_revision(step)] = row = self._insert_row(step)
        return row

    def _insert_row(
        self, step: RevisionStep, within: Connection | None = None, started_at: datetime | None = None
    ) -> int:
        return self.runner.history.start(
            run_id=self.runner.identity.run_id,
            revision=scripts.step_revision(step),
            from_revision=scripts.step_from(step),
            direction=self.result.direction,
            runner=self.runner.identity.runner,
            dbmigrate_version=self.runner.version,
            app_version=self.settings.app_version,
            within=within,
            started_at=started_at,
        )

    def _attempts(self, revision: str) -> int:
        return self._retries.get(revision, 0) + 1

    # -- statement tracking (what commits on its own: MySQL DDL, anything outside a transaction) ----------

    def _statement_starting(self, sql: str) -> None:
        if self.current is None or sql.lstrip().upper().startswith(_NOT_TRACKED):
            return
        if self.backup_due is not None and (_is_ddl(sql) or self._names_a_lost_table(sql)):
            revision, self.backup_due = self.backup_due, None
            self._back_up(revision)
        commits = self._commits_on_its_own(sql)
        self.statements.append({"sql": sql, "done": False, "commits": commits})
        if commits:
            self._save_statements()

    def _commits_on_its_own(self, sql: str) -> str | None:
        """Why ``sql``, about to run on the migration connection, commits by itself (see :func:`_commits`)."""
        connection = self.migration_connection
        if connection is not None and database.autocommits(connection):
            return "autocommit"
        return "ddl" if self.caps.is_mysql and _is_ddl(sql) else None

    def _names_a_lost_table(self, sql: str) -> bool:
        found, _ = losses(self.losses.get(scripts.step_revision(self.current), []) if self.current else [])
        names = (loss.table.rpartition(".")[2] for loss in found)
        return any(re.search(rf"\b{re.escape(name)}\b", sql, re.IGNORECASE) for name in names)

    def _statement_done(self, sql: str) -> None:
        if self.current is None or not self.statements or self.statements[-1]["sql"] != sql:
            return
        self.statements[-1]["done"] = True
        if self.statements[-1]["commits"]:
            self._save_statements()

    def _save_statements(self) -> None:
        assert self.current is not None
        row = self.rows.get(scripts.step_revision(self.current))
        if row is not None:
            self.runner.history.record_statements(row, self.statements)

    def _left_behind(self) -> bool:
        """After a step raised or was stopped: whether part of it committed anyway, or may have.

        The statement that raised took no effect, except a CONCURRENTLY one: PostgreSQL leaves the index
        it was building (or dropping) behind, INVALID, so that statement stays in doubt.
        """
        last = self.statements[-1] if self.statements else None
        if last is not None and not last["done"] and not (last["commits"] and _CONCURRENTLY.search(last["sql"])):
            last["failed"] = True
        committed, in_doubt = split_committed(self.statements)
        return bool(committed or in_doubt)

    # -- failures -------------------------------------------------------------------------------

    def _no_lock_between_steps(self, exc: BaseException) -> LockTimeout:
        if self.results:
            where, kept = "before the next step", "Every step before it stays applied"
        else:
            where, kept = "before the first step", "Nothing was applied"
        return LockTimeout(
            f"The migration environment (env.py) could not get a lock on the database {where} ({describe(exc)}), "
            f"retrying until the retries or the run's time ran out: another session keeps writing. {kept}. Run "
            "again later, or raise --lock-timeout."
        )

    def _retry_after_lock_timeout(self, step: RevisionStep | None, exc: BaseException, backoff: Any) -> bool:
        """Whether to run env.py again after ``exc``: a lock timeout in ``step`` (or in env.py's transaction
        between steps, ``None``) that changed nothing, with retries and time left; waits the backoff first."""
        revision = scripts.step_revision(step) if step is not None else _BETWEEN_STEPS
        if not online.is_lock_timeout(exc, self.caps) or (step is not None and self._left_behind()):
            return False
        retries = self._retries.get(revision, 0)
        if retries >= self.settings.max_lock_retries:
            return False
        delay = float(backoff(_RetryState(retries + 1)))
        if delay + self.settings.lock_timeout >= self.runner.deadline.left():
            self.out_of_time = True  # another attempt would end past the deadline
            return False
        self._retries[revision] = retries + 1
        self.waits.setdefault(revision, online.LockWaits()).add(delay)
        row = self.rows.get(revision)
        if row is not None:
            waits = self.waits[revision]
            self.runner.history.progress(
                row, attempts=retries + 2, lock_waits=waits.count, lock_wait_ms=waits.waited_ms
            )
        log.warning(
            "lock timeout, retrying the step" if step is not None else "lock timeout before a step, retrying",
            attempt=retries + 1,
            max_retries=self.settings.max_lock_retries,
            retry_in_s=round(delay, 2),
            error=describe(exc),
        )
        time.sleep(delay)
        return True

    def _cancel_in_flight(self) -> None:
        """End the statement running on the migration connection, from another thread (the signal watcher)."""
        if self.migration_dbapi is not None:
            database.cancel_statement(self.runner.engine, self.caps, self.migration_dbapi, self.migration_pid)

    def _terminated(self, exc: Terminated) -> None:
        """After a signal: make sure the server ended the step, record it, and say so in ``exc``.

        The run lock is released only after this, so the next run never meets the step still running.
        """
        ended = self.runner.end_session(self.migration_pid)
        step = self.current
        if step is None or scripts.step_revision(step) in self.results:
            return
        revision = scripts.step_revision(step)
        if self._left_behind():
            status, what = hist.PARTIAL, "part of it had committed (statements that commit on their own)"
        elif self.migration_pid is None:
            status, what = hist.FAILED, "the step's transaction was rolled back"
        elif ended:
            status, what = hist.FAILED, "the statement in flight was cancelled on the server and the step rolled back"
        else:
            status, what = hist.FAILED, "the server rolls the step back as its session ends"
        self._record_despite_faults(step, status, f"terminated by {exc.signal_name}: {what}")
        before = scripts.step_from(step) or "base"
        exc.message = (
            f"dbmigrate was stopped by {exc.signal_name} (the pod is being stopped, or Ctrl-C) during revision "
            f"{revision}: {what}. "
            + (
                "Run `dbmigrate status` for the repair."
                if status == hist.PARTIAL
                else f"The database is at {before}; run the command again to continue."
            )
        )

    def _refused(self, step: RevisionStep) -> DbmigrateError:
        """A statement of a step not analysed offline would have lost data: it did not run, the step rolls back.

        UnsafeMigration (exit 4); on MySQL RepairNeeded (exit 5) when statements before it committed on their own.
        """
        assert self.refusal is not None
        if self._left_behind():
            return self._fail(step, _Refused(self.refusal))
        revision = scripts.step_revision(step)
        self.runner.backups.discard(self.taken.pop(revision, []))
        self._record_despite_faults(step, hist.FAILED, self.refusal)
        before = scripts.step_from(step) if self.upgrade else revision
        fix = (
            "Run without --no-backup to have dbmigrate copy the data aside just before the statement runs."
            if not self.settings.backup
            else f"{_DECLARE_THE_LOSS} (the data is then copied aside just before the statement runs)."
        )
        return UnsafeMigration(
            f"Refusing to {self.result.direction}: revision {revision} {self.refusal} The statement did not run and "
            f"nothing of this step was applied: the database is at {before or 'base'}. {fix}"
        )

    def _lost(self, step: RevisionStep | None, exc: BaseException) -> DbmigrateError:
        """The connection broke mid-run (``exc`` says so): record what is known, say where the database is.

        ConnectionLost (exit 3), or RepairNeeded (exit 5) where part of the step committed on its own.
        """
        reason = describe(exc)
        where = mask_url(self.runner.engine.url)
        if step is None:
            return ConnectionLost(
                f"The connection to the database at {where} was lost while env.py ran, before any step of this "
                f"run started ({reason}). Nothing was changed. Run the command again once the database is back; "
                "a Kubernetes Job retries exit 3 by itself."
            )
        revision = scripts.step_revision(step)
        # Read first: what the database holds now decides what the step did, whatever was lost on the way.
        heads = self.runner.heads_after_fault()
        at = (
            f"The database is at {', '.join(heads) or 'base'}"
            if heads is not None
            else "The database is at the revision before this step (it could not be read back to confirm)"
        )
        if heads is not None and (revision in self.runner.applied_revisions(heads)) == self.upgrade:
            # The step committed before the connection broke: the answer to its COMMIT was lost, or (MySQL)
            # the history write that follows the commit. It is whole, not partial, and not to be run again.
            if revision not in self.results:
                self._record_despite_faults(step, hist.APPLIED)
            return ConnectionLost(
                f"The connection to the database at {where} was lost right after revision {revision} was "
                f"{'applied' if self.upgrade else 'reverted'} ({reason}): {LOST_CAUSES}. That step committed and "
                f"everything before it stays. {at}. Run the command again to continue from there; a Kubernetes Job "
                "retries exit 3 by itself."
            )
        if self._left_behind():
            self._record_despite_faults(step, hist.PARTIAL, f"connection lost: {reason}")
            return RepairNeeded(
                f"The connection to the database at {where} was lost during revision {revision} after part of it "
                f"committed ({reason}); statements that commit on their own cannot be rolled back. Run "
                "`dbmigrate status` to see what committed and the command that repairs it."
            )
        self._record_despite_faults(
            step, hist.FAILED, f"connection lost: {reason}; the server rolled the step's transaction back"
        )
        return ConnectionLost(
            f"The connection to the database at {where} was lost during revision {revision} ({reason}): "
            f"{LOST_CAUSES}. The step's transaction was rolled back by the server and everything before it stays "
            f"applied. {at}. Run the command again to continue from there; a Kubernetes Job retries exit 3 by itself."
        )

    def _record_despite_faults(self, step: RevisionStep, status: str, error: str | None = None) -> None:
        """Record the step's outcome on a working connection, or leave its row for the next run to settle."""
        for attempt in (1, 2):
            try:
                self._record(step, status, error)
                return
            except SQLAlchemyError as exc:
                if attempt == 2 or connection_lost(exc) is None or not self.runner.reconnect():
                    log.warning(
                        "the step's history row could not be written; the next run settles it",
                        status=status,
                        error=describe(exc),
                    )
                    return

    def _fail(self, step: RevisionStep, exc: BaseException) -> DbmigrateError:
        revision = scripts.step_revision(step)
        path = scripts.step_path(step)
        reason = describe(exc)
        if self._left_behind():
            row = self.rows.get(revision)
            if row is not None:
                self.runner.history.record_statements(row, self.statements)
            self._record(step, hist.PARTIAL, reason)
            entry = self.runner.history.entries(limit=1, run_id=self.runner.identity.run_id)[0]
            return RepairNeeded(
                f"Revision {revision} ({path.name}) failed after part of it committed: {reason}. "
                + repair_message(entry)
            )
        self.runner.backups.discard(self.taken.pop(revision, []))  # rolled back: nothing was lost
        if online.is_lock_timeout(exc, self.caps) and self.out_of_time:
            what = f"retrying revision {revision}, which could not get its table locks ({reason})"
            stop = self.runner.deadline.reached(what)
            self._record_despite_faults(step, hist.FAILED, stop.message)
            return stop
        if online.is_lock_timeout(exc, self.caps):
            self._record_despite_faults(
                step, hist.FAILED, f"lock not acquired after {self._attempts(revision)} attempt(s): {reason}"
            )
            return LockTimeout(
                f"Revision {revision} could not get its table locks after {self._attempts(revision)} attempt(s) "
                f"(lock_timeout {self.settings.lock_timeout:g}s): {reason}. Other sessions kept conflicting locks; "
                f"nothing of this revision was applied. Run again later, or raise --max-lock-retries / --lock-timeout."
            )
        self._record_despite_faults(step, hist.FAILED, reason)
        before = scripts.step_from(step) or "base"
        rolled_back = (
            f"It ran outside a transaction and none of its statements had taken effect: the database is still at "
            f"{before}."
            if self.outside.get(revision)
            else f"Its transaction was rolled back: the database is still at {before}."
        )
        if _NEEDS_NO_TRANSACTION.search(reason):
            from dbmigrate.checks.directives import NON_TRANSACTIONAL

            fix = (
                f"It must run outside a transaction: add the line `{NON_TRANSACTIONAL}` to {path.name}, or, for a "
                f"file you do not own, set DBMIGRATE_NON_TRANSACTIONAL_REVISIONS={revision} (or list it in "
                "non_transactional_revisions in the [dbmigrate] section of alembic.ini); then run the command again."
            )
        elif self.upgrade:
            fix = "Fix the revision and run `dbmigrate upgrade` again."
        else:
            fix = "Fix the revision's downgrade() and run the downgrade again."
        what = f"Revision {revision}" if self.upgrade else f"Downgrade of revision {revision}"
        return MigrationFailed(f"{what} ({path}) failed: {reason}. {rolled_back} {fix}")

    # -- lock pre-check (PostgreSQL) ----------------------------------------------------------------

    def _find_tables_to_lock(self) -> None:
        """Render the rest of the plan offline and note, per revision, the existing tables it locks."""
        current = self.heads_after if self.heads_after is not None else self.result.before
        planned = scripts.plan(self.runner.script, self.target, current, self.upgrade)
        rendered = scripts.render_sql(self.runner.config, self.runner.script, planned, current)
        for step, sql in zip(planned, rendered, strict=True):
            self.tables[scripts.step_revision(step)] = online.tables_locked_by(sql, self.caps)


class _Refused(Exception):
    """Raised before a statement that would lose data the run may not lose: the statement does not run."""


class _TablesNeeded(Exception):
    """A long transaction holds locks: the remaining steps' tables must be known before going on."""


@contextlib.contextmanager
def _env_py_errors() -> Iterator[None]:
    """Outside a step, an exception comes from the project's env.py: a configuration problem."""
    try:
        yield
    except DbmigrateError:
        raise
    except Exception as exc:
        raise ConfigurationError(f"The migration environment (env.py) failed: {describe(exc)}") from exc


class _RetryState:
    """The one field of tenacity's RetryCallState that its wait strategies read."""

    def __init__(self, attempt_number: int) -> None:
        self.attempt_number = attempt_number


def _type_sql(type_: Any, connection: Connection) -> str | None:
    """A reflected column type as the dialect's DDL writes it; None for one it cannot render."""
    try:
        return str(type_.compile(dialect=connection.dialect))
    except Exception:  # noqa: BLE001 - a type the dialect reflects but cannot compile back (NullType)
        return None


def describe(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None) or exc
    lines = [line.strip() for line in str(orig).strip().splitlines() if line.strip()]
    if not lines:
        return type(orig).__name__
    return redact(f"{type(orig).__name__}: {' '.join(lines[:3])}")[:1000]
