"""A server restart, a cut connection or an admin's shutdown during a run: exit 3, one honest paragraph, a rerun.

A real `dbmigrate upgrade` of twenty revisions, each of which takes a moment on the server, is hit
at random moments (seeded; the seed is printed, ``DBMIGRATE_TEST_SEED=<seed>`` repeats a run): a
PostgreSQL server restarted (a fast shutdown, or an immediate one: a crash), or a proxy between
dbmigrate and the server that cuts every open connection. Each time the run must exit 3 (or 0 when
it had finished) with a last error message that says the connection was lost, where the database
is and that a rerun continues, and that never shows an unexpected error, raw SQL or a misleading
hint; the step's history row must be written once the server is back, the database must hold whole
revisions only, its history must agree with alembic_version, and a rerun must reach head. The server
is a scratch cluster the module starts on its own port (a restart must not disturb other tests).

Single faults at chosen moments, on the shared servers: an admin ending the migration session
(PostgreSQL ``pg_terminate_backend``, MariaDB ``KILL``) during a slow statement, or the control
session while a step waits for a long transaction; MariaDB's control session killed as it records
a step that had committed; a crash while the first step runs.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import os
import pwd
import random
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from tests.conftest import (
    add_revision,
    connect,
    current_revisions,
    every_line_as_json,
    free_port,
    history_rows,
    log_events,
    remove_revisions,
    run_dbmigrate,
    start_dbmigrate,
)

PG_BIN = Path(os.environ.get("DBMIGRATE_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
SEED = int(os.environ.get("DBMIGRATE_TEST_SEED") or random.randrange(1 << 32))
FAULTS = 10  # per test: restarts of the server, or cuts of every connection
REVISIONS = [f"r{n:02d}" for n in range(1, 21)]
HEAD = REVISIONS[-1]
STEP_SECONDS = 0.1  # how long each revision's statement keeps the server busy

# What a lost connection must never be reported as: the messages this replaced.
MISLEADING = (
    "Unexpected error",
    "[SQL:",
    "Check --table-schema",
    "(env.py) failed",
    "Traceback",
    # A consequence named as the cause: a statement on the connection after it was lost.
    "Can't reconnect until invalid transaction is rolled back",
)


# -- a scratch PostgreSQL cluster ------------------------------------------------------------------


@dataclasses.dataclass
class ScratchCluster:
    """A PostgreSQL 15 cluster of this module's own: trust auth, 127.0.0.1 only, no fsync."""

    root: Path
    port: int

    @property
    def data(self) -> Path:
        return self.root / "data"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def as_postgres(self, *command: str, timeout: float = 120) -> None:
        """Run a PostgreSQL program: as the postgres OS user when this is root (PostgreSQL refuses root)."""
        user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        done = subprocess.run([*user, *command], capture_output=True, text=True, timeout=timeout, check=False)
        assert done.returncode == 0, f"{command}: {done.stdout}{done.stderr}"

    def pg_ctl(self, *args: str) -> None:
        # -l: the server's output goes to a file, not to the pipe this process waits on.
        self.as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "server.log"), *args)

    def restart(self, mode: str) -> None:
        """Stop the server (``fast``: sessions ended; ``immediate``: a crash), start it again, wait until it accepts."""
        self.pg_ctl("restart", "-m", mode, "-w", "-t", "60")

    def create_database(self) -> str:
        name = f"dbm_{uuid.uuid4().hex[:12]}"
        engine = sa.create_engine(self.url(), isolation_level="AUTOCOMMIT", poolclass=NullPool)
        try:
            with engine.connect() as connection:
                connection.exec_driver_sql(f"CREATE DATABASE {name}")
        finally:
            engine.dispose()
        return self.url(name)


