"""Scripts stay plain Alembic: an untouched `alembic init` env.py works, and plain alembic shares the database."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import sqlalchemy as sa

from tests.conftest import EXAMPLE_HEAD, EXAMPLE_REVISIONS, current_revisions, history_rows, run_dbmigrate


def run_alembic(
    *args: str, cwd: Path, database_url: str, config: str = "alembic.ini"
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DATABASE_URL": database_url}
    return subprocess.run(
        [sys.executable, "-m", "alembic", "-c", config, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def test_untouched_alembic_init_env_py_is_migrated(pristine_project: Path, database_url: str) -> None:
    proc = run_dbmigrate("upgrade", cwd=pristine_project, database_url=database_url)

    assert proc.returncode == 0, proc.stderr
    assert current_revisions(database_url) == {EXAMPLE_HEAD}
    assert [row["revision"] for row in history_rows(database_url)] == EXAMPLE_REVISIONS
    status = run_dbmigrate("status", "--check", "--format", "json", cwd=pristine_project, database_url=database_url)
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["current"] == [EXAMPLE_HEAD]


def test_untouched_env_py_still_runs_each_revision_in_its_own_transaction(
    pristine_project: Path, database_url: str, backend: str
) -> None:
    (pristine_project / "migrations" / "versions" / "0007_fails.py").write_text(
        'revision = "0007_fails"\ndown_revision = "0006_name_contract"\nfrom alembic import op\n\n\n'
        'def upgrade():\n    op.execute("SELECT * FROM no_such_table")\n\n\ndef downgrade():\n    pass\n'
    )

    proc = run_dbmigrate("upgrade", cwd=pristine_project, database_url=database_url)

    assert proc.returncode == 1
    # the six good revisions committed one by one before the seventh failed
    assert current_revisions(database_url) == {EXAMPLE_HEAD}


def test_plain_alembic_continues_where_dbmigrate_stopped(project: Path, database_url: str) -> None:
    run_dbmigrate("upgrade", "0003_orders_customer_idx", cwd=project, database_url=database_url)

    alembic_upgrade = run_alembic("upgrade", "head", cwd=project, database_url=database_url)
    current = run_alembic("current", cwd=project, database_url=database_url)

    assert alembic_upgrade.returncode == 0, alembic_upgrade.stderr
    assert EXAMPLE_HEAD in current.stdout
    status = run_dbmigrate("status", "--check", cwd=project, database_url=database_url)
    assert status.returncode == 0, status.stderr


def test_dbmigrate_continues_where_plain_alembic_stopped(project: Path, database_url: str) -> None:
    run_alembic("upgrade", "0002_orders", cwd=project, database_url=database_url)

    proc = run_dbmigrate("upgrade", "--format", "json", cwd=project, database_url=database_url)

    assert proc.returncode == 0, proc.stderr
    assert [step["revision"] for step in json.loads(proc.stdout)["steps"]] == EXAMPLE_REVISIONS[2:]
    assert current_revisions(database_url) == {EXAMPLE_HEAD}


def test_env_py_that_wraps_everything_in_one_transaction_is_recorded_after_it_commits(
    project: Path, database_url: str
) -> None:
    env_py = project / "alembic" / "env.py"
    env_py.write_text(
        env_py.read_text()
        .replace(
            "    with connectable.connect() as connection:\n        run_on(connection)",
            "    with connectable.begin() as connection:\n        run_on(connection)",
        )
        .replace('connection = config.attributes.get("connection")', "connection = None")
    )

    # (Alembic forbids autocommit blocks inside an outer transaction, so stop before revision 3.)
    proc = run_dbmigrate("upgrade", "0002_orders", cwd=project, database_url=database_url)

    assert proc.returncode == 0, proc.stderr
    assert current_revisions(database_url) == {"0002_orders"}
    rows = history_rows(database_url)
    assert [row["revision"] for row in rows] == EXAMPLE_REVISIONS[:2]
    assert {row["status"] for row in rows} == {"applied"}


def test_alembic_version_keeps_alembic_meaning(project: Path, database_url: str) -> None:
    run_dbmigrate("upgrade", cwd=project, database_url=database_url)

    engine = sa.create_engine(database_url)
    with engine.connect() as connection:
        version_columns = [c["name"] for c in sa.inspect(connection).get_columns("alembic_version")]
    engine.dispose()
    assert version_columns == ["version_num"]
