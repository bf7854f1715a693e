"""Many `dbmigrate upgrade` processes at once on one database: one applies, the others wait and find nothing to do.

Every run is a real process (`python -m dbmigrate`), all started together, against real PostgreSQL,
MariaDB and SQLite databases. The run lock is what keeps them apart; these tests check what it
promises: each revision applied exactly once by one run, every other run ending with nothing to do,
and every run that had to wait saying so and naming who held the lock. The lock belongs to the
version table: runs that write different history tables still take turns, and projects with their
own version tables in one database do not wait for each other.
"""

from __future__ import annotations

import collections
import json
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.pool import NullPool

from dbmigrate.history import History, history_table
from tests.conftest import (
    EXAMPLE_REVISIONS,
    add_revision,
    current_revisions,
    history_rows,
    log_events,
    remove_revisions,
    run_dbmigrate,
    start_dbmigrate,
)

pytestmark = pytest.mark.slow

RUNS = 8
WAITING = "waiting for the run lock"
PROCESS_TIMEOUT = 120.0


@dataclass
class Run:
    """One dbmigrate process and where its output goes."""

    process: subprocess.Popen[str]
    output: Path

    @property
    def stdout(self) -> str:
        return Path(f"{self.output}.out").read_text()

    @property
    def stderr(self) -> str:
        return Path(f"{self.output}.err").read_text()

    def events(self, name: str | None = None) -> list[dict[str, object]]:
        return [e for e in log_events(self.stderr) if name is None or e.get("event") == name]

    def result(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.stdout)
        return data

    def describe(self) -> str:
        return f"pid {self.process.pid} exit {self.process.returncode}\nstdout:\n{self.stdout}\nstderr:\n{self.stderr}"


def start_upgrades(project: Path, database_url: str, out_dir: Path, count: int = RUNS, **env: str) -> list[Run]:
    """Start ``count`` upgrade runs at once."""
    out_dir.mkdir(exist_ok=True)
    runs = []
    for i in range(count):
        output = out_dir / f"run{i}"
        process = start_dbmigrate(
            "upgrade", "--format", "json", cwd=project, database_url=database_url, output=output, **env
        )
        runs.append(Run(process, output))
    return runs


def wait_all(runs: list[Run]) -> None:
    for run in runs:
        run.process.wait(timeout=PROCESS_TIMEOUT)


def stop_leftovers(runs: list[Run]) -> None:
    """Kill (by PID) any run this test started that is still alive, and reap it."""
    for run in runs:
        if run.process.poll() is None:
            run.process.kill()
            run.process.wait(timeout=30)


def assert_applied_once_by_one_run(runs: list[Run], database_url: str, revisions: list[str]) -> Run:
    """All exited 0, the database is at head, one run applied each revision once, the rest did nothing.

    Returns the run that applied.
    """
    failed = [run for run in runs if run.process.returncode != 0]
    assert not failed, "runs failed:\n" + "\n\n".join(run.describe() for run in failed)

    assert current_revisions(database_url) == {revisions[-1]}

    rows = history_rows(database_url)
    assert [r for r in rows if r["status"] != "applied" or r["direction"] != "upgrade"] == []
    assert collections.Counter(r["revision"] for r in rows) == collections.Counter(revisions)
    run_ids = {r["run_id"] for r in rows}
    assert len(run_ids) == 1, f"revisions were applied by several runs: {run_ids}"

    results = [run.result() for run in runs]
    appliers = [run for run, result in zip(runs, results, strict=True) if result["outcome"] != "nothing-to-do"]
    assert len(appliers) == 1, [result["outcome"] for result in results]
    winner = appliers[0].result()
    assert winner["outcome"] == "applied"
    assert winner["run_id"] in run_ids
    assert [step["revision"] for step in winner["steps"]] == revisions
    for run, result in zip(runs, results, strict=True):
        if run is not appliers[0]:
            assert result["steps"] == [], run.describe()
            assert result["after"] == [revisions[-1]], run.describe()
    return appliers[0]


