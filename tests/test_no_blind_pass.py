"""A step the offline pass cannot analyse is never run blind: the gate says so, and its statements are watched.

What such a step would lose is backed up just before the statement runs, or the step is refused when
the revision does not declare the loss; --refuse-unanalysed refuses it before anything runs.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.conftest import (
    EXAMPLE_HEAD,
    add_revision,
    connect,
    current_revisions,
    history_rows,
    log_events,
    run_dbmigrate,
    table_names,
)

REVISION = "0007_unanalysed"
DECLARED = '# dbmigrate: allow-data-loss reason="orders moved to the billing service"'
# Offline every query answers as an empty database would: scalar_one() finds no row and the pass stops there.
READS_THEN_DROPS = """
counted = op.get_bind().execute(sa.text("SELECT COUNT(*) FROM orders")).scalar_one()  # offline: no row
op.drop_table("orders")
"""
# The SQLite case: a batch constraint change renders no offline ALTER there, and the pass stops before the drop.
BATCH_THEN_DROPS = """
with op.batch_alter_table("customers") as batch:  # no offline ALTER of constraints on SQLite
    batch.create_unique_constraint("uq_customers_full_name", ["full_name"])
op.drop_table("orders")
"""

RESTORES_EMAIL = """
with op.batch_alter_table("customers") as batch:
    batch.add_column(sa.Column("email", sa.String(200)))
"""


@pytest.fixture
def at_head(project: Path, database_url: str) -> Path:
    proc = run_dbmigrate("upgrade", cwd=project, database_url=database_url)
    assert proc.returncode == 0, proc.stderr
    return project


def count_rows(database_url: str, table: str) -> int:
    with connect(database_url) as connection:
        return int(connection.exec_driver_sql(f"SELECT COUNT(*) FROM {table}").scalar_one())


def backups(project: Path, database_url: str) -> list[dict[str, object]]:
    listed = run_dbmigrate("backups", "list", "--format", "json", cwd=project, database_url=database_url)
    assert listed.returncode == 0, listed.stderr
    return list(json.loads(listed.stdout))


def step_row(database_url: str) -> dict[str, object]:
    rows = [row for row in history_rows(database_url) if row["revision"] == REVISION]
    assert len(rows) == 1, rows
    return rows[0]


def test_a_table_dropped_where_the_offline_pass_stopped_is_backed_up_before_the_drop(
    at_head: Path, database_url: str
) -> None:
    add_revision(at_head, REVISION, EXAMPLE_HEAD, DECLARED + READS_THEN_DROPS)

    proc = run_dbmigrate("upgrade", cwd=at_head, database_url=database_url)

    assert proc.returncode == 0, proc.stderr
    assert "orders" not in table_names(database_url)
    [backup] = [b for b in backups(at_head, database_url) if b["revision"] == REVISION]
    assert (backup["source_table"], backup["columns"], backup["row_count"]) == ("orders", None, 500)
    assert "backed up 500 row(s) of table orders" in str(step_row(database_url)["note"])


def test_an_undeclared_loss_seen_while_the_step_runs_is_refused_with_nothing_applied(
    at_head: Path, database_url: str
) -> None:
    add_revision(at_head, REVISION, EXAMPLE_HEAD, READS_THEN_DROPS)

    proc = run_dbmigrate("upgrade", cwd=at_head, database_url=database_url)

    assert proc.returncode == 4, proc.stderr
    refusal = next(e for e in log_events(proc.stderr) if e["event"] == "command failed")
    assert REVISION in str(refusal["message"]) and "DL001" in str(refusal["message"])
    assert "nothing of this step was applied" in str(refusal["message"])
    assert count_rows(database_url, "orders") == 500
    assert current_revisions(database_url) == {EXAMPLE_HEAD}
    assert step_row(database_url)["status"] == "failed"


def test_the_gate_warns_naming_the_revision_and_the_line_where_the_offline_pass_stopped(
    at_head: Path, database_url: str
) -> None:
    add_revision(at_head, REVISION, EXAMPLE_HEAD, DECLARED + READS_THEN_DROPS)
    source = (at_head / "alembic" / "versions" / f"{REVISION}.py").read_text().splitlines()
    line = next(number for number, text in enumerate(source, start=1) if "offline: no row" in text)

    proc = run_dbmigrate("upgrade", cwd=at_head, database_url=database_url)

    assert proc.returncode == 0, proc.stderr
    [warning] = [e for e in log_events(proc.stderr) if e["event"] == "revision could not be checked offline"]
    assert warning["level"] == "warning"
    assert warning["revision"] == REVISION
    assert warning["file"] == f"alembic/versions/{REVISION}.py:{line}"
    assert warning["unseen"] == f"what its upgrade() executes from line {line} on"


def assert_refused_before_anything_ran(proc: subprocess.CompletedProcess[str], database_url: str) -> None:
    assert proc.returncode == 4, proc.stderr
    message = str(next(e for e in log_events(proc.stderr) if e["event"] == "command failed")["message"])
    assert REVISION in message and "--refuse-unanalysed" in message and "Nothing was applied" in message
    assert count_rows(database_url, "orders") == 500
    assert current_revisions(database_url) == {EXAMPLE_HEAD}
    assert not [row for row in history_rows(database_url) if row["revision"] == REVISION]


def test_refuse_unanalysed_refuses_the_run_before_anything_is_applied(at_head: Path, database_url: str) -> None:
    add_revision(at_head, REVISION, EXAMPLE_HEAD, DECLARED + READS_THEN_DROPS)

    proc = run_dbmigrate("upgrade", "--refuse-unanalysed", cwd=at_head, database_url=database_url)

    assert_refused_before_anything_ran(proc, database_url)


@pytest.mark.parametrize("backend", ["sqlite"])
@pytest.mark.parametrize("where", ["environment", "pyproject"])
def test_refuse_unanalysed_is_read_from_the_environment_and_pyproject(
    at_head: Path, database_url: str, where: str
) -> None:
    add_revision(at_head, REVISION, EXAMPLE_HEAD, DECLARED + READS_THEN_DROPS)
    env = {"DBMIGRATE_REFUSE_UNANALYSED": "true"} if where == "environment" else {}
    if where == "pyproject":
        (at_head / "pyproject.toml").write_text("[tool.dbmigrate]\nrefuse_unanalysed = true\n")

    proc = run_dbmigrate("upgrade", cwd=at_head, database_url=database_url, **env)

    assert_refused_before_anything_ran(proc, database_url)


@pytest.mark.parametrize("backend", ["sqlite"])
def test_sqlite_refuses_a_drop_after_a_batch_constraint_change_that_did_not_render_offline(
    at_head: Path, database_url: str
) -> None:
    add_revision(at_head, REVISION, EXAMPLE_HEAD, BATCH_THEN_DROPS)

    proc = run_dbmigrate("upgrade", cwd=at_head, database_url=database_url)

    assert proc.returncode == 4, proc.stderr
    assert count_rows(database_url, "orders") == 500
    assert current_revisions(database_url) == {EXAMPLE_HEAD}
    with connect(database_url) as connection:
        unique = [c["column_names"] for c in sa.inspect(connection).get_unique_constraints("customers")]
    assert ["full_name"] not in unique  # the batch before the refused DROP rolled back with it


@pytest.mark.parametrize("backend", ["sqlite"])
def test_sqlite_backs_up_the_dropped_table_but_not_a_batch_recreate_that_keeps_every_column(
    at_head: Path, database_url: str
) -> None:
    add_revision(at_head, REVISION, EXAMPLE_HEAD, DECLARED + BATCH_THEN_DROPS)

    proc = run_dbmigrate("upgrade", cwd=at_head, database_url=database_url)

    assert proc.returncode == 0, proc.stderr
    taken = [(b["source_table"], b["row_count"]) for b in backups(at_head, database_url) if b["revision"] == REVISION]
    assert taken == [("orders", 500)]


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_column_a_batch_recreate_leaves_behind_is_backed_up_and_restored_by_the_downgrade(
    at_head: Path, database_url: str
) -> None:
    with connect(database_url) as connection:
        before = dict(connection.exec_driver_sql("SELECT id, email FROM customers").all())
    add_revision(
        at_head,
        REVISION,
        EXAMPLE_HEAD,
        DECLARED
        + """
