"""add a nullable column to the busy accounts table (needs ACCESS EXCLUSIVE for an instant)

Revision ID: 0001_add_note
Revises:
Create Date: 2026-12-01 10:00:00
"""

import sqlalchemy as sa

from alembic import op

revision = "0001_add_note"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("accounts", sa.Column("note", sa.Text, nullable=True))


def downgrade() -> None:
    op.drop_column("accounts", "note")
