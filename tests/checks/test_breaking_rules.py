"""Breaking rules: what makes the previous application version fail while it still runs."""

from __future__ import annotations

import pytest

from tests.checks.conftest import DIALECTS, CheckRevision, rules


@pytest.mark.parametrize("dialect", DIALECTS)
def test_renaming_a_column_breaks_the_running_application(check_revision: CheckRevision, dialect: str) -> None:
    report = check_revision(
        """
        def upgrade() -> None:
            op.alter_column("customers", "email", new_column_name="mail", existing_type=sa.String(200))
        """,
        dialect,
    )
    assert rules(report) == ["BR003"]
    assert "email" in report.findings[0].message and "mail" in report.findings[0].message


@pytest.mark.parametrize("dialect", DIALECTS)
def test_renaming_a_table_breaks_the_running_application(check_revision: CheckRevision, dialect: str) -> None:
    report = check_revision('def upgrade() -> None:\n    op.rename_table("orders", "purchases")\n', dialect)
    assert rules(report) == ["BR004"]


def test_mysql_rename_table_statement_is_seen(check_revision: CheckRevision) -> None:
    report = check_revision('def upgrade() -> None:\n    op.execute("RENAME TABLE orders TO purchases")\n', "mysql")
    assert rules(report) == ["BR004"]


@pytest.mark.parametrize("dialect", DIALECTS)
def test_not_null_column_without_default_breaks_inserts(check_revision: CheckRevision, dialect: str) -> None:
    report = check_revision(
        'def upgrade() -> None:\n    op.add_column("orders", sa.Column("currency", sa.String(3), nullable=False))\n',
        dialect,
    )
    assert rules(report) == ["BR005"]


@pytest.mark.parametrize("dialect", DIALECTS)
def test_nullable_or_defaulted_columns_do_not_break(check_revision: CheckRevision, dialect: str) -> None:
    report = check_revision(
        """
        def upgrade() -> None:
            op.add_column("orders", sa.Column("note", sa.String(30)))
            op.add_column("orders", sa.Column("currency", sa.String(3), nullable=False, server_default="EUR"))
        """,
        dialect,
    )
    assert report.findings == ()
