"""`dbmigrate upgrade` killed with SIGKILL: the database is left at a named revision, or named for repair.

A real process is killed at random moments (seeded; the seed is printed, and
``DBMIGRATE_TEST_SEED=<seed>`` repeats a run) while it migrates a project whose extra revisions
pause between their DDL statements. After every kill, `dbmigrate status` must name exactly the
revision alembic_version holds, the schema must be exactly that revision's (never half a revision),
and the next `dbmigrate upgrade` must reach head. On MariaDB, where DDL commits on its own, a step
killed between two DDL statements must be reported as partial, with the statement that committed and
the repair command, and both ways of repairing it must work. On PostgreSQL the example's 0003 builds
its index in an autocommit block: a kill once that block started leaves 0003 partial, and since 0003
is written to run again, `dbmigrate repair --reverted` and the next upgrade reach head.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import json
import os
import random
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from tests.conftest import (
    EXAMPLE_REVISIONS,
    add_revision,
    connect,
    current_revisions,
    history_rows,
    log_events,
    run_dbmigrate,
    start_dbmigrate,
)

pytestmark = pytest.mark.slow

KILLS = 20  # per backend, in two tests of ten so that each stays well under a minute
BATCHES = (1, 2)
PAUSE_SECONDS = "0.1"  # between the DDL statements of the slow revisions, during the killed runs only

SLOW_REVISIONS = {
    "0007_slow_audit": (
        """
op.create_table(
    "audit",
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("customer_id", sa.Integer, nullable=False),
)
pause("audit")
op.create_table(
    "audit_detail",
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("audit_id", sa.Integer, sa.ForeignKey("audit.id", name="fk_audit_detail_audit"), nullable=False),
)
pause("audit_detail")
op.add_column("customers", sa.Column("audited_at", sa.DateTime, nullable=True))
""",
        """
op.drop_table("audit_detail")
op.drop_table("audit")
with op.batch_alter_table("customers") as batch:
    batch.drop_column("audited_at")
""",
    ),
    "0008_slow_audit_columns": (
        """
op.add_column("audit", sa.Column("kind", sa.String(20), nullable=True))
pause("kind")
op.add_column("audit", sa.Column("note", sa.String(200), nullable=True))
pause("note")
op.create_index("ix_audit_kind", "audit", ["kind"])
""",
        """
op.drop_index("ix_audit_kind", table_name="audit")
with op.batch_alter_table("audit") as batch:
    batch.drop_column("note")
    batch.drop_column("kind")
""",
    ),
    "0009_slow_audit_rows": (
        """
op.execute("INSERT INTO audit (id, customer_id, kind) SELECT id, id, 'seed' FROM customers WHERE id <= 50")
pause("rows")
op.add_column("orders", sa.Column("audit_id", sa.Integer, nullable=True))
pause("orders")
op.execute("UPDATE orders SET audit_id = customer_id WHERE customer_id <= 50")
""",
        """
with op.batch_alter_table("orders") as batch:
    batch.drop_column("audit_id")
