"""PostgreSQL stays online: a step never queues behind a long transaction, and lock timeouts retry."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from tests.conftest import current_revisions, dbmigrate_env, history_rows, run_dbmigrate

pytestmark = pytest.mark.parametrize("backend", ["postgresql"])

WAIT_LIMIT = 60.0


class LongReader:
    """A session that reads `customers` in a transaction and keeps it open until released."""

    def __init__(self, database_url: str) -> None:
        url = make_url(database_url)
        self.connection = psycopg.connect(host=url.host, port=url.port or 5432, user=url.username, dbname=url.database)
        self.release = threading.Event()

    def hold(self) -> None:
        with self.connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM customers")
        self.release.wait(WAIT_LIMIT)
        self.connection.rollback()
        self.connection.close()


@pytest.fixture
def long_reader(database_url: str) -> Iterator[LongReader]:
    reader = LongReader(database_url)
    thread = threading.Thread(target=reader.hold, daemon=True)
    thread.start()
    time.sleep(0.5)  # older than the age below which a transaction counts as short
    yield reader
    reader.release.set()
    thread.join()


def start(args: list[str], cwd: Path, database_url: str) -> tuple[subprocess.Popen[str], Path]:
    """Start a process whose stderr (the JSON log) goes to a file the test can read while it runs."""
    log = cwd / f"stderr-{time.monotonic_ns()}.log"
    with log.open("w") as stderr:
        process = subprocess.Popen(
            args, cwd=cwd, env=dbmigrate_env(database_url), stdout=subprocess.DEVNULL, stderr=stderr, text=True
        )
    return process, log


def waiting_lock_requests(database_url: str) -> int:
    """Lock requests on customers that are queued (not granted): what stalls an application."""
    engine = sa.create_engine(database_url)
    with engine.connect() as connection:
        count = connection.exec_driver_sql(
            "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = 'customers'::regclass"
        ).scalar()
    engine.dispose()
    return int(count or 0)


def poll(condition: Callable[[], bool], process: subprocess.Popen[str]) -> bool:
    deadline = time.monotonic() + WAIT_LIMIT
    while time.monotonic() < deadline and process.poll() is None:
        if condition():
            return True
        time.sleep(0.05)
    return False


def step_row(database_url: str, revision: str) -> dict[str, object] | None:
    rows = [r for r in history_rows(database_url) if r["revision"] == revision]
    return rows[-1] if rows else None


@pytest.fixture
def at_0004(project: Path, database_url: str) -> Path:
    proc = run_dbmigrate("upgrade", "0004_email_domain", cwd=project, database_url=database_url)
    assert proc.returncode == 0, proc.stderr
    return project


def test_step_waits_without_queueing_while_a_long_transaction_holds_its_table(
    at_0004: Path, database_url: str, long_reader: LongReader
) -> None:
    args = [sys.executable, "-m", "dbmigrate", "upgrade", "0005_full_name_expand"]
    process, log = start(args, at_0004, database_url)

    waiting = poll(lambda: "waiting for long transactions" in log.read_text(), process)
    queued_while_reader_held = max(waiting_lock_requests(database_url) for _ in range(20))
    long_reader.release.set()
    process.wait(timeout=WAIT_LIMIT)
    stderr = log.read_text()

    assert waiting, stderr
    assert queued_while_reader_held == 0
    assert process.returncode == 0, stderr
    row = step_row(database_url, "0005_full_name_expand")
    assert row is not None and row["status"] == "applied" and int(row["lock_waits"]) >= 1  # type: ignore[call-overload]


def test_plain_alembic_queues_behind_the_long_transaction(
    at_0004: Path, database_url: str, long_reader: LongReader
) -> None:
    """The control case: the lock queue that dbmigrate avoids is real and visible to the test above."""
    env_url = {"DATABASE_URL": database_url}
    process = subprocess.Popen(
        [sys.executable, "-m", "alembic", "upgrade", "0005_full_name_expand"],
        cwd=at_0004,
        env={**dbmigrate_env(database_url), **env_url},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )

    queued = poll(lambda: waiting_lock_requests(database_url) > 0, process)
    long_reader.release.set()
    process.communicate(timeout=WAIT_LIMIT)

    assert queued
    assert process.returncode == 0


def test_lock_timeout_rolls_the_step_back_and_retries_it(
    at_0004: Path, database_url: str, long_reader: LongReader
) -> None:
    args = [sys.executable, "-m", "dbmigrate", "upgrade", "--lock-conflict-wait", "0", "--lock-timeout", "0.2"]
    process, log = start(args, at_0004, database_url)

    retried = poll(lambda: "lock timeout, retrying the step" in log.read_text(), process)
    long_reader.release.set()
    process.wait(timeout=WAIT_LIMIT)
    stderr = log.read_text()

    assert retried, stderr
    assert process.returncode == 0, stderr
    row = step_row(database_url, "0005_full_name_expand")
    assert row is not None and row["status"] == "applied" and int(row["attempts"]) >= 2  # type: ignore[call-overload]


def test_retries_exhausted_exits_3_and_leaves_the_previous_revision(
    at_0004: Path, database_url: str, long_reader: LongReader
) -> None:
    proc = run_dbmigrate(
        "upgrade",
        "--lock-conflict-wait",
        "0",
        "--lock-timeout",
        "0.1",
        "--max-lock-retries",
        "1",
        cwd=at_0004,
        database_url=database_url,
    )

    assert proc.returncode == 3, proc.stderr
    assert "could not get its table locks" in proc.stderr
    assert current_revisions(database_url) == {"0004_email_domain"}
    row = step_row(database_url, "0005_full_name_expand")
    assert row is not None and row["status"] == "failed" and row["attempts"] == 2
    assert "lock not acquired" in str(row["error"])
