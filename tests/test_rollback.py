"""`dbmigrate rollback` with an older image's scripts: archived revisions, the schema policy, backups, no loss.

Two copies of the example project stand for two images: ``older`` (image N, up to 0006) and
``newer`` (image N+1, which adds 0007: a column on customers and a coupons table).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import shutil
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.conftest import EXAMPLE_HEAD, add_revision, current_revisions, history_rows, run_dbmigrate

NEWER_HEAD = "0007_loyalty"
ADDS_COLUMN_AND_TABLE = """\
op.add_column("customers", sa.Column("loyalty_points", sa.Integer, nullable=True))
op.create_table(
    "coupons",
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("customer_id", sa.Integer, sa.ForeignKey("customers.id"), nullable=False),
    sa.Column("code", sa.String(40), nullable=False),
)
"""
DROPS_COLUMN_AND_TABLE = """\
op.drop_table("coupons")
with op.batch_alter_table("customers") as batch:
    batch.drop_column("loyalty_points")
"""


@pytest.fixture
def older(project: Path) -> Path:
    return project


@pytest.fixture
def newer(project: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "newer"
    shutil.copytree(project, copy)
    add_revision(copy, NEWER_HEAD, EXAMPLE_HEAD, ADDS_COLUMN_AND_TABLE, DROPS_COLUMN_AND_TABLE)
    return copy


def ok(proc: object) -> None:
    assert proc.returncode == 0, proc.stdout + proc.stderr  # type: ignore[attr-defined]


def write_as_newer_app(url: str) -> tuple[dict[int, int], list[tuple[int, int, str]]]:
    """What the newer application writes into its new column and table; returns both as read back."""
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        connection.execute(sa.text("UPDATE customers SET loyalty_points = id * 7 WHERE id <= 50"))
        ids = [row[0] for row in connection.execute(sa.text("SELECT id FROM customers ORDER BY id LIMIT 5"))]
        for n, customer in enumerate(ids, start=1):
            connection.execute(
                sa.text("INSERT INTO coupons (id, customer_id, code) VALUES (:id, :customer, :code)"),
                {"id": n, "customer": customer, "code": f"WELCOME-{n}"},
            )
    values = newer_data(url)
    engine.dispose()
    return values


def newer_data(url: str) -> tuple[dict[int, int], list[tuple[int, int, str]]]:
    engine = sa.create_engine(url)
    with engine.connect() as connection:
        query = "SELECT id, loyalty_points FROM customers WHERE loyalty_points IS NOT NULL"
        points = {row[0]: row[1] for row in connection.execute(sa.text(query))}
        coupons = [
            tuple(row) for row in connection.execute(sa.text("SELECT id, customer_id, code FROM coupons ORDER BY id"))
        ]
    engine.dispose()
    return points, coupons


def columns_of(url: str, table: str) -> set[str]:
    engine = sa.create_engine(url)
    try:
        inspector = sa.inspect(engine)
        return {c["name"] for c in inspector.get_columns(table)} if inspector.has_table(table) else set()
    finally:
        engine.dispose()


def test_rollback_to_the_older_image_and_upgrading_again_loses_nothing(
    older: Path, newer: Path, database_url: str
) -> None:
    ok(run_dbmigrate("upgrade", cwd=newer, database_url=database_url))
    written = write_as_newer_app(database_url)
    assert len(written[0]) == 50 and len(written[1]) == 5

    rollback = run_dbmigrate("rollback", "--schema", "always", "--format", "json", cwd=older, database_url=database_url)

    ok(rollback)
    result = json.loads(rollback.stdout)
    assert (result["decision"], result["after"], result["from_archive"]) == (
        "downgraded",
        [EXAMPLE_HEAD],
        [NEWER_HEAD],
    )
    assert current_revisions(database_url) == {EXAMPLE_HEAD}
    assert "loyalty_points" not in columns_of(database_url, "customers")
    assert columns_of(database_url, "coupons") == set()

    ok(run_dbmigrate("upgrade", cwd=newer, database_url=database_url))

    assert newer_data(database_url) == written, "values written by the newer code did not all come back"
    backups = json.loads(
        run_dbmigrate("backups", "list", "--format", "json", cwd=newer, database_url=database_url).stdout
    )
    assert sorted((b["source_table"], b["row_count"], b["status"]) for b in backups if b["revision"] == NEWER_HEAD) == [
        ("coupons", 5, "restored"),
        ("customers", 200, "restored"),
    ]


@pytest.mark.parametrize("backend", ["postgresql"])
def test_restored_rows_do_not_collide_with_new_ids(older: Path, newer: Path, database_url: str) -> None:
    ok(run_dbmigrate("upgrade", cwd=newer, database_url=database_url))
    write_as_newer_app(database_url)
    ok(run_dbmigrate("rollback", "--schema", "always", cwd=older, database_url=database_url))
    ok(run_dbmigrate("upgrade", cwd=newer, database_url=database_url))

    engine = sa.create_engine(database_url)
    with engine.begin() as connection:
        customer = connection.execute(sa.text("SELECT MIN(id) FROM customers")).scalar_one()
        new_id = connection.execute(
            sa.text("INSERT INTO coupons (customer_id, code) VALUES (:c, 'NEW') RETURNING id"), {"c": customer}
        ).scalar_one()
    engine.dispose()
    assert new_id == 6


def test_auto_keeps_a_schema_the_older_code_can_live_with(older: Path, newer: Path, database_url: str) -> None:
    ok(run_dbmigrate("upgrade", cwd=newer, database_url=database_url))
    written = write_as_newer_app(database_url)

    rollback = run_dbmigrate("rollback", "--format", "json", cwd=older, database_url=database_url)

    ok(rollback)
    result = json.loads(rollback.stdout)
    assert result["decision"] == "kept"
    assert "not breaking" in result["reason"] or "no revision above" in result["reason"]
    assert current_revisions(database_url) == {NEWER_HEAD}
    assert newer_data(database_url) == written
    decision = [r for r in history_rows(database_url) if r["direction"] == "rollback"]
    assert [(r["status"], r["revision"], r["from_revision"]) for r in decision] == [("kept", NEWER_HEAD, EXAMPLE_HEAD)]
    assert decision[0]["note"] == result["reason"]
    state = run_dbmigrate("status", "--check", "--format", "json", cwd=older, database_url=database_url)
    ok(state)
    assert json.loads(state.stdout)["kept_ahead"].endswith(result["reason"])
    # The older image's own migration Job then finds nothing to do instead of failing on a newer database.
    again = run_dbmigrate("upgrade", "--format", "json", cwd=older, database_url=database_url)
    ok(again)
    assert json.loads(again.stdout)["outcome"] == "nothing-to-do"


@pytest.mark.parametrize("backend", ["sqlite"])
def test_auto_downgrades_when_a_newer_revision_breaks_the_older_code(
    older: Path, project: Path, tmp_path: Path, database_url: str
) -> None:
    renames = tmp_path / "renames"
    shutil.copytree(project, renames)
    add_revision(
        renames,
        "0007_rename_email",
        EXAMPLE_HEAD,
        'with op.batch_alter_table("customers") as batch:\n    batch.alter_column("email", new_column_name="mail")',
        'with op.batch_alter_table("customers") as batch:\n    batch.alter_column("mail", new_column_name="email")',
    )
    ok(run_dbmigrate("upgrade", cwd=renames, database_url=database_url))

    rollback = run_dbmigrate("rollback", "--format", "json", cwd=older, database_url=database_url)

    ok(rollback)
    result = json.loads(rollback.stdout)
    assert result["decision"] == "downgraded"
    assert "0007_rename_email is breaking" in result["reason"] and "BR003" in result["reason"]
    assert current_revisions(database_url) == {EXAMPLE_HEAD}
    assert "email" in columns_of(database_url, "customers")


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
@pytest.mark.parametrize("forge", ["source only", "source and its sha256"])
def test_a_tampered_archive_entry_is_refused_and_nothing_runs(
    older: Path, newer: Path, database_url: str, forge: str
) -> None:
    key = {"DBMIGRATE_ARCHIVE_KEY": "k3y-for-the-archive"}
    ok(run_dbmigrate("upgrade", cwd=newer, database_url=database_url, **key))
    engine = sa.create_engine(database_url)
    with engine.begin() as connection:
        source = connection.execute(
            sa.text("SELECT source FROM dbmigrate_archive WHERE revision = :r"), {"r": NEWER_HEAD}
        ).scalar_one()
        evil = source.replace('op.drop_table("coupons")', 'op.drop_table("coupons")\n    op.drop_table("orders")')
        assert evil != source
        digest = hashlib.sha256(evil.encode()).hexdigest() if forge == "source and its sha256" else None
        connection.execute(
            sa.text("UPDATE dbmigrate_archive SET source = :s, sha256 = COALESCE(:d, sha256) WHERE revision = :r"),
            {"s": evil, "d": digest, "r": NEWER_HEAD},
        )
    engine.dispose()

    rollback = run_dbmigrate("rollback", "--schema", "always", cwd=older, database_url=database_url, **key)

    assert rollback.returncode == 4, rollback.stdout + rollback.stderr
    assert f"Refusing to run archived revision {NEWER_HEAD}" in rollback.stderr
    assert current_revisions(database_url) == {NEWER_HEAD}
    assert "loyalty_points" in columns_of(database_url, "customers")
    assert columns_of(database_url, "orders")
    assert not [r for r in history_rows(database_url) if r["direction"] in ("downgrade", "rollback")]


ARCHIVE_KEY = {"DBMIGRATE_ARCHIVE_KEY": "k3y-for-the-archive"}
# Version 1 of 0007, later fixed: its downgrade also drops orders. Running it again is what a replay would do.
DROPS_ORDERS_TOO = DROPS_COLUMN_AND_TABLE + 'op.drop_table("orders")\n'


def archive_two_versions(newer: Path, database_url: str) -> dict[str, object]:
    """Upgrade with 0007's first version, then with its fixed one (the fixture's), under the key; returns v1's row."""
    add_revision(newer, NEWER_HEAD, EXAMPLE_HEAD, ADDS_COLUMN_AND_TABLE, DROPS_ORDERS_TOO)
    ok(run_dbmigrate("upgrade", cwd=newer, database_url=database_url, **ARCHIVE_KEY))
    first = archive_row(database_url, NEWER_HEAD)
    add_revision(newer, NEWER_HEAD, EXAMPLE_HEAD, ADDS_COLUMN_AND_TABLE, DROPS_COLUMN_AND_TABLE)
    ok(run_dbmigrate("upgrade", cwd=newer, database_url=database_url, **ARCHIVE_KEY))
    return first


