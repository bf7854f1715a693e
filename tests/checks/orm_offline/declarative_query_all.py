"""backfill email domains with the ORM (a declarative model defined in the revision), then drop email"""

import sqlalchemy as sa
from sqlalchemy import orm

from alembic import op

revision = "0007_declarative_query_all"
down_revision = "0006_name_contract"
branch_labels = None
depends_on = None

Base = orm.declarative_base()


class Customer(Base):
    __tablename__ = "customers"
    id = sa.Column(sa.Integer, primary_key=True)
    email = sa.Column(sa.String(200))
    email_domain = sa.Column(sa.String(200))


def upgrade() -> None:
    session = orm.Session(bind=op.get_bind())
    for customer in session.query(Customer).all():
        customer.email_domain = customer.email.split("@")[1]
    session.commit()
    op.drop_column("customers", "email")  # the drop


def downgrade() -> None:
    op.add_column("customers", sa.Column("email", sa.String(200)))
