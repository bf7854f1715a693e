"""A backfill killed (SIGKILL) at random moments loses nothing and does nothing twice.

A real ``dbmigrate upgrade`` child is killed again and again while it works through the batches;
each new run resumes after the last committed batch. The backfill increments a counter column that
its revision adds, so every row must end with the counter at exactly 1, and after each kill the rows
counted at 1 must be exactly the rows its progress row says are done.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

from tests.conftest import (
    add_backfill_revisions,
    add_revision,
    backfill_rows,
    connect,
    history_rows,
    run_dbmigrate,
    start_dbmigrate,
    trigger_names,
)

KILLS = {"postgresql": 10, "mariadb": 5, "sqlite": 5}
ROWS = 10_000
# Batches kept near their smallest size (a 1 ms target) and a pause between them: a backfill of ROWS rows
# outlives every kill.
SLOW_BATCHES = {"DBMIGRATE_BACKFILL_BATCH_TIME": "0.001", "DBMIGRATE_BACKFILL_PAUSE": "0.03"}
COLUMNS = 'sa.Column("domain", sa.String(100)); sa.Column("hits", sa.Integer, nullable=False, server_default="0")'


def rows_done(database_url: str) -> int:
    rows = backfill_rows(database_url)
    return int(rows[0]["rows_done"]) if rows else 0  # type: ignore[call-overload]


def hits(database_url: str) -> dict[int, int]:
    """How many rows the backfill processed how many times."""
    with connect(database_url) as connection:
        return dict(connection.exec_driver_sql("SELECT hits, COUNT(*) FROM items GROUP BY hits").all())


def test_a_backfill_killed_at_random_moments_processes_every_row_exactly_once(
    project: Path, database_url: str, backend: str, tmp_path: Path
) -> None:
    add_backfill_revisions(project, ROWS, '{"domain": DOMAIN, "hits": "hits + 1"}', COLUMNS)
    assert run_dbmigrate("upgrade", "0001_items", cwd=project, database_url=database_url).returncode == 0
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)

    for kill in range(KILLS[backend]):
        before = rows_done(database_url)
        child = start_dbmigrate(
            "upgrade", cwd=project, database_url=database_url, output=tmp_path / f"run{kill}", **SLOW_BATCHES
        )
        deadline = time.monotonic() + 60
        while rows_done(database_url) == before and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)  # until this run has committed a batch of its own
        time.sleep(rng.uniform(0, 0.3))
        child.kill()
        child.wait()

        progress = backfill_rows(database_url)[0]
        assert progress["state"] != "done", f"kill {kill} (seed {seed}) came after the backfill finished"
        assert int(progress["rows_done"]) > before, f"kill {kill} (seed {seed}): the run committed no batch"  # type: ignore[call-overload]
        assert hits(database_url) == {1: progress["rows_done"], 0: ROWS - int(progress["rows_done"])}, (  # type: ignore[call-overload]
            f"after kill {kill} (seed {seed}) the rows processed are not exactly the rows recorded as done"
        )

    last = run_dbmigrate("upgrade", cwd=project, database_url=database_url)

    assert last.returncode == 0, last.stderr
    assert hits(database_url) == {1: ROWS}
    progress = backfill_rows(database_url)[0]
    assert (progress["state"], progress["rows_done"]) == ("done", ROWS)
    steps = [(row["revision"], row["status"]) for row in history_rows(database_url) if row["direction"] == "upgrade"]
    assert steps == [("0001_items", "applied"), ("0002_backfill", "applied")], "a step ran again"
    with connect(database_url) as connection:
        rows = connection.exec_driver_sql("SELECT email, domain FROM items").all()
    assert [email for email, domain in rows if domain != email.split("@")[1]] == []


def test_the_sync_trigger_stays_until_a_later_revision_is_applied(
    project: Path, database_url: str, backend: str
) -> None:
    add_backfill_revisions(project, 50, '{"domain": DOMAIN}')
    assert run_dbmigrate("upgrade", cwd=project, database_url=database_url).returncode == 0
    # The previous application version may still be writing while the new one rolls out.
    assert len(trigger_names(database_url)) >= 1
    add_revision(project, "0003_later", "0002_backfill", "pass")

    later = run_dbmigrate("upgrade", cwd=project, database_url=database_url)

    assert later.returncode == 0, later.stderr
    assert trigger_names(database_url) == set()
    assert backfill_rows(database_url)[0]["trigger_dropped_at"] is not None
