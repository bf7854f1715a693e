"""The run lock: one dbmigrate run per version table at a time, however many pods start one.

The lock is keyed by what it protects: the database, and the version table (in its schema) that
env.py migrates there. PostgreSQL uses a session advisory lock, MySQL/MariaDB a named ``GET_LOCK``,
SQLite an ``flock`` on a file beside the database. All three vanish with the process that held
them, so a killed run never leaves a stale lock. A waiting run polls without blocking and says who
holds the lock.

While it holds the run lock, a run also holds a lock named after its run id: projects with other
version tables run at the same time and may share the history table, so whether the run that wrote
a history row is still alive is asked of that lock (:func:`live_runs`), not of one's own run lock.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import time
from collections.abc import Callable, Collection, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Protocol

import structlog
import tenacity
from sqlalchemy import text
from sqlalchemy.engine import Connection

from dbmigrate.database import Capabilities
from dbmigrate.errors import LockTimeout

log = structlog.get_logger("dbmigrate.locking")

HOLDER_LOG_INTERVAL = 10.0
MAX_LOCK_NAME = 64  # MySQL/MariaDB refuse longer GET_LOCK names
DEFAULT_VERSION_TABLE = "alembic_version"
_LOCK_FILE_SUFFIX = ".dbmigrate-lock"


@dataclasses.dataclass(frozen=True)
class Identity:
    """Who runs: the run id, the pod or host, and when the run started."""

    run_id: str
    runner: str
    started: datetime

    def compact(self) -> str:
        return f"run={self.run_id} since={int(self.started.timestamp())} by={self.runner}"


class _Lock(Protocol):
    def try_acquire(self) -> bool: ...

    def holder(self) -> str: ...

    def release(self) -> None: ...


@dataclasses.dataclass(frozen=True)
class Scope:
    """What one run lock protects: a version table, in its schema, of one database."""

    database: str | None
    version_table: str = DEFAULT_VERSION_TABLE
    version_table_schema: str | None = None

    def name(self) -> str:
        """The lock's name: distinct for distinct scopes, and at most 64 characters.

        A name that would be longer is replaced by a digest of it: cutting it short could give two
        version tables one lock.
        """
        parts = [self.database or "", self.version_table_schema or "", self.version_table]
        name = "dbmigrate:" + json.dumps(parts, separators=(",", ":"))
        if len(name) <= MAX_LOCK_NAME:
            return name
        return "dbmigrate:" + hashlib.sha256(name.encode()).hexdigest()[: MAX_LOCK_NAME - len("dbmigrate:")]

    def lock_file(self, database_file: str) -> Path:
        """SQLite: the file beside the database that is locked; Alembic's default version table keeps the plain name."""
        if (self.version_table, self.version_table_schema) == (DEFAULT_VERSION_TABLE, None):
            return Path(database_file + _LOCK_FILE_SUFFIX)
        digest = hashlib.sha256(self.name().encode()).hexdigest()[:16]
        return Path(f"{database_file}.{digest}{_LOCK_FILE_SUFFIX}")


def _run_marker(run_id: str) -> str:
    """The name of the lock a run holds beside its run lock, so that others can tell it is alive."""
    return f"dbmigrate-run:{run_id}"


@contextlib.contextmanager
def run_lock(
    control: Connection,
    caps: Capabilities,
    scope: Scope,
    identity: Identity,
    timeout: float,
    running_step: Callable[[], str] = lambda: "",
) -> Iterator[None]:
    """Hold the run lock for the duration of the block, waiting up to ``timeout`` seconds for it.

    ``running_step`` describes what the holder is doing (from history), for the waiting log lines.
    Raises :class:`LockTimeout` (naming the holder) when it is not acquired in time.
    """
    lock = _make_lock(control, caps, scope, identity)
    started = time.monotonic()
    last_logged = -HOLDER_LOG_INTERVAL

    def report_holder(state: tenacity.RetryCallState) -> None:
        nonlocal last_logged
        now = time.monotonic()
        if now - last_logged >= HOLDER_LOG_INTERVAL:
            last_logged = now
            log.info(
                "waiting for the run lock",
                holder=lock.holder(),
                holder_run=running_step(),
                waited_s=round(now - started, 1),
            )

    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_result(lambda acquired: not acquired),
        wait=tenacity.wait_exponential(multiplier=0.05, max=1.0),
        stop=tenacity.stop_after_delay(timeout),
        before_sleep=report_holder,
        retry_error_callback=lambda state: False,
    )
    if not retrying(lock.try_acquire):
        raise LockTimeout(
            f"Another dbmigrate run held the migration lock for more than {timeout:.0f}s "
            f"(holder: {lock.holder()} {running_step()}). It is probably still migrating: wait for it to finish "
            "and run again, or raise --lock-wait-timeout."
        )
    log.debug("run lock acquired", waited_s=round(time.monotonic() - started, 2))
    try:
        yield
    finally:
        lock.release()


