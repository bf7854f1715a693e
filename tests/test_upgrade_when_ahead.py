"""`dbmigrate upgrade --when-ahead`: an older image deployed over a newer database (a GitOps revert, a
`helm upgrade` to an older tag) is a rollback, decided as `dbmigrate rollback --schema auto` decides.

Copies of the example project stand for images: ``older`` (up to 0006) and newer ones built from it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.conftest import EXAMPLE_HEAD, add_revision, current_revisions, history_rows, run_dbmigrate
from tests.test_rollback import (
    ADDS_COLUMN_AND_TABLE,
    DROPS_COLUMN_AND_TABLE,
    NEWER_HEAD,
    columns_of,
    newer_data,
    ok,
    write_as_newer_app,
)

RENAMES_EMAIL_ADDS_COUPONS = (
    'with op.batch_alter_table("customers") as batch:\n    batch.alter_column("email", new_column_name="mail")\n'
    'op.create_table("coupons", sa.Column("id", sa.Integer, primary_key=True), sa.Column("code", sa.String(40)))'
)
DROPS_COUPONS_RENAMES_BACK = (
    'op.drop_table("coupons")\n'
    'with op.batch_alter_table("customers") as batch:\n    batch.alter_column("mail", new_column_name="email")'
)


@pytest.fixture
def older(project: Path) -> Path:
    return project


def image(project: Path, tmp_path: Path, name: str, revision: str, upgrade: str, downgrade: str) -> Path:
    """A copy of ``project`` with one more revision after the example's head."""
    copy = tmp_path / name
    shutil.copytree(project, copy)
    add_revision(copy, revision, EXAMPLE_HEAD, upgrade, downgrade)
    return copy


def upgrade_json(cwd: Path, database_url: str, *args: str, **env: str) -> dict[str, object]:
    run = run_dbmigrate("upgrade", "--format", "json", *args, cwd=cwd, database_url=database_url, **env)
    ok(run)
    result: dict[str, object] = json.loads(run.stdout)
    return result


@pytest.mark.parametrize("backend", ["postgresql", "mariadb", "sqlite"])
def test_an_older_image_keeps_a_schema_it_can_run_on_and_records_that_the_database_was_ahead(
    older: Path, tmp_path: Path, database_url: str
) -> None:
    newer = image(older, tmp_path, "newer", NEWER_HEAD, ADDS_COLUMN_AND_TABLE, DROPS_COLUMN_AND_TABLE)
    ok(run_dbmigrate("upgrade", cwd=newer, database_url=database_url))
    written = write_as_newer_app(database_url)

    result = upgrade_json(older, database_url, DBMIGRATE_WHEN_AHEAD="rollback")

    assert (result["outcome"], result["before"], result["after"]) == ("kept", [NEWER_HEAD], [NEWER_HEAD])
    assert current_revisions(database_url) == {NEWER_HEAD}
    assert newer_data(database_url) == written
    (decision,) = [r for r in history_rows(database_url) if r["direction"] == "rollback"]
    assert (decision["status"], decision["revision"], decision["from_revision"]) == ("kept", NEWER_HEAD, EXAMPLE_HEAD)
    note = str(decision["note"])
    assert "upgrade --when-ahead rollback: the database was at 0007_loyalty, ahead of" in note
    assert "no revision above 0006_name_contract (0007_loyalty) is breaking" in note
    ok(run_dbmigrate("status", "--check", cwd=older, database_url=database_url))
    ok(run_dbmigrate("wait", "--timeout", "5", cwd=older, database_url=database_url))

    # The next run of the older image finds nothing to do; the newer image, deployed again, neither.
    assert upgrade_json(older, database_url, "--when-ahead", "rollback")["outcome"] == "nothing-to-do"
    assert upgrade_json(newer, database_url)["outcome"] == "nothing-to-do"
    assert newer_data(database_url) == written


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_an_older_image_downgrades_a_breaking_schema_through_the_archive_and_the_data_comes_back(
    older: Path, tmp_path: Path, database_url: str
) -> None:
    newer = image(
        older, tmp_path, "renames", "0007_rename_email", RENAMES_EMAIL_ADDS_COUPONS, DROPS_COUPONS_RENAMES_BACK
    )
    ok(run_dbmigrate("upgrade", cwd=newer, database_url=database_url))
    engine = sa.create_engine(database_url)
    with engine.begin() as connection:
        connection.execute(sa.text("INSERT INTO coupons (id, code) VALUES (1, 'A'), (2, 'B')"))
        mails = connection.execute(sa.text("SELECT id, mail FROM customers ORDER BY id")).all()
    engine.dispose()

    result = upgrade_json(older, database_url, "--when-ahead", "rollback")

    assert (result["outcome"], result["after"]) == ("downgraded", [EXAMPLE_HEAD])
    ahead = result["ahead"]
    assert isinstance(ahead, dict) and ahead["from_archive"] == ["0007_rename_email"]
    assert "0007_rename_email is breaking" in str(ahead["reason"]) and "BR003" in str(ahead["reason"])
    assert current_revisions(database_url) == {EXAMPLE_HEAD}
    assert "email" in columns_of(database_url, "customers") and columns_of(database_url, "coupons") == set()
    (decision,) = [r for r in history_rows(database_url) if r["direction"] == "rollback"]
    assert decision["status"] == "applied" and "ahead of these scripts' head" in str(decision["note"])

    ok(run_dbmigrate("upgrade", cwd=newer, database_url=database_url))  # the newer image again
    engine = sa.create_engine(database_url)
    with engine.connect() as connection:
        assert connection.execute(sa.text("SELECT id, code FROM coupons ORDER BY id")).all() == [(1, "A"), (2, "B")]
        assert connection.execute(sa.text("SELECT id, mail FROM customers ORDER BY id")).all() == mails
    engine.dispose()


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_a_database_ahead_on_an_unknown_chain_still_exits_2(older: Path, tmp_path: Path, database_url: str) -> None:
    newer = image(older, tmp_path, "newer", NEWER_HEAD, ADDS_COLUMN_AND_TABLE, DROPS_COLUMN_AND_TABLE)
    ok(run_dbmigrate("upgrade", cwd=newer, database_url=database_url))
    engine = sa.create_engine(database_url)
    with engine.begin() as connection:
        connection.execute(sa.text("DELETE FROM dbmigrate_archive"))  # applied by plain alembic, say
    engine.dispose()

    run = run_dbmigrate("upgrade", "--when-ahead", "rollback", cwd=older, database_url=database_url)

    assert run.returncode == 2, run.stdout + run.stderr
    assert f"{NEWER_HEAD}, which neither these migration scripts nor dbmigrate's archive contain" in run.stderr
    assert current_revisions(database_url) == {NEWER_HEAD}
    assert not [r for r in history_rows(database_url) if r["direction"] in ("downgrade", "rollback")]