@pytest.fixture(scope="module")
def cluster() -> Iterator[ScratchCluster]:
    """Started once for the module; stopped and removed at the end, failures included."""
    # Under /tmp, not pytest's tmp_path: the postgres user must be able to reach the data directory.
    root = Path(tempfile.mkdtemp(prefix="dbmigrate-pg-"))
    if os.geteuid() == 0:
        postgres = pwd.getpwnam("postgres")
        os.chown(root, postgres.pw_uid, postgres.pw_gid)
    server = ScratchCluster(root, free_port())
    try:
        server.as_postgres(
            str(PG_BIN / "initdb"), "-D", str(server.data), "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8"
        )
        settings = {
            "port": str(server.port),
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": f"'{root}'",
            # Safe for a crash of the server (not of the machine): what a commit wrote is in the kernel's
            # cache. synchronous_commit stays on: off, a crash would lose acknowledged commits.
            "fsync": "off",
            "full_page_writes": "off",
            # Asynchronous commits (dbmigrate's history writes on PostgreSQL) stay in the WAL buffers until a
            # synchronous commit flushes them: a crash loses them, as it may on any server, just more often here.
            "wal_writer_delay": "'10s'",
        }
        with (server.data / "postgresql.conf").open("a") as conf:
            conf.writelines(f"{key} = {value}\n" for key, value in settings.items())
        server.pg_ctl("start", "-w", "-t", "60")
        yield server
    finally:
        with contextlib.suppress(AssertionError, subprocess.SubprocessError):
            server.pg_ctl("stop", "-m", "immediate", "-w", "-t", "60")
        shutil.rmtree(root, ignore_errors=True)


# -- a proxy that cuts connections -------------------------------------------------------------------


class CuttingProxy:
    """Forwards 127.0.0.1:``port`` to a server; :meth:`cut` closes every open connection at once, both ends."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self.listener = socket.create_server(("127.0.0.1", self.port))
        self.open: set[socket.socket] = set()
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            except OSError:
                client.close()
                continue
            with self.lock:
                self.open |= {client, upstream}
            for source, target in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, target), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                target.sendall(data)
        except OSError:
            pass
        self._close(source, target)

    def _close(self, *sockets: socket.socket) -> None:
        for sock in sockets:
            with self.lock:
                self.open.discard(sock)
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def cut(self) -> int:
        """Close every connection going through now, both sides; returns how many sockets were open."""
        with self.lock:
            cut = list(self.open)
        self._close(*cut)
        return len(cut)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked in accept()
        self.listener.close()
        self.cut()


# -- the project: twenty revisions that take a moment each -------------------------------------------


def twenty_slow_revisions(project: Path) -> None:
    remove_revisions(project)
    previous = None
    for revision in REVISIONS:
        add_revision(
            project,
            revision,
            previous,
            f'op.create_table("t_{revision}", sa.Column("id", sa.Integer, primary_key=True))\n'
            f'op.execute("SELECT pg_sleep({STEP_SECONDS})")',
            f'op.drop_table("t_{revision}")',
        )
        previous = revision


def applied_revisions(url: str) -> list[str]:
    """The revisions alembic_version says are applied (a straight line: everything up to it)."""
    current = current_revisions(url)
    assert len(current) <= 1, current
    return REVISIONS[: REVISIONS.index(current.pop()) + 1] if current else []


def assert_whole_revisions_and_history_agree(url: str, context: str) -> None:
    """Each revision's table exists exactly when alembic_version holds it, and the history says the same."""
    applied = applied_revisions(url)
    with connect(url) as connection:
        tables = {t for t in sa.inspect(connection).get_table_names() if t.startswith("t_")}
    assert tables == {f"t_{r}" for r in applied}, f"{context}: half a revision, or a table without its revision"
    last_status = {r["revision"]: r["status"] for r in history_rows(url) if r["direction"] == "upgrade"}
    said_applied = {revision for revision, status in last_status.items() if status == "applied"}
    assert said_applied == set(applied), (
        f"{context}: history says applied {sorted(said_applied)}, the database {applied}"
    )


