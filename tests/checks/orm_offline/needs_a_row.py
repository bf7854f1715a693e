"""drop email, then read the one row a query must return"""

import sqlalchemy as sa

from alembic import op

revision = "0007_needs_a_row"
down_revision = "0006_name_contract"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_column("customers", "email")  # the drop
    bind = op.get_bind()
    newest = bind.execute(sa.text("SELECT max(id) FROM customers WHERE full_name IS NULL")).scalar_one()  # stops here
    op.execute(f"DELETE FROM orders WHERE customer_id > {newest}")


def downgrade() -> None:
    op.add_column("customers", sa.Column("email", sa.String(200)))
