"""create customers, with a first set of rows

Revision ID: 0001_customers
Revises:
Create Date: 2026-11-25 09:00:00
"""

import sqlalchemy as sa

from alembic import op

# dbmigrate: allow-data-loss reason="the downgrade removes only what this revision added"
revision = "0001_customers"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    customers = op.create_table(
        "customers",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("email", sa.String(200), nullable=False, unique=True),
    )
    op.bulk_insert(
        customers,
        [{"id": i, "name": f"Customer {i}", "email": f"customer{i}@example{i % 7}.com"} for i in range(1, 201)],
    )


def downgrade() -> None:
    op.drop_table("customers")
