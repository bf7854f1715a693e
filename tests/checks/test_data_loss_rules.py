"""Data-loss rules: what deletes or overwrites data that existed before the revision, on every dialect."""

from __future__ import annotations

import pytest

from tests.checks.conftest import DIALECTS, CheckRevision, rules


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize(
    ("upgrade", "expected"),
    [
        ('op.drop_table("orders")', ["DL001", "BR002"]),
        ('op.drop_column("customers", "email")', ["DL002", "BR001"]),
        ('op.execute("DELETE FROM orders")', ["DL004"]),
        ("op.execute(\"UPDATE customers SET email = 'x'\")", ["DL005"]),
    ],
)
def test_destructive_operations_on_existing_objects_are_data_loss(
    check_revision: CheckRevision, dialect: str, upgrade: str, expected: list[str]
) -> None:
    report = check_revision(f"def upgrade() -> None:\n    {upgrade}\n", dialect)
    assert rules(report) == expected
    assert {f.severity for f in report.findings if f.category == "data-loss"} == {"error"}


@pytest.mark.parametrize("dialect", ["postgresql", "mysql"])
def test_truncate_is_data_loss(check_revision: CheckRevision, dialect: str) -> None:
    report = check_revision('def upgrade() -> None:\n    op.execute("TRUNCATE TABLE orders")\n', dialect)
    assert rules(report) == ["DL003"]
    assert "orders" in report.findings[0].message


def test_drop_schema_is_data_loss(check_revision: CheckRevision) -> None:
    report = check_revision('def upgrade() -> None:\n    op.execute("DROP SCHEMA legacy CASCADE")\n', "postgresql")
    assert rules(report) == ["DL007"]
    assert "legacy" in report.findings[0].message


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize(
    "upgrade",
    [
        'op.execute("DELETE FROM orders WHERE amount_cents = 0")',
        'op.execute("UPDATE customers SET email = lower(email) WHERE id > 100")',
        'op.drop_index("ix_orders_customer_id", table_name="orders")',
    ],
)
def test_restricted_deletes_updates_and_dropped_indexes_lose_nothing(
    check_revision: CheckRevision, dialect: str, upgrade: str
) -> None:
    report = check_revision(f"def upgrade() -> None:\n    {upgrade}\n", dialect)
    assert [f for f in report.findings if f.category == "data-loss"] == []


@pytest.mark.parametrize("dialect", DIALECTS)
def test_backfilling_a_column_added_in_the_same_revision_loses_nothing(
    check_revision: CheckRevision, dialect: str
) -> None:
    report = check_revision(
        """
        def upgrade() -> None:
            op.add_column("customers", sa.Column("nickname", sa.String(50)))
            op.execute("UPDATE customers SET nickname = full_name")
        """,
        dialect,
    )
    assert [f for f in report.findings if f.category == "data-loss"] == []
