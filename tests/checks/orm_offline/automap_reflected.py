"""drop email, then backfill through models automap reflects from the live database"""

import sqlalchemy as sa
from sqlalchemy import orm
from sqlalchemy.ext.automap import automap_base

from alembic import op

revision = "0007_automap_reflected"
down_revision = "0006_name_contract"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_column("customers", "email")  # the drop
    bind = op.get_bind()
    Base = automap_base()
    Base.prepare(autoload_with=bind)  # stops here
    session = orm.Session(bind=bind)
    for customer in session.query(Base.classes.customers).all():
        customer.full_name = customer.full_name or ""
    session.commit()


def downgrade() -> None:
    op.add_column("customers", sa.Column("email", sa.String(200)))
