"""ORM bulk UPDATE by primary key, and objects updated and deleted by the unit of work, then drop email"""

import sqlalchemy as sa
from sqlalchemy import orm

from alembic import op

revision = "0007_bulk_update_by_primary_key"
down_revision = "0006_name_contract"
branch_labels = None
depends_on = None


class Base(orm.DeclarativeBase):
    pass


class Customer(Base):
    __tablename__ = "customers"
    id: orm.Mapped[int] = orm.mapped_column(primary_key=True)
    email: orm.Mapped[str] = orm.mapped_column(sa.String(200))
    full_name: orm.Mapped[str | None] = orm.mapped_column(sa.String(100))


def upgrade() -> None:
    session = orm.Session(bind=op.get_bind())
    session.execute(sa.update(Customer), [{"id": 1, "full_name": "Founder"}, {"id": 2, "full_name": "Second"}])
    placeholder = Customer(id=10_000, email="placeholder@example.com")
    session.add(placeholder)
    session.flush()
    placeholder.full_name = "Placeholder"
    session.flush()
    session.delete(placeholder)
    session.commit()
    op.drop_column("customers", "email")  # the drop


def downgrade() -> None:
    op.add_column("customers", sa.Column("email", sa.String(200)))