def test_simultaneous_upgrades_apply_each_revision_exactly_once(
    project: Path, database_url: str, backend: str, tmp_path: Path
) -> None:
    runs = start_upgrades(project, database_url, tmp_path / "runs")
    try:
        wait_all(runs)
    finally:
        stop_leftovers(runs)

    winner = assert_applied_once_by_one_run(runs, database_url, EXAMPLE_REVISIONS)

    # A run that had to wait for the lock says so, and names who held it: one of these runs. (Or
    # nobody, when the holder let go in between; or a holder that had just taken the lock and not
    # yet labelled itself: its application_name on PostgreSQL, its record in the SQLite lock file.)
    run_ids = {str(run.result()["run_id"]) for run in runs}
    just_between = ("nobody (just released)", "unknown", "(no application_name)")
    for run in runs:
        for event in run.events(WAITING):
            holder = event["holder"]
            assert isinstance(holder, str) and holder, run.describe()
            assert isinstance(event["waited_s"], (int, float)), run.describe()
            if backend in ("postgresql", "sqlite") and not any(words in holder for words in just_between):
                assert any(run_id in holder for run_id in run_ids), run.describe()
    # The applying run logged applying every revision; no other run logged applying anything.
    for run in runs:
        applying = [e["revision"] for e in run.events("applying revision")]
        assert applying == (EXAMPLE_REVISIONS if run is winner else []), run.describe()


def test_runs_started_while_another_migrates_wait_and_name_the_holder(
    project: Path, database_url: str, backend: str, tmp_path: Path
) -> None:
    # The first run holds the lock at the last revision until the test opens the gate; the seven
    # started meanwhile are certain to find the lock taken, and must say so and name the first run.
    revisions = [*EXAMPLE_REVISIONS, "0007_gate"]
    gates = tmp_path / "gates"
    env = {"TEST_GATE_DIR": str(gates)}
    runs = start_first_run_at_gate(project, database_url, tmp_path)
    first = runs[0]
    try:
        first_sessions = sessions(database_url)  # the first run's connections: one of them holds the lock
        others = start_upgrades(project, database_url, tmp_path / "others", count=RUNS - 1, **env)
        runs += others
        wait_for(lambda: all(run.events(WAITING) for run in others), "every other run reports waiting", runs)
        (gates / "open").touch()
        wait_all(runs)
    finally:
        stop_leftovers(runs)

    assert assert_applied_once_by_one_run(runs, database_url, revisions) is first
    first_id = first.result()["run_id"]
    for run in others:
        event = run.events(WAITING)[0]
        holder = str(event["holder"])
        assert isinstance(event["waited_s"], (int, float)), run.describe()
        if backend == "postgresql":  # the holder's backend pid and application_name
            assert f"run={first_id}" in holder, holder
            assert number_after("backend pid ", holder) in first_sessions, holder
        elif backend == "mariadb":  # the connection id IS_USED_LOCK reports
            assert number_after("connection ", holder) in first_sessions, holder
        else:  # the lock file's record
            assert f"run {first_id}" in holder and f"pid {first.process.pid}" in holder, holder


def number_after(prefix: str, text: str) -> int | None:
    found = re.search(re.escape(prefix) + r"(\d+)", text)
    return int(found.group(1)) if found else None


def wait_for(condition: Callable[[], bool], what: str, runs: list[Run], timeout: float = 90.0) -> None:
    """Poll until ``condition``; fail if a run ends meanwhile or the time is up."""
    deadline = time.monotonic() + timeout
    while not condition():
        ended = [run for run in runs if run.process.poll() is not None]
        assert not ended, f"a run ended before {what}:\n" + "\n\n".join(run.describe() for run in ended)
        assert time.monotonic() < deadline, f"timed out before {what}:\n" + "\n\n".join(r.describe() for r in runs)
        time.sleep(0.05)