def archive_table_of(connection: sa.Connection) -> sa.Table:
    return sa.Table("dbmigrate_archive", sa.MetaData(), autoload_with=connection)


def archive_row(url: str, revision: str) -> dict[str, object]:
    """Every column of one archive row, as stored."""
    engine = sa.create_engine(url)
    with engine.connect() as connection:
        table = archive_table_of(connection)
        row = connection.execute(sa.select(table).where(table.c.revision == revision)).one()
    engine.dispose()
    return dict(row._mapping)


def write_archive_row(url: str, revision: str, values: dict[str, object] | None) -> None:
    """Replace the archive row of ``revision`` with ``values`` (all columns); delete it when None."""
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        table = archive_table_of(connection)
        connection.execute(table.delete().where(table.c.revision == revision))
        if values is not None:
            connection.execute(table.insert(), values)
    engine.dispose()


def assert_nothing_ran(database_url: str) -> None:
    assert current_revisions(database_url) == {NEWER_HEAD}
    assert "loyalty_points" in columns_of(database_url, "customers")
    assert columns_of(database_url, "orders")
    assert not [r for r in history_rows(database_url) if r["direction"] in ("downgrade", "rollback")]


@pytest.mark.parametrize("forge", ["the whole older row", "older source, sha256 and signatures", "newest deleted"])
def test_an_older_signed_archive_entry_written_back_is_refused_until_an_upgrade_archives_it_again(
    older: Path, newer: Path, database_url: str, forge: str
) -> None:
    first = archive_two_versions(newer, database_url)
    if forge == "the whole older row":
        write_archive_row(database_url, NEWER_HEAD, first)
    elif forge == "older source, sha256 and signatures":
        signed = ("source", "sha256", "signature", "seal")
        newest = archive_row(database_url, NEWER_HEAD)
        write_archive_row(database_url, NEWER_HEAD, {**newest, **{column: first[column] for column in signed}})
    else:
        write_archive_row(database_url, NEWER_HEAD, None)

    rollback = run_dbmigrate("rollback", "--schema", "always", cwd=older, database_url=database_url, **ARCHIVE_KEY)

    assert rollback.returncode == 4, rollback.stdout + rollback.stderr
    assert f"Refusing to run archived revision {NEWER_HEAD}" in rollback.stderr
    reason = {
        "the whole older row": "an older entry was written back",
        "older source, sha256 and signatures": "its signature does not verify",
        "newest deleted": "the archive's signed manifest lists it, but its entry is gone",
    }[forge]
    assert reason in rollback.stderr and "`dbmigrate upgrade`" in rollback.stderr
    assert_nothing_ran(database_url)

    ok(run_dbmigrate("upgrade", cwd=newer, database_url=database_url, **ARCHIVE_KEY))

    assert archive_row(database_url, NEWER_HEAD)["version"] == 2, "the version went back with the row written back"
    ok(run_dbmigrate("rollback", "--schema", "always", cwd=older, database_url=database_url, **ARCHIVE_KEY))
    assert current_revisions(database_url) == {EXAMPLE_HEAD}
    assert columns_of(database_url, "orders"), "the first version's downgrade ran, not the newest"


