"""add customers.email_domain and fill it in batches

A data migration done the online way: small batches keyed by primary key, so no statement holds
row locks on the whole table for long.

Revision ID: 0004_email_domain
Revises: 0003_orders_customer_idx
Create Date: 2026-11-25 09:30:00
"""

import sqlalchemy as sa

from alembic import op

# dbmigrate: allow-data-loss reason="the downgrade removes only what this revision added"
revision = "0004_email_domain"
down_revision = "0003_orders_customer_idx"
branch_labels = None
depends_on = None

BATCH_SIZE = 50

customers = sa.table(
    "customers", sa.column("id", sa.Integer), sa.column("email", sa.String), sa.column("email_domain", sa.String)
)


def upgrade() -> None:
    op.add_column("customers", sa.Column("email_domain", sa.String(200), nullable=True))
    if op.get_context().as_sql:
        # Offline (--sql / --dry-run) there is no data to read: show the set-based equivalent.
        op.execute(f"-- backfill of customers.email_domain runs online, in batches of {BATCH_SIZE} rows")
        return
    bind = op.get_bind()
    last_id = 0
    while True:
        rows = bind.execute(
            sa.select(customers.c.id, customers.c.email)
            .where(customers.c.id > last_id)
            .order_by(customers.c.id)
            .limit(BATCH_SIZE)
        ).all()
        if not rows:
            break
        bind.execute(
            customers.update()
            .where(customers.c.id == sa.bindparam("row_id"))
            .values(email_domain=sa.bindparam("domain")),
            [{"row_id": row.id, "domain": row.email.rsplit("@", 1)[-1]} for row in rows],
        )
        last_id = rows[-1].id


def downgrade() -> None:
    with op.batch_alter_table("customers") as batch:
        batch.drop_column("email_domain")
