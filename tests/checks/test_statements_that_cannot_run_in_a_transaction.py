"""DM004: a statement the database refuses inside a transaction, in a revision that runs in one, names the fix."""

from __future__ import annotations

from pathlib import Path

from dbmigrate.checks import check
from dbmigrate.scripts import load_config, load_scripts
from dbmigrate.settings import Settings
from tests.checks.conftest import REVISION, CheckRevision, line_of, rules

CONCURRENT_INDEX = """
{directive}
def upgrade() -> None:
    op.create_index("ix_orders_amount", "orders", ["amount_cents"], postgresql_concurrently=True)
"""


def test_concurrent_index_in_the_revisions_transaction_names_the_directive_and_the_setting(
    check_revision: CheckRevision, project: Path
) -> None:
    report = check_revision(CONCURRENT_INDEX.format(directive=""), "postgresql")

    assert rules(report) == ["DM004"]
    finding = report.findings[0]
    assert finding.severity == "error" and finding.category == "directive"
    assert finding.line == line_of(project, "op.create_index")
    assert "CREATE INDEX CONCURRENTLY cannot run inside a transaction" in finding.message
    assert '# dbmigrate: non-transactional reason="..."' in finding.suggestion
    assert f"DBMIGRATE_NON_TRANSACTIONAL_REVISIONS={REVISION}" in finding.suggestion


def test_concurrent_index_in_an_autocommit_block_is_no_finding(check_revision: CheckRevision) -> None:
    report = check_revision(
        """
        def upgrade() -> None:
            with op.get_context().autocommit_block():
                op.create_index("ix_orders_amount", "orders", ["amount_cents"], postgresql_concurrently=True)
            op.execute("DROP INDEX CONCURRENTLY ix_orders_amount")
        """,
        "postgresql",
    )

    assert [(f.rule, "DROP INDEX CONCURRENTLY" in f.message) for f in report.findings] == [("DM004", True)]


def test_revision_marked_non_transactional_by_its_file_is_no_finding(check_revision: CheckRevision) -> None:
    directive = '# dbmigrate: non-transactional reason="the index is built without blocking writes"'
    report = check_revision(CONCURRENT_INDEX.format(directive=directive), "postgresql")

    assert report.findings == ()


def test_revision_marked_non_transactional_by_the_setting_is_no_finding(
    check_revision: CheckRevision, project: Path
) -> None:
    check_revision(CONCURRENT_INDEX.format(directive=""), "postgresql")
    config = load_config(Settings.load(config_file=project / "alembic.ini"))

    report = check(config, load_scripts(config), [REVISION], "postgresql", non_transactional=[REVISION])

    assert report.findings == ()


def test_other_dialects_ignore_postgresql_concurrently(check_revision: CheckRevision) -> None:
    for dialect in ("mysql", "sqlite"):
        assert rules(check_revision(CONCURRENT_INDEX.format(directive=""), dialect)) == []


def test_sqlite_vacuum_in_a_transaction_is_a_finding(check_revision: CheckRevision) -> None:
    source = """
        def upgrade() -> None:
            op.execute("-- reclaim the space\\nVACUUM")
        """

    assert rules(check_revision(source, "sqlite")) == ["DM004"]
    assert rules(check_revision(source, "mysql")) == []


def test_non_transactional_directive_without_reason_is_invalid(check_revision: CheckRevision) -> None:
    report = check_revision(CONCURRENT_INDEX.format(directive="# dbmigrate: non-transactional"), "postgresql")

    assert rules(report) == ["DM001", "DM004"]
    assert "non-transactional reason=" in report.findings[0].message
