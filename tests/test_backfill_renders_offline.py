"""Offline (``--dry-run``, ``--sql``, ``check``) a backfill renders as what it is: a comment saying it runs
online in batches, and the set-based UPDATE it is equivalent to, so that the check sees DML on the table."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import EMAIL_DOMAIN_SQL, add_backfill_revisions, backfill_rows, run_dbmigrate


def test_a_dry_run_shows_the_backfill_as_a_batched_update_and_changes_nothing(
    project: Path, database_url: str, backend: str
) -> None:
    add_backfill_revisions(project, 20, '{"domain": DOMAIN}')
    assert run_dbmigrate("upgrade", "0001_items", cwd=project, database_url=database_url).returncode == 0

    dry = run_dbmigrate("upgrade", "--dry-run", "--format", "json", cwd=project, database_url=database_url)

    assert dry.returncode == 0, dry.stderr
    sql = json.loads(dry.stdout)["sql"][0]["sql"]
    assert "-- dbmigrate.backfill: items runs online after this step commits, in short keyset batches" in sql
    assert f"UPDATE items SET domain = {EMAIL_DOMAIN_SQL[backend]}" in sql
    assert backfill_rows(database_url) == []
