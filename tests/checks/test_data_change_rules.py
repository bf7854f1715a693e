"""BL007, BL008, BR006: filling rows in the step, after DDL or in one long statement, and constraining the fill.

PostgreSQL keeps a DDL statement's lock until the step commits, so a fill after it holds that lock
(BL007); MySQL/MariaDB commit each DDL statement on their own, so only the fill's own row locks stay
(BL008); SQLite locks the whole database for any write (no blocking finding). ``dbmigrate.backfill``
fills after the step commits, in batches, and is no finding.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.checks.conftest import DIALECTS, CheckRevision, line_of, rules

ADD_THEN_UPDATE = """
def upgrade() -> None:
    op.add_column("customers", sa.Column("nickname", sa.String(50)))
    op.execute("UPDATE customers SET nickname = full_name")
"""

ADD_THEN_LOOP_OF_BATCHES = """
def upgrade() -> None:
    op.add_column("customers", sa.Column("nickname", sa.String(50)))
    bind = op.get_bind()
    while True:
        done = bind.execute(
            text(
                "UPDATE customers SET nickname = full_name WHERE id IN "
                "(SELECT id FROM customers WHERE nickname IS NULL LIMIT 1000)"
            )
        )  # one batch
        if not done.rowcount:
            break
"""

# Offline the SELECT answers no rows: the UPDATEs in the loop's body never render. The loop is still one.
ADD_THEN_LOOP_OVER_ROWS = """
def upgrade() -> None:
    op.add_column("customers", sa.Column("nickname", sa.String(50)))
    bind = op.get_bind()
    customers = sa.table("customers", sa.column("id"), sa.column("full_name"), sa.column("nickname"))
    for row in bind.execute(sa.select(customers.c.id, customers.c.full_name)):  # every row
        bind.execute(customers.update().where(customers.c.id == row.id).values(nickname=row.full_name))
"""

ADD_FILL_NOT_NULL = """
def upgrade() -> None:
    op.add_column("customers", sa.Column("nickname", sa.String(50)))
    op.execute("UPDATE customers SET nickname = full_name")
    op.alter_column("customers", "nickname", existing_type=sa.String(50), nullable=False)  # constrain
