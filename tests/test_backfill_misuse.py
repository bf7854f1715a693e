"""A ``dbmigrate.backfill()`` call that cannot work fails its step with a message naming what is wrong.

No such table, a target column the table lacks, and a composite primary key with no ``key=``: each
is found against the database itself (on PostgreSQL by one catalog query, while the step holds its
locks), the step rolls back, exit 1, and nothing is queued.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import EXAMPLE_HEAD, add_revision, backfill_rows, current_revisions, log_events, run_dbmigrate

TABLES = """
op.create_table("plain", sa.Column("id", sa.Integer, primary_key=True), sa.Column("a", sa.Integer))
op.create_table(
    "pairs",
    sa.Column("left_id", sa.Integer, primary_key=True),
    sa.Column("right_id", sa.Integer, primary_key=True),
    sa.Column("weight", sa.Integer),
)
"""


@pytest.mark.parametrize(
    ("call", "says"),
    [
        ('dbmigrate.backfill("nowhere", {"a": "1"})', "dbmigrate.backfill(): there is no table nowhere."),
        ('dbmigrate.backfill("plain", {"b": "a + 1"})', "dbmigrate.backfill(): plain has no column b"),
        (
            'dbmigrate.backfill("pairs", {"weight": "left_id + right_id"})',
            "dbmigrate.backfill(): pairs has a composite primary key; name a unique, ordered column",
        ),
    ],
    ids=["no-table", "no-column", "composite-key"],
)
def test_a_backfill_that_cannot_work_fails_its_step_and_queues_nothing(
    project: Path, database_url: str, call: str, says: str
) -> None:
    add_revision(project, "0007_tables", EXAMPLE_HEAD, TABLES)
    add_revision(project, "0008_backfill", "0007_tables", f"import dbmigrate\n{call}")
    assert run_dbmigrate("upgrade", "0007_tables", cwd=project, database_url=database_url).returncode == 0

    # The gate rightly calls an UPDATE of existing columns a data loss; let it pass, to reach the call itself.
    failed = run_dbmigrate("upgrade", "--allow-data-loss", "--no-backup", cwd=project, database_url=database_url)

    assert failed.returncode == 1, failed.stderr
    message = str(next(e for e in log_events(failed.stderr) if e["event"] == "command failed")["message"])
    assert says in message
    assert current_revisions(database_url) == {"0007_tables"}
    assert "0008_backfill" not in {row["revision"] for row in backfill_rows(database_url)}
