"""The run lock: one dbmigrate run per database at a time, however many pods start one.

PostgreSQL uses a session advisory lock, MySQL/MariaDB a named ``GET_LOCK``, SQLite an ``flock``
on a file beside the database. All three vanish with the process that held them, so a killed run
never leaves a stale lock. A waiting run polls without blocking and says who holds the lock.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
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


def lock_name(database: str | None, version_table: str) -> str:
    """The lock's name for one database (and one version table within it)."""
    return f"dbmigrate:{database or ''}:{version_table}"[:64]


@contextlib.contextmanager
def run_lock(
    control: Connection,
    caps: Capabilities,
    name: str,
    identity: Identity,
    timeout: float,
    running_step: Callable[[], str] = lambda: "",
) -> Iterator[None]:
    """Hold the run lock for the duration of the block, waiting up to ``timeout`` seconds for it.

    ``running_step`` describes what the holder is doing (from history), for the waiting log lines.
    Raises :class:`LockTimeout` (naming the holder) when it is not acquired in time.
    """
    lock = _make_lock(control, caps, name, identity)
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


def lock_is_free(control: Connection, caps: Capabilities, name: str, identity: Identity) -> bool:
    """Whether no run holds the lock right now (takes it for an instant to find out)."""
    lock = _make_lock(control, caps, name, identity)
    if lock.try_acquire():
        lock.release()
        return True
    return False


def _make_lock(control: Connection, caps: Capabilities, name: str, identity: Identity) -> _Lock:
    if caps.is_postgresql:
        return _AdvisoryLock(control, name, identity)
    if caps.is_mysql:
        return _NamedLock(control, name)
    database = control.engine.url.database
    if not database or database == ":memory:":
        return _InProcessLock()
    return _FileLock(Path(database + ".dbmigrate-lock"), identity)


class _AdvisoryLock:
    def __init__(self, control: Connection, name: str, identity: Identity) -> None:
        self.control = control
        key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big")
        self.high, self.low = key >> 32, key & 0xFFFFFFFF
        self.key = key - (1 << 64) if key >= (1 << 63) else key
        self.identity = identity
        self.labelled = False

    def try_acquire(self) -> bool:
        if not self.labelled:
            # Other runs read who holds the lock from pg_stat_activity: name the session before it can hold it.
            label = f"dbmigrate {self.identity.compact()}"[:63]
            self.control.execute(text("SELECT set_config('application_name', :n, false)"), {"n": label})
            self.labelled = True
        return bool(self.control.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": self.key}).scalar())

    def holder(self) -> str:
        row = self.control.execute(
            text(
                "SELECT a.pid, a.application_name, a.client_addr, a.backend_start FROM pg_locks l "
                "JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted "
                "AND l.classid = CAST(:high AS oid) AND l.objid = CAST(:low AS oid) AND l.objsubid = 1 "
                "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            ),
            {"high": self.high, "low": self.low},
        ).first()
        if row is None:
            return "nobody (just released)"
        name = row.application_name or "no application_name"
        return f"backend pid {row.pid} ({name}) from {row.client_addr or 'local socket'}"

    def release(self) -> None:
        with contextlib.suppress(Exception):
            self.control.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": self.key})


class _NamedLock:
    def __init__(self, control: Connection, name: str) -> None:
        self.control = control
        self.name = name

    def try_acquire(self) -> bool:
        return self.control.execute(text("SELECT GET_LOCK(:n, 0)"), {"n": self.name}).scalar() == 1

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
