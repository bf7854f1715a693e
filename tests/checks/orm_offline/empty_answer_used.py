"""drop email, then compare a count that an empty database answers without a row"""

import sqlalchemy as sa
from sqlalchemy import orm

from alembic import op

revision = "0007_empty_answer_used"
down_revision = "0006_name_contract"
branch_labels = None
depends_on = None

Base = orm.declarative_base()


class Customer(Base):
    __tablename__ = "customers"
    id = sa.Column(sa.Integer, primary_key=True)
    full_name = sa.Column(sa.String(100))


def upgrade() -> None:
    op.drop_column("customers", "email")  # the drop
    session = orm.Session(bind=op.get_bind())
    newest = session.query(sa.func.max(Customer.id)).scalar()
    if newest > 1000:  # stops here
        op.create_index("ix_customers_full_name", "customers", ["full_name"])


def downgrade() -> None:
    op.add_column("customers", sa.Column("email", sa.String(200)))