def lock_is_free(control: Connection, caps: Capabilities, scope: Scope, identity: Identity) -> bool:
    """Whether no run holds the lock right now.

    Takes nothing on PostgreSQL (pg_locks) and MySQL/MariaDB (``IS_FREE_LOCK``), so a user that may
    only read asks it too; on SQLite the lock file is locked for an instant to find out.
    """
    if caps.is_postgresql:
        return not _advisory_key(scope.name()).held(control)
    if caps.is_mysql:
        return bool(control.execute(text("SELECT IS_FREE_LOCK(:n)"), {"n": scope.name()}).scalar() == 1)
    lock = _make_lock(control, caps, scope, identity)
    if lock.try_acquire():
        lock.release()
        return True
    return False


def live_runs(control: Connection, caps: Capabilities, run_ids: Collection[str]) -> set[str]:
    """Those of ``run_ids`` whose run is alive now: it holds a run lock on this database.

    Read-only on PostgreSQL and MySQL/MariaDB; on SQLite each lock file beside the database is
    share-locked for an instant to see whether a run holds it.
    """
    if not run_ids:
        return set()
    if caps.is_postgresql:
        return {run_id for run_id in run_ids if _advisory_key(_run_marker(run_id)).held(control)}
    if caps.is_mysql:
        used = text("SELECT IS_USED_LOCK(:n)")
        return {run_id for run_id in run_ids if control.execute(used, {"n": _run_marker(run_id)}).scalar() is not None}
    database = control.engine.url.database
    if not database or database == ":memory:":
        return set()  # no other process can reach this database, and this one is not settling its own rows
    return set(run_ids) & _sqlite_lock_holders(Path(database))


def _make_lock(control: Connection, caps: Capabilities, scope: Scope, identity: Identity) -> _Lock:
    if caps.is_postgresql:
        return _AdvisoryLock(control, scope.name(), identity)
    if caps.is_mysql:
        return _NamedLock(control, scope.name(), identity)
    database = control.engine.url.database
    if not database or database == ":memory:":
        return _InProcessLock()
    return _FileLock(scope.lock_file(database), identity)


