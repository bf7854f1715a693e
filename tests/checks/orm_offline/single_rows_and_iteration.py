"""read single rows and iterate with the ORM (first, one_or_none, get, scalars), then drop email"""

import sqlalchemy as sa
from sqlalchemy import orm

from alembic import op

revision = "0007_single_rows_and_iteration"
down_revision = "0006_name_contract"
branch_labels = None
depends_on = None

Base = orm.declarative_base()


class Customer(Base):
    __tablename__ = "customers"
    id = sa.Column(sa.Integer, primary_key=True)
    email = sa.Column(sa.String(200))
    full_name = sa.Column(sa.String(100))


def upgrade() -> None:
    with orm.Session(bind=op.get_bind()) as session, session.begin():
        admin = session.query(Customer).filter_by(email="admin@example.com").one_or_none()
        if admin is not None:
            admin.full_name = "Administrator"
        first = session.query(Customer).order_by(Customer.id).first()
        if first is not None and first.full_name is None:
            first.full_name = "First customer"
        founder = session.get(Customer, 1)
        if founder is not None:
            founder.full_name = "Founder"
        for customer in session.query(Customer).filter(Customer.full_name.is_(None)):
            customer.full_name = customer.email
        for customer_id in session.scalars(sa.select(Customer.id).where(Customer.full_name == "")):
            session.execute(sa.update(Customer).where(Customer.id == customer_id).values(full_name=None))
        for row in session.execute(sa.select(Customer.id, Customer.email)).mappings():
            session.execute(sa.update(Customer).where(Customer.id == row["id"]).values(full_name=row["email"]))
    op.drop_column("customers", "email")  # the drop


def downgrade() -> None:
    op.add_column("customers", sa.Column("email", sa.String(200)))