def test_an_untouched_signed_archive_rolls_back_through_the_newest_version(
    older: Path, newer: Path, database_url: str
) -> None:
    first = archive_two_versions(newer, database_url)
    newest = archive_row(database_url, NEWER_HEAD)
    assert (first["version"], newest["version"]) == (1, 2)
    assert newest["run_id"] != first["run_id"] and newest["seal"] != first["seal"]

    rollback = run_dbmigrate(
        "rollback", "--schema", "always", "--format", "json", cwd=older, database_url=database_url, **ARCHIVE_KEY
    )

    ok(rollback)
    assert json.loads(rollback.stdout)["from_archive"] == [NEWER_HEAD]
    assert current_revisions(database_url) == {EXAMPLE_HEAD}
    assert "loyalty_points" not in columns_of(database_url, "customers")
    assert columns_of(database_url, "orders"), "the first version's downgrade ran, not the newest"


def rewrite_as_previous_format(url: str, key: str) -> None:
    """Turn the archive into what earlier dbmigrate versions wrote: no version, seal or manifest, its own signature."""
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        current = archive_table_of(connection)
        rows = [dict(r._mapping) for r in connection.execute(sa.select(current)) if r.revision != "@manifest"]
        current.drop(connection)
        previous = sa.Table(
            "dbmigrate_archive",
            sa.MetaData(),
            sa.Column("revision", sa.String(255), primary_key=True),
            sa.Column("down_revisions", sa.Text, nullable=False),
            sa.Column("filename", sa.String(255), nullable=False),
            sa.Column("source", sa.Text, nullable=False),
            sa.Column("sha256", sa.String(64), nullable=False),
            sa.Column("signature", sa.String(64)),
            sa.Column("archived_at", sa.DateTime, nullable=False),
            sa.Column("run_id", sa.String(32), nullable=False),
        )
        previous.create(connection)
        kept = [column.name for column in previous.columns]
        connection.execute(
            previous.insert(),
            [{**{c: row[c] for c in kept}, "signature": previous_signature(key, row)} for row in rows],
        )
    engine.dispose()


