"""A mixed fleet: one broken target and one unreachable one do not stop the others, and a rerun retries only them.

The fleet holds 10 SQLite files, 4 PostgreSQL databases, 4 schemas of one PostgreSQL database and
2 MariaDB databases (the issue's full size is 40/15/15/5; this one keeps the test well under two
minutes on a busy two-core machine; the code paths are the same). One PostgreSQL database already
holds a table the new revision creates, so that revision fails there; one target's address has no
server behind it. Every other target must reach head, the summary must name the two with their exit
codes, the fleet's exit code must be the worst of them, every worker log line must name its target,
and the password (from the environment, with @ : / % ? # & + in it) must appear in no output. Once
both are fixed, a rerun must touch only those two: no other target gets a history row.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import EXAMPLE_HEAD, add_revision, connect, create_database, drop_database, free_port
from tests.fleet_support import SECRET, Fleet, forms, run_fleet, summary

pytestmark = pytest.mark.slow

HEAD = "0007_audit_log"
FLEET_EVENTS = {"fleet run starting", "fleet run finished"}  # the fleet process's own lines, about no one target


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    built = Fleet(tmp_path)
    yield built
    built.drop()


def test_broken_and_unreachable_targets_are_named_and_a_rerun_touches_only_them(
    fleet: Fleet, project: Path, tmp_path: Path
) -> None:
    audit_log = 'op.create_table("audit_log", sa.Column("id", sa.Integer, primary_key=True))'
    add_revision(project, HEAD, EXAMPLE_HEAD, audit_log)
    fleet.add_sqlite(10)
    postgres = fleet.add_postgres_databases(4)
    fleet.add_postgres_schemas(4)
    fleet.add_mariadb_databases(2)
    broken = postgres[1]
    with connect(fleet.members[broken].url) as connection:
        connection.exec_driver_sql("CREATE TABLE audit_log (id integer PRIMARY KEY)")
        connection.commit()
    down_url = f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere"
    fleet.add_entry("down", down_url, 'password_env = "FLEET_DB_PASSWORD"\nsettings = {wait_timeout = 1}\n')
    fleet_file = fleet.write()

    first = run_fleet("upgrade", "--fleet", str(fleet_file), "--parallel", "2", cwd=project)

    result = summary(first)
    failed = {name: t["exit_code"] for name, t in result["by_name"].items() if t["exit_code"] != 0}
    assert failed == {broken: 1, "down": 3}, first.stderr[-4000:]
    assert result["by_name"][broken]["error"] == "MigrationFailed"
    assert result["by_name"][broken]["after"] == [EXAMPLE_HEAD], "the revisions before the failing one stay applied"
    assert result["by_name"][broken]["before"] == [], "before comes from the failed run's first history row"
    assert result["by_name"]["down"]["error"] == "DatabaseUnavailable"
    assert result["by_name"]["down"]["before"] is None, "an unreachable target's revisions cannot be read"
    assert first.returncode == result["exit_code"] == 1, "the worst exit code: a failed step outranks an unreachable"
    others = [name for name in fleet.members if name not in failed]
    assert len(others) == 19
    for name in others:
        assert result["by_name"][name]["outcome"] == "upgraded", result["by_name"][name]
        assert result["by_name"][name]["before"] == []
        assert result["by_name"][name]["after"] == [HEAD]
        assert fleet.current(name) == {HEAD}, name
    for schema_target in [name for name, m in fleet.members.items() if m.schema]:
        assert fleet.history_runs(schema_target), "each schema has its own history table"

    for line in first.stderr.splitlines():
        event = json.loads(line)
        assert event.get("target") or event["event"] in FLEET_EVENTS, f"a log line names no target: {line}"
    named = {json.loads(line).get("target") for line in first.stderr.splitlines()}
    assert set(fleet.members) <= named

    with connect(fleet.members[broken].url) as connection:
        connection.exec_driver_sql("DROP TABLE audit_log")
        connection.commit()
    back = create_database("postgresql", tmp_path)
    try:
        fleet_file.write_text(fleet_file.read_text().replace(down_url, back))
        fleet.members["down"].url = back
        runs_before = {name: fleet.history_runs(name) for name in others}

        rerun = run_fleet("upgrade", "--fleet", str(fleet_file), "--parallel", "2", cwd=project)

        again = summary(rerun)
        assert rerun.returncode == again["exit_code"] == 0, rerun.stderr[-4000:]
        touched = {name for name, t in again["by_name"].items() if t["outcome"] != "at goal"}
        assert touched == {broken, "down"}
        assert again["by_name"][broken]["before"] == [EXAMPLE_HEAD]
        assert all(again["by_name"][name]["before"] == again["by_name"][name]["after"] == [HEAD] for name in others)
        assert fleet.current(broken) == fleet.current("down") == {HEAD}
        assert {name: fleet.history_runs(name) for name in others} == runs_before, "a target at head was touched"

        state = run_fleet("status", "--fleet", str(fleet_file), "--check", cwd=project)
        assert state.returncode == 0, state.stdout
        assert set(summary(state)["counts"]) == {"at head"}
    finally:
        drop_database(back)

    for output in (first, rerun, state):
        for text in (output.stdout, output.stderr):
            for form in forms(SECRET):
                assert form not in text, "the password leaked"
