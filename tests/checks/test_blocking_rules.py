"""Blocking rules: locks that stall reads or writes on an existing table; PostgreSQL and MySQL differ."""

from __future__ import annotations

import pytest

from tests.checks.conftest import CheckRevision, rules


def test_index_without_concurrently_blocks_writes_on_postgresql(check_revision: CheckRevision) -> None:
    report = check_revision(
        'def upgrade() -> None:\n    op.create_index("ix_amount", "orders", ["amount_cents"])\n', "postgresql"
    )
    assert rules(report) == ["BL001"]
    assert report.findings[0].severity == "warning"
    assert "postgresql_concurrently=True" in report.findings[0].suggestion


def test_index_built_concurrently_is_not_blocking(check_revision: CheckRevision) -> None:
    report = check_revision(
        """
        def upgrade() -> None:
            with op.get_context().autocommit_block():
                op.create_index("ix_amount", "orders", ["amount_cents"], postgresql_concurrently=True)
        """,
        "postgresql",
    )
    assert report.findings == ()


@pytest.mark.parametrize("dialect", ["mysql", "sqlite"])
def test_index_builds_are_not_blocking_on_mysql_online_ddl_or_sqlite(
    check_revision: CheckRevision, dialect: str
) -> None:
    report = check_revision(
        'def upgrade() -> None:\n    op.create_index("ix_amount", "orders", ["amount_cents"])\n', dialect
    )
    assert report.findings == ()


def test_type_change_rewrites_the_table_on_postgresql(check_revision: CheckRevision) -> None:
    report = check_revision(
        'def upgrade() -> None:\n    op.alter_column("orders", "amount_cents", type_=sa.BigInteger())\n', "postgresql"
    )
    assert rules(report) == ["BL002"]


def test_volatile_default_rewrites_the_table_but_a_constant_one_does_not(check_revision: CheckRevision) -> None:
    report = check_revision(
        """
        def upgrade() -> None:
            op.add_column("orders", sa.Column("token", sa.Float, server_default=sa.text("random()")))
            op.add_column("orders", sa.Column("status", sa.String(10), server_default="new"))
        """,
        "postgresql",
    )
    assert rules(report) == ["BL003"]
    assert "random()" in report.findings[0].message.lower()


def test_foreign_key_validated_in_place_blocks_unless_not_valid(check_revision: CheckRevision) -> None:
    report = check_revision(
        """
        def upgrade() -> None:
            op.create_foreign_key("fk_blocking", "orders", "customers", ["customer_id"], ["id"])
            op.create_foreign_key(
                "fk_online", "orders", "customers", ["customer_id"], ["id"], postgresql_not_valid=True
            )
            op.create_check_constraint("ck_positive", "orders", "amount_cents > 0")
        """,
        "postgresql",
    )
    assert [(f.rule, f.message.split()[2]) for f in report.findings] == [
        ("BL004", "fk_blocking"),
        ("BL004", "ck_positive"),
    ]


def test_foreign_key_copies_the_table_on_mysql(check_revision: CheckRevision) -> None:
    report = check_revision(
        'def upgrade() -> None:\n    op.create_foreign_key("fk_x", "orders", "customers", ["customer_id"], ["id"])\n',
        "mysql",
    )
    assert rules(report) == ["BL004"]


def test_set_not_null_scans_the_table_on_postgresql(check_revision: CheckRevision) -> None:
    report = check_revision(
        'def upgrade() -> None:\n    op.alter_column("customers", "email_domain", nullable=False)\n',
        "postgresql",
    )
    assert rules(report) == ["BL005"]


@pytest.mark.parametrize(("dialect", "expected"), [("postgresql", ["BL006"]), ("mysql", []), ("sqlite", [])])
def test_unique_constraint_built_in_place(check_revision: CheckRevision, dialect: str, expected: list[str]) -> None:
    report = check_revision(
        'def upgrade() -> None:\n    op.create_unique_constraint("uq_domain", "customers", ["email_domain"])\n', dialect
    )
    assert rules(report) == expected


def test_constraints_and_indexes_on_a_table_created_in_the_same_revision_block_nothing(
    check_revision: CheckRevision,
) -> None:
    report = check_revision(
        """
        def upgrade() -> None:
            op.create_table("coupons", sa.Column("id", sa.Integer, primary_key=True), sa.Column("code", sa.String(20)))
            op.create_index("ix_coupons_code", "coupons", ["code"])
            op.create_unique_constraint("uq_coupons_code", "coupons", ["code"])
            op.alter_column("coupons", "code", nullable=False, existing_type=sa.String(20))
        """,
        "postgresql",
    )
    assert report.findings == ()