def assert_the_rerun_reaches_head(project: Path, url: str, context: str) -> None:
    rerun = run_dbmigrate("upgrade", cwd=project, database_url=url)
    assert rerun.returncode == 0, f"{context}: the rerun failed\n{rerun.stderr}"
    assert current_revisions(url) == {HEAD}, context
    assert_whole_revisions_and_history_agree(url, f"{context}, after the rerun")
    rows = [r for r in history_rows(url) if r["direction"] == "upgrade"]
    assert {r["status"] for r in rows} <= {"applied", "failed"}, f"{context}: {[r['status'] for r in rows]}"
    for revision in REVISIONS:
        statuses = [r["status"] for r in rows if r["revision"] == revision]
        assert statuses.count("applied") == 1 and statuses[-1] == "applied", f"{context}: {revision} {statuses}"


def where_it_stopped(code: int, message: str) -> str:
    if code == 0:
        return "after the run had finished"
    if "during revision" in message:
        return "during a step"
    if "while env.py ran" in message:
        return "in env.py, before any step"
    return "outside any step (start-up, run lock, gate, the end)"


def assert_honest_exit(code: int, stderr: str, url: str, context: str) -> str:
    """Exit 0 at head, or exit 3 whose last line is one clear paragraph; returns where the run stopped."""
    lines = every_line_as_json(stderr)
    for bad in MISLEADING:
        assert bad not in stderr, f"{context}: {bad!r} in stderr\n{stderr}"
    if code == 0:
        assert any(line.get("event") == "run finished" for line in lines), f"{context}\n{stderr}"
        assert current_revisions(url) == {HEAD}, context
        return where_it_stopped(code, "")
    assert code == 3, f"{context}: exit {code}\n{stderr}"
    last = lines[-1]
    assert (last.get("event"), last.get("error"), last.get("exit_code")) == ("command failed", "ConnectionLost", 3), (
        f"{context}\n{stderr}"
    )
    message = str(last["message"])
    assert "The connection to the database" in message and "was lost" in message, f"{context}: {message}"
    assert "Run the command again" in message, f"{context}: {message}"
    assert "password" not in message.lower(), message
    during = re.search(r"during revision (\w+)", message)
    if during:
        assert_the_step_is_recorded(url, str(last["run_id"]), during.group(1), message, stderr, context)
    return where_it_stopped(code, message)


def assert_the_step_is_recorded(url: str, run_id: str, revision: str, message: str, stderr: str, context: str) -> None:
    """The server was back within seconds: the step's row is closed now, and the message says where the database is.

    (Other rows of the run may still say running: an INSERT that committed as its connection was cut,
    its id never received. The next run settles those.)
    """
    assert "history row could not be written" not in stderr, f"{context}\n{stderr}"
    rows = [r for r in history_rows(url) if r["run_id"] == run_id and r["revision"] == revision]
    assert rows and rows[-1]["status"] == "failed" and "connection lost" in str(rows[-1]["error"]), f"{context}: {rows}"
    at = re.search(r"The database is at ([\w, ]+)\.", message)
    assert at, f"{context}: the message does not say where the database is: {message}"
    assert at.group(1) == (", ".join(sorted(current_revisions(url))) or "base"), f"{context}: {message}"


def wait_for_a_random_moment(moments: random.Random, process: subprocess.Popen[str], stderr: Path, url: str) -> None:
    """Three runs in ten: a moment of start-up (env.py, the run lock, history) or the gate; the others: a moment
    of a random step.

    Moments are found by what the run does, not by the clock, so that they land where meant whatever
    the machine's load: start-up from the run's first session on the server, a step from its
    "applying revision" line (then a moment in its statement, its history writes, its commit, or
    just after it).
    """
    if moments.random() < 0.3:
        # From its first session to its first step a run takes about 0.3 s (more under load).
        revision, delay = None, moments.uniform(0, 0.3)
    else:
        revision, delay = moments.choice(REVISIONS), moments.uniform(0, STEP_SECONDS * 1.5)
    deadline = time.monotonic() + 60
    with connect(url) as admin:
        admin.execution_options(isolation_level="AUTOCOMMIT")  # a fresh pg_stat_activity each time
        sessions = sa.text("SELECT COUNT(*) FROM pg_stat_activity WHERE datname = :name AND pid <> pg_backend_pid()")
        while process.poll() is None and time.monotonic() < deadline:
            if revision is None:
                reached = admin.execute(sessions, {"name": url.rpartition("/")[2]}).scalar_one() > 0
            else:
                reached = any(
                    line.get("event") == "applying revision" and line.get("revision") == revision
                    for line in log_events(stderr.read_text())
                )
            if reached:
                break
            time.sleep(0.01)
    time.sleep(delay)


