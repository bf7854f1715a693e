"""verify: upgrade, downgrade and upgrade again, revision by revision, on a scratch database.

For each revision, oldest first: snapshot the schema, upgrade, snapshot, downgrade one step and
compare with the first snapshot, upgrade again and compare with the second. With ``with_data`` a
row is seeded into every table before the downgrade and must come back, value for value, after the
second upgrade. The migrations run through dbmigrate's own upgrade and downgrade (gate, backups and
restores included), so what is verified is what a rollback with dbmigrate does.

The scratch database is created beside the configured one (same server, ``<name>_verify_<random>``;
a temporary file for SQLite) and dropped at the end, whatever happens. Given a URL instead, verify
runs there, starting from what the database holds, and never drops it; what its steps made beside
the revisions' schema (backup copies, dbmigrate's tables, the backup schema, lock files) goes again.
Seeding rows and reading them back is :mod:`dbmigrate.seeding`'s.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import logging
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Column, MetaData, Table, inspect, select
from sqlalchemy import types as sqltypes
from sqlalchemy.engine import URL, Connection
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from dbmigrate import database, locking, scripts
from dbmigrate.errors import (
    ConfigurationError,
    DbmigrateError,
    LockTimeout,
    MigrationFailed,
    RepairNeeded,
    UnsafeMigration,
    VerificationFailed,
)
from dbmigrate.history import History
from dbmigrate.masking import mask_url, redact, redacted_reason, register_secret
from dbmigrate.rollback import Backups
from dbmigrate.seeding import Seeded, Seeder, row_label, show
from dbmigrate.settings import Settings
from dbmigrate.snapshot import compare, snapshot

if TYPE_CHECKING:
    from dbmigrate.history import Entry
    from dbmigrate.runner import RunResult

log = structlog.get_logger("dbmigrate.verify")

DOWNGRADE_FAILED, UPGRADE_FAILED, TRACE_LEFT, DATA_LOST = (
    "downgrade-failed",
    "upgrade-failed",
    "trace-left",
    "data-lost",
)
KINDS = (DOWNGRADE_FAILED, UPGRADE_FAILED, TRACE_LEFT, DATA_LOST)

# What a failing step raises through the API: a finding about the revision, not about the setup.
_STEP_ERRORS = (MigrationFailed, RepairNeeded, UnsafeMigration, LockTimeout)
_MAX_DIFFERENCES = 20
_EMPTY_DOWNGRADE_UNSEEN = (
    "the downgrade (its downgrade() is empty) left behind what its upgrade did: nothing the schema snapshot "
    "shows (rows, a function, a grant), but the upgrade again failed on it"
)


@dataclasses.dataclass(frozen=True)
class Problem:
    """One thing a revision's round trip got wrong; ``kind`` is one of :data:`KINDS`."""

    revision: str
    kind: str
    detail: str

    def as_dict(self) -> dict[str, str]:
        return {"revision": self.revision, "kind": self.kind, "detail": self.detail}


@dataclasses.dataclass
class VerifyResult:
    """What ``verify`` found: how many revisions it round-tripped and every problem, in revision order."""

    revisions_checked: int = 0
    problems: list[Problem] = dataclasses.field(default_factory=list)
    database: str = ""  # where it ran, password masked
    scratch: bool = True  # created for the run and dropped after it
    not_checked: list[str] = dataclasses.field(default_factory=list)
    with_data: bool = False  # rows were seeded and had to come back

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {"revisions_checked": self.revisions_checked, "problems": [p.as_dict() for p in self.problems]}

    def summary(self) -> str:
        """One paragraph: how many revisions, where, and the verdict."""
        where = f"a scratch database ({self.database}, dropped afterwards)" if self.scratch else self.database
        text = f"dbmigrate verify: {self.revisions_checked} revision(s) round-tripped on {where}: "
        if self.ok:
            restored = "the schema and the seeded rows" if self.with_data else "the schema"
            return text + f"every downgrade restored {restored} from before its upgrade."
        revisions = list(dict.fromkeys(p.revision for p in self.problems))
        text += f"{len(self.problems)} problem(s) in {', '.join(revisions)}."
        if self.not_checked:
            text += f" Not checked after that: {', '.join(self.not_checked)}."
        return text

    def render_text(self) -> str:
        lines = [self.summary()]
        width = max((len(p.revision) for p in self.problems), default=0)
        lines += [f"  {p.revision:<{width}}  {p.kind:<16}  {p.detail}" for p in self.problems]
        return "\n".join(lines)

    def raise_if_problems(self) -> None:
        """Raise :class:`VerificationFailed` (exit 4) when any revision has a problem."""
        if self.problems:
            raise VerificationFailed(
                self.summary() + " " + "; ".join(f"{p.revision} {p.kind}: {p.detail}" for p in self.problems)
            )


Migrate = Callable[..., "RunResult"]
Repair = Callable[..., "Entry"]


