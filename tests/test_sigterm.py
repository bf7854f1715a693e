"""A pod being stopped (SIGTERM) or Ctrl-C (SIGINT) ends the run honestly, at any moment.

The statement in flight is cancelled on the server before the process exits (no lock left held
for the application to queue behind), the step's history row says ``failed`` and names the
signal, the run lock is released only after that, the exit code is 128 + the signal's number, and
the next run continues to head.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.conftest import (
    EXAMPLE_HEAD,
    add_revision,
    current_revisions,
    dbmigrate_env,
    every_line_as_json,
    history_rows,
    log_events,
    run_dbmigrate,
    table_names,
)

SIGTERM_EXIT, SIGINT_EXIT = 128 + signal.SIGTERM, 128 + signal.SIGINT
MOMENTS = 20

# Offline (the upgrade gate's pass) it takes a while too, so signals land in the gate as well; online
# it holds ACCESS EXCLUSIVE on customers while a long statement runs. MySQL/MariaDB commit the ALTER
# on its own (a signal after it leaves a partial step, tested elsewhere): there it comes last.
SLOW_UPGRADE = """
if op.get_context().as_sql:
    if os.environ.get("TEST_GATE_MARKER"):
        open(os.environ["TEST_GATE_MARKER"], "w").close()
    time.sleep(0.5)
    return
if op.get_bind().dialect.name == "mysql":
    op.execute(LONG_STATEMENT)
op.add_column("customers", sa.Column("audit", sa.Integer))
if op.get_bind().dialect.name != "mysql":
    op.execute(LONG_STATEMENT)
