"""rename customers.name to full_name, step 2 of 2 (contract)

Runs once every deployed version reads ``full_name``. The downgrade brings ``name`` back filled
from ``full_name``, so rolling back loses nothing.

Revision ID: 0006_name_contract
Revises: 0005_full_name_expand
Create Date: 2026-11-25 09:50:00
"""

import sqlalchemy as sa

from alembic import op

# dbmigrate: allow-data-loss reason="name was copied to full_name by 0005, which every deployed version reads"
revision = "0006_name_contract"
down_revision = "0005_full_name_expand"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("UPDATE customers SET full_name = name WHERE full_name IS NULL")
    with op.batch_alter_table("customers") as batch:
        batch.alter_column("full_name", existing_type=sa.String(100), nullable=False)
        batch.drop_column("name")


def downgrade() -> None:
    with op.batch_alter_table("customers") as batch:
        batch.add_column(sa.Column("name", sa.String(100), nullable=True))
    op.execute("UPDATE customers SET name = full_name")
    with op.batch_alter_table("customers") as batch:
        batch.alter_column("name", existing_type=sa.String(100), nullable=False)
        batch.alter_column("full_name", existing_type=sa.String(100), nullable=True)