def sessions(database_url: str) -> set[int]:
    """The server-side ids of the sessions connected to this database now (none for SQLite)."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        return set()
    engine = sa.create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            if url.get_backend_name() == "postgresql":
                sql = (
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                    "AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
                )
            else:
                sql = "SELECT ID FROM information_schema.PROCESSLIST WHERE DB = DATABASE() AND ID <> CONNECTION_ID()"
            return {int(row[0]) for row in connection.exec_driver_sql(sql)}
    finally:
        engine.dispose()


def test_a_run_that_waits_longer_than_lock_wait_timeout_exits_3_naming_the_holder(
    project: Path, database_url: str, tmp_path: Path
) -> None:
    gates = tmp_path / "gates"
    runs = start_first_run_at_gate(project, database_url, tmp_path)
    first = runs[0]
    try:
        late = run_dbmigrate("upgrade", "--lock-wait-timeout", "1", cwd=project, database_url=database_url)
        (gates / "open").touch()
        wait_all(runs)
    finally:
        stop_leftovers(runs)

    assert late.returncode == 3, late.stderr
    assert "held the migration lock" in late.stderr and "0007_gate" in late.stderr
    assert first.process.returncode == 0


def start_first_run_at_gate(project: Path, database_url: str, tmp_path: Path, **env: str) -> list[Run]:
    """Start one upgrade (``env`` added to its environment) and return once it holds the lock, paused in
    revision 0007_gate.

    It goes on when the test creates the file ``tmp_path/gates/open``.
    """
    add_revision(
        project,
        "0007_gate",
        "0006_name_contract",
        'op.create_table("gated", sa.Column("id", sa.Integer, primary_key=True))\npause("open")',
        'op.drop_table("gated")',
    )
    gates = tmp_path / "gates"
    gates.mkdir()
    runs = start_upgrades(project, database_url, tmp_path / "first", count=1, TEST_GATE_DIR=str(gates), **env)
    try:
        wait_for(
            lambda: any(e["revision"] == "0007_gate" for e in runs[0].events("applying revision")),
            "the first run reaches the gate",
            runs,
        )
    except BaseException:
        stop_leftovers(runs)
        raise
    return runs


# -- what the lock is keyed by ---------------------------------------------------------------------


def query(database_url: str, sql: str) -> list[dict[str, object]]:
    """The rows ``sql`` returns."""
    engine = sa.create_engine(database_url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            return [dict(row._mapping) for row in connection.exec_driver_sql(sql)]
    finally:
        engine.dispose()


def test_runs_writing_different_history_tables_take_turns_on_one_version_table(
    project: Path, database_url: str, tmp_path: Path
) -> None:
    # Both runs migrate alembic_version: the second must wait for the first however its history is kept.
    revisions = [*EXAMPLE_REVISIONS, "0007_gate"]
    gates = tmp_path / "gates"
    runs = start_first_run_at_gate(project, database_url, tmp_path, DBMIGRATE_HISTORY_TABLE="history_one")
    first = runs[0]
    try:
        second = start_upgrades(
            project,
            database_url,
            tmp_path / "second",
            count=1,
            TEST_GATE_DIR=str(gates),
            DBMIGRATE_HISTORY_TABLE="history_two",
        )[0]
        runs.append(second)
        wait_for(
            lambda: bool(second.events(WAITING) or second.events("applying revision")),
            "the second run waits for the lock or starts a step",
            runs,
        )
        assert second.events("applying revision") == [], second.describe()
        status = run_dbmigrate(
            "status", "--format", "json", cwd=project, database_url=database_url, DBMIGRATE_HISTORY_TABLE="history_two"
        )
        assert json.loads(status.stdout)["run_in_progress"] is True, status.stdout + status.stderr
        assert first.process.poll() is None and current_revisions(database_url) == {"0006_name_contract"}
        (gates / "open").touch()
        wait_all(runs)
    finally:
        stop_leftovers(runs)

    assert first.process.returncode == 0, first.describe()
    assert second.process.returncode == 0, second.describe()
    assert [step["revision"] for step in first.result()["steps"]] == revisions
    assert (second.result()["outcome"], second.result()["after"]) == ("nothing-to-do", ["0007_gate"])
    assert second.events("applying revision") == [], second.describe()
    assert current_revisions(database_url) == {"0007_gate"}
    history_one = query(database_url, "SELECT revision, status FROM history_one ORDER BY id")
    assert [(r["revision"], r["status"]) for r in history_one] == [(revision, "applied") for revision in revisions]
    assert query(database_url, "SELECT * FROM history_two") == []


# Lock names longer than MySQL's 64 characters are hashed: cut short, these two would be one lock.
LONG_VERSION_TABLE = "alembic_version_of_a_project_with_a_rather_long_name_"


def project_with_version_table(project: Path, where: Path, version_table: str, revision: str, upgrade: str) -> Path:
    """A copy of ``project`` whose env.py keeps its revision in ``version_table``, with one revision."""
    shutil.copytree(project, where)
    remove_revisions(where)
    add_revision(where, revision, None, upgrade)
    env_py = where / "alembic" / "env.py"
    source = env_py.read_text()
    assert source.count("context.configure(") == 2  # offline and online
    env_py.write_text(source.replace("context.configure(", f"context.configure(version_table={version_table!r}, "))
    return where


def test_projects_with_their_own_version_tables_in_one_database_do_not_wait_for_each_other(
    project: Path, database_url: str, backend: str, tmp_path: Path
) -> None:
    # They share the default history table: the second run must leave the first one's 'running' row
    # alone, since that run is alive (on MariaDB its step's CREATE TABLE has committed: it must not be
    # taken for a partial step either).
    create = 'op.create_table("first_items", sa.Column("id", sa.Integer, primary_key=True))'
    # SQLite has one writer: the first run pauses before its step writes, or the second could not write.
    paused = f'pause("open")\n{create}' if backend == "sqlite" else f'{create}\npause("open")'
    first_project = project_with_version_table(project, tmp_path / "a", LONG_VERSION_TABLE + "a", "first_1", paused)
    second_project = project_with_version_table(
        project,
        tmp_path / "b",
        LONG_VERSION_TABLE + "b",
        "second_1",
        'op.create_table("second_items", sa.Column("id", sa.Integer, primary_key=True))',
    )
    gates = tmp_path / "gates"
    gates.mkdir()
    runs = start_upgrades(first_project, database_url, tmp_path / "first", count=1, TEST_GATE_DIR=str(gates))
    first = runs[0]
    try:
        wait_for(lambda: bool(first.events("applying revision")), "the first run reaches its gate", runs)
        started = time.monotonic()
        second = run_dbmigrate(
            "upgrade", "--format", "json", "--lock-wait-timeout", "10", cwd=second_project, database_url=database_url
        )
        took = time.monotonic() - started
        assert first.process.poll() is None, first.describe()
        (gates / "open").touch()
        wait_all(runs)
    finally:
        stop_leftovers(runs)

    assert second.returncode == 0, second.stdout + second.stderr
    assert json.loads(second.stdout)["outcome"] == "applied"
    assert WAITING not in second.stderr, f"the second run waited {took:.1f}s:\n{second.stderr}"
    assert first.process.returncode == 0, first.describe()
    assert first.result()["outcome"] == "applied"
    for version_table, revision in ((LONG_VERSION_TABLE + "a", "first_1"), (LONG_VERSION_TABLE + "b", "second_1")):
        assert query(database_url, f"SELECT version_num FROM {version_table}") == [{"version_num": revision}]
    steps = sorted((r["revision"], r["status"], r["error"]) for r in history_rows(database_url))
    assert steps == [("first_1", "applied", None), ("second_1", "applied", None)]


def test_a_history_table_another_run_creates_meanwhile_is_no_error(database_url: str) -> None:
    # Runs on other version tables do not wait for this one, and may create the shared history table
    # between this run's check for it and its CREATE TABLE.
    engine = sa.create_engine(database_url, poolclass=NullPool)
    created = []

    def create_it_first(connection: Connection, cursor: object, statement: str, *_: object) -> None:
        if not created and statement.lstrip().startswith("CREATE TABLE dbmigrate_history"):
            created.append(statement)
            with engine.begin() as other:
                history_table("dbmigrate_history", None).create(other)

    try:
        with engine.connect() as connection:
            control = connection.execution_options(isolation_level="AUTOCOMMIT")
            sa.event.listen(control, "before_cursor_execute", create_it_first)
            History(control, "dbmigrate_history", None).ensure()
    finally:
        engine.dispose()

    assert created, "the history table was not created by the test's competitor"
    assert query(database_url, "SELECT * FROM dbmigrate_history") == []
