"""An upgrade that applies a later revision while a deferred backfill is still queued finishes it first.

The later revision may rely on the data (here: it makes the filled column NOT NULL) or change the table
under the backfill, so the queue is worked through first, online, batch by batch, and the run says so;
then the revision is applied, and its step drops the finished backfill's sync trigger. The same holds
within one run that applies both revisions.
"""

from __future__ import annotations

from pathlib import Path

from tests.conftest import (
    add_backfill_revisions,
    add_revision,
    backfill_rows,
    connect,
    current_revisions,
    log_events,
    run_dbmigrate,
    trigger_names,
)

ROWS = 1000
NOT_NULL = """
with op.batch_alter_table("items") as batch:
    batch.alter_column("domain", existing_type=sa.String(100), nullable=False)
"""


def unfilled(database_url: str) -> int:
    with connect(database_url) as connection:
        return int(connection.exec_driver_sql("SELECT COUNT(*) FROM items WHERE domain IS NULL").scalar_one())


def test_a_later_revision_waits_for_the_queued_backfill_it_may_rely_on(project: Path, database_url: str) -> None:
    add_backfill_revisions(project, ROWS, '{"domain": DOMAIN}')
    assert run_dbmigrate("upgrade", "--defer-backfills", cwd=project, database_url=database_url).returncode == 0
    assert unfilled(database_url) == ROWS
    add_revision(project, "0003_domain_required", "0002_backfill", NOT_NULL)

    later = run_dbmigrate("upgrade", "--defer-backfills", cwd=project, database_url=database_url)

    assert later.returncode == 0, later.stderr
    messages = [event["event"] for event in log_events(later.stderr)]
    assert "finishing queued backfills before applying a later revision" in messages
    assert messages.index("backfill done") < messages.index("applying revision")
    assert current_revisions(database_url) == {"0003_domain_required"}
    assert unfilled(database_url) == 0
    assert [(row["state"], row["rows_done"]) for row in backfill_rows(database_url)] == [("done", ROWS)]
    assert backfill_rows(database_url)[0]["trigger_dropped_at"] is not None
    assert not any(name.startswith("dbmigrate_backfill_") for name in trigger_names(database_url))


def test_one_deferred_run_through_both_revisions_fills_the_data_before_the_later_one(
    project: Path, database_url: str
) -> None:
    add_backfill_revisions(project, ROWS, '{"domain": DOMAIN}')
    add_revision(project, "0003_domain_required", "0002_backfill", NOT_NULL)

    run = run_dbmigrate("upgrade", "--defer-backfills", cwd=project, database_url=database_url)

    assert run.returncode == 0, run.stderr
    assert current_revisions(database_url) == {"0003_domain_required"}
    assert unfilled(database_url) == 0
    assert [row["state"] for row in backfill_rows(database_url)] == ["done"]
    assert not any(name.startswith("dbmigrate_backfill_") for name in trigger_names(database_url))


def test_a_deferred_upgrade_with_nothing_to_apply_leaves_the_backfill_queued(project: Path, database_url: str) -> None:
    add_backfill_revisions(project, ROWS, '{"domain": DOMAIN}')
    assert run_dbmigrate("upgrade", "--defer-backfills", cwd=project, database_url=database_url).returncode == 0

    again = run_dbmigrate("upgrade", cwd=project, database_url=database_url, DBMIGRATE_DEFER_BACKFILLS="true")

    assert again.returncode == 0, again.stderr
    assert [row["state"] for row in backfill_rows(database_url)] == ["queued"]
    assert unfilled(database_url) == ROWS
