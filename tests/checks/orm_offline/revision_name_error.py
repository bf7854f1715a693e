"""drop email, then call a helper that the revision never defined or imported"""

import sqlalchemy as sa

from alembic import op

revision = "0007_revision_name_error"
down_revision = "0006_name_contract"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_column("customers", "email")  # the drop
    backfill_full_names("customers")  # stops here  # noqa: F821


def downgrade() -> None:
    op.add_column("customers", sa.Column("email", sa.String(200)))
