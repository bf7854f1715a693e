"""The checker sees what a revision executes: raw SQL parsed, loops, helpers, the bind, batch mode, lines."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.checks.conftest import DIALECTS, REVISION_FILE, CheckRevision, line_of, rules


@pytest.mark.parametrize("dialect", DIALECTS)
def test_comments_and_string_literals_that_look_like_drops_are_not_statements(
    check_revision: CheckRevision, dialect: str
) -> None:
    report = check_revision(
        '''
        def upgrade() -> None:
            op.execute("""
                -- DROP TABLE customers;
                /* TRUNCATE orders; DELETE FROM orders */
                UPDATE customers SET full_name = 'DROP TABLE orders' WHERE full_name IS NULL
            """)
        ''',
        dialect,
    )
    assert report.findings == ()


def test_every_statement_of_a_multi_statement_execute_is_checked(check_revision: CheckRevision, project: Path) -> None:
    report = check_revision(
        'def upgrade() -> None:\n    op.execute("SELECT 1; DROP TABLE orders; SELECT 2")  # two statements, one drop\n',
        "postgresql",
    )
    assert rules(report) == ["DL001", "BR002"]
    assert {f.line for f in report.findings} == {line_of(project, "two statements, one drop")}


def test_indexes_created_in_a_loop_are_each_reported_at_the_loop_line(
    check_revision: CheckRevision, project: Path
) -> None:
    report = check_revision(
        """
        def upgrade() -> None:
            for column in ["customer_id", "amount_cents", "created_at"]:
                op.create_index(f"ix_orders_{column}_2", "orders", [column])  # loop body
        """,
        "postgresql",
    )
    assert rules(report) == ["BL001", "BL001", "BL001"]
    assert {f.line for f in report.findings} == {line_of(project, "# loop body")}


def test_a_helper_function_is_followed_to_the_line_that_runs_sql(check_revision: CheckRevision, project: Path) -> None:
    report = check_revision(
        """
        def purge(table: str) -> None:
            op.execute(f"DELETE FROM {table}")  # inside the helper


        def upgrade() -> None:
            purge("orders")
        """,
        "sqlite",
    )
    assert rules(report) == ["DL004"]
    assert report.findings[0].line == line_of(project, "# inside the helper")


@pytest.mark.parametrize("dialect", DIALECTS)
def test_sql_sent_through_the_bind_is_seen(check_revision: CheckRevision, project: Path, dialect: str) -> None:
    report = check_revision(
        """
        def upgrade() -> None:
            bind = op.get_bind()
            for row in bind.execute(text("SELECT id FROM orders")).all():
                bind.execute(text("DELETE FROM orders WHERE id = :id"), {"id": row.id})
            bind.execute(text("DELETE FROM orders"))  # through the bind
        """,
        dialect,
    )
    assert rules(report) == ["DL004"]
    assert report.findings[0].line == line_of(project, "# through the bind")
    assert report.not_analysed == ()


@pytest.mark.parametrize("dialect", DIALECTS)
def test_sql_sent_to_the_driver_through_the_bind_is_seen(
    check_revision: CheckRevision, project: Path, dialect: str
) -> None:
    report = check_revision(
        """
        def upgrade() -> None:
            op.get_bind().exec_driver_sql("DELETE FROM orders")  # driver SQL
        """,
        dialect,
    )
    assert rules(report) == ["DL004"]
    assert report.findings[0].line == line_of(project, "# driver SQL")
    assert report.not_analysed == ()


def test_a_step_that_needs_real_rows_is_reported_as_not_analysed(check_revision: CheckRevision, project: Path) -> None:
    report = check_revision(
        """
        def upgrade() -> None:
            op.drop_column("customers", "email")
            count = op.get_bind().execute(text("SELECT count(*) FROM orders")).scalar_one()  # needs a row
            op.drop_table("orders")
        """,
        "postgresql",
    )
    assert rules(report) == ["DL002", "BR001"]
    assert [(step.revision, step.direction) for step in report.not_analysed] == [("0007_under_test", "upgrade")]
    assert report.not_analysed[0].where == f"{REVISION_FILE}:{line_of(project, '# needs a row')}"
    assert "needs a row from a query" in report.not_analysed[0].reason


@pytest.mark.parametrize("dialect", DIALECTS)
def test_batch_drop_column_is_seen_on_every_dialect(check_revision: CheckRevision, project: Path, dialect: str) -> None:
    report = check_revision(
        """
        def upgrade() -> None:
            with op.batch_alter_table("customers") as batch:  # the batch
                batch.drop_column("email")
        """,
        dialect,
    )
    assert rules(report) == ["DL002", "BR001"]
    assert report.not_analysed == ()
    assert report.findings[0].line == line_of(project, "# the batch")


@pytest.mark.parametrize("dialect", DIALECTS)
def test_a_table_created_and_dropped_in_one_revision_loses_nothing(check_revision: CheckRevision, dialect: str) -> None:
    report = check_revision(
        """
        def upgrade() -> None:
            op.create_table("scratch", sa.Column("id", sa.Integer, primary_key=True), sa.Column("v", sa.Integer))
            op.execute("INSERT INTO scratch (id, v) SELECT id, amount_cents FROM orders")
            op.drop_column("scratch", "v")
            op.execute("DELETE FROM scratch")
            op.drop_table("scratch")
        """,
        dialect,
    )
    assert report.findings == ()


@pytest.mark.parametrize("dialect", DIALECTS)
def test_downgrade_findings_carry_direction_downgrade(
    check_revision: CheckRevision, project: Path, dialect: str
) -> None:
    report = check_revision(
        """
        def upgrade() -> None:
            op.add_column("orders", sa.Column("note", sa.String(30)))


        def downgrade() -> None:
            op.drop_column("orders", "note")  # the downgrade drop
        """,
        dialect,
    )
    assert rules(report, "upgrade") == []
    assert rules(report, "downgrade") == ["DL002", "BR001"]
    finding = report.findings[0]
    assert (finding.revision, finding.file, finding.line) == (
        "0007_under_test",
        REVISION_FILE,
        line_of(project, "# the downgrade drop"),
    )


def test_dialect_branches_in_the_revision_follow_the_checked_dialect(check_revision: CheckRevision) -> None:
    source = """
        def upgrade() -> None:
            if op.get_context().dialect.name == "mysql":
                op.drop_table("orders")
    """
    assert rules(check_revision(source, "mysql")) == ["DL001", "BR002"]
    assert rules(check_revision(source, "postgresql")) == []


def test_the_checked_dialect_wins_over_database_url(
    check_revision: CheckRevision, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The example env.py renders for DATABASE_URL when it is set.
    monkeypatch.setenv("DATABASE_URL", "sqlite:///ignored.db")
    report = check_revision(
        'def upgrade() -> None:\n    op.create_index("ix_amount", "orders", ["amount_cents"])\n', "postgresql"
    )
    assert rules(report) == ["BL001"]


def test_a_sqlite_batch_that_always_recreates_is_checked_for_what_it_does(
    check_revision: CheckRevision, project: Path
) -> None:
    report = check_revision(
        """
        customers = sa.Table(
            "customers",
            sa.MetaData(),
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("name", sa.String(100)),
            sa.Column("email", sa.String(200)),
        )


        def upgrade() -> None:
            with op.batch_alter_table("customers", recreate="always") as batch:  # the batch
                batch.drop_column("email")
                batch.alter_column("name", new_column_name="display_name", existing_type=sa.String(100))
            with op.batch_alter_table("customers", recreate="always", copy_from=customers) as batch:
                batch.add_column(sa.Column("nickname", sa.String(50), nullable=True))
        """,
        "sqlite",
    )
    assert rules(report) == ["DL002", "BR001", "BR003"]
    assert report.not_analysed == ()
    assert report.findings[0].line == line_of(project, "# the batch")


def test_a_step_that_inspects_the_live_database_is_named_as_such_in_not_analysed(
    check_revision: CheckRevision, project: Path
) -> None:
    report = check_revision(
        """
        def upgrade() -> None:
            op.execute("DELETE FROM orders WHERE id < 0")
            if "orders" in sa.inspect(op.get_bind()).get_table_names():  # inspects
                op.drop_table("orders")
        """,
        "postgresql",
    )

    assert [(step.revision, step.direction) for step in report.not_analysed] == [("0007_under_test", "upgrade")]
    assert report.not_analysed[0].where == f"{REVISION_FILE}:{line_of(project, '# inspects')}"
    assert "reads the database's schema" in report.not_analysed[0].reason


ORM_MODEL = """
from sqlalchemy import orm