def previous_signature(key: str, row: dict[str, object]) -> str:
    """The signature earlier dbmigrate versions wrote: HMAC-SHA256 of [revision, down revisions, sha256]."""
    message = json.dumps([row["revision"], json.loads(str(row["down_revisions"])), row["sha256"]])
    return hmac.new(key.encode(), message.encode(), hashlib.sha256).hexdigest()


def test_an_archive_in_the_previous_format_is_refused_until_an_upgrade_signs_it_anew(
    older: Path, newer: Path, database_url: str
) -> None:
    key = ARCHIVE_KEY["DBMIGRATE_ARCHIVE_KEY"]
    ok(run_dbmigrate("upgrade", cwd=newer, database_url=database_url, **ARCHIVE_KEY))
    rewrite_as_previous_format(database_url, key)

    refused = run_dbmigrate("rollback", "--schema", "always", cwd=older, database_url=database_url, **ARCHIVE_KEY)

    assert refused.returncode == 4, refused.stdout + refused.stderr
    assert f"Refusing to run archived revision {NEWER_HEAD}" in refused.stderr
    assert "archived by an earlier dbmigrate version" in refused.stderr and "`dbmigrate upgrade`" in refused.stderr
    assert_nothing_ran(database_url)

    ok(run_dbmigrate("upgrade", cwd=newer, database_url=database_url, **ARCHIVE_KEY))

    resigned = archive_row(database_url, NEWER_HEAD)
    assert resigned["version"] == 1 and resigned["seal"]
    assert resigned["signature"] == previous_signature(key, resigned), "older dbmigrate versions could not verify it"
    rollback = run_dbmigrate("rollback", "--schema", "always", cwd=older, database_url=database_url, **ARCHIVE_KEY)
    ok(rollback)
    assert current_revisions(database_url) == {EXAMPLE_HEAD}


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_revision_missing_from_scripts_and_archive_is_a_clear_error(
    older: Path, newer: Path, database_url: str
) -> None:
    ok(run_dbmigrate("upgrade", cwd=newer, database_url=database_url))
    engine = sa.create_engine(database_url)
    with engine.begin() as connection:
        connection.execute(sa.text("DELETE FROM dbmigrate_archive"))
    engine.dispose()

    rollback = run_dbmigrate("rollback", "--schema", "always", cwd=older, database_url=database_url)

    assert rollback.returncode == 2, rollback.stdout + rollback.stderr
    assert f"{NEWER_HEAD}, which neither these migration scripts nor dbmigrate's archive contain" in rollback.stderr
    assert current_revisions(database_url) == {NEWER_HEAD}


