"""`backfill run` pushes each backfill's progress to a real Pushgateway: rows done and estimated, batches,
lock retries and state, labelled by backfill, revision and table; paused part way, then done."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import add_backfill_revisions, run_dbmigrate
from tests.test_metrics import metric_lines, scrape
from tests.test_metrics import pushgateway as pushgateway  # the fixture, used by name

ROWS = 1500
SLOW_BATCHES = {"DBMIGRATE_BACKFILL_BATCH_TIME": "0.001", "DBMIGRATE_BACKFILL_PAUSE": "0.03"}
LABELS = ('backfill="1"', 'revision="0002_backfill"', 'table="items (domain)"')


def number(text: str, name: str) -> float:
    return float(sample(text, name).rsplit(" ", 1)[1])


def sample(text: str, name: str) -> str:
    """The one sample of ``name``; it must carry the backfill's labels."""
    (line,) = metric_lines(text, name)
    assert all(label in line for label in LABELS) or not name.startswith("dbmigrate_backfill_"), line
    return line


@pytest.fixture
def backend() -> Iterator[str]:
    yield "postgresql"


def test_backfill_runs_push_rows_batches_retries_and_state(project: Path, database_url: str, pushgateway: str) -> None:
    add_backfill_revisions(project, ROWS, '{"domain": DOMAIN}')
    assert run_dbmigrate("upgrade", "--defer-backfills", cwd=project, database_url=database_url).returncode == 0
    push = {"DBMIGRATE_PUSHGATEWAY": pushgateway, "DBMIGRATE_METRICS_GROUPING": "release=shop"}

    paused = run_dbmigrate(
        "backfill", "run", "--max-duration", "1", cwd=project, database_url=database_url, **SLOW_BATCHES, **push
    )

    assert paused.returncode == 0, paused.stderr
    text = scrape(pushgateway)
    assert 'state="paused"' in sample(text, "dbmigrate_backfill_state")
    done_so_far = number(text, "dbmigrate_backfill_rows_done")
    assert 0 < done_so_far < ROWS
    assert number(text, "dbmigrate_backfill_rows_estimated") == ROWS
    assert 'command="backfill run"' in sample(text, "dbmigrate_last_run_success")

    finished = run_dbmigrate("backfill", "run", cwd=project, database_url=database_url, **push)

    assert finished.returncode == 0, finished.stderr
    text = scrape(pushgateway)
    assert 'state="done"' in sample(text, "dbmigrate_backfill_state")
    assert number(text, "dbmigrate_backfill_rows_done") == ROWS
    assert number(text, "dbmigrate_backfill_batches") > 1
    assert number(text, "dbmigrate_backfill_lock_retries") == 0
