"""PostgreSQL type changes: what check reports, and the real server's proof of each "no rewrite" decision.

Each case is one ``op.alter_column`` type change. check must report exactly the expected rules,
whether the existing type comes from ``existing_type=`` or from the revision that created the
column. And the same ``alter_column`` runs on the real PostgreSQL server: the table's relfilenode
changes exactly when check reports BL002, so the rules cannot drift from what the server does.
The session's time zone is not UTC there (where timestamp to timestamptz would skip the rewrite).
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.operations import Operations
from alembic.runtime.migration import MigrationContext
from sqlalchemy.dialects import postgresql
from sqlalchemy.sql.type_api import TypeEngine

from tests.checks.conftest import CheckRevision, check_project, rules
from tests.checks.test_known_column_types import write_chain
from tests.conftest import connect, create_database, drop_database


@dataclasses.dataclass(frozen=True)
class TypeChange:
    existing: str  # SQLAlchemy type expressions, as a revision writes them
    new: str
    expected: tuple[str, ...]
    using: str | None = None
    setup: tuple[str, ...] = ()  # SQL the server needs first (a type the change names)

    def arguments(self) -> str:
        using = f", postgresql_using={self.using!r}" if self.using else ""
        return f"type_={self.new}{using}"


CHANGES = {
    # One type, written twice: nothing changes.
    "same enum": TypeChange('sa.Enum("a", "b", name="status")', 'sa.Enum("a", "b", name="status")', ()),
    "same postgresql.ENUM": TypeChange(
        'postgresql.ENUM("a", "b", name="status")', 'postgresql.ENUM("a", "b", name="status", create_type=False)', ()
    ),
    "same enum named without values": TypeChange(
        'postgresql.ENUM("a", "b", name="status")', 'postgresql.ENUM(name="status", create_type=False)', ()
    ),
    # The values of a type are changed by ALTER TYPE; the column keeps the type.
    "same enum declared with one more value": TypeChange(
        'sa.Enum("a", "b", name="status")', 'sa.Enum("a", "b", "c", name="status")', ()
    ),
    "Float(53) to Float": TypeChange("sa.Float(53)", "sa.Float()", ()),
    "Float(24) to REAL": TypeChange("sa.Float(24)", "sa.REAL()", ()),
    "Double to DOUBLE_PRECISION": TypeChange("sa.Double()", "postgresql.DOUBLE_PRECISION()", ()),
    "Integer to INTEGER": TypeChange("sa.Integer()", "sa.INTEGER()", ()),
    "String(length=10) to VARCHAR(10)": TypeChange("sa.String(length=10)", "sa.VARCHAR(10)", ()),
    "TIMESTAMP to DateTime": TypeChange("postgresql.TIMESTAMP()", "sa.DateTime()", ()),
    "Unicode to String": TypeChange("sa.Unicode(10)", "sa.String(10)", ()),
    # Binary-coercible, or a length/precision coercion PostgreSQL proves is a no-op: no rewrite.
    "varchar to text": TypeChange("sa.String(20)", "sa.Text()", ()),
    "varchar widened": TypeChange("sa.String(20)", "sa.String(40)", ()),
    "varchar made unlimited": TypeChange("sa.String(20)", "sa.String()", ()),
    "text to unlimited varchar": TypeChange("sa.Text()", "sa.String()", ()),
    "numeric precision raised": TypeChange("sa.Numeric(8, 2)", "sa.Numeric(12, 2)", ()),
    "numeric made unlimited": TypeChange("sa.Numeric(8, 2)", "sa.Numeric()", ()),
    "timestamp precision raised": TypeChange(
        "postgresql.TIMESTAMP(precision=3)", "postgresql.TIMESTAMP(precision=6)", ()
    ),
    "time precision made default": TypeChange("postgresql.TIME(precision=3)", "sa.Time()", ()),
    "interval precision made default": TypeChange("postgresql.INTERVAL(precision=3)", "sa.Interval()", ()),
    "cidr to inet": TypeChange("postgresql.CIDR()", "postgresql.INET()", ()),
    "varbit widened": TypeChange("postgresql.BIT(5, varying=True)", "postgresql.BIT(10, varying=True)", ()),
    "bit widened": TypeChange("postgresql.BIT(5)", "postgresql.BIT(10)", ("BL002",)),
    # True positives: they rewrite, and some lose data.
    "integer to bigint": TypeChange("sa.Integer()", "sa.BigInteger()", ("BL002",)),
    "smallint to integer": TypeChange("sa.SmallInteger()", "sa.Integer()", ("BL002",)),
    "real to double": TypeChange("sa.REAL()", "sa.Double()", ("BL002",)),
    "text to varchar(n)": TypeChange("sa.Text()", "sa.String(20)", ("DL006", "BL002")),
    "varchar narrowed": TypeChange("sa.String(40)", "sa.String(20)", ("DL006", "BL002")),
    "numeric scale raised": TypeChange("sa.Numeric(8, 2)", "sa.Numeric(12, 4)", ("BL002",)),
    "interval precision lowered": TypeChange("sa.Interval()", "postgresql.INTERVAL(precision=3)", ("DL006", "BL002")),
    "numeric narrowed": TypeChange("sa.Numeric(12, 2)", "sa.Numeric(8, 2)", ("DL006", "BL002")),
    "double to real": TypeChange("sa.Float()", "sa.REAL()", ("DL006", "BL002")),
    "char to varchar": TypeChange("sa.CHAR(5)", "sa.String(10)", ("BL002",)),
    "json to text": TypeChange("sa.JSON()", "sa.Text()", ("BL002",)),
    "timestamp to timestamptz": TypeChange("sa.DateTime()", "sa.DateTime(timezone=True)", ("BL002",)),
    "varchar array widened": TypeChange(
        "postgresql.ARRAY(sa.String(10))", "postgresql.ARRAY(sa.String(20))", ("BL002",)
    ),
    "enum to another enum of the same values": TypeChange(
        'sa.Enum("a", "b", name="status")',
        'sa.Enum("a", "b", name="status_v2")',
        ("BL002",),
        using="state::text::status_v2",
        setup=("CREATE TYPE status_v2 AS ENUM ('a', 'b')",),
    ),
    "enum to another enum without a value": TypeChange(
        'sa.Enum("a", "b", "c", name="status")',
        'sa.Enum("a", "b", name="status_v2")',
        ("DL006", "BL002"),
        using="state::text::status_v2",
        setup=("CREATE TYPE status_v2 AS ENUM ('a', 'b')",),
    ),
}
CASES = pytest.mark.parametrize("change", list(CHANGES.values()), ids=list(CHANGES))

IMPORTS = "from sqlalchemy.dialects import postgresql\n\n\n"


@CASES
def test_a_type_change_with_its_existing_type(check_revision: CheckRevision, change: TypeChange) -> None:
    report = check_revision(
        IMPORTS + "def upgrade() -> None:\n"
        f'    op.alter_column("orders", "state", existing_type={change.existing}, {change.arguments()})\n',
        "postgresql",
    )
    assert rules(report) == list(change.expected)


@CASES
def test_a_type_change_of_a_column_an_earlier_revision_created(project: Path, change: TypeChange) -> None:
    """No existing_type: the type the creating revision declared is the one compared."""
    revisions = write_chain(
        project,
        {
            "0007_sessions": IMPORTS + "def upgrade() -> None:\n"
            f'    op.create_table("sessions", sa.Column("id", sa.Integer), sa.Column("state", {change.existing}))\n',
            "0008_change_type": IMPORTS + "def upgrade() -> None:\n"
            f'    op.alter_column("sessions", "state", {change.arguments()})\n',
        },
    )

    report = check_project(project, revisions, "postgresql")

    assert [f.rule for f in report.findings if f.revision == "0008_change_type"] == list(change.expected)


@CASES
def test_a_downgrade_type_change_of_a_column_its_upgrade_declared(project: Path, change: TypeChange) -> None:
    """A hand-written downgrade without existing_type: the type its upgrade declared is the one compared."""
    revisions = write_chain(
        project,
        {
            "0007_declare_state": IMPORTS + "def upgrade() -> None:\n"
            f'    op.alter_column("orders", "state", type_={change.existing})\n\n\n'
            "def downgrade() -> None:\n"
            f'    op.alter_column("orders", "state", {change.arguments()})\n',
        },
    )

    report = check_project(project, revisions, "postgresql")

    assert rules(report, "downgrade") == list(change.expected)


@pytest.fixture(scope="module")
def postgres_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = create_database("postgresql", tmp_path_factory.mktemp("types"))
    yield url
    drop_database(url)


def _type(expression: str) -> TypeEngine[object]:
    value = eval(expression, {"sa": sa, "postgresql": postgresql})
    assert isinstance(value, TypeEngine)
    return value


def rewrites(url: str, change: TypeChange) -> bool:
    """Run the change on the real server (in a transaction rolled back after) and say whether it rewrote the table."""
    table_name = f"t_{uuid.uuid4().hex[:8]}"
    existing, new = _type(change.existing), _type(change.new)
    with connect(url) as connection:
        connection.exec_driver_sql("SET TIME ZONE 'Europe/Berlin'")
        for sql in change.setup:
            connection.exec_driver_sql(sql)
        table = sa.Table(table_name, sa.MetaData(), sa.Column("id", sa.Integer), sa.Column("state", existing))
        table.create(connection)
        connection.execute(table.insert().values(id=1))
        filenode = f"SELECT pg_relation_filenode('{table_name}')"
        before = connection.exec_driver_sql(filenode).scalar_one()
        operations = Operations(MigrationContext.configure(connection))
        operations.alter_column(table_name, "state", existing_type=existing, type_=new, postgresql_using=change.using)
        after = connection.exec_driver_sql(filenode).scalar_one()
        connection.rollback()
    return bool(before != after)


@CASES
def test_bl002_is_reported_exactly_when_postgresql_rewrites_the_table(
    check_revision: CheckRevision, postgres_url: str, change: TypeChange
) -> None:
    report = check_revision(
        IMPORTS + "def upgrade() -> None:\n"
        f'    op.alter_column("orders", "state", existing_type={change.existing}, {change.arguments()})\n',
        "postgresql",
    )
    assert ("BL002" in rules(report)) == rewrites(postgres_url, change)


def test_raw_sql_naming_the_enum_a_column_has_changes_nothing(check_revision: CheckRevision) -> None:
    report = check_revision(
        """
        def upgrade() -> None:
            op.alter_column("orders", "state", existing_type=sa.Enum("a", "b", name="status"), nullable=False)
            op.execute("ALTER TABLE orders ALTER COLUMN state TYPE status")
        """,
        "postgresql",
    )
    assert rules(report) == ["BL005"]


def test_raw_sql_to_another_enum_named_without_values_is_not_guessed(check_revision: CheckRevision) -> None:
    """What status_v2 holds is not in the revision: no DL006, though the conversion rewrites the table."""
    report = check_revision(
        """
        def upgrade() -> None:
            op.alter_column("orders", "state", existing_type=sa.Enum("a", "b", name="status"), nullable=False)
            op.execute("ALTER TABLE orders ALTER COLUMN state TYPE status_v2 USING state::text::status_v2")
        """,
        "postgresql",
    )
    assert rules(report) == ["BL005", "BL002"]
