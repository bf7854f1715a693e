"""Upgrade and downgrade the example application on every backend, through the library and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa

import dbmigrate
from tests.conftest import EXAMPLE_HEAD, EXAMPLE_REVISIONS, add_revision, current_revisions, history_rows, run_dbmigrate


def settings_for(project: Path, database_url: str, **options: object) -> dbmigrate.Settings:
    return dbmigrate.Settings.load(
        config_file=project / "alembic.ini",
        environ={},
        database_url=database_url,
        termination_log="/nonexistent/termination-log",
        **options,
    )


def columns(database_url: str, table: str) -> set[str]:
    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as connection:
            return {c["name"] for c in sa.inspect(connection).get_columns(table)}
    finally:
        engine.dispose()


def test_upgrade_applies_every_revision_in_order_and_keeps_the_data(project: Path, database_url: str) -> None:
    result = dbmigrate.upgrade(settings=settings_for(project, database_url))

    assert [step.revision for step in result.steps] == EXAMPLE_REVISIONS
    assert all(step.status == "applied" for step in result.steps)
    assert result.before == () and result.after == (EXAMPLE_HEAD,)
    assert current_revisions(database_url) == {EXAMPLE_HEAD}
    assert columns(database_url, "customers") == {"id", "email", "email_domain", "full_name"}
    engine = sa.create_engine(database_url)
    with engine.connect() as connection:
        domains = connection.exec_driver_sql("SELECT COUNT(*) FROM customers WHERE email_domain IS NOT NULL").scalar()
        names = connection.exec_driver_sql("SELECT full_name FROM customers WHERE id = 7").scalar()
    engine.dispose()
    assert domains == 200
    assert names == "Customer 7"


def test_history_records_one_applied_row_per_revision(project: Path, database_url: str) -> None:
    result = dbmigrate.upgrade(settings=settings_for(project, database_url, app_version="1.2.3"))

    rows = history_rows(database_url)
    assert [row["revision"] for row in rows] == EXAMPLE_REVISIONS
    assert {row["status"] for row in rows} == {"applied"}
    assert {row["run_id"] for row in rows} == {result.run_id}
    assert {row["direction"] for row in rows} == {"upgrade"}
    assert {row["app_version"] for row in rows} == {"1.2.3"}
    assert all(row["finished_at"] is not None and row["duration_ms"] is not None for row in rows)
    assert [row["from_revision"] for row in rows] == [None, *EXAMPLE_REVISIONS[:-1]]


def test_second_upgrade_finds_nothing_to_do(project: Path, database_url: str) -> None:
    settings = settings_for(project, database_url)
    dbmigrate.upgrade(settings=settings)

    again = dbmigrate.upgrade(settings=settings)

    assert again.steps == []
    assert again.outcome == "nothing-to-do"
    assert len(history_rows(database_url)) == len(EXAMPLE_REVISIONS)


def test_downgrade_then_upgrade_round_trips_the_schema(project: Path, database_url: str) -> None:
    settings = settings_for(project, database_url)
    dbmigrate.upgrade(settings=settings)

    down = dbmigrate.downgrade("0004_email_domain", settings=settings)

    assert [step.revision for step in down.steps] == ["0006_name_contract", "0005_full_name_expand"]
    assert current_revisions(database_url) == {"0004_email_domain"}
    assert columns(database_url, "customers") == {"id", "name", "email", "email_domain"}
    dbmigrate.upgrade(settings=settings)
    assert current_revisions(database_url) == {EXAMPLE_HEAD}
    assert [row["direction"] for row in history_rows(database_url)].count("downgrade") == 2


def test_upgrade_to_a_named_revision_stops_there(project: Path, database_url: str) -> None:
    result = dbmigrate.upgrade("0002_orders", settings=settings_for(project, database_url))

    assert [step.revision for step in result.steps] == ["0001_customers", "0002_orders"]
    assert current_revisions(database_url) == {"0002_orders"}


def test_dry_run_prints_the_sql_and_changes_nothing(project: Path, database_url: str) -> None:
    proc = run_dbmigrate("upgrade", "--dry-run", "--format", "json", cwd=project, database_url=database_url)

    assert proc.returncode == 0, proc.stderr
    plan = json.loads(proc.stdout)
    assert plan["dry_run"] is True
    assert [item["revision"] for item in plan["sql"]] == EXAMPLE_REVISIONS
    assert "CREATE TABLE customers" in plan["sql"][0]["sql"]
    assert current_revisions(database_url) == set()
    assert history_rows(database_url) == []


def test_status_reports_pending_revisions_and_check_exits_4_until_at_head(project: Path, database_url: str) -> None:
    run_dbmigrate("upgrade", "0003_orders_customer_idx", cwd=project, database_url=database_url)

    before = run_dbmigrate("status", "--check", "--format", "json", cwd=project, database_url=database_url)
    run_dbmigrate("upgrade", cwd=project, database_url=database_url)
    after = run_dbmigrate("status", "--check", "--format", "json", cwd=project, database_url=database_url)

    assert before.returncode == 4, before.stderr
    state = json.loads(before.stdout)
    assert state["current"] == ["0003_orders_customer_idx"]
    assert state["pending"] == EXAMPLE_REVISIONS[3:]
    assert state["at_head"] is False
    assert after.returncode == 0, after.stderr
    assert json.loads(after.stdout)["at_head"] is True


def test_history_command_lists_runs_newest_first(project: Path, database_url: str) -> None:
    run_dbmigrate("upgrade", cwd=project, database_url=database_url)
    run_dbmigrate("downgrade", "-1", cwd=project, database_url=database_url)

    proc = run_dbmigrate("history", "--format", "json", cwd=project, database_url=database_url)

    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert rows[0]["direction"] == "downgrade" and rows[0]["revision"] == EXAMPLE_HEAD
    assert len(rows) == len(EXAMPLE_REVISIONS) + 1


# MariaDB commits DDL on its own, so a failing step there is partial: tests/test_partial_steps.py.
@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_a_failing_revision_is_rolled_back_and_recorded_as_failed(project: Path, database_url: str) -> None:
    (project / "alembic" / "versions" / "0007_broken.py").write_text(
        """revision = "0007_broken"
