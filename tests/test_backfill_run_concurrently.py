"""Two `backfill run` at once: the run lock lets one work; the other waits for it or gives up with exit 3.

One that waits long enough finds nothing left to do; one whose --lock-wait-timeout runs out exits 3
(lock not acquired) having done nothing. The backfill increments a counter column, so every row must
end processed exactly once.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from tests.conftest import (
    add_backfill_revisions,
    backfill_rows,
    connect,
    run_dbmigrate,
    start_dbmigrate,
)

ROWS = 3000
SLOW_BATCHES = {"DBMIGRATE_BACKFILL_BATCH_TIME": "0.001", "DBMIGRATE_BACKFILL_PAUSE": "0.02"}
COLUMNS = 'sa.Column("domain", sa.String(100)); sa.Column("hits", sa.Integer, nullable=False, server_default="0")'


def test_two_backfill_runs_at_once_process_every_row_exactly_once(
    project: Path, database_url: str, tmp_path: Path
) -> None:
    add_backfill_revisions(project, ROWS, '{"domain": DOMAIN, "hits": "hits + 1"}', COLUMNS)
    assert run_dbmigrate("upgrade", "--defer-backfills", cwd=project, database_url=database_url).returncode == 0
    first = start_dbmigrate(
        "backfill", "run", "--format", "json", cwd=project, database_url=database_url, output=tmp_path / "first",
        **SLOW_BATCHES,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while not int(backfill_rows(database_url)[0]["rows_done"]) and time.monotonic() < deadline:  # type: ignore[call-overload]
        time.sleep(0.01)  # until the first run holds the lock and has committed a batch

    impatient = run_dbmigrate(
        "backfill", "run", "--lock-wait-timeout", "0.5", cwd=project, database_url=database_url, **SLOW_BATCHES
    )
    patient = start_dbmigrate(
        "backfill", "run", "--lock-wait-timeout", "120", "--format", "json", cwd=project,
        database_url=database_url, output=tmp_path / "patient", **SLOW_BATCHES,
    )  # fmt: skip
    assert first.wait(timeout=120) == 0, (tmp_path / "first.err").read_text()
    assert patient.wait(timeout=120) == 0, (tmp_path / "patient.err").read_text()

    assert first.returncode == 0
    assert impatient.returncode == 3, impatient.stderr
    assert "lock" in impatient.stderr.lower()
    assert json.loads((tmp_path / "first.out").read_text())["outcome"] == "done"
    assert json.loads((tmp_path / "patient.out").read_text())["outcome"] == "nothing-to-do"
    with connect(database_url) as connection:
        counts = dict(connection.exec_driver_sql("SELECT hits, COUNT(*) FROM items GROUP BY hits").all())
    assert counts == {1: ROWS}, "a row was processed twice or not at all"
    assert [(row["state"], row["rows_done"]) for row in backfill_rows(database_url)] == [("done", ROWS)]
