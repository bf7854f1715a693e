"""Scripts and database that do not fit together: several heads, or a database ahead of the code.

Both are usage errors (exit 2) that change nothing; each message names the way out.
"""

from __future__ import annotations

from pathlib import Path

import dbmigrate
from tests.conftest import add_revision, current_revisions, history_rows, remove_revisions, run_dbmigrate


def settings_for(project: Path, database_url: str) -> dbmigrate.Settings:
    return dbmigrate.Settings.load(
        config_file=project / "alembic.ini",
        environ={},
        database_url=database_url,
        termination_log=str(project / "no-termination-log"),
    )


def add_table_revision(project: Path, revision: str, down_revision: str | None) -> None:
    table = f"t_{revision}"
    add_revision(
        project,
        revision,
        down_revision,
        f"op.create_table({table!r}, sa.Column('id', sa.Integer, primary_key=True))",
        f"op.drop_table({table!r})",
    )


def two_heads(project: Path) -> None:
    """0001_base, then two revisions that both revise it (as two feature branches would)."""
    remove_revisions(project)
    add_table_revision(project, "0001_base", None)
    add_table_revision(project, "0002_branch_a", "0001_base")
    add_table_revision(project, "0002_branch_b", "0001_base")


def test_upgrade_with_two_heads_exits_2_pointing_at_merge_and_changes_nothing(project: Path, database_url: str) -> None:
    two_heads(project)

    result = run_dbmigrate("upgrade", cwd=project, database_url=database_url)

    assert result.returncode == 2, result.stderr
    assert "more than one head (0002_branch_a, 0002_branch_b)" in result.stderr
    assert "alembic merge heads" in result.stderr
    assert "`heads`" in result.stderr
    assert current_revisions(database_url) == set()
    assert all(row["status"] != "applied" for row in history_rows(database_url))


def test_upgrade_to_heads_applies_every_branch(project: Path, database_url: str) -> None:
    two_heads(project)

    result = dbmigrate.upgrade("heads", settings=settings_for(project, database_url))

    assert sorted(step.revision for step in result.steps) == ["0001_base", "0002_branch_a", "0002_branch_b"]
    assert current_revisions(database_url) == {"0002_branch_a", "0002_branch_b"}


def test_database_ahead_of_the_scripts_exits_2_naming_the_revision_and_changes_nothing(
    project: Path, database_url: str
) -> None:
    remove_revisions(project)
    add_table_revision(project, "0001_base", None)
    add_table_revision(project, "0002_newer", "0001_base")
    dbmigrate.upgrade(settings=settings_for(project, database_url))
    rows_before = history_rows(database_url)
    (project / "alembic" / "versions" / "0002_newer.py").unlink()  # the older release's image

    result = run_dbmigrate("upgrade", cwd=project, database_url=database_url)

    assert result.returncode == 2, result.stderr
    assert "The database is at revision 0002_newer" in result.stderr
    assert "ahead of this code" in result.stderr
    assert current_revisions(database_url) == {"0002_newer"}
    assert history_rows(database_url) == rows_before
