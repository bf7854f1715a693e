"""add accounts.abalance_cents and fill it, the way most projects write it (one revision, one UPDATE)

Revision ID: 0001_fill_cents
Revises:
Create Date: 2026-12-03 21:30:00
"""

import sqlalchemy as sa

from alembic import op

revision = "0001_fill_cents"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("accounts", sa.Column("abalance_cents", sa.BigInteger, nullable=True))
    op.execute("UPDATE accounts SET abalance_cents = abalance * 100")


def downgrade() -> None:
    op.drop_column("accounts", "abalance_cents")
