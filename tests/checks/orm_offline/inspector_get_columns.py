"""drop email, then a column only where an older release left it (the inspector's columns)"""

import sqlalchemy as sa

from alembic import op

revision = "0007_inspector_get_columns"
down_revision = "0006_name_contract"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_column("customers", "email")  # the drop
    inspector = sa.inspect(op.get_bind())  # stops here
    if "email_domain" in {column["name"] for column in inspector.get_columns("customers")}:
        op.drop_column("customers", "email_domain")


def downgrade() -> None:
    op.add_column("customers", sa.Column("email", sa.String(200)))
