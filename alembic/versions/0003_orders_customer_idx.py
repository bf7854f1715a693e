"""index orders.customer_id without blocking writes

On PostgreSQL the index is built CONCURRENTLY, which cannot run inside a transaction: it runs in
an autocommit block, and IF NOT EXISTS makes the step safe to run again after an interruption.
MySQL and MariaDB already index the column for its foreign key, so there is nothing to do there.

Revision ID: 0003_orders_customer_idx
Revises: 0002_orders
Create Date: 2026-11-25 09:20:00
"""

from alembic import op

revision = "0003_orders_customer_idx"
down_revision = "0002_orders"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_context().dialect.name == "postgresql":
        with op.get_context().autocommit_block():
            # An interrupted CONCURRENTLY build leaves an INVALID index behind; drop it first.
            op.execute("DROP INDEX CONCURRENTLY IF EXISTS ix_orders_customer_id_invalid")
            op.create_index(
                "ix_orders_customer_id", "orders", ["customer_id"], postgresql_concurrently=True, if_not_exists=True
            )
    elif op.get_context().dialect.name == "sqlite":
        op.create_index("ix_orders_customer_id", "orders", ["customer_id"])


def downgrade() -> None:
    if op.get_context().dialect.name == "postgresql":
        with op.get_context().autocommit_block():
            op.drop_index("ix_orders_customer_id", table_name="orders", postgresql_concurrently=True, if_exists=True)
    elif op.get_context().dialect.name == "sqlite":
        op.drop_index("ix_orders_customer_id", table_name="orders")
