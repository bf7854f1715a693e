"""create orders, referencing customers

Revision ID: 0002_orders
Revises: 0001_customers
Create Date: 2026-11-25 09:10:00
"""

import sqlalchemy as sa

from alembic import op

# dbmigrate: allow-data-loss reason="the downgrade removes only what this revision added"
revision = "0002_orders"
down_revision = "0001_customers"
branch_labels = None
depends_on = None


def upgrade() -> None:
    orders = op.create_table(
        "orders",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("customer_id", sa.Integer, sa.ForeignKey("customers.id", name="fk_orders_customer"), nullable=False),
        sa.Column("amount_cents", sa.Integer, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False, server_default=sa.func.current_timestamp()),
    )
    op.bulk_insert(orders, [{"id": i, "customer_id": 1 + i % 200, "amount_cents": 100 * i} for i in range(1, 501)])


def downgrade() -> None:
    op.drop_table("orders")