counted = op.get_bind().execute(sa.text("SELECT COUNT(*) FROM orders")).scalar_one()  # offline: no row
with op.batch_alter_table("customers") as batch:
    batch.drop_column("email")
""",
        downgrade=RESTORES_EMAIL,
    )

    upgraded = run_dbmigrate("upgrade", cwd=at_head, database_url=database_url)
    downgraded = run_dbmigrate("downgrade", EXAMPLE_HEAD, cwd=at_head, database_url=database_url)

    assert upgraded.returncode == 0, upgraded.stderr
    assert downgraded.returncode == 0, downgraded.stderr
    [backup] = [b for b in backups(at_head, database_url) if b["revision"] == REVISION]
    assert (backup["source_table"], backup["columns"], backup["key_columns"]) == ("customers", ["email"], ["id"])
    with connect(database_url) as connection:
        assert dict(connection.exec_driver_sql("SELECT id, email FROM customers").all()) == before


def test_a_type_change_that_loses_values_where_the_offline_pass_stopped_is_refused(
    at_head: Path, database_url: str
) -> None:
    # No existing_type: the column's type before the change comes from the database as the statement starts.
    add_revision(
        at_head,
        REVISION,
        EXAMPLE_HEAD,
        """
counted = op.get_bind().execute(sa.text("SELECT COUNT(*) FROM orders")).scalar_one()  # offline: no row
with op.batch_alter_table("orders") as batch:
    batch.alter_column("created_at", type_=sa.Date())
""",
    )

    proc = run_dbmigrate("upgrade", cwd=at_head, database_url=database_url)

    assert proc.returncode == 4, proc.stderr
    message = str(next(e for e in log_events(proc.stderr) if e["event"] == "command failed")["message"])
    assert REVISION in message and "created_at" in message
    assert "DL006" in message or "recreated (batch mode)" in message  # SQLite recreates the table
    assert current_revisions(database_url) == {EXAMPLE_HEAD}
    with connect(database_url) as connection:
        [created_at] = [c for c in sa.inspect(connection).get_columns("orders") if c["name"] == "created_at"]
    assert isinstance(created_at["type"], sa.DateTime)  # the change did not run
