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


def test_identity_or_serial_column_on_an_existing_table_rewrites_it_on_postgresql(
    check_revision: CheckRevision,
) -> None:
    report = check_revision(
        """
        def upgrade() -> None:
            op.add_column("orders", sa.Column("seq", sa.BigInteger, sa.Identity()))
            op.execute("ALTER TABLE customers ADD COLUMN legacy_no serial")
        """,
        "postgresql",
    )
    assert rules(report) == ["BL003", "BL003"]
    assert [f.column for f in report.findings] == ["seq", "legacy_no"]
    assert "nextval()" in report.findings[1].message


def test_serial_column_on_a_new_table_blocks_nothing(check_revision: CheckRevision) -> None:
    report = check_revision(
        """
        def upgrade() -> None:
            op.execute("CREATE TABLE refunds (id INTEGER PRIMARY KEY)")
            op.execute("ALTER TABLE refunds ADD COLUMN seq bigserial")
        """,
        "postgresql",
    )
    assert report.findings == ()


@pytest.mark.parametrize(("dialect", "expected"), [("postgresql", ["BL006", "BL006"]), ("mysql", [])])
def test_primary_key_built_in_place_blocks_like_a_unique_constraint(
    check_revision: CheckRevision, dialect: str, expected: list[str]
) -> None:
    report = check_revision(
        """
        def upgrade() -> None:
            op.drop_constraint("orders_pkey", "orders", type_="primary")
            op.create_primary_key("pk_orders", "orders", ["id", "customer_id"])
            op.execute("ALTER TABLE customers ADD PRIMARY KEY (id)")
        """,
        dialect,
    )
    assert rules(report) == expected


def test_set_not_null_behind_a_validated_not_null_check_needs_no_scan(check_revision: CheckRevision) -> None:
    report = check_revision(
        """
        def upgrade() -> None:
            op.execute(
                "ALTER TABLE orders ADD CONSTRAINT ck_orders_created_nn CHECK (created_at IS NOT NULL) NOT VALID"
            )
            op.execute("ALTER TABLE orders VALIDATE CONSTRAINT ck_orders_created_nn")
            op.alter_column("orders", "created_at", existing_type=sa.DateTime(), nullable=False)
            op.drop_constraint("ck_orders_created_nn", "orders", type_="check")
        """,
        "postgresql",
    )
    assert report.findings == ()


def test_set_not_null_still_scans_when_the_check_is_not_validated_or_already_dropped(
    check_revision: CheckRevision,
) -> None:
    report = check_revision(
        """
        def upgrade() -> None:
            op.execute("ALTER TABLE orders ADD CONSTRAINT ck_a CHECK (amount_cents IS NOT NULL) NOT VALID")
            op.alter_column("orders", "amount_cents", nullable=False)
            op.execute("ALTER TABLE customers ADD CONSTRAINT ck_e CHECK (email IS NOT NULL) NOT VALID")
            op.execute("ALTER TABLE customers VALIDATE CONSTRAINT ck_e")
            op.drop_constraint("ck_e", "customers", type_="check")
            op.alter_column("customers", "email", nullable=False)
        """,
        "postgresql",
    )
    assert rules(report) == ["BL005", "BL005"]


def test_a_stored_generated_column_rewrites_the_table_on_postgresql_but_a_virtual_one_does_not(
    check_revision: CheckRevision,
) -> None:
    report = check_revision(
        """
        def upgrade() -> None:
            op.add_column("orders", sa.Column("euros", sa.Integer, sa.Computed("amount_cents / 100", persisted=True)))
            op.execute("ALTER TABLE orders ADD COLUMN cents_x2 bigint GENERATED ALWAYS AS (amount_cents * 2) STORED")
            op.add_column("orders", sa.Column("euros_v", sa.Integer, sa.Computed("amount_cents / 100")))
        """,
        "postgresql",
    )
    assert rules(report) == ["BL003", "BL003"]
    assert "stored generated" in report.findings[0].message


def test_indexing_a_materialized_view_created_in_the_same_revision_blocks_nobody(check_revision: CheckRevision) -> None:
    report = check_revision(
        """
        def upgrade() -> None:
            op.execute(
                "CREATE MATERIALIZED VIEW order_totals AS "
                "SELECT customer_id, sum(amount_cents) AS total FROM orders GROUP BY customer_id"
            )
            op.execute("CREATE UNIQUE INDEX ix_order_totals ON order_totals (customer_id)")
            op.create_index("ix_order_totals_total", "order_totals", ["total"])
        """,
        "postgresql",
    )
    assert report.findings == ()
