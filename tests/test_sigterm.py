"""A pod being stopped (SIGTERM) rolls the step in flight back, records it, and exits instead of hanging."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import current_revisions, dbmigrate_env, history_rows

SLOW_REVISION = """revision = "0007_slow"
down_revision = "0006_name_contract"
import time
import sqlalchemy as sa
from alembic import op


def upgrade():
    op.create_table("audit", sa.Column("id", sa.Integer, primary_key=True))
    if not op.get_context().as_sql:
        time.sleep(60)


def downgrade():
    op.drop_table("audit")
"""


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_sigterm_rolls_back_the_running_step_and_records_it(project: Path, database_url: str) -> None:
    (project / "alembic" / "versions" / "0007_slow.py").write_text(SLOW_REVISION)
    process = subprocess.Popen(
        [sys.executable, "-m", "dbmigrate", "upgrade"],
        cwd=project,
        env=dbmigrate_env(database_url),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not any(r["revision"] == "0007_slow" and r["status"] == "running" for r in history_rows(database_url)):
        assert time.monotonic() < deadline and process.poll() is None
        time.sleep(0.1)

    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=30)

    assert process.returncode == 1, stderr
    assert "SIGTERM" in stderr
    assert current_revisions(database_url) == {"0006_name_contract"}
    row = history_rows(database_url)[-1]
    assert row["revision"] == "0007_slow" and row["status"] == "failed" and "SIGTERM" in str(row["error"])