@pytest.mark.parametrize("backend", ["sqlite"])
def test_a_database_on_another_branch_of_revisions_is_not_rolled_back(
    older: Path, tmp_path: Path, database_url: str
) -> None:
    """The database's revision is archived, but it branches off below the older image's head."""
    other = tmp_path / "other"
    shutil.copytree(older, other)
    (other / "alembic" / "versions" / "0006_name_contract.py").unlink()
    add_revision(other, "0006_other", "0005_full_name_expand", 'op.create_table("other", sa.Column("id", sa.Integer))')
    ok(run_dbmigrate("upgrade", cwd=other, database_url=database_url))

    run = run_dbmigrate("upgrade", "--when-ahead", "rollback", cwd=older, database_url=database_url)

    assert run.returncode == 2, run.stdout + run.stderr
    assert "0006_other, which does not descend from these scripts' head 0006_name_contract" in run.stderr
    assert current_revisions(database_url) == {"0006_other"}


@pytest.mark.parametrize("backend", ["sqlite"])
def test_refuse_stays_the_default_and_names_the_option(older: Path, tmp_path: Path, database_url: str) -> None:
    newer = image(older, tmp_path, "newer", NEWER_HEAD, ADDS_COLUMN_AND_TABLE, DROPS_COLUMN_AND_TABLE)
    ok(run_dbmigrate("upgrade", cwd=newer, database_url=database_url))

    run = run_dbmigrate("upgrade", cwd=older, database_url=database_url)

    assert run.returncode == 2, run.stdout + run.stderr
    assert "--when-ahead rollback" in run.stderr
    wrong = run_dbmigrate("upgrade", cwd=older, database_url=database_url, DBMIGRATE_WHEN_AHEAD="sometimes")
    assert wrong.returncode == 2 and "when_ahead must be one of refuse, keep, rollback" in wrong.stderr


@pytest.mark.parametrize("backend", ["sqlite"])
def test_keep_never_downgrades_even_a_breaking_schema(older: Path, tmp_path: Path, database_url: str) -> None:
    newer = image(
        older, tmp_path, "renames", "0007_rename_email", RENAMES_EMAIL_ADDS_COUPONS, DROPS_COUPONS_RENAMES_BACK
    )
    ok(run_dbmigrate("upgrade", cwd=newer, database_url=database_url))

    result = upgrade_json(older, database_url, "--when-ahead", "keep")

    assert result["outcome"] == "kept"
    assert current_revisions(database_url) == {"0007_rename_email"}
    assert "upgrade --when-ahead keep" in str(history_rows(database_url)[-1]["note"])
