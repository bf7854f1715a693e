"""drop email, then backfill through a table reflected from the live database"""

import sqlalchemy as sa

from alembic import op

revision = "0007_reflected_table"
down_revision = "0006_name_contract"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_column("customers", "email")  # the drop
    bind = op.get_bind()
    customers = sa.Table("customers", sa.MetaData(), autoload_with=bind)  # stops here
    bind.execute(customers.update().where(customers.c.full_name.is_(None)).values(full_name=""))


def downgrade() -> None:
    op.add_column("customers", sa.Column("email", sa.String(200)))