@pytest.mark.parametrize("backend", ["mariadb"])
def test_losing_data_without_a_backup_needs_both_flags(newer: Path, database_url: str) -> None:
    ok(run_dbmigrate("upgrade", cwd=newer, database_url=database_url))
    write_as_newer_app(database_url)

    refused = run_dbmigrate("downgrade", EXAMPLE_HEAD, "--no-backup", cwd=newer, database_url=database_url)

    assert refused.returncode == 4, refused.stdout + refused.stderr
    assert "--allow-data-loss" in refused.stderr and "Nothing was applied" in refused.stderr
    assert current_revisions(database_url) == {NEWER_HEAD}

    ok(
        run_dbmigrate(
            "downgrade", EXAMPLE_HEAD, "--no-backup", "--allow-data-loss", cwd=newer, database_url=database_url
        )
    )
    assert current_revisions(database_url) == {EXAMPLE_HEAD}
    listed = run_dbmigrate("backups", "list", "--format", "json", cwd=newer, database_url=database_url)
    assert [b for b in json.loads(listed.stdout) if b["revision"] == NEWER_HEAD] == []


@pytest.mark.parametrize("backend", ["sqlite"])
def test_backups_can_be_listed_restored_by_hand_and_dropped(newer: Path, database_url: str) -> None:
    ok(run_dbmigrate("upgrade", cwd=newer, database_url=database_url))
    points, _ = write_as_newer_app(database_url)
    ok(run_dbmigrate("downgrade", EXAMPLE_HEAD, cwd=newer, database_url=database_url))
    listed = json.loads(
        run_dbmigrate("backups", "list", "--format", "json", cwd=newer, database_url=database_url).stdout
    )
    by_table = {b["source_table"]: b for b in listed if b["revision"] == NEWER_HEAD}
    assert by_table["customers"]["columns"] == ["loyalty_points"] and by_table["customers"]["status"] == "pending"

    # Re-create the column by hand (as a hotfix would) and restore its values from the backup.
    engine = sa.create_engine(database_url)
    with engine.begin() as connection:
        connection.execute(sa.text("ALTER TABLE customers ADD COLUMN loyalty_points INTEGER"))
    engine.dispose()
    restore = run_dbmigrate(
        "backups", "restore", str(by_table["customers"]["id"]), "--format", "json", cwd=newer, database_url=database_url
    )
    ok(restore)
    assert json.loads(restore.stdout)["status"] == "restored"
    assert newer_data_points(database_url) == points

    dropped = run_dbmigrate(
        "backups", "drop", str(by_table["coupons"]["id"]), "--format", "json", cwd=newer, database_url=database_url
    )
    ok(dropped)
    assert json.loads(dropped.stdout)["status"] == "dropped"
    engine = sa.create_engine(database_url)
    assert not sa.inspect(engine).has_table(by_table["coupons"]["backup_table"])
    engine.dispose()


