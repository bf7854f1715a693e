"""count what is left to migrate with the ORM, then drop email"""

import sqlalchemy as sa
from sqlalchemy import func, orm

from alembic import op

revision = "0007_count_scalar"
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
    missing = session.query(func.count()).select_from(Customer).filter(Customer.email_domain.is_(None)).scalar()
    if missing or session.query(Customer).count():
        raise RuntimeError(f"{missing} customers have no email domain yet")
    op.drop_column("customers", "email")  # the drop


def downgrade() -> None:
    op.add_column("customers", sa.Column("email", sa.String(200)))
