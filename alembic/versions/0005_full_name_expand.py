"""rename customers.name to full_name, step 1 of 2 (expand)

The old code still reads and writes ``name`` while the new code rolls out, so both columns live
side by side: the new column is added and filled online by dbmigrate.backfill() (whose trigger also
fills it for the rows the old code writes meanwhile); the next revision drops the old one once no
running code uses it.

Revision ID: 0005_full_name_expand
Revises: 0004_email_domain
Create Date: 2026-11-25 09:40:00
"""

import sqlalchemy as sa

import dbmigrate
from alembic import op

# dbmigrate: allow-data-loss reason="the downgrade removes only what this revision added"
revision = "0005_full_name_expand"
down_revision = "0004_email_domain"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("customers", sa.Column("full_name", sa.String(100), nullable=True))
    dbmigrate.backfill("customers", {"full_name": "name"})


def downgrade() -> None:
    with op.batch_alter_table("customers") as batch:
        batch.drop_column("full_name")