def run_with_faults(project: Path, tmp_path: Path, database: Callable[[], str], fault: Callable[[int], str]) -> None:
    """Upgrade a fresh database ``FAULTS`` times, ``fault(n)`` at a random moment of each run (says what it did)."""
    print(f"seed {SEED} (DBMIGRATE_TEST_SEED={SEED} repeats this run)")
    moments = random.Random(SEED)
    landed: collections.Counter[str] = collections.Counter()
    twenty_slow_revisions(project)
    for n in range(FAULTS):
        url = database()
        output = tmp_path / f"run{n}"
        process = start_dbmigrate("upgrade", cwd=project, database_url=url, output=output)
        wait_for_a_random_moment(moments, process, Path(f"{output}.err"), url)
        what = fault(n) if process.poll() is None else "nothing: the run had ended"
        code = process.wait(timeout=60)
        context = f"fault {n} ({what}), seed {SEED}"
        landed[assert_honest_exit(code, Path(f"{output}.err").read_text(), url, context)] += 1
        assert_whole_revisions_and_history_agree(url, context)
        assert_the_rerun_reaches_head(project, url, context)
    print(f"where the faults landed: {dict(landed)}")
    assert landed["during a step"] >= FAULTS // 3, f"too few faults landed during a step: {dict(landed)}"


# -- the tests ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_server_restarted_at_random_moments_exits_3_and_the_rerun_reaches_head(
    cluster: ScratchCluster, project: Path, tmp_path: Path
) -> None:
    def restart(n: int) -> str:
        mode = "immediate" if n % 2 else "fast"  # every other one a crash
        cluster.restart(mode)
        return f"pg_ctl restart -m {mode}"

    run_with_faults(project, tmp_path, cluster.create_database, restart)


@pytest.mark.slow
def test_connections_cut_at_random_moments_exit_3_and_the_rerun_reaches_head(
    cluster: ScratchCluster, project: Path, tmp_path: Path
) -> None:
    proxy = CuttingProxy(cluster.port)
    try:

        def through_the_proxy() -> str:
            return proxy.url(cluster.create_database().rpartition("/")[2])

        def cut(n: int) -> str:
            return f"{proxy.cut()} sockets cut"

        run_with_faults(project, tmp_path, through_the_proxy, cut)
    finally:
        proxy.close()


def test_server_crash_during_the_first_step_leaves_it_on_record(
    cluster: ScratchCluster, project: Path, tmp_path: Path
) -> None:
    """The first step's 'running' row commits asynchronously and a crash loses it: written again after the crash."""
    twenty_slow_revisions(project)
    url = cluster.create_database()
    output = tmp_path / "run"
    process = start_dbmigrate("upgrade", cwd=project, database_url=url, output=output)
    wait_for(
        lambda: any(e.get("event") == "applying revision" for e in read_log(output)) or None,
        "the first step",
        process,
    )
    cluster.restart("immediate")
    code = process.wait(timeout=60)
    stderr = Path(f"{output}.err").read_text()
    assert_honest_exit(code, stderr, url, "a crash during the first step")
    assert code == 3 and "during revision r01" in stderr, stderr
    assert_whole_revisions_and_history_agree(url, "a crash during the first step")
    assert_the_rerun_reaches_head(project, url, "a crash during the first step")