Base = orm.declarative_base()


class Order(Base):
    __tablename__ = "orders"
    id = sa.Column(sa.Integer, primary_key=True)
    status = sa.Column(sa.String(20))

"""


@pytest.mark.parametrize("dialect", DIALECTS)
def test_what_an_orm_session_on_the_bind_executes_is_checked(
    check_revision: CheckRevision, project: Path, dialect: str
) -> None:
    report = check_revision(
        ORM_MODEL
        + """
def upgrade() -> None:
    session = orm.Session(bind=op.get_bind())
    session.query(Order).filter(Order.status == "draft").update({"status": "open"})
    session.query(Order).delete()  # every order
    session.commit()
""",
        dialect,
    )

    assert report.not_analysed == ()
    assert rules(report) == ["DL004"]
    assert report.findings[0].line == line_of(project, "# every order")


@pytest.mark.parametrize("dialect", DIALECTS)
def test_a_batch_loop_that_stops_when_no_row_changed_ends_offline_and_is_reported_as_a_loop(
    check_revision: CheckRevision, dialect: str
) -> None:
    report = check_revision(
        """
        def upgrade() -> None:
            bind = op.get_bind()
            while bind.execute(text("UPDATE orders SET status = 'open' WHERE status IS NULL AND id < 1000")).rowcount:
                pass
        """,
        dialect,
    )

    assert report.not_analysed == ()
    # Every batch of the loop runs in the step's one transaction (SQLite locks the whole database anyway).
    assert rules(report) == ([] if dialect == "sqlite" else ["BL008"])
    assert dialect == "sqlite" or report.findings[0].message.startswith("A loop of queries (UPDATE")
