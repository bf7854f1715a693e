"""`dbmigrate verify`: upgrade, downgrade and upgrade again, revision by revision, on a scratch database.

Every test runs the real CLI against real PostgreSQL, MariaDB and SQLite, and then checks that the
scratch database verify created is gone (for SQLite: its temporary directory).
"""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

import dbmigrate
from tests.conftest import (
    MARIADB_ADMIN,
    POSTGRES_ADMIN,
    add_revision,
    connect,
    log_events,
    remove_revisions,
    run_dbmigrate,
    table_names,
)

CREATES_ITEMS = """\
op.create_table(
    "items",
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(50), nullable=True),
    sa.Column("price", sa.Numeric(10, 2), nullable=False),
)
"""
DROPS_ITEMS = 'op.drop_table("items")'
ADDS_NOTE = 'op.add_column("items", sa.Column("note", sa.String(200), nullable=True))'
DROPS_NOTE = """\
with op.batch_alter_table("items") as batch:
    batch.drop_column("note")
"""
ADDS_INDEX = 'op.create_index("ix_items_price", "items", ["price"])'
DROPS_INDEX = 'op.drop_index("ix_items_price", table_name="items")'


def scratch_leftovers(database_url: str, tmpdir: Path) -> list[str]:
    """Databases (or, for SQLite, temporary directories) verify created for ``database_url`` and left behind."""
    parsed = make_url(database_url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return [p.name for p in tmpdir.glob("dbmigrate-verify-*")]
    admin = POSTGRES_ADMIN if backend == "postgresql" else MARIADB_ADMIN
    pattern = f"{parsed.database}_verify_%".replace("_", r"\_")
    query = (
        "SELECT datname FROM pg_database WHERE datname LIKE %(p)s"
        if backend == "postgresql"
        else "SELECT schema_name FROM information_schema.schemata WHERE schema_name LIKE %(p)s"
    )
    engine = sa.create_engine(admin)
    try:
        with engine.connect() as connection:
            return [row[0] for row in connection.exec_driver_sql(query, {"p": pattern})]
    finally:
        engine.dispose()


def verify(
    project: Path, database_url: str, tmp_path: Path, *args: str, **env: str
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """``dbmigrate verify --format json ARGS``; its JSON, after checking that no scratch database is left."""
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir(exist_ok=True)
    done = run_dbmigrate(
        "verify", "--format", "json", *args, cwd=project, database_url=database_url, TMPDIR=str(tmpdir), **env
    )
    assert scratch_leftovers(database_url, tmpdir) == [], done.stderr[-3000:]
    return done, json.loads(done.stdout)


def assert_no_problems(project: Path, database_url: str, tmp_path: Path, checked: int) -> None:
    """``dbmigrate verify`` round-trips ``checked`` revisions and finds nothing wrong."""
    done, data = verify(project, database_url, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert data == {"revisions_checked": checked, "problems": []}


def kinds(data: dict[str, Any]) -> list[tuple[str, str]]:
    return [(p["revision"], p["kind"]) for p in data["problems"]]


def small_project(project: Path, *revisions: tuple[str, str, str]) -> Path:
    """The project with only these revisions, each (id, upgrade body, downgrade body), chained in order."""
    remove_revisions(project)
    down = None
    for revision, upgrade, downgrade in revisions:
        add_revision(project, revision, down, upgrade, downgrade)
        down = revision
    return project


def test_the_example_app_round_trips_without_a_problem(project: Path, database_url: str, tmp_path: Path) -> None:
    assert_no_problems(project, database_url, tmp_path, checked=6)
    assert table_names(database_url) == set()  # the configured database is never touched


def test_a_downgrade_that_keeps_what_its_upgrade_changed_is_a_trace(
    project: Path, database_url: str, tmp_path: Path
) -> None:
    small_project(
        project,
        ("r1_items", CREATES_ITEMS, DROPS_ITEMS),
        (
            "r2_name_required",
            'with op.batch_alter_table("items") as batch:\n'
            '    batch.alter_column("name", existing_type=sa.String(50), nullable=False)',
            "pass",
        ),
    )

    done, data = verify(project, database_url, tmp_path)

    assert done.returncode == 4, done.stderr[-3000:]
    assert data["revisions_checked"] == 2
    assert kinds(data) == [("r2_name_required", "trace-left")]  # the upgrade again works: no other problem
    assert "column items.name was VARCHAR(50) NULL, is VARCHAR(50) NOT NULL" in data["problems"][0]["detail"]


BROKEN_DOWNGRADES = {
    "raises": ('raise RuntimeError("this downgrade is broken")', "this downgrade is broken"),
    "drops the wrong column": (
        'with op.batch_alter_table("items") as batch:\n    batch.drop_column("name")',
        "column items.name VARCHAR(50) NULL is gone",
    ),
}


@pytest.mark.parametrize("broken", BROKEN_DOWNGRADES)
def test_a_broken_downgrade_is_reported_as_downgrade_failed_and_exits_4(
    project: Path, database_url: str, tmp_path: Path, broken: str
) -> None:
    downgrade, says = BROKEN_DOWNGRADES[broken]
    small_project(
        project,
        ("r1_items", CREATES_ITEMS, DROPS_ITEMS),
        ("r2_note", ADDS_NOTE, downgrade),
        ("r3_index", ADDS_INDEX, DROPS_INDEX),
    )

    done, data = verify(project, database_url, tmp_path)

    assert done.returncode == 4, done.stderr[-3000:]
    assert data["revisions_checked"] == 3  # verification goes on past the broken revision
    assert all(set(problem) == {"revision", "kind", "detail"} for problem in data["problems"])
    assert {p["revision"] for p in data["problems"]} == {"r2_note"}
    failed = [p["detail"] for p in data["problems"] if p["kind"] == "downgrade-failed"]
    assert len(failed) == 1 and says in failed[0], data
    assert "command failed" not in done.stderr


def test_a_downgrade_that_leaves_an_index_behind_is_a_trace_naming_it(
    project: Path, database_url: str, tmp_path: Path
) -> None:
    small_project(
        project,
        ("r1_items", CREATES_ITEMS, DROPS_ITEMS),
        ("r2_index", ADDS_INDEX, "pass"),
        ("r3_note", ADDS_NOTE, DROPS_NOTE),
    )

    done, data = verify(project, database_url, tmp_path, "--range", "r1_items:r3_note")

    assert done.returncode == 4, done.stderr[-3000:]
    assert data["revisions_checked"] == 2  # above the range's lower end only
    traces = [p for p in data["problems"] if p["kind"] == "trace-left"]
    assert [p["revision"] for p in traces] == ["r2_index"]
    assert "index ix_items_price on items (price) is still there" in traces[0]["detail"]
    assert "r3_note" not in {p["revision"] for p in data["problems"]}


def test_with_data_a_dropped_column_that_does_not_come_back_is_data_lost(
    project: Path, database_url: str, tmp_path: Path
) -> None:
    small_project(project, ("r1_items", CREATES_ITEMS, DROPS_ITEMS), ("r2_note", ADDS_NOTE, DROPS_NOTE))

    done, data = verify(project, database_url, tmp_path, "--with-data", "--no-backup")

    assert done.returncode == 4, done.stderr[-3000:]
    lost = {p["revision"]: p["detail"] for p in data["problems"] if p["kind"] == "data-lost"}
    assert "table items" in lost["r2_note"] and "note was 'seed-" in lost["r2_note"] and "is NULL" in lost["r2_note"]
    assert "table items" in lost["r1_items"] and "is gone" in lost["r1_items"]

    # With dbmigrate's backups (the default) the same downgrades lose nothing: the values come back.
    done, data = verify(project, database_url, tmp_path, "--with-data")

    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert data == {"revisions_checked": 2, "problems": []}


MANY_KINDS = """\
op.create_table(
    "kinds",
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("flag", sa.Boolean, nullable=False),
    sa.Column("day", sa.Date, nullable=False),
    sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("clock", sa.Time, nullable=False),
    sa.Column("doc", sa.JSON, nullable=False),
    sa.Column("mood", sa.Enum("happy", "sad", name="mood"), nullable=False),
    sa.Column("amount", sa.Numeric(8, 3), nullable=False),
    sa.Column("ratio", sa.Float, nullable=False),
    sa.Column("blob", sa.LargeBinary, nullable=False),
    sa.Column("token", sa.Uuid, nullable=False, unique=True),
    sa.Column("body", sa.Text, nullable=False),
    sa.Column("small", sa.SmallInteger, nullable=False),
    sa.Column("big", sa.BigInteger, nullable=False),
    sa.Column("code", sa.String(3), nullable=False),
    sa.Column("parent_id", sa.Integer, sa.ForeignKey("kinds.id"), nullable=True),
    sa.CheckConstraint("small >= 0", name="ck_kinds_small"),
)
op.create_table(
    "pairs",
    sa.Column("a", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("b", sa.String(10), primary_key=True),
)
op.create_table(
    "links",
    sa.Column("kind_id", sa.Integer, sa.ForeignKey("kinds.id"), primary_key=True),
    sa.Column("pa", sa.Integer, nullable=False),
    sa.Column("pb", sa.String(10), nullable=False),
    sa.ForeignKeyConstraint(["pa", "pb"], ["pairs.a", "pairs.b"]),
)
op.create_table("no_key", sa.Column("v", sa.String(20)), sa.Column("n", sa.Integer))
"""
DROPS_MANY_KINDS = """\
for table in ("links", "pairs", "no_key", "kinds"):
    op.drop_table(table)
if op.get_context().dialect.name == "postgresql":
    op.execute("DROP TYPE mood")
"""


def test_with_data_every_table_gets_a_row_whatever_its_keys_and_column_types(
    project: Path, database_url: str, tmp_path: Path
) -> None:
    small_project(project, ("r1_kinds", MANY_KINDS, DROPS_MANY_KINDS))

    # Without backups every dropped table loses its row: each report proves that a row was seeded there.
    done, data = verify(project, database_url, tmp_path, "--with-data", "--no-backup")

    assert done.returncode == 4, done.stderr[-3000:]
    assert kinds(data) == [("r1_kinds", "data-lost")] * 4
    lost = sorted(p["detail"].split(":")[0] for p in data["problems"])
    assert lost == ["table kinds", "table links", "table no_key", "table pairs"]
    assert "not seeded" not in done.stderr


def test_url_starts_from_the_tables_already_there_and_keeps_the_database(
    project: Path, database_url: str, tmp_path: Path
) -> None:
    engine = sa.create_engine(database_url)
    with engine.begin() as connection:
        connection.exec_driver_sql("CREATE TABLE legacy (id INTEGER PRIMARY KEY, title VARCHAR(40) NOT NULL)")
        connection.exec_driver_sql("INSERT INTO legacy (id, title) VALUES (1, 'made before the first revision')")
    engine.dispose()
    small_project(
        project,
        (
            "r1_legacy_note",
            'op.add_column("legacy", sa.Column("note", sa.String(200), nullable=True))\n'
            'op.create_index("ix_legacy_title", "legacy", ["title"])',
            'op.drop_index("ix_legacy_title", table_name="legacy")\n'
            'with op.batch_alter_table("legacy") as batch:\n    batch.drop_column("note")',
        ),
        ("r2_items", CREATES_ITEMS, DROPS_ITEMS),
    )
    # DATABASE_URL names a database that does not exist: with --url, only the given database is used.
    elsewhere = make_url(database_url).set(database=f"{make_url(database_url).database}_absent")
    if make_url(database_url).get_backend_name() == "sqlite":
        elsewhere = make_url(f"sqlite:///{tmp_path / 'absent' / 'absent.db'}")
    configured = elsewhere.render_as_string(hide_password=False)

    done, data = verify(project, configured, tmp_path, "--url", database_url, "--with-data")

    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert data == {"revisions_checked": 2, "problems": []}
    engine = sa.create_engine(database_url)
    with engine.connect() as connection:
        titles = [row[0] for row in connection.exec_driver_sql("SELECT title FROM legacy WHERE id = 1")]
    engine.dispose()
    assert titles == ["made before the first revision"]
    assert {"legacy", "items"} <= table_names(database_url)


def test_the_scratch_database_is_dropped_even_when_verify_stops_with_an_error(
    project: Path, database_url: str, tmp_path: Path
) -> None:
    env_py = project / "alembic" / "env.py"
    env_py.write_text(
        env_py.read_text().replace(
            "def run_on(connection) -> None:\n",
            "def run_on(connection) -> None:\n    raise RuntimeError('env.py is broken')\n",
        )
    )

    done, data = verify(project, database_url, tmp_path)  # asserts that nothing is left behind

    assert done.returncode == 2, done.stderr[-3000:]
    assert data["error"] == "ConfigurationError" and "env.py is broken" in data["message"]


@pytest.mark.parametrize("backend", ["postgresql", "mariadb"])
def test_a_user_who_may_not_create_databases_is_told_to_pass_url(
    project: Path, database_url: str, tmp_path: Path, backend: str
) -> None:
    user, password = f"dbm_nocreate_{uuid.uuid4().hex[:8]}", f"Pw-{uuid.uuid4().hex}"
    admin = sa.create_engine(POSTGRES_ADMIN if backend == "postgresql" else MARIADB_ADMIN, isolation_level="AUTOCOMMIT")
    database = make_url(database_url).database
    with admin.connect() as connection:
        if backend == "postgresql":
            connection.exec_driver_sql(f"CREATE ROLE {user} LOGIN NOCREATEDB PASSWORD '{password}'")
        else:
            connection.execute(sa.text(f"CREATE USER '{user}'@'%' IDENTIFIED BY '{password}'"))
            connection.execute(sa.text(f"GRANT ALL ON {database}.* TO '{user}'@'%'"))
    try:
        url = make_url(database_url).set(username=user, password=password).render_as_string(hide_password=False)
        done = run_dbmigrate("verify", cwd=project, database_url=url)
        json_done = run_dbmigrate("verify", "--format", "json", cwd=project, database_url=url)
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f"DROP ROLE {user}" if backend == "postgresql" else f"DROP USER '{user}'@'%'"))
        admin.dispose()

    assert done.returncode == 2, done.stdout + done.stderr
    errors = [str(event["message"]) for event in log_events(done.stderr) if event["event"] == "command failed"]
    assert len(errors) == 1
    assert "cannot create its scratch database" in errors[0] and "--url" in errors[0]
    assert password not in done.stdout + done.stderr + json_done.stdout + json_done.stderr
    assert json.loads(json_done.stdout)["exit_code"] == 2


def test_the_library_returns_the_problems_and_raises_on_request(project: Path, tmp_path: Path) -> None:
    small_project(project, ("r1_items", CREATES_ITEMS, DROPS_ITEMS), ("r2_index", ADDS_INDEX, "pass"))
    settings = dbmigrate.Settings.load(
        config_file=project / "alembic.ini",
        environ={},
        database_url=f"sqlite:///{tmp_path / 'app.db'}",
        termination_log="/nonexistent/termination-log",
    )

    result = dbmigrate.verify(settings=settings)

    assert result.revisions_checked == 2 and not result.ok
    assert [(p.revision, p.kind) for p in result.problems] == [
        ("r2_index", "trace-left"),
        ("r2_index", "upgrade-failed"),
    ]
    with pytest.raises(dbmigrate.VerificationFailed) as raised:
        result.raise_if_problems()
    assert raised.value.exit_code == 4 and "ix_items_price" in str(raised.value)


def test_an_empty_downgrade_is_a_trace_and_verify_goes_on_from_the_upgraded_schema_on_a_given_database(
    project: Path, database_url: str, tmp_path: Path
) -> None:
    small_project(
        project,
        ("r1_items", CREATES_ITEMS, DROPS_ITEMS),
        # Upgrading again runs the first statement (a no-op by then; it commits on MariaDB) and fails on the second.
        (
            "r2_note",
            'with op.batch_alter_table("items") as batch:\n'
            '    batch.alter_column("name", type_=sa.String(80), existing_type=sa.String(50), existing_nullable=True)\n'
            + ADDS_NOTE,
            '"""Nothing to undo."""\npass',
        ),
        ("r3_index", ADDS_INDEX, DROPS_INDEX),
    )

    # A database given with --url is never recreated: verify goes on because the schema is still r2's.
    done, data = verify(project, database_url, tmp_path, "--url", database_url)

    assert done.returncode == 4, done.stderr[-3000:]
    assert data["revisions_checked"] == 3 and "verify stopped early" not in done.stderr
    assert kinds(data) == [("r2_note", "trace-left"), ("r2_note", "upgrade-failed")]
    trace = data["problems"][0]["detail"]
    assert trace.startswith("the downgrade (its downgrade() is empty) left behind: ")
    assert "column items.note VARCHAR(200) NULL is still there" in trace
    assert "column items.name was VARCHAR(50) NULL, is VARCHAR(80) NULL" in trace
    engine = sa.create_engine(database_url)
    with engine.connect() as connection:
        assert [row[0] for row in connection.exec_driver_sql("SELECT version_num FROM alembic_version")] == ["r3_index"]
    engine.dispose()


def test_what_an_upgrade_removed_and_its_downgrade_did_not_bring_back_is_a_trace_not_a_failed_downgrade(
    project: Path, database_url: str, tmp_path: Path
) -> None:
    small_project(
        project,
        ("r1_items", CREATES_ITEMS, DROPS_ITEMS),
        ("r2_drop_name", 'with op.batch_alter_table("items") as batch:\n    batch.drop_column("name")', "pass"),
    )

    done, data = verify(project, database_url, tmp_path)

    assert done.returncode == 4, done.stderr[-3000:]
    assert kinds(data) == [("r2_drop_name", "trace-left"), ("r2_drop_name", "upgrade-failed")]
    assert "column items.name VARCHAR(50) NULL is not restored" in data["problems"][0]["detail"]


# Like a PostgreSQL enum type that SQLAlchemy creates once per run: r2 needs what r1 did in the same run.
R1_THEN_R2_NEEDING_IT_IN_THE_SAME_RUN = (
    ("r1_items", CREATES_ITEMS + "op.get_context().impl.r1_ran = True", DROPS_ITEMS),
    (
        "r2_needs_r1_in_the_same_run",
        'if not getattr(op.get_context().impl, "r1_ran", False):\n'
        '    raise RuntimeError("r1 did not run in this run")\n' + ADDS_NOTE,
        DROPS_NOTE,
    ),
)


def test_a_revision_that_upgrades_only_in_one_run_with_the_one_below_does_not_hide_the_revisions_above(
    project: Path, database_url: str, tmp_path: Path
) -> None:
    small_project(project, *R1_THEN_R2_NEEDING_IT_IN_THE_SAME_RUN, ("r3_index", ADDS_INDEX, DROPS_INDEX))

    done, data = verify(project, database_url, tmp_path)

    assert done.returncode == 4, done.stderr[-3000:]
    assert data["revisions_checked"] == 3 and "verify stopped early" not in done.stderr
    assert kinds(data) == [("r2_needs_r1_in_the_same_run", "upgrade-failed")]
    detail = data["problems"][0]["detail"]
    assert "r1 did not run in this run" in detail
    assert "Upgrading an empty database to r2_needs_r1_in_the_same_run in one run works" in detail


READS_KINDS = """\
for (kind,) in op.get_bind().exec_driver_sql("SELECT kind FROM items WHERE kind IS NOT NULL"):
    if kind not in ("book", "pen"):
        raise ValueError(f"unknown kind {kind!r}")
"""


def test_with_data_made_up_values_that_a_migration_cannot_convert_are_not_its_problem(
    project: Path, database_url: str, tmp_path: Path
) -> None:
    small_project(
        project,
        ("r1_items", CREATES_ITEMS, DROPS_ITEMS),
        # The downgrade maps every kind (like an ORM enum would): verify's seeded "seed-N" is none of them.
        (
            "r2_kind",
            'op.add_column("items", sa.Column("kind", sa.String(10), nullable=True))',
            READS_KINDS + 'with op.batch_alter_table("items") as batch:\n    batch.drop_column("kind")',
        ),
        # Its upgrade reads the kinds too: the rows seeded for r2's round trip must be gone by then.
        (
            "r3_kind_index",
            READS_KINDS + 'op.create_index("ix_items_kind", "items", ["kind"])',
            'op.drop_index("ix_items_kind", table_name="items")',
        ),
    )

    done, data = verify(project, database_url, tmp_path, "--with-data")

    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert data == {"revisions_checked": 3, "problems": []}
    assert "fails on the made-up rows verify seeded and works without them" in done.stderr


def test_with_data_a_seeded_id_is_not_handed_out_again_to_a_row_a_downgrade_inserts(
    project: Path, database_url: str, tmp_path: Path
) -> None:
    small_project(
        project,
        ("r1_items", CREATES_ITEMS, DROPS_ITEMS),
        (
            "r2_note",
            ADDS_NOTE,
            "op.execute(\"INSERT INTO items (name, price) VALUES ('put back by the downgrade', 1)\")\n" + DROPS_NOTE,
        ),
    )

    done, data = verify(project, database_url, tmp_path, "--with-data")

    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert data == {"revisions_checked": 2, "problems": []}


def test_a_partial_index_round_trips_and_a_downgrade_that_loses_its_where_is_a_trace(
    project: Path, database_url: str, tmp_path: Path
) -> None:
    partial = (
        'op.create_index("ix_items_priced", "items", ["price"], '
        'sqlite_where=sa.text("price > 0"), postgresql_where=sa.text("price > 0"))'
    )
    small_project(
        project,
        ("r1_items", CREATES_ITEMS, DROPS_ITEMS),
        ("r2_partial", partial, 'op.drop_index("ix_items_priced", table_name="items")'),
    )

    assert_no_problems(project, database_url, tmp_path, checked=2)

    # An upgrade replacing it, whose downgrade brings it back without its WHERE: named, with the WHERE.
    add_revision(
        project,
        "r3_whole",
        "r2_partial",
        'op.drop_index("ix_items_priced", table_name="items")',
        'op.create_index("ix_items_priced", "items", ["price"])',
    )

    done, data = verify(project, database_url, tmp_path)

    if make_url(database_url).get_backend_name() == "mysql":
        assert done.returncode == 0, done.stdout + done.stderr[-3000:]  # MySQL/MariaDB have no partial indexes
        return
    assert done.returncode == 4, done.stdout + done.stderr[-3000:]
    assert kinds(data) == [("r3_whole", "trace-left")]
    assert "index ix_items_priced on items was (price)" in data["problems"][0]["detail"]
    assert "_where=" in data["problems"][0]["detail"] and "price >" in data["problems"][0]["detail"]


def test_a_default_written_again_in_extra_parentheses_is_the_same_default(
    project: Path, database_url: str, tmp_path: Path
) -> None:
    def creates_counters(default: str) -> str:
        return (
            'op.create_table("counters", sa.Column("id", sa.Integer, primary_key=True), '
            f'sa.Column("start", sa.Integer, nullable=False, server_default=sa.text("{default}")))'
        )

    # SQLite keeps a default as written: the downgrade recreates the table with the same default, in
    # more parentheses (as Alembic's batch mode and autogenerate write reflected defaults back).
    small_project(
        project,
        ("r1_counters", creates_counters("(1 + 1)"), 'op.drop_table("counters")'),
        ("r2_drop_counters", 'op.drop_table("counters")', creates_counters("((( 1 + 1 )))")),
    )

    assert_no_problems(project, database_url, tmp_path, checked=2)


def test_a_number_or_boolean_default_written_quoted_or_unquoted_is_the_same_default(
    project: Path, database_url: str, tmp_path: Path
) -> None:
    def creates_flags(offset: str, enabled: str) -> str:
        return (
            'op.create_table("flags", sa.Column("id", sa.Integer, primary_key=True), '
            f'sa.Column("offset", sa.Integer, nullable=False, server_default={offset}), '
            f'sa.Column("enabled", sa.Boolean, nullable=False, server_default={enabled}))'
        )

    # SQLite keeps a default as written: '-1' and -1, false and '0' store the same values.
    small_project(
        project,
        ("r1_flags", creates_flags('"-1"', "sa.false()"), 'op.drop_table("flags")'),
        ("r2_drop_flags", 'op.drop_table("flags")', creates_flags('sa.text("-1")', '"0"')),
    )

    assert_no_problems(project, database_url, tmp_path, checked=2)


def test_unnamed_check_constraints_the_server_numbers_again_in_another_order_are_not_a_trace(
    project: Path, database_url: str, tmp_path: Path
) -> None:
    def creates_limits(*checks: str) -> str:
        constraints = ", ".join(f'sa.CheckConstraint("{check}")' for check in checks)
        return (
            'op.create_table("limits", sa.Column("id", sa.Integer, primary_key=True), '
            f'sa.Column("low", sa.Integer), sa.Column("high", sa.Integer), {constraints})'
        )

    # MariaDB names unnamed CHECKs CONSTRAINT_1, CONSTRAINT_2 in table order: recreated in another order,
    # the same constraints swap names.
    small_project(
        project,
        ("r1_limits", creates_limits("low >= 0", "high >= 0"), 'op.drop_table("limits")'),
        ("r2_drop_limits", 'op.drop_table("limits")', creates_limits("high >= 0", "low >= 0")),
    )

    assert_no_problems(project, database_url, tmp_path, checked=2)


@pytest.mark.parametrize("backend", ["postgresql", "mariadb"])  # SQLite has no server
def test_the_scratch_database_needs_no_configured_database_on_the_server(
    project: Path, database_url: str, tmp_path: Path
) -> None:
    missing = make_url(database_url).set(database=f"absent_{uuid.uuid4().hex[:8]}")
    small_project(project, ("r1_items", CREATES_ITEMS, DROPS_ITEMS))

    done, data = verify(project, missing.render_as_string(hide_password=False), tmp_path)

    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert data == {"revisions_checked": 1, "problems": []}


CREATES_PRODUCTS = """\
op.create_table(
    "products",
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(50), nullable=False),
    sa.Column("slug", sa.String(50), nullable=True),
    sa.Column("cents", sa.Integer, nullable=False),
)
"""


def test_with_data_an_upgrade_that_converts_rows_is_no_loss_but_one_that_changes_them_on_every_run_is(
    project: Path, database_url: str, tmp_path: Path
) -> None:
    small_project(
        project,
        ("r1_products", CREATES_PRODUCTS, 'op.drop_table("products")'),
        # Fills slug from name: verify's made-up slug is converted once, and stays so on the next round trip.
        (
            "r2_slugs",
            'op.execute("UPDATE products SET slug = lower(name) WHERE slug IS NULL OR slug <> lower(name)")',
            "pass",
        ),
    )

    done, data = verify(project, database_url, tmp_path, "--with-data")

    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert data == {"revisions_checked": 2, "problems": []}
    assert "a conversion of made-up values, not a loss" in done.stderr

    # Adds again on every upgrade, and the downgrade does not subtract: every round trip damages it.
    add_revision(project, "r3_cents", "r2_slugs", 'op.execute("UPDATE products SET cents = cents + 1 WHERE id > 0")')

    done, data = verify(project, database_url, tmp_path, "--with-data")

    assert done.returncode == 4, done.stdout + done.stderr[-3000:]
    assert kinds(data) == [("r3_cents", "data-lost")]
    assert "the upgrade changes it again on every round trip" in data["problems"][0]["detail"]


def test_with_data_a_loss_in_a_downgrade_that_cannot_be_analysed_offline_is_backed_up_as_it_runs(
    project: Path, database_url: str, tmp_path: Path
) -> None:
    # The downgrade inspects the live database: dbmigrate's offline analysis cannot run it, so the
    # column it drops is seen only as the statement runs; it is backed up then, and the upgrade restores it.
    inspects = 'if "note" in [c["name"] for c in sa.inspect(op.get_bind()).get_columns("items")]:\n'
    small_project(
        project,
        ("r1_items", CREATES_ITEMS, DROPS_ITEMS),
        ("r2_note", ADDS_NOTE, inspects + "\n".join("    " + line for line in DROPS_NOTE.splitlines())),
    )

    done, data = verify(project, database_url, tmp_path, "--with-data")

    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert data == {"revisions_checked": 2, "problems": []}
    assert "data loss seen while the step ran (not analysed offline)" in done.stderr


def test_a_migration_that_prints_keeps_the_json_clean_and_gate_findings_are_not_warnings_on_every_step(
    project: Path, database_url: str, tmp_path: Path
) -> None:
    small_project(
        project,
        ("r1_items", CREATES_ITEMS, DROPS_ITEMS),
        (
            "r2_sku",
            'print("migrating the sku")\n'
            'op.add_column("items", sa.Column("sku", sa.String(20), nullable=False, server_default="none"))\n'
            'op.create_index("ix_items_sku", "items", ["sku"])',
            'op.drop_index("ix_items_sku", table_name="items")\n'
            'with op.batch_alter_table("items") as batch:\n    batch.drop_column("sku")',
        ),
    )

    # dbmigrate upgrade warns about the gate's findings (on PostgreSQL at least: CREATE INDEX without CONCURRENTLY).
    upgraded = run_dbmigrate("upgrade", "head", cwd=project, database_url=database_url)
    assert upgraded.returncode == 0, upgraded.stderr[-3000:]
    findings = [e for e in log_events(upgraded.stderr) if e.get("event") == "check finding"]
    assert findings or make_url(database_url).get_backend_name() != "postgresql"
    assert all(e["level"] == "warning" for e in findings)

    done, data = verify(project, database_url, tmp_path)  # parses stdout as JSON

    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert data == {"revisions_checked": 2, "problems": []}
    assert "migrating the sku" in done.stderr
    events = log_events(done.stderr)
    assert not [e for e in events if e.get("event") == "check finding"]  # verify ran the same steps three times
    assert bool(findings) == bool([e for e in events if "gate's findings on verify's steps" in str(e.get("event"))])


@pytest.mark.parametrize("backend", ["sqlite"])  # the only one that accepts a foreign key to a missing table
def test_with_data_a_foreign_key_to_a_table_that_is_not_there_does_not_stop_verify(
    project: Path, database_url: str, tmp_path: Path
) -> None:
    # SQLite does not check that a foreign key's table exists (an app creating that table elsewhere).
    small_project(
        project,
        (
            "r1_tags",
            'op.execute("CREATE TABLE tags (id INTEGER PRIMARY KEY, event_id INTEGER REFERENCES events (id))")',
            'op.drop_table("tags")',
        ),
        (
            "r2_tags_index",
            'op.create_index("ix_tags_event", "tags", ["event_id"])',
            'op.drop_index("ix_tags_event", table_name="tags")',
        ),
    )

    done, data = verify(project, database_url, tmp_path, "--with-data")

    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert data == {"revisions_checked": 2, "problems": []}
    assert "not seeded" not in done.stderr


CREATES_RUNS = """\
op.create_table("runs", sa.Column("id", sa.Integer, primary_key=True), sa.Column("run_key", sa.String(36)))
"""
HYPHENS_OUT = """\
op.execute("UPDATE runs SET run_key = REPLACE(run_key, '-', '')")
with op.batch_alter_table("runs") as batch:
    batch.alter_column("run_key", type_=sa.String(32), existing_type=sa.String(36))
"""
HYPHENS_BACK = """\
with op.batch_alter_table("runs") as batch:
    batch.alter_column("run_key", type_=sa.String(36), existing_type=sa.String(32))
groups = [f"SUBSTR(run_key, {start}, {length})" for start, length in [(1, 8), (9, 4), (13, 4), (17, 4), (21, 12)]]
pieces = [piece for group in groups for piece in (group, "'-'")][:-1]
joined = f"CONCAT({', '.join(pieces)})" if op.get_context().dialect.name == "mysql" else " || ".join(pieces)
op.execute(f"UPDATE runs SET run_key = {joined} WHERE run_key IS NOT NULL")
"""


def test_with_data_a_uuid_kept_as_text_and_reshaped_by_a_revision_round_trips(
    project: Path, database_url: str, tmp_path: Path
) -> None:
    small_project(
        project, ("r1_runs", CREATES_RUNS, 'op.drop_table("runs")'), ("r2_compact_keys", HYPHENS_OUT, HYPHENS_BACK)
    )

    done, data = verify(project, database_url, tmp_path, "--with-data")

    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert data == {"revisions_checked": 2, "problems": []}


def backup_copies(database_url: str, table: str) -> list[str]:
    """Copies of ``table`` in the backup schema (PostgreSQL), the server's backup database (MariaDB) or beside it."""
    backend = make_url(database_url).get_backend_name()
    if backend == "sqlite":
        return sorted(name for name in table_names(database_url) if name.startswith(f"dbmigrate_backup__{table}"))
    with connect(database_url) as connection:  # on MariaDB the backup "schema" is the server's backup database
        inspector = sa.inspect(connection)
        if "dbmigrate_backup" not in inspector.get_schema_names():
            return []
        return sorted(name for name in inspector.get_table_names(schema="dbmigrate_backup") if name.startswith(table))


def schemas_and_files(database_url: str) -> list[str]:
    """A PostgreSQL database's schemas, or the files beside a SQLite one (MariaDB's schemas are the server's)."""
    parsed = make_url(database_url)
    if parsed.get_backend_name() == "sqlite":
        path = Path(str(parsed.database))
        return sorted(p.name for p in path.parent.iterdir() if p.name.startswith(path.name) and p != path)
    if parsed.get_backend_name() == "mysql":
        return []
    with connect(database_url) as connection:
        return sorted(sa.inspect(connection).get_schema_names())


def test_verify_on_a_given_database_leaves_nothing_of_its_own_behind(
    project: Path, database_url: str, tmp_path: Path
) -> None:
    table = f"t_{uuid.uuid4().hex[:10]}"  # the MariaDB backup database is the server's: tell this test's copies apart
    small_project(
        project,
        ("r1_table", CREATES_ITEMS.replace('"items"', f'"{table}"'), f'op.drop_table("{table}")'),
        ("r2_note", ADDS_NOTE.replace('"items"', f'"{table}"'), DROPS_NOTE.replace('"items"', f'"{table}"')),
        # Backed up, then failing: MariaDB has dropped the column for good by then (its DDL commits).
        (
            "r3_failing_downgrade",
            f'op.add_column("{table}", sa.Column("extra", sa.String(20), nullable=True))',
            f'with op.batch_alter_table("{table}") as batch:\n    batch.drop_column("extra")\n'
            'raise RuntimeError("the downgrade breaks after dropping extra")',
        ),
    )
    before = schemas_and_files(database_url)

    done, data = verify(project, database_url, tmp_path, "--url", database_url, "--with-data")

    assert done.returncode == 4, done.stdout + done.stderr[-3000:]
    assert ("r3_failing_downgrade", "downgrade-failed") in kinds(data)
    assert [p["revision"] for p in data["problems"]] == ["r3_failing_downgrade"] * len(data["problems"])
    assert backup_copies(database_url, table) == []
    assert schemas_and_files(database_url) == before  # no backup schema, no lock file
    # What the revisions made stays (verify leaves the database at the last revision checked); nothing of dbmigrate's.
    leftovers = table_names(database_url) - {table, "alembic_version"}
    if make_url(database_url).get_backend_name() == "mysql":
        # The failed downgrade is partially applied there: the history that says so, and how to repair it, stays.
        assert leftovers == {"dbmigrate_history"}, done.stderr[-3000:]
    else:
        assert leftovers == set(), done.stderr[-3000:]


def test_an_empty_downgrade_is_a_trace_worded_alike_on_every_dialect_whatever_follows_it(
    project: Path, database_url: str, tmp_path: Path
) -> None:
    small_project(
        project,
        ("r1_items", CREATES_ITEMS, "pass"),
        # Nothing the schema snapshot sees: only the upgrade again, failing on the row it inserts, shows it.
        ("r2_first_item", "op.execute(\"INSERT INTO items (id, name, price) VALUES (1, 'first', 1.5)\")", "pass"),
        ("r3_index", ADDS_INDEX, DROPS_INDEX),
    )

    done, data = verify(project, database_url, tmp_path)

    assert done.returncode == 4, done.stderr[-3000:]
    assert data["revisions_checked"] == 3 and "verify stopped early" not in done.stderr
    assert kinds(data) == [
        ("r1_items", "trace-left"),
        ("r1_items", "upgrade-failed"),
        ("r2_first_item", "trace-left"),
        ("r2_first_item", "upgrade-failed"),
    ]
    details = [p["detail"] for p in data["problems"]]
    assert details[0] == "the downgrade (its downgrade() is empty) left behind: table items is still there"
    assert details[2].startswith("the downgrade (its downgrade() is empty) left behind what its upgrade did: ")


def test_a_range_tells_a_revision_that_upgrades_only_in_one_run_as_the_full_run_does(
    project: Path, database_url: str, tmp_path: Path
) -> None:
    small_project(project, *R1_THEN_R2_NEEDING_IT_IN_THE_SAME_RUN)

    done, data = verify(project, database_url, tmp_path, "--range", "r1_items:r2_needs_r1_in_the_same_run")

    assert done.returncode == 4, done.stderr[-3000:]
    assert data["revisions_checked"] == 1
    assert kinds(data) == [("r2_needs_r1_in_the_same_run", "upgrade-failed")]
    detail = data["problems"][0]["detail"]
    assert "r1 did not run in this run" in detail
    assert detail.endswith(
        "(Upgrading an empty database to r2_needs_r1_in_the_same_run in one run works: it needs what an earlier "
        "revision did in the same run.)"
    )
