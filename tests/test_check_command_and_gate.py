"""`dbmigrate check` reports before deploy, and the upgrade gate refuses unintended data loss."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.conftest import EXAMPLE_HEAD, add_revision, current_revisions, history_rows, run_dbmigrate

DROPS_EMAIL = '''"""drop customers.email{directive_note}
"""
{directive}
revision = "0007_drop_email"
down_revision = "0006_name_contract"
import sqlalchemy as sa
from alembic import op


def upgrade():
    with op.batch_alter_table("customers") as batch:
        batch.drop_column("email")


def downgrade():
    with op.batch_alter_table("customers") as batch:
        batch.add_column(sa.Column("email", sa.String(200)))
'''

INDEXES_IN_PLACE = """revision = "0007_index"
down_revision = "0006_name_contract"
from alembic import op


def upgrade():
    op.create_index("ix_customers_full_name", "customers", ["full_name"])


def downgrade():
    op.drop_index("ix_customers_full_name", table_name="customers")
"""

FILLS_UNDER_THE_LOCK = """revision = "0007_fill_in_step"
down_revision = "0006_name_contract"
import sqlalchemy as sa
from alembic import op


def upgrade():
    op.add_column("customers", sa.Column("nickname", sa.String(100)))
    op.execute("UPDATE customers SET nickname = full_name")


def downgrade():
    op.drop_column("customers", "nickname")
