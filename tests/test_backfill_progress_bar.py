"""On a terminal with text logs, `backfill run` draws a progress bar (rows, rate, ETA) in place; with JSON
logs (a pod) there is none, only the progress log lines."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest

from dbmigrate.observability import render_bar
from tests.conftest import add_backfill_revisions, dbmigrate_env, run_dbmigrate

SLOW_BATCHES = {"DBMIGRATE_BACKFILL_BATCH_TIME": "0.001", "DBMIGRATE_BACKFILL_PAUSE": "0.01"}


def stderr_on_a_terminal(project: Path, database_url: str, **extra_env: str) -> str:
    """Run `backfill run` with a pseudo-terminal as its stderr; what it wrote there."""
    leader, follower = pty.openpty()
    child = subprocess.Popen(
        [sys.executable, "-m", "dbmigrate", "backfill", "run"],
        cwd=project,
        env=dbmigrate_env(database_url, **SLOW_BATCHES, **extra_env),
        stdout=subprocess.DEVNULL,
        stderr=follower,
    )
    os.close(follower)
    written = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the child closed its end
            break
        if not chunk:
            break
        written += chunk
    os.close(leader)
    assert child.wait(timeout=120) == 0, written.decode(errors="replace")
    return written.decode(errors="replace")


@pytest.mark.parametrize("backend", ["sqlite"])
def test_backfill_run_draws_a_progress_bar_on_a_terminal_with_text_logs(project: Path, database_url: str) -> None:
    add_backfill_revisions(project, 1500, '{"domain": DOMAIN}')
    assert run_dbmigrate("upgrade", "--defer-backfills", cwd=project, database_url=database_url).returncode == 0

    written = stderr_on_a_terminal(project, database_url, DBMIGRATE_LOG_FORMAT="text")

    assert "\r" in written and "rows/s" in written and "ETA" in written
    assert "backfill 1 items [#" in written
    assert "backfill progress" not in written, "the bar replaces the progress lines on a terminal"


@pytest.mark.parametrize("backend", ["sqlite"])
def test_json_logs_on_a_terminal_get_no_progress_bar(project: Path, database_url: str) -> None:
    add_backfill_revisions(project, 1500, '{"domain": DOMAIN}')
    assert run_dbmigrate("upgrade", "--defer-backfills", cwd=project, database_url=database_url).returncode == 0

    written = stderr_on_a_terminal(project, database_url, DBMIGRATE_LOG_FORMAT="json")

    assert "rows/s" not in written and "[#" not in written
    assert all(line.startswith("{") for line in written.splitlines() if line.strip())


def test_the_bar_shows_the_share_done_and_the_counts() -> None:
    line = render_bar("backfill 3 items", 250, 1000, "500 rows/s, ETA 2s", width=20)

    assert line == "backfill 3 items [#####...............]  25% 250/1000 500 rows/s, ETA 2s"