"""


def test_an_update_after_add_column_holds_the_alter_tables_lock_on_postgresql(
    check_revision: CheckRevision, project: Path
) -> None:
    report = check_revision(ADD_THEN_UPDATE, "postgresql")

    assert rules(report) == ["BL007"]
    finding = report.findings[0]
    assert (finding.category, finding.severity, finding.table) == ("blocking", "warning", "customers")
    assert finding.line == line_of(project, "UPDATE customers")
    assert "ACCESS EXCLUSIVE" in finding.message and "until the step commits" in finding.message
    assert 'dbmigrate.backfill("customers", {"column": "sql expression"})' in finding.suggestion


def test_on_mysql_the_ddl_commits_itself_but_the_update_is_still_one_long_statement(
    check_revision: CheckRevision,
) -> None:
    report = check_revision(ADD_THEN_UPDATE, "mysql")

    assert rules(report) == ["BL008"]
    assert "dbmigrate.backfill" in report.findings[0].suggestion


def test_sqlite_has_no_online_writes_to_block(check_revision: CheckRevision) -> None:
    assert check_revision(ADD_THEN_UPDATE, "sqlite").findings == ()


@pytest.mark.parametrize("source", [ADD_THEN_LOOP_OF_BATCHES, ADD_THEN_LOOP_OVER_ROWS], ids=["batches", "rows"])
def test_a_loop_of_queries_on_the_bind_after_ddl_is_reported_as_a_loop(
    check_revision: CheckRevision, source: str
) -> None:
    report = check_revision(source, "postgresql")

    assert report.not_analysed == ()
    assert rules(report) == ["BL007"]
    assert report.findings[0].message.startswith("A loop of queries")


def test_a_loop_of_batches_on_mysql_keeps_every_batchs_rows_locked_until_the_step_commits(
    check_revision: CheckRevision,
) -> None:
    report = check_revision(ADD_THEN_LOOP_OF_BATCHES, "mysql")

    assert rules(report) == ["BL008"]
    assert "until the step commits" in report.findings[0].message


@pytest.mark.parametrize(
    ("dialect", "expected"),
    [("postgresql", ["BL007", "BL005", "BR006"]), ("mysql", ["BL008", "BR006"]), ("sqlite", ["BR006"])],
)
def test_a_new_column_filled_and_made_not_null_scans_every_row_and_breaks_the_older_code(
    check_revision: CheckRevision, project: Path, dialect: str, expected: list[str]
) -> None:
    report = check_revision(ADD_FILL_NOT_NULL, dialect)

    assert rules(report) == expected
    constrained = [f for f in report.findings if f.rule in ("BL005", "BR006")]
    assert all(f.line == line_of(project, "# constrain") and f.column == "nickname" for f in constrained)


def test_a_server_default_keeps_the_older_codes_inserts_working(check_revision: CheckRevision) -> None:
    report = check_revision(
        """
        def upgrade() -> None:
            op.add_column("customers", sa.Column("nickname", sa.String(50), server_default="anonymous"))
            op.execute("UPDATE customers SET nickname = full_name")
            op.alter_column("customers", "nickname", existing_type=sa.String(50), nullable=False)
        """,
        "postgresql",
    )

    assert rules(report) == ["BL007", "BL005"]


def test_the_lock_of_one_table_is_held_while_another_table_is_filled(check_revision: CheckRevision) -> None:
    report = check_revision(
        """
        def upgrade() -> None:
            op.add_column("orders", sa.Column("note", sa.Text))
            op.execute("UPDATE customers SET full_name = upper(full_name) WHERE full_name IS NOT NULL")
        """,
        "postgresql",
    )

    assert rules(report) == ["BL007"]
    assert report.findings[0].table == "customers"
    assert "DDL on orders" in report.findings[0].message


@pytest.mark.parametrize("dialect", ["postgresql", "mysql"])
def test_a_single_update_with_a_broad_where_on_an_existing_table_is_a_warning(
    check_revision: CheckRevision, dialect: str
) -> None:
    report = check_revision(
        'def upgrade() -> None:\n    op.execute("UPDATE customers SET full_name = email WHERE full_name IS NULL")\n',
        dialect,
    )

    assert rules(report) == ["BL008"]
    assert report.findings[0].severity == "warning"
    assert 'dbmigrate.backfill("customers"' in report.findings[0].suggestion


@pytest.mark.parametrize("dialect", DIALECTS)
def test_an_update_naming_its_rows_by_value_is_a_small_fix(check_revision: CheckRevision, dialect: str) -> None:
    report = check_revision(
        """
        def upgrade() -> None:
            op.add_column("customers", sa.Column("nickname", sa.String(50)))
            op.execute("UPDATE customers SET nickname = 'admin' WHERE id IN (1, 2)")
        """,
        dialect,
    )

    assert report.findings == ()


@pytest.mark.parametrize("dialect", DIALECTS)
def test_filling_a_table_created_in_the_same_revision_blocks_nothing(
    check_revision: CheckRevision, dialect: str
) -> None:
    report = check_revision(
        """
        def upgrade() -> None:
            op.add_column("customers", sa.Column("nickname", sa.String(50)))
            op.create_table("tags", sa.Column("id", sa.Integer, primary_key=True), sa.Column("name", sa.String(20)))
            op.execute("INSERT INTO tags (id, name) SELECT id, email FROM customers")
            op.execute("UPDATE tags SET name = lower(name)")
            op.execute("DELETE FROM tags WHERE name IS NULL")
        """,
        dialect,
    )

    assert report.findings == ()


@pytest.mark.parametrize("dialect", DIALECTS)
def test_the_backfill_helper_fills_after_the_step_and_is_no_finding(
    check_revision: CheckRevision, dialect: str
) -> None:
    report = check_revision(
        """
        import dbmigrate


        def upgrade() -> None:
            op.add_column("customers", sa.Column("nickname", sa.String(50)))
            dbmigrate.backfill("customers", {"nickname": "full_name"})
        """,
        dialect,
    )

    assert report.findings == ()


def test_the_backfill_helper_does_not_make_a_not_null_constraint_free(check_revision: CheckRevision) -> None:
    report = check_revision(
        """
        import dbmigrate


        def upgrade() -> None:
            op.add_column("customers", sa.Column("nickname", sa.String(50)))
            dbmigrate.backfill("customers", {"nickname": "full_name"})
            op.alter_column("customers", "nickname", existing_type=sa.String(50), nullable=False)
        """,
        "postgresql",
    )

    assert rules(report) == ["BL005", "BR006"]


NON_TRANSACTIONAL = '# dbmigrate: non-transactional reason="each batch commits on its own"\n\n'


@pytest.mark.parametrize("dialect", ["postgresql", "mysql"])
def test_a_loop_of_batches_in_a_non_transactional_revision_commits_each_batch_and_is_no_finding(
    check_revision: CheckRevision, dialect: str
) -> None:
    report = check_revision(NON_TRANSACTIONAL + ADD_THEN_LOOP_OF_BATCHES, dialect)

    assert report.findings == ()


def test_one_long_update_in_a_non_transactional_revision_holds_no_ddl_lock_but_is_still_long(
    check_revision: CheckRevision,
) -> None:
    report = check_revision(NON_TRANSACTIONAL + ADD_THEN_UPDATE, "postgresql")

    assert rules(report) == ["BL008"]
    assert "until the statement ends" in report.findings[0].message


def test_an_autocommit_block_releases_the_locks_taken_before_it(check_revision: CheckRevision) -> None:
    report = check_revision(
        """
        def upgrade() -> None:
            op.add_column("customers", sa.Column("nickname", sa.String(50)))
            with op.get_context().autocommit_block():
                op.execute("UPDATE customers SET nickname = full_name WHERE nickname IS NULL")
        """,
        "postgresql",
    )

    assert rules(report) == ["BL008"]
    assert "until the statement ends" in report.findings[0].message


def test_validating_a_constraint_locks_out_no_query_so_a_later_fill_is_only_long(
    check_revision: CheckRevision,
) -> None:
    report = check_revision(
        """
        def upgrade() -> None:
            op.execute("ALTER TABLE orders VALIDATE CONSTRAINT ck_amount_positive")
            op.execute("UPDATE orders SET amount_cents = 0 WHERE amount_cents < 0")
        """,
        "postgresql",
    )

    assert rules(report) == ["BL008"]