down_revision = "0006_name_contract"
import sqlalchemy as sa
from alembic import op


def upgrade():
    op.create_table("audit", sa.Column("id", sa.Integer, primary_key=True))
    op.execute("INSERT INTO no_such_table VALUES (1)")


def downgrade():
    op.drop_table("audit")
"""
    )

    proc = run_dbmigrate("upgrade", cwd=project, database_url=database_url)

    assert proc.returncode == 1
    assert "0007_broken" in proc.stderr and "rolled back" in proc.stderr
    assert current_revisions(database_url) == {EXAMPLE_HEAD}
    engine = sa.create_engine(database_url)
    with engine.connect() as connection:
        assert not sa.inspect(connection).has_table("audit")
    engine.dispose()
    failed = history_rows(database_url)[-1]
    assert failed["revision"] == "0007_broken" and failed["status"] == "failed"
    assert "no_such_table" in str(failed["error"])


def test_downgrade_requires_a_target(project: Path, database_url: str) -> None:
    proc = run_dbmigrate("downgrade", cwd=project, database_url=database_url)

    assert proc.returncode == 2
    assert "TARGET" in proc.stderr


@pytest.mark.parametrize("backend", ["sqlite"])
def test_what_a_migration_prints_goes_to_stderr_and_the_json_result_stays_parseable(
    project: Path, database_url: str
) -> None:
    add_revision(
        project,
        "0007_chatty",
        EXAMPLE_HEAD,
        'print("backfilling 3 batches")\nop.create_table("chatter", sa.Column("id", sa.Integer, primary_key=True))',
        'op.drop_table("chatter")',
    )

    proc = run_dbmigrate("upgrade", "--format", "json", cwd=project, database_url=database_url)

    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(proc.stdout)["after"] == ["0007_chatty"]
    assert "backfilling 3 batches" in proc.stderr
