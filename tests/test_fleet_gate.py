"""The upgrade gate guards every target of a fleet, and each target's backup holds its own data.

A worker checks a plan offline once and reuses the report for the targets after it (same scripts,
server and ``-x`` options). With one worker for six PostgreSQL targets (three databases, three
schemas of one database), a revision that drops a column is refused on each of them, nothing is
applied; allowed, it is applied on each after a copy of that target's own values, not the first
target's: the schemas hold the same table name, so a report that carried one tenant's schema into
another's run would back up the wrong rows.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import EXAMPLE_HEAD, add_revision, connect
from tests.fleet_support import Fleet, run_fleet, summary

HEAD = "0007_drop_email"


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    built = Fleet(tmp_path)
    try:
        yield built
    finally:
        built.drop()


def qualified(fleet: Fleet, name: str, table: str) -> str:
    schema = fleet.members[name].schema
    return f"{schema}.{table}" if schema else table


def test_every_target_is_gated_and_backs_up_its_own_rows(fleet: Fleet, project: Path) -> None:
    fleet.add_postgres_databases(3)
    fleet.add_postgres_schemas(3)
    fleet_file = fleet.write()
    assert run_fleet("upgrade", "--fleet", str(fleet_file), cwd=project).returncode == 0
    for name, member in fleet.members.items():
        with connect(member.url) as connection:
            connection.exec_driver_sql(
                f"UPDATE {qualified(fleet, name, 'customers')} SET email = '{name}-' || id || '@example.com'"
            )
            connection.commit()
    add_revision(project, HEAD, EXAMPLE_HEAD, 'op.drop_column("customers", "email")')

    refused = run_fleet("upgrade", "--fleet", str(fleet_file), "--parallel", "1", cwd=project)

    data = summary(refused)
    assert refused.returncode == 4, refused.stderr[-3000:]
    for name in fleet.members:
        target = data["by_name"][name]
        assert (target["exit_code"], target["error"]) == (4, "UnsafeMigration"), target
        assert target["message"].startswith(f"Refusing to upgrade: revision {HEAD} "), target["message"]
        assert fleet.current(name) == {EXAMPLE_HEAD}, name

    allowed = run_fleet("upgrade", "--fleet", str(fleet_file), "--parallel", "1", "--allow-data-loss", cwd=project)

    assert allowed.returncode == 0, allowed.stderr[-3000:]
    for name, member in fleet.members.items():
        assert fleet.current(name) == {HEAD}, name
        with connect(member.url) as connection:
            backup = connection.exec_driver_sql(
                f"SELECT backup_table FROM {qualified(fleet, name, 'dbmigrate_backups')} WHERE revision = '{HEAD}'"
            ).scalar_one()
            emails = {row[0] for row in connection.exec_driver_sql(f"SELECT email FROM {backup}")}
        assert len(emails) == 200, (name, backup)
        assert all(email.startswith(f"{name}-") for email in emails), (name, sorted(emails)[:3])
