"""drop email, then copy rows with the driver's own cursor"""

import sqlalchemy as sa

from alembic import op

revision = "0007_raw_cursor"
down_revision = "0006_name_contract"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_column("customers", "email")  # the drop
    cursor = op.get_bind().connection.cursor()  # stops here
    cursor.execute("UPDATE customers SET full_name = '' WHERE full_name IS NULL")


def downgrade() -> None:
    op.add_column("customers", sa.Column("email", sa.String(200)))
