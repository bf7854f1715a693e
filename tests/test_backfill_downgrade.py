"""Downgrading a revision whose backfill has not finished cancels it in the downgrade step, trigger first:
the downgrade removes what it fills, so it is neither finished first nor left behind."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import (
    add_backfill_revisions,
    backfill_rows,
    connect,
    current_revisions,
    run_dbmigrate,
    trigger_names,
)

DROP_DOMAIN = """
with op.batch_alter_table("items") as batch:
    batch.drop_column("domain")
"""


def test_downgrading_a_revision_cancels_its_unfinished_backfill_and_drops_its_trigger(
    project: Path, database_url: str
) -> None:
    add_backfill_revisions(
        project,
        500,
        '{"domain": DOMAIN}',
        'sa.Column("domain", sa.String(100), nullable=False, server_default="")',
        DROP_DOMAIN,
    )
    assert run_dbmigrate("upgrade", "0001_items", cwd=project, database_url=database_url).returncode == 0
    with connect(database_url) as connection:
        connection.exec_driver_sql("UPDATE items SET email = NULL WHERE id = 250")  # the backfill fails there
        connection.commit()
    assert run_dbmigrate("upgrade", cwd=project, database_url=database_url).returncode == 1
    assert trigger_names(database_url)

    down = run_dbmigrate("downgrade", "0001_items", cwd=project, database_url=database_url)

    assert down.returncode == 0, down.stderr
    assert current_revisions(database_url) == {"0001_items"}
    assert trigger_names(database_url) == set()
    assert backfill_rows(database_url)[0]["state"] == "cancelled"
    with connect(database_url) as connection:  # the application's writes work again without the column
        connection.exec_driver_sql("INSERT INTO items (id, email) VALUES (9001, 'after@downgrade.example')")
        connection.commit()
    assert run_dbmigrate("status", cwd=project, database_url=database_url).returncode == 0