SLOW_FIRST = {
    "postgresql": "SELECT pg_sleep({seconds})",
    "mariadb": "SELECT SLEEP({seconds})",
}
SESSIONS_RUNNING = {
    "postgresql": "SELECT pid FROM pg_stat_activity WHERE state = 'active' AND query = :sql",
    "mariadb": "SELECT ID FROM information_schema.PROCESSLIST WHERE INFO = :sql",
}
END_SESSION = {"postgresql": "SELECT pg_terminate_backend({id})", "mariadb": "KILL {id}"}


def slow_step_project(project: Path, backend: str, ddl_first: bool = False) -> str:
    """One revision on top of an empty graph: a slow statement (``TEST_SLOW_SECONDS``), and a CREATE TABLE."""
    remove_revisions(project)
    slow = f'op.execute({SLOW_FIRST[backend]!r}.format(seconds=os.environ.get("TEST_SLOW_SECONDS", "0")))'
    create = 'op.create_table("slow", sa.Column("id", sa.Integer, primary_key=True))'
    add_revision(
        project, "r01_slow", None, f"{create}\n{slow}" if ddl_first else f"{slow}\n{create}", 'op.drop_table("slow")'
    )
    return "r01_slow"


def wait_for(value: Callable[[], object], what: str, process: subprocess.Popen[str], timeout: float = 60) -> object:
    """Poll ``value()`` until it is not None (the run must stay alive meanwhile); returns it."""
    deadline = time.monotonic() + timeout
    while (found := value()) is None:
        assert process.poll() is None, f"the run ended before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return found


def end_the_migration_session(url: str, backend: str, process: subprocess.Popen[str], stderr: Path) -> None:
    """Wait until the run's migration session runs the slow statement, then end that session from another one."""
    sql = SLOW_FIRST[backend].format(seconds=30)
    deadline = time.monotonic() + 60
    # In autocommit: within one transaction pg_stat_activity would show the same snapshot every time.
    with connect(url) as admin:
        admin.execution_options(isolation_level="AUTOCOMMIT")
        while True:
            assert process.poll() is None, f"the run ended before its slow statement\n{stderr.read_text()}"
            assert time.monotonic() < deadline, "the slow statement never ran"
            session = admin.execute(sa.text(SESSIONS_RUNNING[backend]), {"sql": sql}).scalar()
            if session is not None:
                break
            time.sleep(0.05)
        admin.exec_driver_sql(END_SESSION[backend].format(id=int(session)))


@pytest.mark.parametrize("backend", ["postgresql", "mariadb"])
def test_migration_session_ended_by_an_admin_exits_3_with_the_step_recorded(
    project: Path, database_url: str, backend: str, tmp_path: Path
) -> None:
    revision = slow_step_project(project, backend)
    output = tmp_path / "run"
    process = start_dbmigrate("upgrade", cwd=project, database_url=database_url, output=output, TEST_SLOW_SECONDS="30")
    end_the_migration_session(database_url, backend, process, Path(f"{output}.err"))
    code = process.wait(timeout=60)
    stderr = Path(f"{output}.err").read_text()
    assert_honest_exit(code, stderr, database_url, "the migration session ended by an admin")
    assert code == 3, stderr
    # The control connection still worked: the step's row is closed at once, not left to the next run.
    rows = [(r["revision"], r["status"]) for r in history_rows(database_url)]
    assert rows == [(revision, "failed")], rows
    assert "connection lost" in str(history_rows(database_url)[-1]["error"])
    assert current_revisions(database_url) == set()
    with connect(database_url) as connection:
        assert not sa.inspect(connection).has_table("slow")
    rerun = run_dbmigrate("upgrade", cwd=project, database_url=database_url)
    assert rerun.returncode == 0, rerun.stderr
    assert current_revisions(database_url) == {revision}
    assert [r["status"] for r in history_rows(database_url)] == ["failed", "applied"]