def run(
    settings: Settings,
    revision_range: str | None,
    *,
    url: str | None,
    with_data: bool,
    upgrade: Migrate,
    downgrade: Migrate,
    repair: Repair,
) -> VerifyResult:
    """Round-trip the revisions of ``revision_range`` (default: all), oldest first; see the module docstring.

    ``upgrade``, ``downgrade`` and ``repair`` are dbmigrate's public API functions, passed in by
    the API: verify runs its steps through them without importing the API above it.
    """
    gate = _GateLog()
    with gate:
        config = scripts.load_config(settings)
        script = scripts.load_scripts(config)
        revisions = scripts.revision_range(script, revision_range)
        lower = (revision_range or "").partition(":")[0] or "base"
        if url is not None:
            place: _Place = _GivenDatabase(database.parse_url(url))
        else:
            place = _ScratchDatabase(database.parse_url(settings.resolved_url(scripts.ini_url(config))), settings)
        with place:
            verifier = _Verifier(settings, config, script, place, with_data, _Steps(upgrade, downgrade, repair), gate)
            with _environment_pointing_at(place.url):
                result = verifier.run(revisions, lower)
    if gate.demoted:
        log.info(
            "the upgrade gate's findings on verify's steps were logged at debug level (--debug shows them); "
            "dbmigrate check --all lists them once per revision",
            findings=gate.demoted,
        )
    return result


@dataclasses.dataclass(frozen=True)
class _Steps:
    """The API functions verify runs its steps through (dbmigrate upgrade, downgrade and repair)."""

    upgrade: Migrate
    downgrade: Migrate
    repair: Repair


