"""SQLAlchemy 2.0 typed models: session.execute(select(Model)), relationships, then drop email"""

import sqlalchemy as sa
from sqlalchemy import orm

from alembic import op

revision = "0007_typed_models_execute_select"
down_revision = "0006_name_contract"
branch_labels = None
depends_on = None


class Base(orm.DeclarativeBase):
    pass


class Customer(Base):
    __tablename__ = "customers"
    id: orm.Mapped[int] = orm.mapped_column(primary_key=True)
    email: orm.Mapped[str] = orm.mapped_column(sa.String(200))
    orders: orm.Mapped[list["Order"]] = orm.relationship(back_populates="customer")


class Order(Base):
    __tablename__ = "orders"
    id: orm.Mapped[int] = orm.mapped_column(primary_key=True)
    customer_id: orm.Mapped[int] = orm.mapped_column(sa.ForeignKey("customers.id"))
    amount_cents: orm.Mapped[int]
    customer: orm.Mapped[Customer] = orm.relationship(back_populates="orders")


def upgrade() -> None:
    session = orm.Session(bind=op.get_bind())
    customers = session.execute(sa.select(Customer).options(orm.selectinload(Customer.orders))).scalars().all()
    for customer in customers:
        customer.email = customer.email.lower()
    for order, customer in session.execute(sa.select(Order, Customer).join(Order.customer)).all():
        if customer.email.endswith("@test.example"):
            order.amount_cents = 0  # test orders do not count
    total = session.scalar(sa.select(sa.func.sum(Order.amount_cents)))
    if total is not None and total < 0:
        raise RuntimeError(f"orders add up to {total} cents; fix them before dropping emails")
    session.commit()
    op.drop_column("customers", "email")  # the drop


def downgrade() -> None:
    op.add_column("customers", sa.Column("email", sa.String(200)))