@dataclasses.dataclass(frozen=True)
class _AdvisoryKey:
    """A PostgreSQL advisory lock key derived from a name, and its halves as pg_locks shows them."""

    key: int
    high: int
    low: int

    def held(self, control: Connection) -> bool:
        """Whether some session holds this key on the current database (pg_locks; takes nothing)."""
        row = control.execute(
            text(
                "SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted "
                "AND classid = CAST(:high AS oid) AND objid = CAST(:low AS oid) AND objsubid = 1 "
                "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            ),
            {"high": self.high, "low": self.low},
        ).first()
        return row is not None


def _advisory_key(name: str) -> _AdvisoryKey:
    unsigned = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big")
    signed = unsigned - (1 << 64) if unsigned >= (1 << 63) else unsigned
    return _AdvisoryKey(signed, unsigned >> 32, unsigned & 0xFFFFFFFF)


class _AdvisoryLock:
    def __init__(self, control: Connection, name: str, identity: Identity) -> None:
        self.control = control
        self.lock = _advisory_key(name)
        self.marker = _advisory_key(_run_marker(identity.run_id))
        self.identity = identity
        self.labelled = False

    def try_acquire(self) -> bool:
        if not self.labelled:
            # Other runs read who holds the lock from pg_stat_activity: name the session before it can hold it.
            label = f"dbmigrate {self.identity.compact()}"[:63]
            self.control.execute(text("SELECT set_config('application_name', :n, false)"), {"n": label})
            self.labelled = True
        if not self.control.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": self.lock.key}).scalar():
            return False
        self.control.execute(text("SELECT pg_advisory_lock(:k)"), {"k": self.marker.key})  # this run's own: free
        return True

    def holder(self) -> str:
        row = self.control.execute(
            text(
                "SELECT a.pid, a.application_name, a.client_addr, a.backend_start FROM pg_locks l "
                "JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted "
                "AND l.classid = CAST(:high AS oid) AND l.objid = CAST(:low AS oid) AND l.objsubid = 1 "
                "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            ),
            {"high": self.lock.high, "low": self.lock.low},
        ).first()
        if row is None:
            return "nobody (just released)"
        name = row.application_name or "no application_name"
        return f"backend pid {row.pid} ({name}) from {row.client_addr or 'local socket'}"

    def release(self) -> None:
        with contextlib.suppress(Exception):
            self.control.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": self.lock.key})
            self.control.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": self.marker.key})


class _NamedLock:
    def __init__(self, control: Connection, name: str, identity: Identity) -> None:
        self.control = control
        self.name = name
        self.marker = _run_marker(identity.run_id)

    def try_acquire(self) -> bool:
        if self.control.execute(text("SELECT GET_LOCK(:n, 0)"), {"n": self.name}).scalar() != 1:
            return False
        self.control.execute(text("SELECT GET_LOCK(:n, 0)"), {"n": self.marker})  # this run's own: free
        return True

    def holder(self) -> str:
        holder_id = self.control.execute(text("SELECT IS_USED_LOCK(:n)"), {"n": self.name}).scalar()
        if holder_id is None:
            return "nobody (just released)"
        row = self.control.execute(
            text("SELECT HOST, TIME FROM information_schema.PROCESSLIST WHERE ID = :i"), {"i": holder_id}
        ).first()
        where = f" from {row.HOST}, connected {row.TIME}s in its current state" if row else ""
        return f"connection {holder_id}{where}"

    def release(self) -> None:
        with contextlib.suppress(Exception):
            self.control.execute(text("SELECT RELEASE_LOCK(:n)"), {"n": self.name})
            self.control.execute(text("SELECT RELEASE_LOCK(:n)"), {"n": self.marker})


class _FileLock:
    def __init__(self, path: Path, identity: Identity) -> None:
        self.path = path
        self.identity = identity
        self.fd: int | None = None

    def try_acquire(self) -> bool:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        record = {
            "run_id": self.identity.run_id,
            "runner": self.identity.runner,
            "pid": os.getpid(),
            "since": self.identity.started.isoformat(),
        }
        os.write(fd, json.dumps(record).encode())
        self.fd = fd
        return True

    def holder(self) -> str:
        try:
            record = json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return "unknown (lock file unreadable)"
        if not record:
            return "unknown"
        run, runner, pid, since = (record.get(k) for k in ("run_id", "runner", "pid", "since"))
        return f"run {run} by {runner} (pid {pid}) since {since}"

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def lock_files(database: Path) -> set[Path]:
    """SQLite: the lock files beside ``database``, one per version table a run migrated there."""
    if not database.parent.is_dir():
        return set()
    prefix = database.name + "."
    return {p for p in database.parent.iterdir() if p.name.startswith(prefix) and p.name.endswith(_LOCK_FILE_SUFFIX)}


def remove_lock_file(path: Path) -> bool:
    """Delete a SQLite lock file that no run holds (taken for an instant to find out); False when one holds it."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return True
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        path.unlink(missing_ok=True)  # while held: a run that opens it now waits, then locks a file of its own
        return True
    finally:
        os.close(fd)


def _sqlite_lock_holders(database: Path) -> set[str]:
    """The run ids recorded in the lock files beside ``database`` that a live run holds."""
    holders = set()
    prefix = database.name + "."
    for path in database.parent.iterdir():
        if not (path.name.startswith(prefix) and path.name.endswith(_LOCK_FILE_SUFFIX)):
            continue
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue  # removed meanwhile: nobody holds it
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            # Held: the holder wrote its record before it started any step.
            with contextlib.suppress(OSError, ValueError):
                holders.add(str(json.loads(os.read(fd, 4096) or b"{}").get("run_id")))
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
    return holders


class _InProcessLock:
    """An in-memory SQLite database lives in one process: nothing to race with."""

    def try_acquire(self) -> bool:
        return True

    def holder(self) -> str:
        return "this process"

    def release(self) -> None:
        return None


def utcnow() -> datetime:
    """Timezone-aware now, for identities and history rows."""
    return datetime.now(timezone.utc)
