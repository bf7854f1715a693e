"""drop email, then a legacy table only where it exists (the inspector asks the live database)"""

import sqlalchemy as sa

from alembic import op

revision = "0007_inspector_has_table"
down_revision = "0006_name_contract"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_column("customers", "email")  # the drop
    if sa.inspect(op.get_bind()).has_table("legacy_customers"):  # stops here
        op.drop_table("legacy_customers")


def downgrade() -> None:
    op.add_column("customers", sa.Column("email", sa.String(200)))
