"""drop email, then add a column with a malformed type (a bug in the revision's own code)"""

import sqlalchemy as sa

from alembic import op

revision = "0007_revision_type_error"
down_revision = "0006_name_contract"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_column("customers", "email")  # the drop
    width = "200"
    op.add_column("customers", sa.Column("contact", sa.String(width + 50)))  # stops here


def downgrade() -> None:
    op.add_column("customers", sa.Column("email", sa.String(200)))