def newer_data_points(url: str) -> dict[int, int]:
    engine = sa.create_engine(url)
    with engine.connect() as connection:
        query = "SELECT id, loyalty_points FROM customers WHERE loyalty_points IS NOT NULL"
        points = {row[0]: row[1] for row in connection.execute(sa.text(query))}
    engine.dispose()
    return points


PARENT_AND_CHILD = """\
kind = sa.Enum("gold", "silver", name="tier_kind")
op.create_table("tiers", sa.Column("id", sa.Integer, primary_key=True), sa.Column("kind", kind, nullable=False))
op.create_table(
    "members",
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("tier_id", sa.Integer, sa.ForeignKey("tiers.id"), nullable=False),
)
"""
DROPS_CHILD_PARENT_AND_TYPE = """\
op.drop_table("members")
op.drop_table("tiers")
if op.get_bind().dialect.name == "postgresql":
    op.execute("DROP TYPE tier_kind")
"""


def test_parent_and_child_tables_with_an_enum_come_back_in_order(project: Path, database_url: str) -> None:
    add_revision(project, "0007_tiers", EXAMPLE_HEAD, PARENT_AND_CHILD, DROPS_CHILD_PARENT_AND_TYPE)
    ok(run_dbmigrate("upgrade", cwd=project, database_url=database_url))
    engine = sa.create_engine(database_url)
    with engine.begin() as connection:
        connection.execute(sa.text("INSERT INTO tiers (id, kind) VALUES (1, 'gold'), (2, 'silver')"))
        connection.execute(sa.text("INSERT INTO members (id, tier_id) VALUES (10, 1), (11, 2), (12, 2)"))

    ok(run_dbmigrate("downgrade", EXAMPLE_HEAD, cwd=project, database_url=database_url))
    ok(run_dbmigrate("upgrade", cwd=project, database_url=database_url))

    with engine.connect() as connection:
        tiers = [tuple(r) for r in connection.execute(sa.text("SELECT id, kind FROM tiers ORDER BY id"))]
        members = [tuple(r) for r in connection.execute(sa.text("SELECT id, tier_id FROM members ORDER BY id"))]
    engine.dispose()
    assert tiers == [(1, "gold"), (2, "silver")]
    assert members == [(10, 1), (11, 2), (12, 2)]


GENERATED_COLUMNS = """\
op.create_table(
    "invoices",
    sa.Column("id", sa.Integer, sa.Identity(always=True), primary_key=True),
    sa.Column("net", sa.Integer, nullable=False),
    sa.Column("gross", sa.Integer, sa.Computed("net * 2", persisted=True)),
)
"""


