"""Deferred backfills: the upgrade changes the schema and queues the backfill; `backfill run` fills the data.

The upgrade returns with the rows unfilled and the sync trigger installed (rows written from then on are
filled). `backfill run --max-duration` stops part way at a batch boundary (paused), a second run finishes.
`status`, `backfill status` and `wait` answer as documented at each point; history rows and metrics record
the runs. The backfill increments a counter column, so every row must end processed exactly once.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import (
    add_backfill_revisions,
    backfill_rows,
    connect,
    history_rows,
    run_dbmigrate,
    trigger_names,
)

ROWS = 2000
# Batches near their smallest size with a pause between them: a one-second budget cannot finish ROWS rows.
SLOW_BATCHES = {"DBMIGRATE_BACKFILL_BATCH_TIME": "0.001", "DBMIGRATE_BACKFILL_PAUSE": "0.03"}
COLUMNS = 'sa.Column("domain", sa.String(100)); sa.Column("hits", sa.Integer, nullable=False, server_default="0")'


def hits(database_url: str) -> dict[int, int]:
    """How many of the original rows the backfill processed how many times."""
    with connect(database_url) as connection:
        query = f"SELECT hits, COUNT(*) FROM items WHERE id <= {ROWS} GROUP BY hits"
        return dict(connection.exec_driver_sql(query).all())  # type: ignore[arg-type]


def json_out(result: object) -> object:
    return json.loads(result.stdout)  # type: ignore[attr-defined]


def test_a_deferred_backfill_is_queued_by_upgrade_and_filled_by_backfill_runs(
    project: Path, database_url: str, tmp_path: Path
) -> None:
    add_backfill_revisions(project, ROWS, '{"domain": DOMAIN, "hits": "hits + 1"}', COLUMNS)

    upgrade = run_dbmigrate("upgrade", "--defer-backfills", cwd=project, database_url=database_url)

    assert upgrade.returncode == 0, upgrade.stderr
    (queued,) = backfill_rows(database_url)
    assert (queued["state"], queued["rows_done"], queued["deferred"]) == ("queued", 0, 1)
    assert hits(database_url) == {0: ROWS}, "the upgrade filled rows itself"
    assert any(name.startswith(f"dbmigrate_backfill_{queued['id']}") for name in trigger_names(database_url))
    with connect(database_url) as connection, connection.begin():
        connection.exec_driver_sql(f"INSERT INTO items (id, email) VALUES ({ROWS + 1}, 'new@written.example')")
    with connect(database_url) as connection:
        written = connection.exec_driver_sql(f"SELECT domain FROM items WHERE id = {ROWS + 1}").scalar()
    assert written == "written.example", "the trigger does not fill rows the application writes meanwhile"

    wait = run_dbmigrate("wait", "--timeout", "5", "--format", "json", cwd=project, database_url=database_url)
    assert wait.returncode == 0, wait.stderr
    readiness = json_out(wait)
    assert readiness["ready"] and readiness["deferred"] and not readiness["filling"]  # type: ignore[index]
    status = json_out(run_dbmigrate("status", "--format", "json", cwd=project, database_url=database_url))
    assert [item["state"] for item in status["backfills"]] == ["queued"]  # type: ignore[index]

    first = run_dbmigrate(
        "backfill",
        "run",
        "--max-duration",
        "1",
        "--format",
        "json",
        cwd=project,
        database_url=database_url,
        **SLOW_BATCHES,
    )

    assert first.returncode == 0, first.stderr
    assert json_out(first)["outcome"] == "paused"  # type: ignore[index]
    (paused,) = backfill_rows(database_url)
    assert paused["state"] == "paused"
    done_first = int(paused["rows_done"])  # type: ignore[call-overload]
    assert 0 < done_first < ROWS, "the time budget did not stop the run part way"
    assert hits(database_url) == {1: done_first, 0: ROWS - done_first}
    shown = json_out(run_dbmigrate("backfill", "status", "--format", "json", cwd=project, database_url=database_url))
    (item,) = shown  # type: ignore[misc]
    assert (item["state"], item["rows_done"]) == ("paused", done_first)
    assert item["rows_left"] == ROWS + 1 - done_first and item["rows_per_s"] > 0 and item["eta_s"] > 0
    assert item["revision"] == "0002_backfill" and item["last_run_id"] == json_out(first)["run_id"]  # type: ignore[index]
    wait = run_dbmigrate("wait", "--timeout", "5", cwd=project, database_url=database_url)
    assert wait.returncode == 0 and "data still being filled by deferred backfill" in wait.stdout, wait.stdout

    metrics = tmp_path / "backfill.prom"
    second = run_dbmigrate(
        "backfill",
        "run",
        "--metrics-textfile",
        str(metrics),
        "--format",
        "json",
        cwd=project,
        database_url=database_url,
    )

    assert second.returncode == 0, second.stderr
    assert json_out(second)["outcome"] == "done"  # type: ignore[index]
    assert hits(database_url) == {1: ROWS}, "a row was processed twice or not at all"
    (done,) = backfill_rows(database_url)
    assert (done["state"], done["rows_done"]) == ("done", ROWS + 1)
    runs = [(row["revision"], row["status"]) for row in history_rows(database_url) if row["direction"] == "backfill"]
    assert runs == [("0002_backfill", "paused"), ("0002_backfill", "done")]
    text = metrics.read_text()
    labels = f'backfill="{done["id"]}",revision="0002_backfill",table="items (domain, hits)"'
    assert f"dbmigrate_backfill_rows_done{{{labels}}} {ROWS + 1}.0" in text
    assert 'state="done"' in text and "dbmigrate_backfill_batches" in text and "dbmigrate_backfill_lock_retries" in text
    status = json_out(run_dbmigrate("status", "--format", "json", cwd=project, database_url=database_url))
    assert status["backfills"] == []  # type: ignore[index]
    shown = run_dbmigrate("history", cwd=project, database_url=database_url)
    assert "backfill" in shown.stdout and f"{ROWS + 1 - done_first} row(s)" in shown.stdout
