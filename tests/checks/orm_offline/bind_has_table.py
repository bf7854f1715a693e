"""drop email, then ask the connection itself whether a table exists (SQLAlchemy 1.x style)"""

import sqlalchemy as sa

from alembic import op

revision = "0007_bind_has_table"
down_revision = "0006_name_contract"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_column("customers", "email")  # the drop
    bind = op.get_bind()
    if bind.dialect.has_table(bind, "legacy_customers"):  # stops here
        op.drop_table("legacy_customers")


def downgrade() -> None:
    op.add_column("customers", sa.Column("email", sa.String(200)))