op.execute("DELETE FROM audit")
""",
    ),
}
SLOW_PROJECT_REVISIONS = [*EXAMPLE_REVISIONS, *SLOW_REVISIONS]
SLOW_HEAD = SLOW_PROJECT_REVISIONS[-1]


# -- helpers -------------------------------------------------------------------------------------


def add_slow_revisions(project: Path) -> None:
    previous = EXAMPLE_REVISIONS[-1]
    for revision, (upgrade, downgrade) in SLOW_REVISIONS.items():
        add_revision(project, revision, previous, upgrade, downgrade)
        previous = revision


def schema_facts(url: str) -> dict[str, list[bool]]:
    """For each revision of the slow project, the facts that hold once it is applied (all False before).

    A revision whose facts are neither all true nor all false is half applied.
    """
    with connect(url) as connection:
        inspector = sa.inspect(connection)
        tables = set(inspector.get_table_names())

        def columns(table: str) -> set[str]:
            return {c["name"] for c in inspector.get_columns(table)} if table in tables else set()

        def indexes(table: str) -> set[str]:
            return {str(i["name"]) for i in inspector.get_indexes(table)} if table in tables else set()

        def count(sql: str) -> int:
            return int(connection.exec_driver_sql(sql).scalar_one())

        customers, orders, audit = columns("customers"), columns("orders"), columns("audit")
        is_mysql = connection.dialect.name in ("mysql", "mariadb")
        return {
            "0001_customers": [
                "customers" in tables,
                "customers" in tables and count("SELECT COUNT(*) FROM customers") == 200,
            ],
            "0002_orders": ["orders" in tables, "orders" in tables and count("SELECT COUNT(*) FROM orders") == 500],
            # MySQL/MariaDB already index the foreign key: the revision does nothing there.
            "0003_orders_customer_idx": [] if is_mysql else ["ix_orders_customer_id" in indexes("orders")],
            "0004_email_domain": [
                "email_domain" in customers,
                # Filled once its backfill is done; until then the next run resumes it (no row is left out).
                "email_domain" in customers
                and (
                    count("SELECT COUNT(*) FROM customers WHERE email_domain IS NULL") == 0
                    or count("SELECT COUNT(*) FROM dbmigrate_backfills WHERE state <> 'done'") > 0
                ),
            ],
            "0005_full_name_expand": ["full_name" in customers],
            "0006_name_contract": [bool(customers) and "name" not in customers],
            "0007_slow_audit": ["audit" in tables, "audit_detail" in tables, "audited_at" in customers],
            "0008_slow_audit_columns": ["kind" in audit, "note" in audit, "ix_audit_kind" in indexes("audit")],
            "0009_slow_audit_rows": [
                bool(audit) and count("SELECT COUNT(*) FROM audit") == 50,
                "audit_id" in orders,
                "audit_id" in orders and count("SELECT COUNT(*) FROM orders WHERE audit_id IS NOT NULL") > 0,
            ],
        }


def assert_schema_is_exactly(url: str, revision: str | None, context: str) -> None:
    """Every revision up to ``revision`` is wholly applied and every later one wholly absent."""
    facts = schema_facts(url)
    applied = SLOW_PROJECT_REVISIONS.index(revision) if revision else -1
    for index, name in enumerate(SLOW_PROJECT_REVISIONS):
        found = facts[name]
        if index <= applied:
            assert all(found), f"{context}: at {revision}, {name} is not (wholly) applied: {found}"
        elif name == "0003_orders_customer_idx" and make_url(url).get_backend_name() == "postgresql":
            # Its CREATE INDEX CONCURRENTLY runs outside the step's transaction (an autocommit block):
            # a kill after it and before the version update leaves the index in place at 0002 (the
            # step is then partial, see repair_partial_0003).
            continue
        else:
            assert not any(found), f"{context}: at {revision}, {name} is (partly) applied: {found}"


def other_sessions(url: str) -> int:
    """Sessions on this database other than ours (the killed run's, until the server notices it died)."""
    backend = make_url(url).get_backend_name()
    if backend == "sqlite":
        return 0
    with connect(url) as connection:
        if backend == "postgresql":
            sql = (
                "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
            )
        else:
            sql = "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE DB = DATABASE() AND ID <> CONNECTION_ID()"
        return int(connection.exec_driver_sql(sql).scalar_one())


def wait_until(condition: Callable[[], object], what: str, timeout: float = 30.0, interval: float = 0.01) -> None:
    """Poll until ``condition`` holds; a test whose setup never gets there fails (not an assertion)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting until {what}")
        time.sleep(interval)


def first_step_started(process: subprocess.Popen[str], output: Path) -> bool:
    """Whether the run logged its first step (or has ended)."""
    return process.poll() is not None or "applying revision" in Path(f"{output}.err").read_text()


def kill(process: subprocess.Popen[str]) -> bool:
    """SIGKILL a process this test started (by its PID) and reap it; False if it had already ended."""
    alive = process.poll() is None
    if alive:
        os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    return alive and process.returncode == -signal.SIGKILL


def reset(url: str) -> None:
    """Back to an empty database, dbmigrate's tables included."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        for path in Path(str(parsed.database)).parent.glob(Path(str(parsed.database)).name + "*"):
            path.unlink()
        return
    with connect(url) as connection:
        connection.exec_driver_sql("DROP SCHEMA public CASCADE")
        connection.exec_driver_sql("CREATE SCHEMA public")
        connection.commit()


def repair_partial_0003(project: Path, url: str, context: str) -> bool:
    """PostgreSQL: if the kill left 0003 partial (its autocommit block had started), repair it as reverted.

    0003 drops an INVALID leftover and creates its index IF NOT EXISTS, so it can simply run again.
    Returns whether it did; any other partial step fails the test.
    """
    code, state = status_json(project, url, context)
    if state["needs_repair"] is None:
        return False
    assert code == 5 and make_url(url).get_backend_name() == "postgresql", f"{context}\nstatus: {state}"
    assert "revision 0003_orders_customer_idx" in str(state["needs_repair"]), f"{context}\nstatus: {state}"
    assert "they ran outside a transaction" in str(state["needs_repair"]), f"{context}\nstatus: {state}"
    repaired = run_dbmigrate("repair", "--reverted", cwd=project, database_url=url)
    assert repaired.returncode == 0, f"{context}\nrepair:\n{repaired.stderr}"
    return True


def kill_seed() -> int:
    seed = int(os.environ.get("DBMIGRATE_TEST_SEED") or random.SystemRandom().randrange(2**32))
    print(f"kill seed: {seed} (DBMIGRATE_TEST_SEED={seed} repeats these kill moments)")
    return seed


def status_json(project: Path, url: str, context: str) -> tuple[int, dict[str, Any]]:
    result = run_dbmigrate("status", "--format", "json", cwd=project, database_url=url)
    try:
        data = json.loads(result.stdout)
    except ValueError:
        pytest.fail(f"{context}: status printed no JSON (exit {result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result.returncode, data


# -- random kills on PostgreSQL and SQLite ---------------------------------------------------------


@pytest.mark.parametrize("batch", BATCHES, ids=lambda b: f"kills{b}")
@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_run_killed_at_random_moments_leaves_a_named_revision_and_the_next_run_reaches_head(
    project: Path, database_url: str, tmp_path: Path, batch: int
) -> None:
    add_slow_revisions(project)
    seed = kill_seed()
    rng = random.Random(f"{seed}/{batch}")
    url = database_url
    kills = KILLS // len(BATCHES)
    killed = 0
    left_at: collections.Counter[str] = collections.Counter()
    for attempt in range(kills):
        reset(url)
        # Either anywhere from the process start (connecting, locking, creating the history table) or
        # from the first step on, where the revisions and their history rows are being written.
        from_start = rng.random() < 0.3
        delay = rng.uniform(0.0, 1.2) if from_start else rng.uniform(0.0, 0.8)
        moment = f"{delay:.3f}s after {'the start' if from_start else 'the first step'}"
        context = f"seed {seed}, batch {batch}, kill {attempt + 1}: {moment}"
        output = tmp_path / f"killed{attempt}"
        process = start_dbmigrate(
            "upgrade", cwd=project, database_url=url, output=output, TEST_PAUSE_SECONDS=PAUSE_SECONDS
        )
        try:
            if not from_start:
                wait_until(functools.partial(first_step_started, process, output), "the run starts its first step")
            time.sleep(delay)
        finally:
            killed += kill(process)
        stderr = Path(f"{output}.err").read_text()
        context += f" (run {'killed' if process.returncode == -signal.SIGKILL else 'ended'}), stderr:\n{stderr}"
        assert process.returncode in (0, -signal.SIGKILL), context
        wait_until(lambda: other_sessions(url) == 0, "the killed run's sessions are gone")

        repaired = repair_partial_0003(project, url, context)
        code, state = status_json(project, url, context)
        assert code == 0, f"{context}\nstatus: {state}"
        assert state["needs_repair"] is None, context
        in_database = current_revisions(url)
        assert set(state["current"]) == in_database, f"{context}\nstatus: {state['current']}, db: {in_database}"
        assert len(in_database) <= 1, context
        named = next(iter(in_database), None)
        left_at[named or "base"] += 1
        assert_schema_is_exactly(url, named, context)

        upgrade = run_dbmigrate("upgrade", "--format", "json", cwd=project, database_url=url)
        assert upgrade.returncode == 0, f"{context}\nnext upgrade:\n{upgrade.stdout}\n{upgrade.stderr}"
        assert current_revisions(url) == {SLOW_HEAD}, context
        assert_schema_is_exactly(url, SLOW_HEAD, context + "\nafter the next upgrade")
        rows = history_rows(url)
        assert [r for r in rows if r["status"] == "running"] == [], context
        applied = [r["revision"] for r in rows if r["status"] == "applied"]
        assert len(applied) == len(set(applied)), f"{context}\na revision was applied twice: {applied}"
        run_ids = {e["run_id"] for e in log_events(stderr) if "run_id" in e}
        for row in rows:
            if row["run_id"] in run_ids and row["status"] != "applied":
                partial = repaired and row["revision"] == "0003_orders_customer_idx"
                assert row["status"] == ("partial" if partial else "failed"), f"{context}\n{row}"
    print(f"{killed} of {kills} runs were killed mid-run (the others had finished); left at: {dict(left_at)}")


# -- a step that commits part of itself: MariaDB -------------------------------------------------

TWO_ALTERS = """
op.add_column("customers", sa.Column("tier", sa.String(20), nullable=True))
pause("between_alters")
op.add_column("customers", sa.Column("score", sa.Integer, nullable=True))
"""
TWO_ALTERS_DOWN = """
op.drop_column("customers", "score")
op.drop_column("customers", "tier")
"""


def customer_columns(url: str) -> set[str]:
    with connect(url) as connection:
        return {c["name"] for c in sa.inspect(connection).get_columns("customers")}


def running_row(url: str, revision: str) -> dict[str, object] | None:
    rows = [r for r in history_rows(url) if r["revision"] == revision and r["status"] == "running"]
    return rows[-1] if rows else None


def statement_done(url: str, revision: str, fragment: str) -> bool:
    row = running_row(url, revision)
    statements = json.loads(str(row["statements"])) if row and row["statements"] else []
    return any(fragment in s["sql"] and s.get("done") for s in statements)


def kill_between_the_alters(project: Path, url: str, tmp_path: Path) -> None:
    """Run the upgrade and SIGKILL it while it sleeps after the first ALTER committed."""
    add_revision(project, "0007_customer_tier", "0006_name_contract", TWO_ALTERS, TWO_ALTERS_DOWN)
    gates = tmp_path / "gates"
    gates.mkdir()  # the gate never opens: the step sleeps between its ALTERs until it is killed
    output = tmp_path / "killed"
    process = start_dbmigrate("upgrade", cwd=project, database_url=url, output=output, TEST_GATE_DIR=str(gates))
    try:
        wait_until(
            lambda: process.poll() is not None or statement_done(url, "0007_customer_tier", "ADD COLUMN tier"),
            "history shows the first ALTER done",
            interval=0.05,
        )
        assert process.poll() is None, Path(f"{output}.err").read_text()
    finally:
        kill(process)
    wait_until(lambda: other_sessions(url) == 0, "the killed run's sessions are gone")
    assert current_revisions(url) == {"0006_name_contract"}
    assert {"tier", "score"} & customer_columns(url) == {"tier"}


def assert_names_the_repair(message: str) -> None:
    assert "0007_customer_tier" in message, message
    assert "ALTER TABLE customers ADD COLUMN tier" in message, message
    assert "ADD COLUMN score" not in message, message
    assert "dbmigrate repair --reverted" in message, message
    assert "dbmigrate repair --applied" in message, message


def assert_needs_repair(project: Path, url: str) -> None:
    """status and upgrade both exit 5 and name the revision, the committed statement and the repair."""
    code, state = status_json(project, url, "right after the kill")
    assert code == 5, state
    assert_names_the_repair(str(state["needs_repair"]))

    upgrade = run_dbmigrate("upgrade", "--format", "json", cwd=project, database_url=url)
    assert upgrade.returncode == 5, upgrade.stdout + upgrade.stderr
    assert_names_the_repair(json.loads(upgrade.stdout)["message"])
    assert current_revisions(url) == {"0006_name_contract"}
    assert {"tier", "score"} & customer_columns(url) == {"tier"}, "the refused upgrade changed the schema"

    code, state = status_json(project, url, "after the refused upgrade")
    assert code == 5, state
    assert_names_the_repair(str(state["needs_repair"]))
    partial = [r for r in history_rows(url) if r["status"] == "partial"]
    assert [(r["revision"], r["direction"]) for r in partial] == [("0007_customer_tier", "upgrade")]


@pytest.mark.parametrize("backend", ["mariadb"])
def test_step_killed_between_two_ddl_statements_is_partial_until_reverted_by_hand(
    project: Path, database_url: str, tmp_path: Path
) -> None:
    url = database_url
    kill_between_the_alters(project, url, tmp_path)
    assert_needs_repair(project, url)

    with connect(url) as connection:
        connection.exec_driver_sql("ALTER TABLE customers DROP COLUMN tier")
    repair = run_dbmigrate("repair", "--reverted", cwd=project, database_url=url)
    assert repair.returncode == 0, repair.stdout + repair.stderr

    code, state = status_json(project, url, "after repair --reverted")
    assert code == 0, state
    assert state["needs_repair"] is None
    assert state["pending"] == ["0007_customer_tier"]

    upgrade = run_dbmigrate("upgrade", cwd=project, database_url=url)
    assert upgrade.returncode == 0, upgrade.stdout + upgrade.stderr
    assert current_revisions(url) == {"0007_customer_tier"}
    assert {"tier", "score"} <= customer_columns(url)
    code, state = status_json(project, url, "after the upgrade")
    assert (code, state["at_head"], state["needs_repair"]) == (0, True, None)
    statuses = [(r["revision"], r["direction"], r["status"]) for r in history_rows(url)]
    assert statuses[-3:] == [
        ("0007_customer_tier", "upgrade", "partial"),
        ("0007_customer_tier", "repair", "repaired"),
        ("0007_customer_tier", "upgrade", "applied"),
    ]


@pytest.mark.parametrize("backend", ["mariadb"])
def test_step_killed_between_two_ddl_statements_is_stamped_once_finished_by_hand(
    project: Path, database_url: str, tmp_path: Path
) -> None:
    url = database_url
    kill_between_the_alters(project, url, tmp_path)
    assert_needs_repair(project, url)

    with connect(url) as connection:
        connection.exec_driver_sql("ALTER TABLE customers ADD COLUMN score INTEGER NULL")
    repair = run_dbmigrate("repair", "--applied", cwd=project, database_url=url)
    assert repair.returncode == 0, repair.stdout + repair.stderr
    assert current_revisions(url) == {"0007_customer_tier"}

    code, state = status_json(project, url, "after repair --applied")
    assert code == 0, state
    assert (state["at_head"], state["needs_repair"], state["pending"]) == (True, None, [])

    upgrade = run_dbmigrate("upgrade", "--format", "json", cwd=project, database_url=url)
    assert upgrade.returncode == 0, upgrade.stdout + upgrade.stderr
    assert json.loads(upgrade.stdout)["outcome"] == "nothing-to-do"
    assert current_revisions(url) == {"0007_customer_tier"}


# -- a step killed after it committed, before its history row was finished ------------------------


@pytest.mark.parametrize("backend", ["mariadb"])
def test_step_killed_after_its_commit_is_recorded_as_applied(
    project: Path, database_url: str, backend: str, tmp_path: Path
) -> None:
    """The step commits, then the run dies before it marks the history row applied.

    The test holds a row lock on the step's history row, so the run blocks right after the commit,
    where it goes to finish that row; it is killed there. (On PostgreSQL and SQLite the row is
    finished inside the step's transaction, so there is no such moment: see the next test.)
    """
    url = database_url
    # The lock is taken once the step's CREATE TABLE was recorded (it commits on its own here).
    ddl_recorded = functools.partial(statement_done, url, "0007_gate", "CREATE TABLE")
    with gated_step_with_its_history_row_locked(project, url, tmp_path, ready=ddl_recorded) as process:
        wait_until(lambda: current_revisions(url) == {"0007_gate"}, "the step commits")
        wait_until(lambda: blocked_on_a_row_lock(url), "the run waits to finish the history row")
        kill(process)

    code, state = status_json(project, url, "after the kill")
    assert state["current"] == ["0007_gate"]
    assert (code, state["needs_repair"]) == (0, None), (
        f"the applied step is reported for repair: {state['needs_repair']}"
    )

    upgrade = run_dbmigrate("upgrade", "--format", "json", cwd=project, database_url=url)
    assert upgrade.returncode == 0, upgrade.stdout + upgrade.stderr
    assert json.loads(upgrade.stdout)["outcome"] == "nothing-to-do"
    rows = [(r["status"], r["error"]) for r in history_rows(url) if r["revision"] == "0007_gate"]
    assert [status for status, _ in rows] == ["applied"], f"the history of the applied step 0007_gate: {rows}"


@pytest.mark.parametrize("backend", ["postgresql"])
def test_applied_history_row_commits_together_with_the_step(
    project: Path, database_url: str, backend: str, tmp_path: Path
) -> None:
    """Until the step's history row is finished the step has not committed: a kill there loses nothing."""
    url = database_url
    with gated_step_with_its_history_row_locked(project, url, tmp_path, ready=lambda: True) as process:
        wait_until(lambda: blocked_on_a_row_lock(url), "the run waits to finish the history row")
        assert current_revisions(url) == {"0006_name_contract"}, "the step committed before its history row"
        kill(process)

    code, state = status_json(project, url, "after the kill")
    assert (state["current"], code, state["needs_repair"]) == (["0006_name_contract"], 0, None)
    upgrade = run_dbmigrate("upgrade", "--format", "json", cwd=project, database_url=url)
    assert upgrade.returncode == 0, upgrade.stdout + upgrade.stderr
    assert current_revisions(url) == {"0007_gate"}
    statuses = [r["status"] for r in history_rows(url) if r["revision"] == "0007_gate"]
    assert statuses.count("applied") == 1 and statuses[-1] == "applied", statuses


def blocked_on_a_row_lock(url: str) -> bool:
    with connect(url) as connection:
        if connection.dialect.name == "postgresql":
            sql = (
                "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock' AND query LIKE 'UPDATE dbmigrate_history%'"
            )
        else:
            sql = (
                "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE DB = DATABASE() "
                "AND INFO LIKE 'UPDATE dbmigrate_history%'"
            )
        return int(connection.execute(sa.text(sql)).scalar_one()) > 0


@contextlib.contextmanager
def gated_step_with_its_history_row_locked(
    project: Path, url: str, tmp_path: Path, ready: Callable[[], bool]
) -> Iterator[subprocess.Popen[str]]:
    """Start an upgrade whose step 0007_gate waits at its gate until ``ready()``, lock the step's
    history row, open the gate, and hand over the run; it is killed and its sessions gone after."""
    add_revision(
        project,
        "0007_gate",
        "0006_name_contract",
        'op.create_table("gated", sa.Column("id", sa.Integer, primary_key=True))\npause("commit")',
        'op.drop_table("gated")',
    )
    gates = tmp_path / "gates"
    gates.mkdir()
    output = tmp_path / "killed"
    process = start_dbmigrate("upgrade", cwd=project, database_url=url, output=output, TEST_GATE_DIR=str(gates))
    engine = sa.create_engine(url, poolclass=NullPool)
    try:
        wait_until(
            lambda: process.poll() is not None or (running_row(url, "0007_gate") is not None and ready()),
            "the gated step runs",
            interval=0.05,
        )
        row = running_row(url, "0007_gate")
        if process.poll() is not None or row is None:
            pytest.fail("the run ended before its gate:\n" + Path(f"{output}.err").read_text())
        with engine.connect() as blocker:
            blocker.execute(
                sa.text("SELECT id FROM dbmigrate_history WHERE id = :id FOR UPDATE"), {"id": row["id"]}
            ).all()
            (gates / "commit").touch()
            yield process
            blocker.rollback()
    finally:
        kill(process)
        engine.dispose()
    wait_until(lambda: other_sessions(url) == 0, "the killed run's sessions are gone")


# -- status after a kill, before any new run -------------------------------------------------------


def test_status_after_a_kill_shows_the_interrupted_step_as_failed_and_writes_nothing(
    project: Path, database_url: str, backend: str, tmp_path: Path
) -> None:
    url = database_url
    create = 'op.create_table("gated", sa.Column("id", sa.Integer, primary_key=True))'
    # MariaDB commits a CREATE TABLE at once: there the step is killed before it, so that it is failed, not partial.
    body = f'pause("never")\n{create}' if backend == "mariadb" else f'{create}\npause("never")'
    add_revision(project, "0007_gate", "0006_name_contract", body, 'op.drop_table("gated")')
    gates = tmp_path / "gates"
    gates.mkdir()  # the gate never opens: the step waits in it until it is killed
    output = tmp_path / "killed"
    process = start_dbmigrate("upgrade", cwd=project, database_url=url, output=output, TEST_GATE_DIR=str(gates))
    try:
        wait_until(
            lambda: (
                process.poll() is not None
                or any(e.get("revision") == "0007_gate" for e in log_events(Path(f"{output}.err").read_text()))
            ),
            "the run starts 0007_gate",
            timeout=60,
        )
        assert process.poll() is None, Path(f"{output}.err").read_text()
        # While the run lives, its step is running (and status, a second or so, lets it reach its gate).
        code, alive = status_json(project, url, "while the run is alive")
        assert (code, alive["run_in_progress"]) == (0, True), alive
        assert (alive["last_run"][-1]["revision"], alive["last_run"][-1]["status"]) == ("0007_gate", "running")
    finally:
        kill(process)
    wait_until(lambda: other_sessions(url) == 0, "the killed run's sessions are gone")

    code, state = status_json(project, url, "after the kill")
    assert (code, state["current"], state["needs_repair"], state["run_in_progress"]) == (
        0,
        ["0006_name_contract"],
        None,
        False,
    ), state
    last_run = [(step["revision"], step["status"]) for step in state["last_run"]]
    assert last_run == [*((revision, "applied") for revision in EXAMPLE_REVISIONS), ("0007_gate", "failed")]
    explanation = str(state["last_run"][-1]["error"])
    assert "was interrupted during this step; its transaction was rolled back" in explanation, explanation
    assert running_row(url, "0007_gate") is not None, "status wrote to the history table"
    with connect(url) as connection:
        assert not sa.inspect(connection).has_table("gated")

    upgrade = run_dbmigrate("upgrade", "--format", "json", cwd=project, database_url=url)
    assert upgrade.returncode == 0, upgrade.stdout + upgrade.stderr
    assert current_revisions(url) == {"0007_gate"}
    rows = [(r["status"], r["error"]) for r in history_rows(url) if r["revision"] == "0007_gate"]
    assert rows == [("failed", explanation), ("applied", None)], rows
    code, state = status_json(project, url, "after the next upgrade")
    assert (code, state["at_head"], state["last_run"][-1]["status"]) == (0, True, "applied"), state
