"""SIGTERM during a backfill: the batch in flight is rolled back, the run exits 143 saying so, and the
next run resumes after the last committed batch; ``status`` shows the backfill as interrupted meanwhile."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

from tests.conftest import (
    add_backfill_revisions,
    backfill_rows,
    connect,
    log_events,
    run_dbmigrate,
    start_dbmigrate,
)

ROWS = 5000
SLOW_BATCHES = {"DBMIGRATE_BACKFILL_BATCH_TIME": "0.02", "DBMIGRATE_BACKFILL_PAUSE": "0.05"}


def terminate_after_a_batch(child: subprocess.Popen[str], database_url: str) -> None:
    """SIGTERM ``child`` once its backfill has committed a batch, and wait for it to end."""
    deadline = time.monotonic() + 60
    while child.poll() is None and time.monotonic() < deadline:
        rows = backfill_rows(database_url)
        if rows and int(rows[0]["rows_done"]) > 0:  # type: ignore[call-overload]
            break
        time.sleep(0.01)
    child.send_signal(signal.SIGTERM)
    child.wait(30)


def test_sigterm_during_a_backfill_keeps_every_committed_batch_and_the_next_run_resumes(
    project: Path, database_url: str, tmp_path: Path
) -> None:
    add_backfill_revisions(project, ROWS, '{"domain": DOMAIN}')
    assert run_dbmigrate("upgrade", "0001_items", cwd=project, database_url=database_url).returncode == 0
    child = start_dbmigrate("upgrade", cwd=project, database_url=database_url, output=tmp_path / "run", **SLOW_BATCHES)
    terminate_after_a_batch(child, database_url)

    assert child.returncode == 143
    failure = next(e for e in log_events((tmp_path / "run.err").read_text()) if e["event"] == "command failed")
    assert "during a backfill: the batch in flight was rolled back" in str(failure["message"])
    progress = backfill_rows(database_url)[0]
    done = int(progress["rows_done"])  # type: ignore[call-overload]
    assert 0 < done < ROWS
    with connect(database_url) as connection:
        filled = connection.exec_driver_sql("SELECT COUNT(*) FROM items WHERE domain IS NOT NULL").scalar()
    assert filled == done
    status = json.loads(run_dbmigrate("status", "--format", "json", cwd=project, database_url=database_url).stdout)
    assert [(b["state"], b["rows_done"]) for b in status["backfills"]] == [("interrupted", done)]

    resumed = run_dbmigrate("upgrade", cwd=project, database_url=database_url)

    assert resumed.returncode == 0, resumed.stderr
    assert [e["rows_done"] for e in log_events(resumed.stderr) if e["event"] == "backfill resuming"] == [done]
    assert backfill_rows(database_url)[0]["rows_done"] == ROWS


def test_sigterm_during_backfill_run_keeps_every_committed_batch_and_the_next_run_finishes(
    project: Path, database_url: str, tmp_path: Path
) -> None:
    add_backfill_revisions(project, ROWS, '{"domain": DOMAIN}')
    deferred = run_dbmigrate("upgrade", "--defer-backfills", cwd=project, database_url=database_url)
    assert deferred.returncode == 0, deferred.stderr
    assert backfill_rows(database_url)[0]["state"] == "queued"
    child = start_dbmigrate(
        "backfill", "run", cwd=project, database_url=database_url, output=tmp_path / "run", **SLOW_BATCHES
    )
    terminate_after_a_batch(child, database_url)

    assert child.returncode == 143
    failure = next(e for e in log_events((tmp_path / "run.err").read_text()) if e["event"] == "command failed")
    assert "during a backfill: the batch in flight was rolled back" in str(failure["message"])
    done = int(backfill_rows(database_url)[0]["rows_done"])  # type: ignore[call-overload]
    assert 0 < done < ROWS
    with connect(database_url) as connection:
        filled = connection.exec_driver_sql("SELECT COUNT(*) FROM items WHERE domain IS NOT NULL").scalar()
    assert filled == done

    finished = run_dbmigrate("backfill", "run", cwd=project, database_url=database_url)

    assert finished.returncode == 0, finished.stderr
    assert [e["rows_done"] for e in log_events(finished.stderr) if e["event"] == "backfill resuming"] == [done]
    assert (backfill_rows(database_url)[0]["state"], backfill_rows(database_url)[0]["rows_done"]) == ("done", ROWS)
    with connect(database_url) as connection:
        assert connection.exec_driver_sql("SELECT COUNT(*) FROM items WHERE domain IS NULL").scalar() == 0
