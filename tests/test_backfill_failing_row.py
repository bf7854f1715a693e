"""A backfill whose SQL fails on one row: a clear error and exit 1, progress kept, resumed after the fix.

The target column is NOT NULL and one row has no email, so the domain computed for it is NULL and
its batch fails. The batches before it stay committed; ``status`` lists the unfinished backfill and
``wait`` does not call the database ready. Once the row is fixed, the next ``upgrade`` finishes the
backfill from that batch on, without running the revision's DDL again.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import (
    add_backfill_revisions,
    backfill_rows,
    connect,
    current_revisions,
    history_rows,
    log_events,
    run_dbmigrate,
)

ROWS = 3000
BAD_ROW = 1500


def test_a_backfill_that_fails_on_a_row_keeps_its_progress_and_resumes_after_the_fix(
    project: Path, database_url: str
) -> None:
    add_backfill_revisions(
        project, ROWS, '{"domain": DOMAIN}', 'sa.Column("domain", sa.String(100), nullable=False, server_default="")'
    )
    assert run_dbmigrate("upgrade", "0001_items", cwd=project, database_url=database_url).returncode == 0
    with connect(database_url) as connection:
        connection.exec_driver_sql(f"UPDATE items SET email = NULL WHERE id = {BAD_ROW}")
        connection.commit()

    failed = run_dbmigrate("upgrade", cwd=project, database_url=database_url)

    assert failed.returncode == 1, failed.stderr
    assert "Traceback" not in failed.stderr
    message = str(next(e for e in log_events(failed.stderr) if e["event"] == "command failed")["message"])
    assert "Backfill 1 of items (domain) (revision 0002_backfill) failed in the batch after key" in message
    assert "run `dbmigrate upgrade` again: it resumes with that batch" in message
    assert "\n" not in message
    assert current_revisions(database_url) == {"0002_backfill"}  # the schema change stays applied
    progress = backfill_rows(database_url)[0]
    done = int(progress["rows_done"])  # type: ignore[call-overload]
    assert progress["state"] == "failed" and progress["error"]
    assert 0 < done < BAD_ROW
    with connect(database_url) as connection:
        filled = connection.exec_driver_sql("SELECT COUNT(*) FROM items WHERE domain <> ''").scalar()
    assert filled == done

    status = run_dbmigrate("status", "--format", "json", cwd=project, database_url=database_url)
    listed = json.loads(status.stdout)["backfills"]
    assert [(b["revision"], b["state"], b["rows_done"]) for b in listed] == [("0002_backfill", "failed", done)]
    waiting = run_dbmigrate("wait", "--timeout", "1", cwd=project, database_url=database_url)
    assert waiting.returncode == 3
    assert "data still being filled" in waiting.stderr

    with connect(database_url) as connection:
        connection.exec_driver_sql(f"UPDATE items SET email = 'fixed@repaired.example' WHERE id = {BAD_ROW}")
        connection.commit()
    resumed = run_dbmigrate("upgrade", cwd=project, database_url=database_url)

    assert resumed.returncode == 0, resumed.stderr
    progress = backfill_rows(database_url)[0]
    assert (progress["state"], progress["rows_done"]) == ("done", ROWS)
    with connect(database_url) as connection:
        rows = connection.exec_driver_sql("SELECT email, domain FROM items").all()
    assert [email for email, domain in rows if domain != email.split("@")[1]] == []
    steps = [(row["revision"], row["status"]) for row in history_rows(database_url) if row["direction"] == "upgrade"]
    assert steps == [("0001_items", "applied"), ("0002_backfill", "applied")]
    assert run_dbmigrate("wait", "--timeout", "5", cwd=project, database_url=database_url).returncode == 0
    assert (
        json.loads(run_dbmigrate("status", "--format", "json", cwd=project, database_url=database_url).stdout)[
            "backfills"
        ]
        == []
    )