"""


def add_drop_email(project: Path, directive: str = "") -> None:
    (project / "alembic" / "versions" / "0007_drop_email.py").write_text(
        DROPS_EMAIL.format(directive=directive, directive_note="")
    )


def email_exists(database_url: str) -> bool:
    engine = sa.create_engine(database_url)
    with engine.connect() as connection:
        names = {c["name"] for c in sa.inspect(connection).get_columns("customers")}
    engine.dispose()
    return "email" in names


@pytest.fixture
def at_head(project: Path, database_url: str) -> Path:
    proc = run_dbmigrate("upgrade", cwd=project, database_url=database_url)
    assert proc.returncode == 0, proc.stderr
    return project


def test_gate_refuses_a_revision_that_drops_a_column(at_head: Path, database_url: str) -> None:
    add_drop_email(at_head)

    proc = run_dbmigrate("upgrade", cwd=at_head, database_url=database_url)

    assert proc.returncode == 4
    assert "0007_drop_email" in proc.stderr and "DL002" in proc.stderr
    assert "allow-data-loss" in proc.stderr and "--allow-data-loss" in proc.stderr
    assert "either way dbmigrate copies the data aside before the step" in proc.stderr
    assert current_revisions(database_url) == {EXAMPLE_HEAD}
    assert email_exists(database_url)
    assert not [row for row in history_rows(database_url) if row["revision"] == "0007_drop_email"]


def test_gate_refusal_with_backups_off_does_not_promise_a_copy(at_head: Path, database_url: str) -> None:
    add_drop_email(at_head)

    proc = run_dbmigrate("upgrade", "--no-backup", cwd=at_head, database_url=database_url)

    assert proc.returncode == 4
    assert "either way dbmigrate copies the data aside" not in proc.stderr
    assert "Run without --no-backup, so that dbmigrate copies the data aside" in proc.stderr
    assert email_exists(database_url)


def test_gate_passes_a_declared_data_loss(at_head: Path, database_url: str) -> None:
    add_drop_email(at_head, '# dbmigrate: allow-data-loss reason="emails moved to the accounts service"')

    proc = run_dbmigrate("upgrade", cwd=at_head, database_url=database_url)

    assert proc.returncode == 0, proc.stderr
    assert "intended data loss; backed up first" in proc.stderr
    assert "data backed up before the step" in proc.stderr
    assert not email_exists(database_url)


def test_gate_passes_with_allow_data_loss(at_head: Path, database_url: str) -> None:
    add_drop_email(at_head)

    flag = run_dbmigrate("upgrade", "0007_drop_email", "--allow-data-loss", cwd=at_head, database_url=database_url)

    assert flag.returncode == 0, flag.stderr
    assert not email_exists(database_url)


def test_gate_reads_allow_data_loss_from_the_environment(at_head: Path, database_url: str) -> None:
    add_drop_email(at_head)

    proc = run_dbmigrate("upgrade", cwd=at_head, database_url=database_url, DBMIGRATE_ALLOW_DATA_LOSS="true")

    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("backend", ["postgresql"])
def test_blocking_findings_are_warnings_unless_refused(at_head: Path, database_url: str) -> None:
    (at_head / "alembic" / "versions" / "0007_index.py").write_text(INDEXES_IN_PLACE)

    refused = run_dbmigrate(
        "upgrade", "--refuse-findings", "data-loss,blocking", cwd=at_head, database_url=database_url
    )
    warned = run_dbmigrate("upgrade", cwd=at_head, database_url=database_url)

    assert refused.returncode == 4 and "BL001" in refused.stderr
    assert warned.returncode == 0, warned.stderr
    warnings = [json.loads(line) for line in warned.stderr.splitlines() if '"check finding"' in line]
    assert [w["rule"] for w in warnings] == ["BL001"]


@pytest.mark.parametrize("backend", ["postgresql"])
def test_a_fill_under_the_ddl_lock_is_refused_with_blocking_findings_and_a_warning_otherwise(
    at_head: Path, database_url: str
) -> None:
    (at_head / "alembic" / "versions" / "0007_fill_in_step.py").write_text(FILLS_UNDER_THE_LOCK)

    refused = run_dbmigrate(
        "upgrade", "--refuse-findings", "data-loss,blocking", cwd=at_head, database_url=database_url
    )
    refused_at = current_revisions(database_url)
    warned = run_dbmigrate("upgrade", cwd=at_head, database_url=database_url)

    assert refused.returncode == 4 and "BL007" in refused.stderr and "dbmigrate.backfill" in refused.stderr
    assert refused_at == {EXAMPLE_HEAD}
    assert warned.returncode == 0, warned.stderr
    warnings = [json.loads(line) for line in warned.stderr.splitlines() if '"check finding"' in line]
    assert [w["rule"] for w in warnings] == ["BL007"]
    assert current_revisions(database_url) == {"0007_fill_in_step"}


def test_check_reports_pending_revisions_of_the_database(at_head: Path, database_url: str) -> None:
    add_drop_email(at_head)

    proc = run_dbmigrate("check", "--format", "json", cwd=at_head, database_url=database_url)

    assert proc.returncode == 4
    report = json.loads(proc.stdout)
    assert report["revisions_checked"] == 1
    upgrade = [f for f in report["findings"] if f["direction"] == "upgrade"]
    assert {f["rule"] for f in upgrade} == {"DL002", "BR001"}
    assert {f["file"] for f in upgrade} == {"alembic/versions/0007_drop_email.py"}
    assert all(f["line"] == 11 for f in upgrade)  # batch operations run when their `with` block ends
    assert set(upgrade[0]) >= {
        "revision",
        "direction",
        "rule",
        "category",
        "severity",
        "message",
        "suggestion",
        "file",
        "line",
    }


@pytest.mark.parametrize("backend", ["sqlite"])
def test_check_all_revisions_offline_as_sarif(project: Path, database_url: str) -> None:
    proc = run_dbmigrate(
        "check", "--all", "--dialect", "postgresql", "--format", "sarif", cwd=project, database_url=database_url
    )

    assert proc.returncode == 0, proc.stdout + proc.stderr  # the example declares its data loss
    sarif = json.loads(proc.stdout)
    assert sarif["version"] == "2.1.0"
    results = sarif["runs"][0]["results"]
    assert any(r["ruleId"] == "BL005" for r in results)
    assert not Path(database_url.removeprefix("sqlite:///")).exists()  # no database was touched


@pytest.mark.parametrize("backend", ["sqlite"])
def test_check_a_range(project: Path, database_url: str) -> None:
    proc = run_dbmigrate(
        "check",
        "--range",
        "0005_full_name_expand:0006_name_contract",
        "--dialect",
        "mysql",
        "--format",
        "json",
        cwd=project,
        database_url=database_url,
    )

    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["revisions_checked"] == 1
    assert {f["revision"] for f in report["findings"]} == {"0006_name_contract"}


@pytest.mark.parametrize("backend", ["sqlite"])
@pytest.mark.parametrize(
    ("spec", "said"),
    [
        ("0004_email_domain:0002_orders", "does not descend from 0004_email_domain"),
        ("0004_no_such_revision:heads", "0004_no_such_revision"),
        ("0002_orders", "LOWER:UPPER"),
    ],
)
def test_a_range_that_selects_nothing_or_names_an_unknown_revision_is_a_usage_error(
    project: Path, database_url: str, spec: str, said: str
) -> None:
    proc = run_dbmigrate("check", "--range", spec, "--dialect", "postgresql", cwd=project, database_url=database_url)

    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert said in proc.stderr


@pytest.mark.parametrize("backend", ["sqlite"])
def test_sql_the_parser_keeps_as_an_opaque_command_leaves_the_json_logs_clean(project: Path, database_url: str) -> None:
    add_revision(
        project,
        "0007_validate",
        EXAMPLE_HEAD,
        'op.execute("ALTER TABLE orders VALIDATE CONSTRAINT orders_customer_id_fkey")',
    )
    proc = run_dbmigrate(
        "check",
        "--range",
        f"{EXAMPLE_HEAD}:head",
        "--dialect",
        "postgresql",
        "--format",
        "json",
        "--log-format",
        "json",
        cwd=project,
        database_url=database_url,
    )

    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(proc.stdout)["revisions_checked"] == 1
    not_json = [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith("{")]
    assert not_json == [], not_json