"""

LONG_STATEMENTS = {
    "postgresql": "SELECT pg_sleep(2)",
    "mariadb": "SELECT SLEEP(2)",
    # A statement that keeps SQLite busy for seconds inside the C library.
    "sqlite": "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 30000000) SELECT MAX(i) FROM n",
}


def add_slow_revision(project: Path, backend: str) -> None:
    add_revision(
        project,
        "0007_slow",
        EXAMPLE_HEAD,
        f"LONG_STATEMENT = {LONG_STATEMENTS[backend]!r}\n" + SLOW_UPGRADE,
        'op.drop_column("customers", "audit")',
    )


def start_upgrade(project: Path, database_url: str, output: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "dbmigrate", "upgrade"],
        cwd=project,
        env=dbmigrate_env(database_url, TEST_GATE_MARKER=str(output) + ".gate"),
        stdout=subprocess.DEVNULL,
        stderr=output.open("w"),
        text=True,
    )


def wait_for(condition: object, what: str, process: subprocess.Popen[str], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert process.poll() is None, f"the run ended before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def server_still_runs_the_step(database_url: str, backend: str) -> list[str]:
    """What of the step the server still runs or holds: long statements, and locks on customers."""
    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as connection:
            if backend == "postgresql":
                rows = connection.exec_driver_sql(
                    "SELECT 'statement ' || query FROM pg_stat_activity WHERE pid <> pg_backend_pid() "
                    "AND datname = current_database() AND state <> 'idle' AND query ILIKE '%%pg_sleep%%' UNION ALL "
                    "SELECT 'lock ' || l.mode FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
                    "WHERE c.relname = 'customers' AND l.pid <> pg_backend_pid()"
                )
            elif backend == "mariadb":
                rows = connection.exec_driver_sql(
                    "SELECT CONCAT('statement ', INFO) FROM information_schema.PROCESSLIST "
                    "WHERE ID <> CONNECTION_ID() AND DB = DATABASE() AND INFO LIKE '%%SLEEP(%%'"
                )
            else:
                return []
            return [str(row[0]) for row in rows]
    finally:
        engine.dispose()


def assert_terminated_honestly(process: subprocess.Popen[str], output: Path, database_url: str, backend: str) -> None:
    process.wait(timeout=30)  # a pod's default grace period: past it, Kubernetes would SIGKILL
    stderr = output.read_text()
    left = server_still_runs_the_step(database_url, backend)  # read the moment the process is gone
    finished = any(e.get("event") == "run finished" for e in log_events(stderr))
    if process.returncode == 0 or (finished and process.returncode == -signal.SIGTERM):
        # Done before the signal, or stopped while the interpreter shut down (Python's default handler
        # is back by then): the work was complete either way.
        assert finished and current_revisions(database_url) == {"0007_slow"}, stderr
        return
    assert process.returncode == SIGTERM_EXIT, stderr
    every_line_as_json(stderr)  # no driver or pool traceback on the way out
    assert not left, f"the server still runs the step after the process exited: {left}"
    failure = [e for e in log_events(stderr) if e.get("event") == "command failed"]
    assert failure and "SIGTERM" in str(failure[-1]["message"]), stderr
    run_id = failure[-1]["run_id"]
    rows = [r for r in history_rows(database_url) if r["run_id"] == run_id]
    assert all(r["status"] != "running" for r in rows), rows
    if rows and rows[-1]["status"] != "applied":
        assert rows[-1]["status"] == "failed" and "terminated by SIGTERM" in str(rows[-1]["error"]), rows


@pytest.mark.slow
def test_sigterm_at_random_moments_cancels_the_statement_records_it_and_the_next_run_continues(
    project: Path, tmp_path: Path
) -> None:
    from tests.conftest import create_database, drop_database

    backend = "postgresql"
    database_url = create_database(backend, tmp_path)
    try:
        add_slow_revision(project, backend)
        assert run_dbmigrate("upgrade", EXAMPLE_HEAD, cwd=project, database_url=database_url).returncode == 0
        moments = random.Random(20261203)
        terminated = 0
        for moment in range(MOMENTS):
            if current_revisions(database_url) == {"0007_slow"}:
                undone = run_dbmigrate("downgrade", EXAMPLE_HEAD, cwd=project, database_url=database_url)
                assert undone.returncode == 0, undone.stderr
            output = tmp_path / f"moment{moment}.err"
            process = start_upgrade(project, database_url, output)
            wait_for(lambda out=output: out.stat().st_size > 0, "the first log line", process)  # handlers in place
            time.sleep(moments.uniform(0.0, 3.5))  # start-up, the gate, the steps and the long statement
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                terminated += 1
            assert_terminated_honestly(process, output, database_url, backend)
        assert terminated >= MOMENTS // 2, f"only {terminated} of {MOMENTS} runs were still going when signalled"
        finished = run_dbmigrate("upgrade", cwd=project, database_url=database_url)
        assert finished.returncode == 0, finished.stderr
        assert current_revisions(database_url) == {"0007_slow"}
        assert all(r["status"] in ("applied", "failed") for r in history_rows(database_url))
    finally:
        drop_database(database_url)


@pytest.mark.parametrize("moment", ["gate", "long statement"])
def test_sigterm_during_the_gate_or_a_long_statement_ends_the_run_with_its_exit_code(
    project: Path, database_url: str, backend: str, tmp_path: Path, moment: str
) -> None:
    add_slow_revision(project, backend)
    assert run_dbmigrate("upgrade", EXAMPLE_HEAD, cwd=project, database_url=database_url).returncode == 0
    output = tmp_path / "run.err"
    process = start_upgrade(project, database_url, output)
    if moment == "gate":
        wait_for(Path(str(output) + ".gate").exists, "the gate", process)
    else:
        wait_for(
            lambda: any(r["status"] == "running" and r["revision"] == "0007_slow" for r in history_rows(database_url)),
            "the slow step",
            process,
        )
        time.sleep(0.5)  # inside the long statement
    process.send_signal(signal.SIGTERM)
    assert_terminated_honestly(process, output, database_url, backend)
    assert process.returncode == SIGTERM_EXIT
    assert current_revisions(database_url) == {EXAMPLE_HEAD}
    assert run_dbmigrate("upgrade", cwd=project, database_url=database_url).returncode == 0
    assert current_revisions(database_url) == {"0007_slow"}


@pytest.mark.parametrize("backend", ["postgresql"])
def test_sigint_stops_like_sigterm_with_its_own_exit_code(project: Path, database_url: str, tmp_path: Path) -> None:
    add_slow_revision(project, "postgresql")
    output = tmp_path / "run.err"
    process = start_upgrade(project, database_url, output)
    wait_for(
        lambda: any(r["status"] == "running" and r["revision"] == "0007_slow" for r in history_rows(database_url)),
        "the slow step",
        process,
    )
    process.send_signal(signal.SIGINT)
    process.wait(timeout=30)
    assert process.returncode == SIGINT_EXIT, output.read_text()
    assert not server_still_runs_the_step(database_url, "postgresql")
    row = history_rows(database_url)[-1]
    assert row["revision"] == "0007_slow" and row["status"] == "failed" and "SIGINT" in str(row["error"])
    assert current_revisions(database_url) == {EXAMPLE_HEAD}


@pytest.mark.parametrize("backend", ["postgresql"])
def test_sigterm_while_a_step_waits_for_a_long_transaction_records_the_step(
    project: Path, database_url: str, tmp_path: Path
) -> None:
    """A signal during the polite wait before a step (nothing of the step ran yet) ends the run like any other."""
    from tests.conftest import remove_revisions

    remove_revisions(project)
    add_revision(project, "r01_busy", None, 'op.create_table("busy", sa.Column("id", sa.Integer, primary_key=True))')
    add_revision(project, "r02_alter", "r01_busy", 'op.add_column("busy", sa.Column("note", sa.Text))')
    assert run_dbmigrate("upgrade", "r01_busy", cwd=project, database_url=database_url).returncode == 0
    output = tmp_path / "run.err"
    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as long_transaction:
            long_transaction.exec_driver_sql("SELECT * FROM busy").all()  # holds its lock until rolled back
            process = start_upgrade(project, database_url, output)
            wait_for(
                lambda: any(
                    str(e.get("event", "")).startswith("waiting for long transactions")
                    for e in log_events(output.read_text())
                ),
                "the polite wait",
                process,
            )
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)
            long_transaction.rollback()
    finally:
        engine.dispose()
    assert process.returncode == SIGTERM_EXIT, output.read_text()
    row = history_rows(database_url)[-1]
    assert (row["revision"], row["status"]) == ("r02_alter", "failed") and "SIGTERM" in str(row["error"]), row
    assert current_revisions(database_url) == {"r01_busy"}
    assert run_dbmigrate("upgrade", cwd=project, database_url=database_url).returncode == 0
    assert current_revisions(database_url) == {"r02_alter"}


@pytest.mark.parametrize("backend", ["postgresql"])
def test_sigterm_under_the_async_env_py_template_cancels_the_statement_and_records_the_step(
    database_url: str, tmp_path: Path
) -> None:
    """``alembic init -t async`` runs the steps inside an asyncio event loop: the signal still ends the run honestly."""
    from tests.test_envpy_shapes import Shape, make_project

    template = tmp_path / "init"
    template.mkdir()
    subprocess.run(
        [sys.executable, "-m", "alembic", "init", "-t", "async", "migrations"],
        cwd=template,
        check=True,
        capture_output=True,
    )
    project = make_project(Shape("async", template="async"), tmp_path, database_url, lambda _: template)
    versions = project / "migrations" / "versions"
    (versions / "shape_3.py").write_text(
        (versions / "shape_3.py")
        .read_text()
        .replace('op.execute("SELECT no_such_column FROM shape_items")', 'op.execute("SELECT pg_sleep(5)")')
    )
    assert run_dbmigrate("upgrade", "shape_2", cwd=project, database_url=database_url).returncode == 0
    output = tmp_path / "run.err"
    process = subprocess.Popen(
        [sys.executable, "-m", "dbmigrate", "upgrade"],
        cwd=project,
        env=dbmigrate_env(database_url),
        stdout=subprocess.DEVNULL,
        stderr=output.open("w"),
        text=True,
    )
    wait_for(
        lambda: any(r["status"] == "running" and r["revision"] == "shape_3" for r in history_rows(database_url)),
        "the slow step",
        process,
    )
    time.sleep(0.5)  # inside pg_sleep
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=30)

    stderr = output.read_text()
    assert process.returncode == SIGTERM_EXIT, stderr
    every_line_as_json(stderr)
    assert not [s for s in server_still_runs_the_step(database_url, "postgresql") if "pg_sleep" in s]
    row = history_rows(database_url)[-1]
    assert (row["revision"], row["status"]) == ("shape_3", "failed") and "SIGTERM" in str(row["error"]), row
    assert current_revisions(database_url) == {"shape_2"}
    assert "shape_doomed" not in table_names(database_url)
