"""drop email, then read the tenant's schema from an environment variable that check runs without"""

import os

import sqlalchemy as sa

from alembic import op

revision = "0007_missing_environment_variable"
down_revision = "0006_name_contract"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_column("customers", "email")  # the drop
    schema = os.environ["ORM_OFFLINE_TENANT_SCHEMA"]  # stops here
    op.drop_column("customers", "email_domain", schema=schema)


def downgrade() -> None:
    op.add_column("customers", sa.Column("email", sa.String(200)))
