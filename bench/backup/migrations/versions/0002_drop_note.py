"""drop items.note (dbmigrate copies it aside first; plain alembic just drops it)

Revision ID: 0002_drop_note
Revises: 0001_create_items
Create Date: 2026-12-01 12:01:00
"""

import sqlalchemy as sa

from alembic import op

revision = "0002_drop_note"
down_revision = "0001_create_items"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # dbmigrate: allow-data-loss reason="the notes moved to the catalogue service"
    op.drop_column("items", "note")


def downgrade() -> None:
    op.add_column("items", sa.Column("note", sa.String(100)))
