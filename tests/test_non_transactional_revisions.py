"""A revision marked non-transactional (in its file, or by id in the settings) runs outside a transaction.

On PostgreSQL that is what ``CREATE INDEX CONCURRENTLY`` needs; every statement then commits on its
own, so a failure half way is a partial step (exit 5) that says what committed, never "rolled back".
MariaDB and SQLite run a marked revision the same way: each statement commits on its own.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest

from tests.conftest import (
    add_revision,
    connect,
    current_revisions,
    history_rows,
    remove_revisions,
    run_dbmigrate,
    start_dbmigrate,
)
from tests.test_killed_runs import wait_until

DIRECTIVE = '# dbmigrate: non-transactional reason="builds its index without blocking writes"\n'

ITEMS = """
items = op.create_table(
    "items",
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(50), nullable=False),
    sa.Column("note", sa.String(50)),
)
op.bulk_insert(items, [{"id": i, "name": f"item {i % 3}", "note": f"note {i}"} for i in range(1, 31)])
"""
CONCURRENT_INDEX = 'op.create_index("ix_items_name", "items", ["name"], postgresql_concurrently=True)'


def project_with(project: Path, index_revision: str, directive: bool = False) -> Path:
    """A project of two revisions: 0001_items creates and fills a table, 0002_index runs ``index_revision``."""
    remove_revisions(project)
    add_revision(project, "0001_items", None, ITEMS)
    add_revision(project, "0002_index", "0001_items", index_revision)
    if directive:
        path = project / "alembic" / "versions" / "0002_index.py"
        path.write_text(DIRECTIVE + path.read_text())
    return project


def indexes(database_url: str) -> dict[str, bool]:
    """PostgreSQL: the indexes on items, by name, and whether each is valid (a failed concurrent build is not)."""
    with connect(database_url) as connection:
        rows = connection.exec_driver_sql(
            "SELECT c.relname, i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
            "WHERE i.indrelid = 'items'::regclass AND NOT i.indisprimary"
        )
        return {str(name): bool(valid) for name, valid in rows}


def last_row(database_url: str) -> dict[str, object]:
    return history_rows(database_url)[-1]


# -- PostgreSQL ------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["postgresql"])
def test_revision_marked_in_its_file_builds_its_index_concurrently(project: Path, database_url: str) -> None:
    project_with(project, CONCURRENT_INDEX, directive=True)

    proc = run_dbmigrate("upgrade", cwd=project, database_url=database_url)

    assert proc.returncode == 0, proc.stderr
    assert current_revisions(database_url) == {"0002_index"}
    assert indexes(database_url) == {"ix_items_name": True}
    row = last_row(database_url)
    assert row["revision"] == "0002_index" and row["status"] == "applied"
    assert "ran outside a transaction" in str(row["note"]) and "without blocking writes" in str(row["note"])


@pytest.mark.parametrize("backend", ["postgresql"])
@pytest.mark.parametrize("where", ["environment", "flag", "alembic.ini", "pyproject.toml"])
def test_revision_listed_by_id_in_the_settings_builds_its_index_concurrently(
    project: Path, database_url: str, where: str
) -> None:
    project_with(project, CONCURRENT_INDEX)
    args, env = ["upgrade"], {}
    if where == "environment":
        env["DBMIGRATE_NON_TRANSACTIONAL_REVISIONS"] = "0001_other, 0002_index"
    elif where == "flag":
        args += ["--non-transactional-revisions", "0002_index"]
    elif where == "alembic.ini":
        ini = project / "alembic.ini"
        setting = "non_transactional_revisions =\n    0001_other\n    0002_index\n"
        ini.write_text(ini.read_text().replace("[dbmigrate]\n", "[dbmigrate]\n" + setting))
    else:
        (project / "pyproject.toml").write_text('[tool.dbmigrate]\nnon-transactional-revisions = ["0002_index"]\n')

    proc = run_dbmigrate(*args, cwd=project, database_url=database_url, **env)

    assert proc.returncode == 0, proc.stderr
    assert indexes(database_url) == {"ix_items_name": True}
    assert "listed in non_transactional_revisions" in str(last_row(database_url)["note"])


@pytest.mark.parametrize("backend", ["postgresql"])
def test_unmarked_concurrent_index_is_refused_before_anything_runs_naming_the_fix(
    project: Path, database_url: str
) -> None:
    project_with(project, CONCURRENT_INDEX)

    proc = run_dbmigrate("upgrade", cwd=project, database_url=database_url, DBMIGRATE_LOG_FORMAT="text")

    assert proc.returncode == 4, proc.stderr
    assert "DM004" in proc.stderr and "CREATE INDEX CONCURRENTLY cannot run inside a transaction" in proc.stderr
    assert '# dbmigrate: non-transactional reason="..."' in proc.stderr
    assert "DBMIGRATE_NON_TRANSACTIONAL_REVISIONS=0002_index" in proc.stderr
    assert current_revisions(database_url) == set()


@pytest.mark.parametrize("backend", ["postgresql"])
def test_unmarked_concurrent_index_the_check_cannot_see_fails_naming_the_fix(project: Path, database_url: str) -> None:
    # Offline (the gate's check) the statement is not run: only the database can refuse it.
    project_with(
        project,
        'if not op.get_context().as_sql:\n    op.execute("CREATE INDEX CONCURRENTLY ix_items_name ON items (name)")',
    )

    proc = run_dbmigrate("upgrade", cwd=project, database_url=database_url, DBMIGRATE_LOG_FORMAT="text")

    assert proc.returncode == 1, proc.stderr
    assert "cannot run inside a transaction block" in proc.stderr
    assert "Its transaction was rolled back: the database is still at 0001_items" in proc.stderr
    assert '# dbmigrate: non-transactional reason="..."` to 0002_index.py' in proc.stderr
    assert "DBMIGRATE_NON_TRANSACTIONAL_REVISIONS=0002_index" in proc.stderr
    assert current_revisions(database_url) == {"0001_items"}
    assert indexes(database_url) == {}


@pytest.mark.parametrize("backend", ["postgresql"])
def test_marked_revision_failing_half_way_is_partial_and_names_what_committed(project: Path, database_url: str) -> None:
    project_with(
        project,
        CONCURRENT_INDEX + '\nop.execute("INSERT INTO no_such_table (x) VALUES (1)")',
        directive=True,
    )

    proc = run_dbmigrate("upgrade", cwd=project, database_url=database_url, DBMIGRATE_LOG_FORMAT="text")
    status = run_dbmigrate("status", "--format", "json", cwd=project, database_url=database_url)

    assert proc.returncode == 5, proc.stderr
    assert "was rolled back" not in proc.stderr and "In doubt" not in proc.stderr
    assert "they ran outside a transaction" in proc.stderr
    assert "Statements that committed: [1] CREATE INDEX CONCURRENTLY ix_items_name" in proc.stderr
    assert "dbmigrate repair --reverted" in proc.stderr and "dbmigrate repair --applied" in proc.stderr
    # What the message says is what the database holds: the first index, at the previous revision.
    assert indexes(database_url) == {"ix_items_name": True}
    assert current_revisions(database_url) == {"0001_items"}
    row = last_row(database_url)
    assert row["revision"] == "0002_index" and row["status"] == "partial"
    statements = json.loads(str(row["statements"]))
    assert statements[0]["commits"] == "autocommit" and statements[0]["done"] is True
    assert status.returncode == 5
    assert "ix_items_name" in json.loads(status.stdout)["needs_repair"]


@pytest.mark.parametrize("backend", ["postgresql"])
def test_failed_concurrent_build_is_in_doubt_for_the_invalid_index_it_leaves(project: Path, database_url: str) -> None:
    # The names repeat: a unique index cannot be built, and PostgreSQL leaves it behind INVALID.
    project_with(
        project,
        'op.create_index("ix_items_name", "items", ["name"], unique=True, postgresql_concurrently=True)',
        directive=True,
    )

    proc = run_dbmigrate("upgrade", cwd=project, database_url=database_url, DBMIGRATE_LOG_FORMAT="text")

    assert proc.returncode == 5, proc.stderr
    assert "In doubt (started, outcome unknown): CREATE UNIQUE INDEX CONCURRENTLY ix_items_name" in proc.stderr
    assert "INVALID index" in proc.stderr
    assert indexes(database_url) == {"ix_items_name": False}
    assert last_row(database_url)["status"] == "partial"


@pytest.mark.parametrize("backend", ["postgresql"])
def test_repair_reverted_after_undoing_lets_the_marked_revision_run_again(project: Path, database_url: str) -> None:
    project_with(project, CONCURRENT_INDEX + '\nop.execute("SELECT 1/0")', directive=True)
    assert run_dbmigrate("upgrade", cwd=project, database_url=database_url).returncode == 5
    with connect(database_url) as connection:
        connection.exec_driver_sql("DROP INDEX ix_items_name")
        connection.commit()
    project_with(project, CONCURRENT_INDEX, directive=True)

    repaired = run_dbmigrate("repair", "--reverted", cwd=project, database_url=database_url)
    upgraded = run_dbmigrate("upgrade", cwd=project, database_url=database_url)

    assert repaired.returncode == 0, repaired.stderr
    assert upgraded.returncode == 0, upgraded.stderr
    assert indexes(database_url) == {"ix_items_name": True}
    assert current_revisions(database_url) == {"0002_index"}


@pytest.mark.parametrize("backend", ["postgresql"])
def test_marked_revision_backs_up_what_it_drops_before_dropping_it(project: Path, database_url: str) -> None:
    project_with(project, 'op.drop_column("items", "note")', directive=True)
    path = project / "alembic" / "versions" / "0002_index.py"
    path.write_text('# dbmigrate: allow-data-loss reason="notes moved elsewhere"\n' + path.read_text())

    proc = run_dbmigrate("upgrade", cwd=project, database_url=database_url)
    listed = run_dbmigrate("backups", "list", "--format", "json", cwd=project, database_url=database_url)

    assert proc.returncode == 0, proc.stderr
    backups = json.loads(listed.stdout)
    backups = backups["backups"] if isinstance(backups, dict) else backups
    assert [(b["source_table"], b["row_count"]) for b in backups] == [("items", 30)]
    note = str(last_row(database_url)["note"])
    assert "backed up" in note and "outside a transaction" in note and "not in it" in note


@pytest.mark.parametrize("backend", ["postgresql"])
def test_marked_revision_that_hit_its_lock_timeout_before_any_statement_is_retried(
    project: Path, database_url: str, tmp_path: Path
) -> None:
    project_with(project, 'op.add_column("items", sa.Column("price", sa.Integer))', directive=True)
    assert run_dbmigrate("upgrade", "0001_items", cwd=project, database_url=database_url).returncode == 0
    holding, release = threading.Event(), threading.Event()

    def hold_items() -> None:
        with connect(database_url) as reader:
            reader.exec_driver_sql("LOCK TABLE items IN ACCESS SHARE MODE")
            holding.set()
            release.wait(60)

    holder = threading.Thread(target=hold_items)
    holder.start()
    holding.wait(30)
    output = tmp_path / "upgrade"
    try:
        process = start_dbmigrate(
            "upgrade",
            "--lock-timeout",
            "0.5",
            "--lock-conflict-wait",
            "0",
            cwd=project,
            database_url=database_url,
            output=output,
        )
        wait_until(lambda: "lock timeout, retrying" in Path(f"{output}.err").read_text(), "the step retries")
    finally:
        release.set()
        holder.join()
    process.wait(timeout=120)

    assert process.returncode == 0, Path(f"{output}.err").read_text()
    row = last_row(database_url)
    assert row["revision"] == "0002_index" and row["status"] == "applied"
    assert int(str(row["attempts"])) >= 2


# -- MariaDB and SQLite -----------------------------------------------------------------------------

ROWS_THEN_FAILURE = """
op.execute("INSERT INTO items (id, name) VALUES (100, 'added')")
op.execute("INSERT INTO items (id, name) VALUES (1, 'duplicate key')")
"""


def item_100(database_url: str) -> int:
    with connect(database_url) as connection:
        return int(connection.exec_driver_sql("SELECT COUNT(*) FROM items WHERE id = 100").scalar_one())


@pytest.mark.parametrize("backend", ["mariadb", "sqlite"])
def test_marked_revision_applies_where_postgresql_concurrently_means_nothing(project: Path, database_url: str) -> None:
    project_with(project, CONCURRENT_INDEX, directive=True)

    proc = run_dbmigrate("upgrade", cwd=project, database_url=database_url)

    assert proc.returncode == 0, proc.stderr
    assert current_revisions(database_url) == {"0002_index"}
    assert "ran outside a transaction" in str(last_row(database_url)["note"])


@pytest.mark.parametrize("backend", ["mariadb", "sqlite"])
def test_marked_revision_commits_each_statement_so_a_failure_is_partial(project: Path, database_url: str) -> None:
    project_with(project, ROWS_THEN_FAILURE, directive=True)

    proc = run_dbmigrate("upgrade", cwd=project, database_url=database_url, DBMIGRATE_LOG_FORMAT="text")

    assert proc.returncode == 5, proc.stderr
    assert "Statements that committed: [1] INSERT INTO items (id, name) VALUES (100, 'added')" in proc.stderr
    assert item_100(database_url) == 1
    assert current_revisions(database_url) == {"0001_items"}
    assert last_row(database_url)["status"] == "partial"


@pytest.mark.parametrize("backend", ["mariadb", "sqlite"])
def test_unmarked_revision_rolls_its_rows_back(project: Path, database_url: str) -> None:
    project_with(project, ROWS_THEN_FAILURE)

    proc = run_dbmigrate("upgrade", cwd=project, database_url=database_url, DBMIGRATE_LOG_FORMAT="text")

    assert proc.returncode == 1, proc.stderr
    assert item_100(database_url) == 0
    assert last_row(database_url)["status"] == "failed"


@pytest.mark.parametrize("backend", ["sqlite"])
def test_sqlite_vacuum_runs_in_a_marked_revision_and_is_refused_unmarked(project: Path, database_url: str) -> None:
    project_with(project, 'op.execute("VACUUM")')
    refused = run_dbmigrate("upgrade", cwd=project, database_url=database_url, DBMIGRATE_LOG_FORMAT="text")
    project_with(project, 'op.execute("VACUUM")', directive=True)

    applied = run_dbmigrate("upgrade", cwd=project, database_url=database_url)

    assert refused.returncode == 4 and "DM004" in refused.stderr and "VACUUM" in refused.stderr
    assert applied.returncode == 0, applied.stderr
    assert current_revisions(database_url) == {"0002_index"}
