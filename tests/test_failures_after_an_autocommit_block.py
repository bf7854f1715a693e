"""A revision that fails after its own autocommit block is partial: that block committed, nothing rolled it back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

import pytest
import sqlalchemy as sa

from tests.conftest import add_revision, connect, current_revisions, history_rows, remove_revisions, run_dbmigrate

BLOCK_THEN_FAILURE = """
with op.get_context().autocommit_block():
    op.create_index("ix_items_name", "items", ["name"], postgresql_concurrently=True)
op.execute("INSERT INTO no_such_table (x) VALUES (1)")
"""


def item_indexes(database_url: str) -> set[str]:
    with connect(database_url) as connection:
        return {str(index["name"]) for index in sa.inspect(connection).get_indexes("items")}


class Failed(NamedTuple):
    project: Path
    returncode: int
    stderr: str


@pytest.fixture
def failed_after_its_block(project: Path, database_url: str) -> Failed:
    remove_revisions(project)
    add_revision(project, "0001_items", None, 'op.create_table("items", sa.Column("name", sa.String(50)))')
    add_revision(project, "0002_index", "0001_items", BLOCK_THEN_FAILURE)
    proc = run_dbmigrate("upgrade", cwd=project, database_url=database_url, DBMIGRATE_LOG_FORMAT="text")
    return Failed(project, proc.returncode, proc.stderr)


def test_failure_after_an_autocommit_block_is_partial_and_says_the_block_stayed(
    failed_after_its_block: Failed, database_url: str
) -> None:
    code, stderr = failed_after_its_block.returncode, failed_after_its_block.stderr

    assert code == 5, stderr
    assert "was rolled back" not in stderr
    assert "Statements that committed:" in stderr and "CREATE INDEX" in stderr and "ix_items_name" in stderr
    assert "dbmigrate repair --reverted" in stderr
    # The message is what the database holds: the block's index, and the revision before.
    assert "ix_items_name" in item_indexes(database_url)
    assert current_revisions(database_url) == {"0001_items"}


def test_status_names_the_block_that_committed(failed_after_its_block: Failed, database_url: str) -> None:
    project = failed_after_its_block.project
    row = history_rows(database_url)[-1]

    status = run_dbmigrate("status", "--format", "json", cwd=project, database_url=database_url)

    assert row["revision"] == "0002_index" and row["status"] == "partial"
    assert status.returncode == 5
    assert "ix_items_name" in json.loads(status.stdout)["needs_repair"]
