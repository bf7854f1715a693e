"""insert rows through the ORM (add, add_all, flush, merge, commit), then drop email"""

import sqlalchemy as sa
from sqlalchemy import orm

from alembic import op

revision = "0007_add_flush_commit"
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
    session = orm.Session(bind=op.get_bind())
    support = Customer(email="support@example.com", full_name="Support")
    session.add(support)
    session.flush()
    op.execute(f"UPDATE customers SET email_domain = 'example.com' WHERE id = {support.id}")
    session.add_all([Customer(email="a@example.com"), Customer(email="b@example.com")])
    session.merge(Customer(id=500, email="c@example.com"))
    session.commit()
    op.drop_column("customers", "email")  # the drop


def downgrade() -> None:
    op.add_column("customers", sa.Column("email", sa.String(200)))