@pytest.mark.parametrize("backend", ["mariadb"])
def test_migration_session_killed_after_its_ddl_committed_is_partial(
    project: Path, database_url: str, tmp_path: Path
) -> None:
    """MariaDB commits DDL on its own: once the CREATE TABLE committed, the step is partial (exit 5), not retried."""
    revision = slow_step_project(project, "mariadb", ddl_first=True)
    output = tmp_path / "run"
    process = start_dbmigrate("upgrade", cwd=project, database_url=database_url, output=output, TEST_SLOW_SECONDS="30")
    end_the_migration_session(database_url, "mariadb", process, Path(f"{output}.err"))
    code = process.wait(timeout=60)
    stderr = Path(f"{output}.err").read_text()
    assert code == 5, stderr
    message = str(every_line_as_json(stderr)[-1]["message"])
    assert "was lost during revision" in message and "dbmigrate status" in message, message
    assert [(r["revision"], r["status"]) for r in history_rows(database_url)] == [(revision, "partial")]


@pytest.mark.parametrize("backend", ["mariadb"])
def test_control_session_killed_as_it_records_a_committed_step_exits_3_with_the_step_applied(
    project: Path, database_url: str, tmp_path: Path
) -> None:
    """MariaDB: the step committed, and its 'applied' row goes on the control connection after the commit.

    The test holds that row locked, so the run waits there, then kills the control session: the step
    is whole and in alembic_version, so it is recorded applied (on a new connection), not partial.
    """
    remove_revisions(project)
    add_revision(
        project,
        "r01_gated",
        None,
        'op.create_table("gated", sa.Column("id", sa.Integer, primary_key=True))\npause("commit")',
        'op.drop_table("gated")',
    )
    gates = tmp_path / "gates"
    gates.mkdir()
    output = tmp_path / "run"
    process = start_dbmigrate(
        "upgrade", cwd=project, database_url=database_url, output=output, TEST_GATE_DIR=str(gates)
    )
    engine = sa.create_engine(database_url, poolclass=NullPool)
    try:
        with engine.connect() as blocker, connect(database_url) as admin:
            admin.execution_options(isolation_level="AUTOCOMMIT")
            row_id = wait_for(lambda: ddl_done_row(database_url), "the step's CREATE TABLE recorded done", process)
            blocker.execute(sa.text("SELECT id FROM dbmigrate_history WHERE id = :id FOR UPDATE"), {"id": row_id}).all()
            (gates / "commit").touch()
            control = wait_for(
                lambda: admin.execute(
                    sa.text("SELECT ID FROM information_schema.PROCESSLIST WHERE INFO LIKE 'UPDATE dbmigrate_history%'")
                ).scalar(),
                "the run writing the applied row",
                process,
            )
            assert current_revisions(database_url) == {"r01_gated"}, "the step had not committed"
            admin.exec_driver_sql(f"KILL {int(control)}")
            time.sleep(0.5)  # the run meets the lost connection and reconnects; then the row lock goes
            blocker.rollback()
        code = process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
        engine.dispose()
    stderr = Path(f"{output}.err").read_text()
    assert code == 3, stderr
    message = str(every_line_as_json(stderr)[-1]["message"])
    assert "r01_gated" in message and "The database is at r01_gated" in message, message
    assert [(r["revision"], r["status"]) for r in history_rows(database_url)] == [("r01_gated", "applied")]
    rerun = run_dbmigrate("upgrade", "--format", "json", cwd=project, database_url=database_url)
    assert rerun.returncode == 0, rerun.stderr
    assert '"outcome": "nothing-to-do"' in rerun.stdout


