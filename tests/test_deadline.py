"""`--deadline`: every wait of a run fits in it, and a run out of time stops on its own with exit 3, a history
row and a termination message, before Kubernetes' activeDeadlineSeconds would kill the pod."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from tests.conftest import current_revisions, free_port, history_rows, run_dbmigrate
from tests.test_concurrent_runs import start_first_run_at_gate, stop_leftovers, wait_all
from tests.test_online_postgres import LongReader, at_0004  # noqa: F401 - a fixture used below

# What a run may take past its deadline: the process's start up to dbmigrate's first line, and the stop itself.
MARGIN = 5.0


def timed(*args: str, cwd: Path, database_url: str, **env: str) -> tuple[float, object]:
    started = time.monotonic()
    proc = run_dbmigrate(*args, cwd=cwd, database_url=database_url, **env)
    return time.monotonic() - started, proc


def test_a_run_waiting_for_a_held_run_lock_stops_at_its_deadline_with_exit_3_and_a_history_row(
    project: Path, backend: str, database_url: str, tmp_path: Path
) -> None:
    runs = start_first_run_at_gate(project, database_url, tmp_path)
    termination_log = tmp_path / "termination-log"
    termination_log.touch()
    try:
        took, late = timed(
            "upgrade",
            "--deadline",
            "3",
            "--lock-wait-timeout",
            "120",
            cwd=project,
            database_url=database_url,
            DBMIGRATE_TERMINATION_LOG=str(termination_log),
        )
        (tmp_path / "gates" / "open").touch()
        wait_all(runs)
    finally:
        stop_leftovers(runs)

    assert late.returncode == 3, late.stderr  # type: ignore[attr-defined]
    assert took < 3 + MARGIN, late.stderr  # type: ignore[attr-defined]
    message = (
        "The run's deadline of 3s (--deadline, DBMIGRATE_DEADLINE) was reached while waiting for another run's lock"
    )
    assert message in late.stderr  # type: ignore[attr-defined]
    assert "0007_gate" in late.stderr  # type: ignore[attr-defined]  # what the holder is doing
    assert termination_log.read_text().startswith(f"dbmigrate upgrade failed: {message}")
    stopped = [row for row in history_rows(database_url) if row["direction"] == "lock-wait"]
    if backend == "sqlite":  # the holder's step holds the only write lock: no row, the message says it all
        assert stopped == []
    else:
        assert [(row["status"], row["revision"]) for row in stopped] == [("failed", "0006_name_contract")]
        assert message in str(stopped[0]["error"])
    assert runs[0].process.returncode == 0
    assert current_revisions(database_url) == {"0007_gate"}


def test_waiting_for_an_unreachable_database_stops_at_the_deadline(project: Path) -> None:
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere"

    took, proc = timed("upgrade", "--deadline", "2", "--wait-timeout", "120", cwd=project, database_url=url)

    assert proc.returncode == 3, proc.stderr  # type: ignore[attr-defined]
    assert took < 2 + MARGIN
    assert "deadline of 2s" in proc.stderr and "waiting for the database to accept connections" in proc.stderr  # type: ignore[attr-defined]


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_wait_stops_at_the_deadline_when_the_schema_does_not_come(project: Path, database_url: str) -> None:
    took, proc = timed("wait", "--timeout", "120", cwd=project, database_url=database_url, DBMIGRATE_DEADLINE="2")

    assert proc.returncode == 3, proc.stderr  # type: ignore[attr-defined]
    assert took < 2 + MARGIN
    assert "deadline of 2s" in proc.stderr and "waiting for the schema (database at base" in proc.stderr  # type: ignore[attr-defined]


@pytest.mark.parametrize("backend", ["postgresql"])
def test_lock_timeout_retries_stop_before_the_deadline_and_the_step_row_says_why(
    at_0004: Path,  # noqa: F811 - the fixture
    database_url: str,
) -> None:
    reader = LongReader(database_url)
    holding = threading.Thread(target=reader.hold, daemon=True)
    holding.start()
    try:
        time.sleep(0.5)
        args = ("upgrade", "--lock-conflict-wait", "1", "--lock-timeout", "0.5", "--max-lock-retries", "1000")
        took, proc = timed(*args, "--deadline", "6", cwd=at_0004, database_url=database_url)
    finally:
        reader.release.set()
        holding.join()

    assert proc.returncode == 3, proc.stderr  # type: ignore[attr-defined]
    assert took < 6 + MARGIN
    assert "deadline of 6s" in proc.stderr and "retrying revision 0005_full_name_expand" in proc.stderr  # type: ignore[attr-defined]
    assert current_revisions(database_url) == {"0004_email_domain"}
    step = [row for row in history_rows(database_url) if row["revision"] == "0005_full_name_expand"][-1]
    assert step["status"] == "failed" and "deadline of 6s" in str(step["error"])


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_deadline_that_leaves_time_changes_nothing(project: Path, database_url: str) -> None:
    proc = run_dbmigrate("upgrade", "--deadline", "600", cwd=project, database_url=database_url)
    assert proc.returncode == 0, proc.stderr
