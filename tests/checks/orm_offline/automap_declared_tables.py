"""automap over tables the revision declares (no reflection), queried with the ORM, then drop email"""

import sqlalchemy as sa
from sqlalchemy import orm
from sqlalchemy.ext.automap import automap_base

from alembic import op

revision = "0007_automap_declared_tables"
down_revision = "0006_name_contract"
branch_labels = None
depends_on = None

metadata = sa.MetaData()
sa.Table(
    "customers",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("email", sa.String(200)),
    sa.Column("email_domain", sa.String(200)),
)
Base = automap_base(metadata=metadata)
Base.prepare()
Customer = Base.classes.customers


def upgrade() -> None:
    session = orm.Session(bind=op.get_bind())
    for customer in session.query(Customer).filter(Customer.email_domain.is_(None)).all():
        customer.email_domain = customer.email.split("@")[1]
    session.commit()
    op.drop_column("customers", "email")  # the drop


def downgrade() -> None:
    op.add_column("customers", sa.Column("email", sa.String(200)))