@pytest.mark.parametrize("backend", ["postgresql"])
def test_control_session_ended_while_a_step_waits_for_a_long_transaction_exits_3(
    project: Path, database_url: str, tmp_path: Path
) -> None:
    """Before a step, the run waits politely for a long transaction on its table, asking on the control
    connection; that session ended by an admin is a lost connection like any other: exit 3, step recorded."""
    remove_revisions(project)
    add_revision(project, "r01_busy", None, 'op.create_table("busy", sa.Column("id", sa.Integer, primary_key=True))')
    add_revision(project, "r02_alter", "r01_busy", 'op.add_column("busy", sa.Column("note", sa.Text))')
    assert run_dbmigrate("upgrade", "r01_busy", cwd=project, database_url=database_url).returncode == 0
    output = tmp_path / "run"
    with connect(database_url) as long_transaction, connect(database_url) as admin:
        admin.execution_options(isolation_level="AUTOCOMMIT")
        long_transaction.exec_driver_sql("SELECT * FROM busy").all()  # holds its lock until rolled back
        process = start_dbmigrate("upgrade", cwd=project, database_url=database_url, output=output)
        try:
            wait_for(
                lambda: (
                    any(e.get("event", "").startswith("waiting for long transactions") for e in read_log(output))
                    or None
                ),
                "the polite wait",
                process,
            )
            ended = admin.execute(
                sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND application_name LIKE 'dbmigrate run=%'"
                )
            ).scalar()
            assert ended, "the run's control session was not found"
            code = process.wait(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
        long_transaction.rollback()
    stderr = Path(f"{output}.err").read_text()
    assert_honest_exit(code, stderr, database_url, "the control session ended during the polite wait")
    assert code == 3, stderr
    assert [(r["revision"], r["status"]) for r in history_rows(database_url)][-1] == ("r02_alter", "failed")
    assert_the_rerun_reaches(project, database_url, "r02_alter")


def ddl_done_row(url: str) -> object:
    """MariaDB: the id of r01_gated's running row once it records its CREATE TABLE done (None before)."""
    for row in history_rows(url):
        if (row["revision"], row["status"]) == ("r01_gated", "running") and any(
            "CREATE TABLE gated" in s["sql"] and s.get("done") for s in json.loads(str(row["statements"] or "[]"))
        ):
            return row["id"]
    return None


def read_log(output: Path) -> list[dict[str, str]]:
    return [{k: str(v) for k, v in e.items()} for e in log_events(Path(f"{output}.err").read_text())]


def assert_the_rerun_reaches(project: Path, url: str, revision: str) -> None:
    rerun = run_dbmigrate("upgrade", cwd=project, database_url=url)
    assert rerun.returncode == 0, rerun.stderr
    assert current_revisions(url) == {revision}
    assert [r["status"] for r in history_rows(url) if r["revision"] == revision][-1] == "applied"


@pytest.mark.parametrize("backend", ["postgresql"])
def test_control_session_ended_while_the_history_table_is_created_exits_3(
    project: Path, database_url: str, tmp_path: Path
) -> None:
    """The first run creates its history table on the control connection; that session ended there is a lost
    connection, not a schema problem (exit 2, "Check --table-schema") nor a consequence of it as the reason."""
    slow_step_project(project, "postgresql")
    output = tmp_path / "run"
    with connect(database_url) as rival, connect(database_url) as admin:
        admin.execution_options(isolation_level="AUTOCOMMIT")
        # Uncommitted, the same name: the run's CREATE TABLE waits for this transaction to end.
        rival.exec_driver_sql("CREATE TABLE dbmigrate_history (id INTEGER)")
        process = start_dbmigrate("upgrade", cwd=project, database_url=database_url, output=output)
        try:
            creating = wait_for(
                lambda: admin.execute(
                    sa.text(
                        "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                        "AND query LIKE '%CREATE TABLE dbmigrate_history%'"
                    )
                ).scalar(),
                "the run creating its history table",
                process,
            )
            admin.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": creating})
            code = process.wait(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
        rival.rollback()
    stderr = Path(f"{output}.err").read_text()
    assert_honest_exit(code, stderr, database_url, "the control session ended while creating the history table")
    assert code == 3 and "terminating connection due to administrator command" in stderr, stderr
    assert_the_rerun_reaches(project, database_url, "r01_slow")