class _GateLog:
    """While verify runs its steps, the upgrade gate's repeated warnings go out at debug level.

    The gate logs its findings ("CREATE INDEX without CONCURRENTLY") for every step it lets
    through, and verify runs each revision three times: at warning level they would bury verify's
    own findings (``dbmigrate upgrade`` keeps them). A revision the gate cannot analyse offline is
    still named once per direction, at warning level: only watching its statements protects it. Without
    --debug the demoted events are dropped. ``unanalysed`` maps (revision, step) to the reason;
    ``step`` is the direction verify is running ("upgrade" or "downgrade").
    """

    FINDING, UNANALYSED = "check finding", "revision could not be checked offline"

    def __init__(self) -> None:
        self.demoted = 0
        self.unanalysed: dict[tuple[str, str], str] = {}
        self.step = "upgrade"
        self.saved: dict[str, Any] = {}
        self.debug = False

    def __enter__(self) -> _GateLog:
        self.saved = dict(structlog.get_config())
        try:
            self.debug = bool(structlog.get_logger("dbmigrate.verify").is_enabled_for(logging.DEBUG))
        except AttributeError:  # a logger that does not filter by level: keep the events, relabelled
            self.debug = True
        processors = list(self.saved["processors"])
        levels = [i for i, p in enumerate(processors) if getattr(p, "__name__", "") == "add_log_level"]
        at = levels[0] + 1 if levels else 0
        structlog.configure(**{**self.saved, "processors": [*processors[:at], self._demote, *processors[at:]]})
        return self

    def __exit__(self, *exc: object) -> None:
        structlog.configure(**self.saved)

    def _demote(self, _logger: Any, method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        name, revision = event.get("event"), str(event.get("revision"))
        if method != "warning" or name not in (self.FINDING, self.UNANALYSED):
            return event
        if name == self.UNANALYSED and (revision, self.step) not in self.unanalysed:
            self.unanalysed[revision, self.step] = str(event.get("reason") or "")
            return event
        self.demoted += name == self.FINDING
        if not self.debug:
            raise structlog.DropEvent
        if "level" in event:
            event["level"] = "debug"
        return event


# -- where it runs --------------------------------------------------------------------------------------


class _Place:
    """The database verify runs on: its URL, and what to do before and after."""

    owned = False
    backup_schema: str | None = None  # where backups go, when verify chooses it

    def __init__(self, url: URL) -> None:
        self.parsed = url

    @property
    def url(self) -> str:
        return self.parsed.render_as_string(hide_password=False)

    def __enter__(self) -> _Place:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def recreate(self) -> None:
        raise NotImplementedError


class _GivenDatabase(_Place):
    """``--url``: a throwaway database the user provides; used as it is, never dropped."""

    def __init__(self, url: URL) -> None:
        super().__init__(url)
        for key in ("password", "passwd"):  # drivers take it as a query parameter too
            value = url.query.get(key)
            for secret in [value] if isinstance(value, str) else list(value or ()):
                register_secret(secret)
        register_secret(url.password if isinstance(url.password, str) else None)


class _ScratchDatabase(_Place):
    """A database created beside the configured one for this run, dropped after it (even on failure)."""

    owned = True

    def __init__(self, configured: URL, settings: Settings) -> None:
        super().__init__(configured)
        self.configured = configured
        self.settings = settings
        self.backend = configured.get_backend_name()
        self.directory: str | None = None
        base = re.sub(r"\W", "_", (configured.database or "dbmigrate").lower()) if self.backend != "sqlite" else ""
        suffix = f"_verify_{secrets.token_hex(4)}"
        limit = 63 if self.backend == "postgresql" else 64
        self.name = (base or "dbmigrate")[: limit - len(suffix) - 3] + suffix  # room for MySQL's backup database
        if self.backend in ("mysql", "mariadb"):
            # Backups live in a database of their own on MySQL: one per scratch database, dropped with it.
            self.backup_schema = self.name + "_bk"
        elif self.backend not in ("postgresql", "sqlite"):
            raise ConfigurationError(
                f"verify creates its scratch database on PostgreSQL, MySQL/MariaDB or SQLite, not on "
                f"{self.backend}. Pass --url with a throwaway database to verify on."
            )

    def __enter__(self) -> _Place:
        self._create()
        return self

    def __exit__(self, *exc: object) -> None:
        self._drop()

    def recreate(self) -> None:
        if self.directory is not None:  # SQLite: the same file name, empty again
            for path in Path(self.directory).iterdir():
                path.unlink()
            return
        self._drop()
        self._create()

    def _create(self) -> None:
        if self.backend == "sqlite":
            self.directory = tempfile.mkdtemp(prefix="dbmigrate-verify-")
            self.parsed = self.configured.set(database=str(Path(self.directory) / "verify.db"), query={})
            log.info("scratch database created", database=mask_url(self.parsed))
            return
        self.parsed = self.configured.set(database=self.name)
        with self._server() as server:
            try:
                server.exec_driver_sql(f"CREATE DATABASE {self._quote(server, self.name)}")
            except DBAPIError as exc:
                raise ConfigurationError(
                    f"verify cannot create its scratch database {self.name} on the server of "
                    f"{mask_url(self.configured)}: "
                    f"{redacted_reason(exc)}. verify round-trips every revision on a database of its own and drops it "
                    "afterwards, which needs a user allowed to create databases (PostgreSQL: CREATEDB; "
                    "MySQL/MariaDB: the CREATE and DROP privileges). Grant that, or pass --url with a "
                    "throwaway database that verify may fill (it never drops a database it did not create)."
                ) from None
        log.info("scratch database created", database=mask_url(self.parsed))

    def _drop(self) -> None:
        if self.backend == "sqlite":
            if self.directory is not None:
                shutil.rmtree(self.directory, ignore_errors=True)
                self.directory = None
            return
        names = [self.name] + ([self.backup_schema] if self.backup_schema else [])
        try:
            with self._server() as server:
                for name in names:
                    quoted = self._quote(server, name)
                    if self.backend == "postgresql":
                        try:
                            server.exec_driver_sql(f"DROP DATABASE IF EXISTS {quoted} WITH (FORCE)")
                        except DBAPIError:  # before PostgreSQL 13: end the sessions first
                            server.exec_driver_sql(
                                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                "WHERE datname = %(name)s AND pid <> pg_backend_pid()",
                                {"name": name},
                            )
                            server.exec_driver_sql(f"DROP DATABASE IF EXISTS {quoted}")
                    else:
                        server.exec_driver_sql(f"DROP DATABASE IF EXISTS {quoted}")
        except (DbmigrateError, SQLAlchemyError) as exc:
            log.error(
                "scratch database not dropped: drop it by hand",
                databases=names,
                server=mask_url(self.configured._replace(database=None)),
                error=redact(str(getattr(exc, "orig", exc))),
            )
            return
        log.info("scratch database dropped", database=mask_url(self.parsed))

    @contextlib.contextmanager
    def _server(self) -> Iterator[Connection]:
        """An autocommit connection to the server: PostgreSQL's maintenance database, no database on MySQL."""
        candidates: list[str | None] = [None]
        if self.backend == "postgresql":
            candidates = ["postgres"]
            if self.configured.database and self.configured.database != "postgres":
                candidates.append(self.configured.database)  # a user who may not connect to postgres
        for index, name in enumerate(candidates):
            # URL.set(database=None) keeps the database: _replace() is what leaves it out (MySQL's server).
            engine = database.create(self.configured._replace(database=name).render_as_string(hide_password=False))
            try:
                if index + 1 < len(candidates):
                    try:
                        engine.connect().close()
                    except DBAPIError as exc:
                        if database.classify(exc) in ("missing-database", "other"):
                            continue  # try the next database on the same server
                connection = database.connect(engine, self.settings.wait_timeout)
                try:
                    yield connection.execution_options(isolation_level="AUTOCOMMIT")
                finally:
                    connection.close()
                return
            finally:
                engine.dispose()

    @staticmethod
    def _quote(connection: Connection, name: str) -> str:
        return connection.dialect.identifier_preparer.quote(name)


@contextlib.contextmanager
def _environment_pointing_at(url: str) -> Iterator[None]:
    """An env.py that reads DATABASE_URL itself must reach the verify database too, never the real one."""
    names = ("DATABASE_URL", "DBMIGRATE_DATABASE_URL")
    saved = {name: os.environ.get(name) for name in names}
    os.environ.update(dict.fromkeys(names, url))
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


# -- the round trips ----------------------------------------------------------------------------------


class _Stop(Exception):
    """The remaining revisions cannot be checked (from this database); ``problem`` is why, if it is one."""

    def __init__(self, reason: str, not_checked: Sequence[str], problem: Problem | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.not_checked = list(not_checked)
        self.problem = problem


# How a round trip leaves the database: where the first upgrade left it, somewhere else, or below it.
_SETTLED, _OFF_COURSE, _BLOCKED = "settled", "off-course", "blocked"


class _Verifier:
    def __init__(
        self,
        settings: Settings,
        config: Config,
        script: ScriptDirectory,
        place: _Place,
        with_data: bool,
        steps: _Steps,
        gate: _GateLog | None = None,
    ) -> None:
        self.gate = gate or _GateLog()
        self.config = config
        self.script = script
        self.place = place
        self.with_data = with_data
        self.steps = steps
        self.settings = dataclasses.replace(
            settings,
            database_url=place.url,
            database_url_file=None,
            database_password_file=None,
            allow_data_loss=True,  # the gate must let every step run: losing data is what is being checked
            refuse_findings="",
            table_schema=None,
            backup_schema=place.backup_schema or settings.backup_schema,
            termination_log=Path(os.devnull),  # the steps' outcomes are not the pod's
            pushgateway=None,
            metrics_textfile=None,
        )
        self.own_tables = _OwnTables(self.settings)
        self.seeder = Seeder(self._connect, self.own_tables.excluded)
        self.confirmed = False
        self.known: dict[str, str] | None = None  # the schema now, when a round trip just took it
        self.seeded: list[Seeded] = []  # the rows seeded for the current round trip

    # -- the walk ---------------------------------------------------------------------------------

    def run(self, revisions: Sequence[str], lower: str) -> VerifyResult:
        result = VerifyResult(database=mask_url(self.place.parsed), scratch=self.place.owned, with_data=self.with_data)
        footprint = None if self.place.owned else self._footprint()
        try:
            scripts.point_at(self.config, self.place.url)
            self.own_tables.version_table = self._version_table()
            todo = self._start(revisions, lower)
            for index, revision in enumerate(todo):
                result.revisions_checked += 1
                log.info("verifying revision", revision=revision, position=f"{index + 1}/{len(todo)}")
                problems, state = self._round_trip(revision)
                result.problems.extend(problems)
                for problem in problems:
                    log.warning("verify found a problem", revision=revision, kind=problem.kind, detail=problem.detail)
                rest = list(todo[index + 1 :])
                # Also for the last revision of a --range: the problem says whether it upgrades in one run.
                if state == _BLOCKED and self._get_past(revision, rest):
                    failed = result.problems[-1]
                    above = " The revisions above it were checked from there." if rest else ""
                    result.problems[-1] = dataclasses.replace(
                        failed,
                        detail=f"{failed.detail} (Upgrading an empty database to {revision} in one run works: "
                        f"it needs what an earlier revision did in the same run.{above})",
                    )
                if state == _OFF_COURSE and rest:
                    self._recover(revision, rest)
        except _Stop as stop:
            if stop.problem is not None:
                result.problems.append(stop.problem)
            result.not_checked = stop.not_checked
            log.warning("verify stopped early", reason=stop.reason, not_checked=stop.not_checked)
        finally:
            if footprint is not None:
                self._clean_up(footprint)
        return result

    def _start(self, revisions: Sequence[str], lower: str) -> list[str]:
        """Bring the database to the range's lower end; the revisions still to check, oldest first."""
        current = self._heads()
        scripts.ensure_known(self.script, current)
        if current:
            log.info("verify starts from the database's revision", heads=list(current))
        if lower != "base":
            try:
                self._upgrade(lower)
            except _STEP_ERRORS as exc:
                detail = f"upgrading to the lower end of the range failed: {exc}"
                raise _Stop(detail, revisions, Problem(lower, UPGRADE_FAILED, detail)) from None
        applied = self._applied()
        skipped = [r for r in revisions if r in applied]
        if skipped:
            log.warning("revisions already applied on the database are not checked", revisions=skipped)
        return [r for r in revisions if r not in applied]

    def _round_trip(self, revision: str) -> tuple[list[Problem], str]:
        """Upgrade, downgrade, upgrade: the problems, and where that left the database (``_SETTLED``...).

        Rows seeded for the round trip are deleted after it, so that the next revision's upgrade
        (which may read and convert what the tables hold) does not run on made-up values.
        """
        self.seeded = []
        problems, state = self._round_trip_steps(revision)
        if self.seeded and state == _SETTLED:
            self._unseed()
        return problems, state

    def _round_trip_steps(self, revision: str) -> tuple[list[Problem], str]:
        problems: list[Problem] = []
        before, self.known = self.known or self._snapshot(), None
        try:
            self._upgrade(revision, confirm=True)
        except _STEP_ERRORS as exc:
            return [Problem(revision, UPGRADE_FAILED, f"the upgrade failed: {exc}")], _BLOCKED
        after = self._snapshot()
        self.seeded = self.seeder.seed() if self.with_data else []
        try:
            self._downgrade(revision)
        except _STEP_ERRORS as exc:
            failure = self._again_without_seeded(exc, lambda: self._downgrade(revision), revision, "downgrade")
            if failure is not None:
                problems.append(Problem(revision, DOWNGRADE_FAILED, f"the downgrade failed: {failure}"))
                return problems, self._settle(revision, after, failure, stamp=False)
        down = self._snapshot()
        kept = self.seeder.rows_now(self.seeded)  # what the downgrade left of the seeded rows
        # What is missing now was removed by the downgrade itself, or removed by the upgrade and not put back.
        removed = {key: value for key, value in before.items() if key not in down and key in after}
        not_restored = {key: value for key, value in before.items() if key not in down and key not in after}
        extra, missing, changed = compare(before, down)
        if removed:
            _, missing, _ = compare(removed, {})
            problems.append(
                Problem(
                    revision,
                    DOWNGRADE_FAILED,
                    "the downgrade ran but removed what was there before the upgrade: " + _join(missing),
                )
            )
        empty = _empty_downgrade(self.script, revision)
        if extra or changed or not_restored:
            _, missing, _ = compare(not_restored, {})
            left = extra + changed + [line.removesuffix(" is gone") + " is not restored" for line in missing]
            note = " (its downgrade() is empty)" if empty else ""
            problems.append(Problem(revision, TRACE_LEFT, f"the downgrade{note} left behind: " + _join(left)))
        try:
            self._upgrade(revision)
        except _STEP_ERRORS as exc:
            failure = self._again_without_seeded(exc, lambda: self._upgrade(revision), revision, "upgrade again")
            if failure is not None:
                if empty and not any(problem.kind == TRACE_LEFT for problem in problems):
                    # What the upgrade did is out of the snapshot's sight (rows, a function, a grant), yet
                    # still there: the empty downgrade is the cause, not only the failure that follows it.
                    problems.append(Problem(revision, TRACE_LEFT, _EMPTY_DOWNGRADE_UNSEEN))
                problems.append(
                    Problem(revision, UPGRADE_FAILED, f"upgrading again after the downgrade failed: {failure}")
                )
                return problems, self._settle(revision, after, failure, stamp=True)
        again = self._snapshot()
        if again != after:
            if not problems:
                extra, missing, changed = compare(after, again)
                problems.append(
                    Problem(
                        revision,
                        TRACE_LEFT,
                        "after the downgrade and a second upgrade the schema differs from the first upgrade: "
                        + _join(extra + missing + changed),
                    )
                )
            return problems, _OFF_COURSE
        lost, converted = self.seeder.check(self.seeded, kept)
        if converted:
            losses_again = self._converted_again(revision, converted)
            if losses_again is None:
                return problems, _OFF_COURSE
            for table, losses in losses_again.items():
                lost.setdefault(table, []).extend(losses)
        for table, losses in lost.items():
            problems.append(
                Problem(
                    revision,
                    DATA_LOST,
                    f"table {table}: rows seeded before the downgrade did not come back after the upgrade: "
                    + _join(losses)
                    + self._no_backup_note(revision),
                )
            )
        self.known = again
        return problems, _SETTLED

    def _converted_again(self, revision: str, converted: Sequence[Seeded]) -> dict[str, list[str]] | None:
        """The upgrade again changed values the downgrade had kept: is that a conversion, or damage?

        Verify seeds its rows after the first upgrade, so the upgrade's data migration (recompute a
        checksum, move rows to a new table) never saw them: converting them now is no loss. But an
        upgrade that changes its own output again (``price = price * 100`` with a downgrade that does
        not divide) damages data on every round trip. One more round trip tells them apart: the rows
        as the upgrade left them must come back unchanged. What changes again is reported; None when
        that round trip fails (it worked once: the database is then not where verify expects it).
        """
        try:
            self._downgrade(revision)
            kept = self.seeder.rows_now(converted)
            self._upgrade(revision)
        except _STEP_ERRORS as exc:
            log.warning(
                "a second round trip to tell the upgrade's conversion of seeded rows from a loss failed",
                revision=revision,
                error=redact(str(exc))[:300],
            )
            return None
        lost, again = self.seeder.check(converted, kept)
        for row in again:
            key = row.key or {}
            lost.setdefault(row.fullname, []).append(
                f"{row_label(row)}: the upgrade changes it again on every round trip ("
                + ", ".join(f"{k}={show(v)}" for k, v in row.values.items() if k not in key)
                + " after one upgrade, not after the next)"
            )
        if not again:
            log.info(
                "the upgrade again converted seeded rows that the downgrade had kept, and leaves them unchanged "
                "on the next round trip: a conversion of made-up values, not a loss; not reported",
                revision=revision,
                tables=sorted({row.fullname for row in converted}),
            )
        return lost

    def _again_without_seeded(
        self, exc: DbmigrateError, step: Callable[[], None], revision: str, what: str
    ) -> DbmigrateError | None:
        """A step that failed (and rolled back) with verify's seeded rows runs again without them.

        The seeded values are made up by column type: a migration that reads and converts data
        (parses JSON kept as text, maps strings to a Python enum) may fail on them where it never
        would on the application's data. None when the step works without them (the rows are not
        checked for this revision, and nothing is reported); otherwise the failure without them.
        """
        if not self.seeded or not isinstance(exc, MigrationFailed):
            return exc
        self._unseed()
        try:
            step()
        except _STEP_ERRORS as again:
            return again
        log.warning(
            "the step fails on the made-up rows verify seeded and works without them: not a problem of the "
            "revision; its data is not checked",
            revision=revision,
            step=what,
            error=redact(str(exc))[:300],
        )
        return None

    def _settle(self, revision: str, after: Mapping[str, str], exc: DbmigrateError, *, stamp: bool) -> str:
        """After a failed step: when the schema is still the one the first upgrade made, go on from it.

        A failed downgrade that rolled back leaves the database at ``revision``. A downgrade that
        changed nothing (an empty ``downgrade()``) leaves the upgrade's schema under the version of
        the revision below, and the upgrade again fails: with ``stamp`` the version table is moved
        to ``revision`` (``alembic stamp``), since the schema is what the revisions above expect.
        A step that MySQL/MariaDB left partially applied without changing the schema is marked
        repaired the same way. Anything else is off course (a new scratch database, or, for a
        ``--url`` database, the end of the walk).
        """
        if self._snapshot() != after:
            return _OFF_COURSE
        try:
            if isinstance(exc, RepairNeeded):
                self.steps.repair("applied" if stamp else "reverted", settings=self.settings)
            elif stamp:
                self._stamp(revision)
        except (DbmigrateError, SQLAlchemyError) as error:
            log.warning("could not go on from the upgraded schema", revision=revision, error=redacted_reason(error))
            return _OFF_COURSE
        if stamp:
            log.info("the schema is still the upgrade's: the version table is stamped to go on", revision=revision)
        self.known = dict(after)
        return _SETTLED

    def _get_past(self, revision: str, rest: Sequence[str]) -> bool:
        """After an upgrade that fails in a run of its own: a new scratch database upgraded to it in one run.

        A revision may depend on what an earlier one left in the same run (SQLAlchemy creates a
        PostgreSQL enum type once per run, for example), so it fails when upgraded alone but works
        as part of ``upgrade head``. Going on from there checks the revisions above it (``rest``).
        Returns whether the upgrade in one run works; when it does not (or the database was given
        with --url, which is never recreated), :class:`_Stop` names the revisions above as unchecked.
        """
        if not self.place.owned:
            if rest:
                raise _Stop(f"{revision} does not upgrade, so the revisions above it cannot be checked", rest)
            return False
        log.info("recreating the scratch database to upgrade to the failing revision in one run", revision=revision)
        self.place.recreate()
        try:
            self._upgrade(revision)
        except _STEP_ERRORS:
            if rest:
                raise _Stop(
                    f"{revision} does not upgrade, not even from an empty database in one run, so the revisions "
                    "above it cannot be checked",
                    rest,
                ) from None
            return False
        log.warning(
            "the revision upgrades from an empty database in one run, not on its own: going on from there",
            revision=revision,
        )
        return True

    def _recover(self, revision: str, rest: Sequence[str]) -> None:
        """After a round trip that left the database off course: a new scratch database, upgraded to ``revision``."""
        if not self.place.owned:
            raise _Stop(
                f"the round trip of {revision} left the database in a state the later revisions cannot be "
                "checked from, and a database given with --url is never recreated",
                rest,
            )
        log.info("recreating the scratch database to go on", after=revision)
        self.place.recreate()
        try:
            self._upgrade(revision)
        except _STEP_ERRORS as exc:
            raise _Stop(f"upgrading a new scratch database to {revision} failed: {exc}", rest) from None

    # -- steps, through the public API ------------------------------------------------------------

    def _upgrade(self, target: str, confirm: bool = False) -> None:
        self._run("upgrade", self.steps.upgrade, target)
        if confirm and not self.confirmed:
            self._confirm_target(target)

    def _downgrade(self, revision: str) -> None:
        found = self.script.get_revision(revision)
        downs = list(found._normalized_down_revisions) if found is not None else []
        # One step down, only this revision: "REV@-1" leaves other branches alone; from a merge
        # point, downgrading to one of its parents removes the merge point only.
        target = downs[0] if len(downs) > 1 else f"{revision}@-1"
        self._run("downgrade", self.steps.downgrade, target)

    def _run(self, direction: str, migrate: Migrate, target: str) -> None:
        """One ``dbmigrate upgrade``/``downgrade`` through the public API, its gate's log demoted."""
        self.gate.step = direction
        migrate(target, settings=self.settings)

    def _stamp(self, revision: str) -> None:
        """Set the version table to ``revision`` without running it (``alembic stamp``)."""
        name, schema = self.own_tables.version_table
        with self._connect() as connection, connection.begin():
            context = MigrationContext.configure(
                connection, opts={"version_table": name, "version_table_schema": schema}
            )
            context.stamp(self.script, revision)

    def _confirm_target(self, revision: str) -> None:
        """Before the first downgrade: the upgrade reached the verify database, so env.py migrates that one."""
        if revision not in self._applied():
            raise ConfigurationError(
                "The migration environment (env.py) did not migrate the verify database "
                f"{mask_url(self.place.parsed)}: its version table does not show {revision} after upgrading "
                "to it, so env.py connects to another database. verify stopped before any downgrade. Make "
                "env.py use the connection dbmigrate passes (config.attributes['connection']) or the "
                "sqlalchemy.url it sets."
            )
        self.confirmed = True

    # -- reading the database ---------------------------------------------------------------------

    @contextlib.contextmanager
    def _connect(self) -> Iterator[Connection]:
        engine = database.create(self.place.url)
        try:
            connection = database.connect(engine, self.settings.wait_timeout)
            try:
                yield connection
            finally:
                connection.close()
        finally:
            engine.dispose()

    def _version_table(self) -> tuple[str, str | None]:
        """Where env.py keeps the revision (``version_table``, ``version_table_schema``), read by running it."""
        found: list[tuple[str, str | None]] = []

        def remember(options: dict[str, Any]) -> None:
            found.append((options.get("version_table") or "alembic_version", options.get("version_table_schema")))

        engine = database.create(self.place.url)
        try:
            with scripts.SharedConnection(engine) as connection:
                scripts.run_env(
                    self.config,
                    self.script,
                    lambda _: [],
                    connection=connection,
                    on_configure=remember,
                    dont_mutate=True,
                )
        except DbmigrateError:
            raise
        except Exception as exc:  # noqa: BLE001 - env.py can raise anything
            raise ConfigurationError(
                f"The migration environment (env.py) failed: {type(exc).__name__}: {redact(str(exc))}"
            ) from None
        finally:
            engine.dispose()
        return found[0] if found else ("alembic_version", None)

    def _heads(self) -> tuple[str, ...]:
        name, schema = self.own_tables.version_table
        with self._connect() as connection:
            if not inspect(connection).has_table(name, schema=schema):
                return ()
            table = Table(name, MetaData(), Column("version_num", sqltypes.String(32)), schema=schema)
            return tuple(sorted(row[0] for row in connection.execute(select(table.c.version_num))))

    def _applied(self) -> set[str]:
        heads = self._heads()
        if not heads:
            return set()
        return {r.revision for r in self.script.revision_map.iterate_revisions(heads, "base") if r is not None}

    def _snapshot(self) -> dict[str, str]:
        with self._connect() as connection:
            return snapshot(connection, self.own_tables.excluded)

    # -- data -------------------------------------------------------------------------------------

    def _unseed(self) -> None:
        """Delete the rows seeded for this round trip (those still there); none are seeded after that."""
        seeded, self.seeded = self.seeded, []
        self.seeder.unseed(seeded)

    def _no_backup_note(self, revision: str) -> str:
        reason = self.gate.unanalysed.get((revision, "downgrade"))
        if reason is None:
            return ""
        return (
            f" (dbmigrate could not analyse this revision offline, and no statement of its downgrade was seen to "
            f"lose this data as it ran, so no backup was taken: {reason[:200]})"
        )

    def _backups(self, connection: Connection) -> Backups:
        settings = self.settings
        caps = database.capabilities(connection.engine)
        return Backups(connection, caps, settings.backups_table, settings.table_schema, settings.backup_schema)

    def _footprint(self) -> _Footprint:
        """What of dbmigrate's own the given database holds before verify runs on it."""
        with self._connect() as connection:
            inspector = inspect(connection)
            tables = self.own_tables.names & set(inspector.get_table_names())
            sqlite = connection.dialect.name == "sqlite"  # its copies are tables beside the data, not a place
            location = sqlite or self.settings.backup_schema in inspector.get_schema_names()
            backup_ids = {backup.id for backup in self._backups(connection).all()}
        return _Footprint(frozenset(tables), frozenset(backup_ids), location, frozenset(self._lock_files()))

    def _lock_files(self) -> set[Path]:
        name = self.place.parsed.database
        is_file = self.place.parsed.get_backend_name() == "sqlite" and name and name != ":memory:"
        return locking.lock_files(Path(name)) if is_file and name else set()

    def _clean_up(self, before: _Footprint) -> None:
        """On a given database: remove what verify's runs made beside the revisions' schema (a scratch one goes whole).

        The copies its steps backed up, dbmigrate's tables and the backup schema (MySQL/MariaDB: the
        server's backup database) that were not there before, SQLite's lock files. A history naming a
        partially applied step stays: `dbmigrate status` and `dbmigrate repair` need it to set the
        database right. What cannot be removed is logged.
        """
        try:
            with self._connect() as connection:
                connection = connection.execution_options(isolation_level="AUTOCOMMIT")
                backups = self._backups(connection)
                for backup in backups.all():
                    if backup.id not in before.backup_ids:
                        backups.drop(backup)
                inspector = inspect(connection)
                made = (self.own_tables.names & set(inspector.get_table_names())) - before.tables
                history = self.settings.history_table
                if history in made and History(connection, history, None).unresolved_partials():
                    made.discard(history)
                    log.warning("verify keeps the history it made: it names a partially applied step", table=history)
                quote = connection.dialect.identifier_preparer.quote
                for name in sorted(made):
                    connection.exec_driver_sql(f"DROP TABLE IF EXISTS {quote(name)}")
                location, now = self.settings.backup_schema, inspect(connection)
                # Made by verify's steps, and emptied: on MySQL/MariaDB other runs' copies may be there by now.
                if (
                    not before.backup_location
                    and location in now.get_schema_names()
                    and not now.get_table_names(schema=location)
                ):
                    kind = "SCHEMA" if connection.dialect.name == "postgresql" else "DATABASE"
                    connection.exec_driver_sql(f"DROP {kind} {quote(location)}")
        except (DbmigrateError, SQLAlchemyError) as exc:
            log.warning("what verify made on the database was not all removed", error=redacted_reason(exc))
        for path in self._lock_files() - before.lock_files:
            if not locking.remove_lock_file(path):
                log.warning("lock file not removed: a run holds it", path=str(path))


@dataclasses.dataclass(frozen=True)
class _Footprint:
    """What of dbmigrate's own a given database held before verify: what verify adds is removed after it."""

    tables: frozenset[str]  # dbmigrate's tables: history, archive, backups registry
    backup_ids: frozenset[int]  # rows of the backups registry
    backup_location: bool  # the backup schema (PostgreSQL) or database (MySQL/MariaDB) exists
    lock_files: frozenset[Path]  # SQLite: the lock files beside the database file


class _OwnTables:
    """dbmigrate's and Alembic's tables, which a snapshot leaves out."""

    def __init__(self, settings: Settings) -> None:
        self.names = {settings.history_table, settings.archive_table, settings.backups_table, settings.backfills_table}
        self.backup_prefix = f"{settings.backup_schema}__"  # SQLite keeps backups beside the data
        self.backup_schema = settings.backup_schema
        self.version_table: tuple[str, str | None] = ("alembic_version", None)

    def excluded(self, schema: str | None, name: str) -> bool:
        version_name, version_schema = self.version_table
        return (
            name in self.names
            or name == "alembic_version"
            or name.startswith("dbmigrate_")
            or name.startswith(self.backup_prefix)
            or schema == self.backup_schema
            or (name == version_name and schema == version_schema)
            or (name.endswith("_seq") and any(name.startswith(f"{table}_") for table in self.names))
        )


# -- snapshots ------------------------------------------------------------------------------------------


def _empty_downgrade(script: ScriptDirectory, revision: str) -> bool:
    """Whether the revision's ``downgrade()`` does nothing: only ``pass``, ``...`` or a docstring."""
    found = script.get_revision(revision)
    try:
        tree = ast.parse(Path(found.path).read_text(encoding="utf-8")) if found is not None else None
    except (OSError, SyntaxError, ValueError):
        return False
    for node in tree.body if tree is not None else []:
        if isinstance(node, ast.FunctionDef) and node.name == "downgrade":
            return all(
                isinstance(statement, ast.Pass)
                or (isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant))
                for statement in node.body
            )
    return False


def _join(lines: Sequence[str]) -> str:
    shown = "; ".join(lines[:_MAX_DIFFERENCES])
    return shown + (f"; and {len(lines) - _MAX_DIFFERENCES} more" if len(lines) > _MAX_DIFFERENCES else "")
