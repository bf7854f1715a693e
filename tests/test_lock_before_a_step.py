"""A lock timeout in env.py's transaction before a step begins is retried, like one inside a step.

Before its first step, the migration environment reads the version table. On SQLite an application
committing at that moment holds every reader off (its commit takes the database's exclusive lock),
and on a busy machine for longer than one ``--lock-timeout``. Nothing has run yet, so dbmigrate waits
its backoff and runs env.py again, within ``--max-lock-retries``; when they run out, the run exits 3
and nothing was applied.
"""

from __future__ import annotations

import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import EXAMPLE_HEAD, current_revisions, log_events, run_dbmigrate, start_dbmigrate

pytestmark = pytest.mark.parametrize("backend", ["sqlite"])

# Put into the example's env.py between ``context.configure`` and ``run_migrations``. env.py runs online
# twice in an upgrade: once to find the version table, once for the run. In the run, it waits there for
# the test to take the lock, as if the application's commit had begun that instant.
WAITS_FOR_THE_TEST = """
    _gate = os.environ["TEST_GATE_DIR"]
    with open(os.path.join(_gate, "online-runs"), "a+") as _runs:
        _runs.write("run\\n")
        _runs.seek(0)
        _in_the_run = len(_runs.readlines()) == 2
    if _in_the_run:
        open(os.path.join(_gate, "waiting"), "w").close()
        while not os.path.exists(os.path.join(_gate, "go")):
            time.sleep(0.01)
"""
CONFIGURED = "    context.configure(connection=connection, target_metadata=target_metadata)\n"


class ExclusiveLockHolder(threading.Thread):
    """Holds the SQLite database's exclusive lock (no reader, no writer) until ``release`` is set."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.path = url.removeprefix("sqlite:///")
        self.holding = threading.Event()
        self.release = threading.Event()

    def run(self) -> None:
        connection = sqlite3.connect(self.path, isolation_level=None)
        connection.execute("BEGIN EXCLUSIVE")
        self.holding.set()
        self.release.wait(120)
        connection.execute("ROLLBACK")
        connection.close()


@pytest.fixture
def at_the_first_revision(project: Path, database_url: str) -> Path:
    """The example project at its first revision, its env.py waiting for the test in the next run."""
    assert run_dbmigrate("upgrade", "0001_customers", cwd=project, database_url=database_url).returncode == 0
    env_py = project / "alembic" / "env.py"
    env_py.write_text(
        env_py.read_text()
        .replace("import os\n", "import os\nimport time\n")
        .replace(CONFIGURED, CONFIGURED + WAITS_FOR_THE_TEST)
    )
    return project


@pytest.fixture
def lock_taken_before_the_first_step(
    at_the_first_revision: Path, database_url: str, tmp_path: Path
) -> Iterator[tuple[subprocess.Popen[str], ExclusiveLockHolder]]:
    """``dbmigrate upgrade --lock-timeout 0.2 --max-lock-retries 3`` running, the lock taken just before its
    env.py reads the version table; the test releases the holder (or the fixture does, at its end)."""
    child = start_dbmigrate(
        *("upgrade", "--lock-timeout", "0.2", "--max-lock-retries", "3"),
        cwd=at_the_first_revision,
        database_url=database_url,
        output=tmp_path / "run",
        TEST_GATE_DIR=str(tmp_path),
    )
    while not (tmp_path / "waiting").exists() and child.poll() is None:
        time.sleep(0.01)
    holder = ExclusiveLockHolder(database_url)
    holder.start()
    assert holder.holding.wait(10)
    (tmp_path / "go").touch()
    yield child, holder
    holder.release.set()
    holder.join(10)
    child.wait(120)


def test_a_lock_timeout_before_the_first_step_is_retried_and_the_run_finishes(
    lock_taken_before_the_first_step: tuple[subprocess.Popen[str], ExclusiveLockHolder],
    database_url: str,
    tmp_path: Path,
) -> None:
    child, holder = lock_taken_before_the_first_step
    time.sleep(1)  # a retry or two later, the application's commit ends
    holder.release.set()
    child.wait(120)
    stderr = (tmp_path / "run.err").read_text()

    assert child.returncode == 0, stderr
    assert current_revisions(database_url) == {EXAMPLE_HEAD}
    retries = [e for e in log_events(stderr) if e["event"] == "lock timeout before a step, retrying"]
    assert retries and "database is locked" in str(retries[0]["error"])


def test_a_lock_held_past_every_retry_exits_3_and_applies_nothing(
    lock_taken_before_the_first_step: tuple[subprocess.Popen[str], ExclusiveLockHolder],
    database_url: str,
    tmp_path: Path,
) -> None:
    child, holder = lock_taken_before_the_first_step
    child.wait(120)  # the holder keeps the lock until the run has given up
    holder.release.set()
    stderr = (tmp_path / "run.err").read_text()

    assert child.returncode == 3, stderr
    failure = next(e for e in log_events(stderr) if e["event"] == "command failed")
    assert failure["error"] == "LockTimeout"
    assert "before the first step" in str(failure["message"]) and "Nothing was applied" in str(failure["message"])
    assert len([e for e in log_events(stderr) if e["event"] == "lock timeout before a step, retrying"]) == 3
    assert current_revisions(database_url) == {"0001_customers"}