def test_a_table_with_generated_columns_comes_back_with_its_ids_and_values(project: Path, database_url: str) -> None:
    add_revision(project, "0007_invoices", EXAMPLE_HEAD, GENERATED_COLUMNS, 'op.drop_table("invoices")')
    add_revision(project, "0008_no_invoices", "0007_invoices", 'op.drop_table("invoices")', GENERATED_COLUMNS)
    ok(run_dbmigrate("upgrade", "0007_invoices", cwd=project, database_url=database_url))
    engine = sa.create_engine(database_url)
    with engine.begin() as connection:
        for net in (10, 20, 30):
            connection.execute(sa.text("INSERT INTO invoices (net) VALUES (:net)"), {"net": net})
    query = sa.text("SELECT id, net, gross FROM invoices ORDER BY id")
    with engine.connect() as connection:
        before = [tuple(r) for r in connection.execute(query)]

    ok(run_dbmigrate("upgrade", "--allow-data-loss", cwd=project, database_url=database_url))
    ok(run_dbmigrate("downgrade", "0007_invoices", cwd=project, database_url=database_url))

    with engine.connect() as connection:
        after = [tuple(r) for r in connection.execute(query)]
    with engine.begin() as connection:  # the identity goes on after the restored ids
        connection.execute(sa.text("INSERT INTO invoices (net) VALUES (40)"))
        newest = connection.execute(sa.text("SELECT MAX(id) FROM invoices")).scalar()
    engine.dispose()
    assert after == before == [(1, 10, 20), (2, 20, 40), (3, 30, 60)]
    assert newest == 4


RENAMES_AND_EMPTIES = """\
with op.batch_alter_table("labels") as batch:
    batch.alter_column("name", new_column_name="title", existing_type=sa.String(40))
op.execute("UPDATE labels SET title = NULL")
"""
RENAMES_BACK = """\
with op.batch_alter_table("labels") as batch:
    batch.alter_column("title", new_column_name="name", existing_type=sa.String(40))
"""


def test_a_step_that_renames_a_column_and_then_empties_it_runs_and_says_no_backup_covers_it(
    project: Path, database_url: str
) -> None:
    creates_labels = (
        'op.create_table("labels", sa.Column("id", sa.Integer, primary_key=True), sa.Column("name", sa.String(40)))'
    )
    add_revision(project, "0007_labels", EXAMPLE_HEAD, creates_labels, 'op.drop_table("labels")')
    add_revision(project, "0008_title", "0007_labels", RENAMES_AND_EMPTIES, RENAMES_BACK)
    ok(run_dbmigrate("upgrade", "0007_labels", cwd=project, database_url=database_url))

    # The loss is on "title", which only exists once the step has renamed "name": nothing to copy before it.
    done = run_dbmigrate("upgrade", "--allow-data-loss", cwd=project, database_url=database_url)

    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert current_revisions(database_url) == {"0008_title"}
    assert "data loss that no backup covers" in done.stderr and "title" in done.stderr


DROPS_TOKEN_ID = """\
with op.batch_alter_table("tokens") as batch:
    batch.drop_column("id")
"""


def test_a_step_that_drops_the_primary_key_column_runs_and_says_no_backup_covers_it(
    project: Path, database_url: str
) -> None:
    creates_tokens = (
        'op.create_table("tokens", sa.Column("id", sa.Integer, primary_key=True, autoincrement=False), '
        'sa.Column("code", sa.String(40), nullable=False))'
    )
    add_revision(project, "0007_tokens", EXAMPLE_HEAD, creates_tokens, 'op.drop_table("tokens")')
    adds_id = 'op.add_column("tokens", sa.Column("id", sa.Integer))'
    add_revision(project, "0008_no_token_id", "0007_tokens", DROPS_TOKEN_ID, adds_id)
    ok(run_dbmigrate("upgrade", "0007_tokens", cwd=project, database_url=database_url))
    engine = sa.create_engine(database_url)
    with engine.begin() as connection:
        connection.execute(sa.text("INSERT INTO tokens (id, code) VALUES (1, 'a'), (2, 'b')"))
    engine.dispose()

    # Rows are put back by primary key: a copy of the key's own values could never be matched again.
    done = run_dbmigrate("upgrade", "--allow-data-loss", cwd=project, database_url=database_url)

    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert current_revisions(database_url) == {"0008_no_token_id"}
    assert "data loss that no backup covers" in done.stderr and "primary key" in done.stderr
