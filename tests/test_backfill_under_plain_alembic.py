"""Under plain ``alembic upgrade`` (no dbmigrate runner) the helper still fills every row, in the revision's
own transaction: no queue, no trigger, and nothing online about it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import (
    REPO,
    add_backfill_revisions,
    connect,
    dbmigrate_env,
    table_names,
    trigger_names,
)


def test_plain_alembic_runs_the_backfill_inside_the_revision(project: Path, database_url: str) -> None:
    add_backfill_revisions(project, 2500, '{"domain": DOMAIN}')

    upgrade = subprocess.run(
        [sys.executable, "-m", "alembic", "upgrade", "head"],
        cwd=project,
        env={**dbmigrate_env(database_url), "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert upgrade.returncode == 0, upgrade.stderr
    with connect(database_url) as connection:
        rows = connection.exec_driver_sql("SELECT email, domain FROM items").all()
    assert len(rows) == 2500
    assert [email for email, domain in rows if domain != email.split("@")[1]] == []
    assert trigger_names(database_url) == set()
    assert "dbmigrate_backfills" not in table_names(database_url)
