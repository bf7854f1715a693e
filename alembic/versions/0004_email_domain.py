"""add customers.email_domain and fill it online

The column is added in the step's transaction; dbmigrate.backfill() then fills it once that
transaction has committed, in short keyset batches, while a trigger computes it for rows the
application writes meanwhile. Under plain `alembic upgrade` the same batches run inside the step.

Revision ID: 0004_email_domain
Revises: 0003_orders_customer_idx
Create Date: 2026-11-25 09:30:00
"""

import sqlalchemy as sa

import dbmigrate
from alembic import op

# dbmigrate: allow-data-loss reason="the downgrade removes only what this revision added"
revision = "0004_email_domain"
down_revision = "0003_orders_customer_idx"
branch_labels = None
depends_on = None

# The part of the address after its '@', in each database's own SQL.
EMAIL_DOMAIN = {
    "postgresql": "split_part(email, '@', 2)",
    "mysql": "SUBSTRING_INDEX(email, '@', -1)",
    "mariadb": "SUBSTRING_INDEX(email, '@', -1)",
    "sqlite": "substr(email, instr(email, '@') + 1)",
}


def upgrade() -> None:
    op.add_column("customers", sa.Column("email_domain", sa.String(200), nullable=True))
    dbmigrate.backfill("customers", {"email_domain": EMAIL_DOMAIN[op.get_context().dialect.name]})


def downgrade() -> None:
    with op.batch_alter_table("customers") as batch:
        batch.drop_column("email_domain")
