"""MariaDB/MySQL commit DDL on their own: a step that fails halfway is named partial and repaired, not retried."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pymysql
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from tests.conftest import EXAMPLE_HEAD, current_revisions, history_rows, run_dbmigrate

pytestmark = pytest.mark.parametrize("backend", ["mariadb"])

TWO_ALTERS = """revision = "0007_two_alters"
down_revision = "0006_name_contract"
import sqlalchemy as sa
from alembic import op


def upgrade():
    op.add_column("orders", sa.Column("note", sa.String(50)))
    op.add_column("orders", sa.Column({second!r}, sa.String(50)))


def downgrade():
    op.drop_column("orders", {second!r})
    op.drop_column("orders", "note")
"""


def write_revision(project: Path, second_column: str) -> None:
    (project / "alembic" / "versions" / "0007_two_alters.py").write_text(TWO_ALTERS.format(second=second_column))


def execute(database_url: str, sql: str) -> None:
    engine = sa.create_engine(database_url)
    with engine.begin() as connection:
        connection.exec_driver_sql(sql)
    engine.dispose()


def orders_columns(database_url: str) -> set[str]:
    engine = sa.create_engine(database_url)
    with engine.connect() as connection:
        names = {c["name"] for c in sa.inspect(connection).get_columns("orders")}
    engine.dispose()
    return names


@pytest.fixture
def half_applied(project: Path, database_url: str) -> Path:
    """Revision 0007 added orders.note, then failed on its second ALTER (the column already exists)."""
    write_revision(project, second_column="amount_cents")
    proc = run_dbmigrate("upgrade", cwd=project, database_url=database_url)
    assert proc.returncode == 5, proc.stderr
    assert "orders" in proc.stderr and "ADD COLUMN note" in proc.stderr
    return project


def test_failure_after_a_committed_ddl_is_recorded_as_partial(half_applied: Path, database_url: str) -> None:
    row = history_rows(database_url)[-1]
    assert row["revision"] == "0007_two_alters" and row["status"] == "partial"
    statements = json.loads(str(row["statements"]))
    assert "ADD COLUMN note" in statements[0]["sql"] and statements[0]["done"] is True
    assert current_revisions(database_url) == {EXAMPLE_HEAD}
    assert "note" in orders_columns(database_url)


def test_status_names_the_partial_step_and_the_repair_command(half_applied: Path, database_url: str) -> None:
    proc = run_dbmigrate("status", "--format", "json", cwd=half_applied, database_url=database_url)

    assert proc.returncode == 5
    message = json.loads(proc.stdout)["needs_repair"]
    assert "0007_two_alters" in message and "ADD COLUMN note" in message
    assert "dbmigrate repair --reverted" in message and "dbmigrate repair --applied" in message


def test_upgrade_refuses_to_run_over_a_partial_step(half_applied: Path, database_url: str) -> None:
    write_revision(half_applied, second_column="shipped_at")

    proc = run_dbmigrate("upgrade", cwd=half_applied, database_url=database_url)

    assert proc.returncode == 5
    assert "needs repair" in proc.stderr
    assert "shipped_at" not in orders_columns(database_url)


def test_repair_reverted_lets_the_revision_run_again(half_applied: Path, database_url: str) -> None:
    execute(database_url, "ALTER TABLE orders DROP COLUMN note")
    write_revision(half_applied, second_column="shipped_at")

    repaired = run_dbmigrate("repair", "--reverted", cwd=half_applied, database_url=database_url)
    upgraded = run_dbmigrate("upgrade", cwd=half_applied, database_url=database_url)

    assert repaired.returncode == 0, repaired.stderr
    assert upgraded.returncode == 0, upgraded.stderr
    assert current_revisions(database_url) == {"0007_two_alters"}
    assert {"note", "shipped_at"} <= orders_columns(database_url)
    assert [row["status"] for row in history_rows(database_url)][-3:] == ["partial", "repaired", "applied"]


def test_repair_applied_stamps_the_revision_finished_by_hand(half_applied: Path, database_url: str) -> None:
    write_revision(half_applied, second_column="shipped_at")
    execute(database_url, "ALTER TABLE orders ADD COLUMN shipped_at VARCHAR(50)")

    repaired = run_dbmigrate("repair", "--applied", cwd=half_applied, database_url=database_url)
    status = run_dbmigrate("status", "--check", cwd=half_applied, database_url=database_url)

    assert repaired.returncode == 0, repaired.stderr
    assert status.returncode == 0, status.stdout + status.stderr
    assert current_revisions(database_url) == {"0007_two_alters"}


def test_repair_with_nothing_partial_is_a_usage_error(project: Path, database_url: str) -> None:
    run_dbmigrate("upgrade", cwd=project, database_url=database_url)

    proc = run_dbmigrate("repair", "--reverted", cwd=project, database_url=database_url)

    assert proc.returncode == 2
    assert "Nothing to repair" in proc.stderr


def test_failure_on_the_first_ddl_is_a_plain_failure(project: Path, database_url: str) -> None:
    (project / "alembic" / "versions" / "0007_bad.py").write_text(
        'revision = "0007_bad"\ndown_revision = "0006_name_contract"\nimport sqlalchemy as sa\n'
        "from alembic import op\n\n\ndef upgrade():\n"
        '    op.add_column("orders", sa.Column("amount_cents", sa.Integer))\n\n\ndef downgrade():\n    pass\n'
    )

    proc = run_dbmigrate("upgrade", cwd=project, database_url=database_url)
    status = run_dbmigrate("status", cwd=project, database_url=database_url)

    assert proc.returncode == 1, proc.stderr
    assert history_rows(database_url)[-1]["status"] == "failed"
    assert status.returncode == 0


def test_lock_wait_timeout_retries_only_while_nothing_committed(project: Path, database_url: str) -> None:
    run_dbmigrate("upgrade", cwd=project, database_url=database_url)
    write_revision(project, second_column="shipped_at")
    url = make_url(database_url)
    reader = pymysql.connect(
        host=url.host, port=url.port or 3306, user=url.username, password=url.password or "", database=url.database
    )
    release = threading.Event()

    def hold_metadata_lock() -> None:
        with reader.cursor() as cursor:
            cursor.execute("BEGIN")
            cursor.execute("SELECT COUNT(*) FROM orders")
        release.wait(60)
        reader.rollback()
        reader.close()

    holder = threading.Thread(target=hold_metadata_lock)
    holder.start()
    try:
        proc = run_dbmigrate(
            "upgrade", "--lock-timeout", "1", "--max-lock-retries", "1", cwd=project, database_url=database_url
        )
    finally:
        release.set()
        holder.join()

    assert proc.returncode == 3, proc.stderr
    row = history_rows(database_url)[-1]
    assert row["status"] == "failed" and row["attempts"] == 2
    assert "note" not in orders_columns(database_url)
    assert run_dbmigrate("upgrade", cwd=project, database_url=database_url).returncode == 0


def test_wait_stops_at_once_with_the_repair_message(half_applied: Path, database_url: str) -> None:
    proc = run_dbmigrate("wait", "--timeout", "60", cwd=half_applied, database_url=database_url)

    assert proc.returncode == 5, proc.stderr
    assert "will not become ready by itself" in proc.stderr and "dbmigrate repair --reverted" in proc.stderr
    assert "raise --timeout" not in proc.stderr
