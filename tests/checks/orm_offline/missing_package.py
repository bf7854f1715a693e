"""drop email, then import a package that the environment running check does not have"""

import sqlalchemy as sa

from alembic import op

revision = "0007_missing_package"
down_revision = "0006_name_contract"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_column("customers", "email")  # the drop
    from billing_service.backfill import copy_emails  # stops here

    copy_emails(op.get_bind())


def downgrade() -> None:
    op.add_column("customers", sa.Column("email", sa.String(200)))
