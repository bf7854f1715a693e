"""Backup benchmark: what the exact copy before a lossy step costs the run and the application.

A table ``items(id bigint primary key, note varchar(100), n int)`` holds 1,000,000 rows at revision
``0001_create_items``; revision ``0002_drop_note`` drops ``note`` and declares the loss intended.
``dbmigrate upgrade`` copies ``id`` and ``note`` aside before the drop; ``alembic upgrade head`` just
drops the column. On PostgreSQL dbmigrate's copy runs inside the step's transaction after ``LOCK
TABLE items IN SHARE MODE``: writers wait from the copy until the step commits, readers pass. On
MariaDB the copy runs on its own just before the ``ALTER TABLE``.

Each upgrade gets a fresh database, which the same tool first takes to ``0001_create_items`` (not
timed) and the benchmark fills in one statement. While the upgrade runs (a cold process, as a
Kubernetes Job starts it), one client process commits single-row ``UPDATE items SET n = n + 1 WHERE
id = ?`` and another runs ``SELECT id, n FROM items WHERE id = ?``, each at a fixed pace (``--rate``
per second; a late statement is not made up for). For each upgrade it prints the wall time, the
writes committed during it, and the longest single write and read that overlapped it, beside the
longest ones in the second before it started (the machine's own noise); for dbmigrate also the copy
(from its log: the step's start to the "data backed up" line) and what the clients completed during
it. Each round runs both tools, rotating which goes first; the ratios use each tool's median over
the rounds.

Run from the repository root: ``.venv/bin/python bench/backup/run.py``. Only 127.0.0.1 is used by
default; a PostgreSQL password, if the server wants one, comes from PGPASSWORD and is never printed;
the MariaDB user is used without a password.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any

import psycopg
import pymysql

# The scripts run as files (python bench/NAME/run.py): make the shared bench module importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from installed import byte_compile_dbmigrate
from postgres_server import Server

HERE = Path(__file__).resolve().parent
VENV_BIN = Path(sys.executable).parent
ALEMBIC_INI = HERE / "alembic.ini"
BASE = "0001_create_items"
HEAD = "0002_drop_note"

ROWS = 1_000_000
ROUNDS = 3
RATE_PER_S = 200.0
# The clients run this long before the upgrade starts (their latencies then are the baseline) and after it ends.
BEFORE_S = 1.0
AFTER_S = 0.5
COMMAND_TIMEOUT_S = 600.0
TOOLS = ("alembic", "dbmigrate")
DIALECTS = ("postgresql", "mariadb")
LABELS = {"postgresql": "PostgreSQL", "mariadb": "MariaDB"}

WRITE = "UPDATE items SET n = n + 1 WHERE id = %s"
READ = "SELECT id, n FROM items WHERE id = %s"


@dataclasses.dataclass(frozen=True)
class Target:
    """A database server to run on. Picklable: the client processes get it to connect."""

    dialect: str
    host: str
    port: int
    user: str

    def url(self, database: str) -> str:
        scheme = "postgresql" if self.dialect == "postgresql" else "mysql+pymysql"
        return f"{scheme}://{self.user}@{self.host}:{self.port}/{database}"

    def connect(self, database: str | None = None) -> Any:
        """A DB-API connection in autocommit: every statement is its own transaction."""
        if self.dialect == "postgresql":
            server = Server(self.host, self.port, self.user)
            return psycopg.connect(server.conninfo(database or "postgres"), autocommit=True)
        return pymysql.connect(host=self.host, port=self.port, user=self.user, database=database, autocommit=True)

    def backup_database(self, database: str) -> str:
        """MariaDB keeps copies in a database of their own: one per benchmark database, dropped with it."""
        return f"{database}_copies"

    def tool_arguments(self, tool: str, database: str) -> list[str]:
        if tool == "dbmigrate" and self.dialect == "mariadb":
            return ["--backup-schema", self.backup_database(database)]
        return []


@contextmanager
def cursor(target: Target, database: str | None = None) -> Iterator[Any]:
    connection = target.connect(database)
    try:
        with connection.cursor() as opened:
            yield opened
    finally:
        connection.close()


def execute(target: Target, statements: Sequence[str], database: str | None = None) -> None:
    with cursor(target, database) as cur:
        for statement in statements:
            cur.execute(statement)


def recreate_database(target: Target, name: str) -> None:
    drop_database(target, name)
    execute(target, [f"CREATE DATABASE {name}"])


def drop_database(target: Target, name: str) -> None:
    if target.dialect == "postgresql":  # dbmigrate's copies are in a schema of this database
        execute(target, [f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"])
    else:
        execute(target, [f"DROP DATABASE IF EXISTS {name}", f"DROP DATABASE IF EXISTS {target.backup_database(name)}"])


def fill_table(target: Target, database: str, rows: int) -> None:
    """Load the rows in one statement, refresh statistics, and write the load out before anything is timed."""
    if target.dialect == "postgresql":
        statements = [
            f"INSERT INTO items (id, note, n) SELECT g, md5(g::text), 0 FROM generate_series(1, {rows}) AS g",
            "VACUUM ANALYZE items",
            "CHECKPOINT",
        ]
    else:  # MariaDB's SEQUENCE engine gives the numbers
        statements = [
            f"INSERT INTO items (id, note, n) SELECT seq, md5(seq), 0 FROM seq_1_to_{rows}",
            "ANALYZE TABLE items",
        ]
    execute(target, statements, database)


@dataclasses.dataclass(frozen=True)
class Outcome:
    """The database after the upgrade."""

    version: str | None
    note_dropped: bool
    backup_rows: int | None

    def describe(self) -> str:
        copied = "" if self.backup_rows is None else f", {self.backup_rows} rows backed up"
        return f"at {self.version}, note dropped: {self.note_dropped}{copied}"


def outcome(target: Target, database: str) -> Outcome:
    schema = "current_schema()" if target.dialect == "postgresql" else "database()"
    with cursor(target, database) as cur:
        cur.execute("SELECT version_num FROM alembic_version")
        version = cur.fetchone()
        cur.execute(
            "SELECT count(*) FROM information_schema.columns "
            f"WHERE table_schema = {schema} AND table_name = 'items' AND column_name = 'note'"
        )
        note_columns = cur.fetchone()[0]
        cur.execute(
            f"SELECT count(*) FROM information_schema.tables WHERE table_schema = {schema} "
            "AND table_name = 'dbmigrate_backups'"
        )
        backup_rows = None
        if cur.fetchone()[0]:
            cur.execute("SELECT row_count FROM dbmigrate_backups ORDER BY id DESC LIMIT 1")
            found = cur.fetchone()
            backup_rows = int(found[0]) if found else None
    return Outcome(version[0] if version else None, note_columns == 0, backup_rows)


# -- the application: one writer and one reader, each a process of its own ------------------------


@dataclasses.dataclass
class Samples:
    """One client's statements: when each started (time.monotonic, the same clock in every process) and its latency."""

    started: list[float]
    latency: list[float]
    errors: int
    first_error: str

    def overlapping(self, start: float, end: float) -> Iterator[tuple[float, float]]:
        for began, took in zip(self.started, self.latency, strict=True):
            if began < end and began + took > start:
                yield began, took

    def longest(self, start: float, end: float) -> tuple[float, float]:
        """The longest latency (s) of a statement that overlapped [start, end), and when it began (s after start)."""
        found = [(took, began - start) for began, took in self.overlapping(start, end)]
        return max(found, default=(0.0, 0.0))

    def completed(self, start: float, end: float) -> int:
        return sum(1 for began, took in zip(self.started, self.latency, strict=True) if start <= began + took < end)


def client(
    kind: str, target: Target, database: str, rate: float, rows: int, ready: Event, stop: Event, out: Connection
) -> None:
    """Run one statement after another at ``rate`` per second until ``stop``; send the samples back."""
    statement = WRITE if kind == "write" else READ
    pick = random.Random(kind).randint
    samples = Samples([], [], 0, "")
    interval = 1.0 / rate if rate > 0 else 0.0
    connection = target.connect(database)
    try:
        with connection.cursor() as cur:
            cur.execute(statement, (1,))  # connected and warm before the clock starts
            if kind == "read":
                cur.fetchall()
            ready.set()
            due = time.monotonic()
            while not stop.is_set():
                began = time.monotonic()
                try:
                    cur.execute(statement, (pick(1, rows),))
                    if kind == "read":
                        cur.fetchall()
                except (psycopg.Error, pymysql.Error) as exc:  # counted and shown in the report
                    samples.errors += 1
                    samples.first_error = samples.first_error or f"{type(exc).__name__}: {exc}"[:200]
                ended = time.monotonic()
                samples.started.append(began)
                samples.latency.append(ended - began)
                due = max(due + interval, ended)  # no burst to make up for a stall
                time.sleep(max(0.0, due - time.monotonic()))
    finally:
        connection.close()
        # Plain values: a class of this module pickles under another module name in a spawned process.
        out.send(dataclasses.astuple(samples))
        out.close()


class Application:
    """The writer and reader processes, started before the upgrade and stopped after it."""

    def __init__(self, target: Target, database: str, rate: float, rows: int) -> None:
        context = multiprocessing.get_context("spawn")
        self.stop = context.Event()
        self.ready: list[Event] = []
        self.pipes: dict[str, Connection] = {}
        self.processes: list[multiprocessing.process.BaseProcess] = []
        for kind in ("write", "read"):
            ready = context.Event()
            receiver, sender = context.Pipe(duplex=False)
            process = context.Process(
                target=client,
                args=(kind, target, database, rate, rows, ready, self.stop, sender),
                name=f"bench-backup-{kind}",
                daemon=True,
            )
            process.start()
            sender.close()
            self.ready.append(ready)
            self.pipes[kind] = receiver
            self.processes.append(process)

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not all(ready.is_set() for ready in self.ready):
            if time.monotonic() > deadline or not all(p.is_alive() for p in self.processes):
                raise RuntimeError("a client process did not start (see its traceback above)")
            time.sleep(0.05)

    def finish(self) -> dict[str, Samples]:
        self.stop.set()
        samples = {kind: Samples(*pipe.recv()) for kind, pipe in self.pipes.items()}
        for process in self.processes:
            process.join(timeout=30)
        return samples


# -- one upgrade ----------------------------------------------------------------------------------


def command(tool: str, revision: str, target: Target, database: str) -> list[str]:
    if tool == "alembic":
        return [str(VENV_BIN / "alembic"), "-c", str(ALEMBIC_INI), "upgrade", revision]
    return [
        str(VENV_BIN / "dbmigrate"),
        "upgrade",
        revision,
        "-c",
        str(ALEMBIC_INI),
        "--log-format",
        "json",
        *target.tool_arguments(tool, database),
    ]


def run_tool(tool: str, revision: str, target: Target, database: str) -> tuple[int, str]:
    """One cold process; returns its exit code and its stderr (dbmigrate's JSON log)."""
    env = {**os.environ, "DATABASE_URL": target.url(database)}
    try:
        done = subprocess.run(
            command(tool, revision, target, database),
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=COMMAND_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:  # subprocess.run kills its own child on timeout
        return -1, (exc.stderr or b"").decode(errors="replace")
    return done.returncode, done.stderr.decode(errors="replace")


def read_log(log: str, wall_minus_monotonic: float) -> tuple[tuple[float, float] | None, float | None]:
    """From dbmigrate's JSON log: when its step began and its copy was done (time.monotonic), and the step's seconds.

    The copy is the step's first action; its log line comes once the copy and its registry row are written.
    """
    stamps: dict[str, float] = {}
    step_ms = None
    for line in log.splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("revision") != HEAD:
            continue
        wall = datetime.fromisoformat(record["timestamp"].replace("Z", "+00:00")).timestamp()
        stamps[record["event"]] = wall - wall_minus_monotonic
        if record["event"] == "revision applied":
            step_ms = record.get("duration_ms")
    began, copied = stamps.get("applying revision"), stamps.get("data backed up before the step")
    copy = (began, copied) if began is not None and copied is not None else None
    return copy, step_ms / 1000 if step_ms is not None else None


@dataclasses.dataclass
class Run:
    dialect: str
    tool: str
    round_no: int
    load: float
    exit_code: int
    wall_s: float
    copy: tuple[float, float] | None
    step_s: float | None
    outcome: Outcome | None
    writes: Samples
    reads: Samples
    window: tuple[float, float]

    @property
    def copy_s(self) -> float | None:
        return self.copy[1] - self.copy[0] if self.copy else None

    @property
    def write_max(self) -> tuple[float, float]:
        return self.writes.longest(*self.window)

    @property
    def read_max(self) -> tuple[float, float]:
        return self.reads.longest(*self.window)

    @property
    def writes_committed(self) -> int:
        return self.writes.completed(*self.window)

    def during_copy(self) -> tuple[int, float, int] | None:
        """Reads completed, the longest read that overlapped it, writes completed: while dbmigrate copied."""
        if self.copy is None:
            return None
        return self.reads.completed(*self.copy), self.reads.longest(*self.copy)[0], self.writes.completed(*self.copy)

    def idle_max(self, samples: Samples) -> float:
        """The longest latency in the second before the upgrade started: what the machine does anyway."""
        start = self.window[0]
        return samples.longest(start - BEFORE_S, start)[0] if samples.started else 0.0

    @property
    def ok(self) -> bool:
        applied = self.outcome is not None and self.outcome.version == HEAD and self.outcome.note_dropped
        copied = self.tool == "alembic" or (self.outcome is not None and self.outcome.backup_rows is not None)
        return self.exit_code == 0 and applied and copied


def run_once(target: Target, tool: str, round_no: int, rows: int, rate: float) -> Run:
    database = f"bench_bk_{target.dialect}_{tool}_{os.getpid()}"
    recreate_database(target, database)
    try:
        code, log = run_tool(tool, BASE, target, database)
        if code != 0:
            raise RuntimeError(f"{tool} upgrade {BASE} exited with {code}: {log.strip()[-2000:]}")
        fill_table(target, database, rows)
        load = os.getloadavg()[0]
        application = Application(target, database, rate, rows)
        try:
            application.wait_ready()
            time.sleep(BEFORE_S)
            wall_minus_monotonic = time.time() - time.monotonic()
            start = time.monotonic()
            code, log = run_tool(tool, HEAD, target, database)
            end = time.monotonic()
            time.sleep(AFTER_S)
        finally:
            samples = application.finish()
        copy, step_s = read_log(log, wall_minus_monotonic) if tool == "dbmigrate" else (None, None)
        if code != 0:
            print(f"  {tool} exited with {code}: {log.strip()[-2000:]}", flush=True)
        return Run(
            dialect=target.dialect,
            tool=tool,
            round_no=round_no,
            load=load,
            exit_code=code,
            wall_s=end - start,
            copy=copy,
            step_s=step_s,
            outcome=outcome(target, database) if code == 0 else None,
            writes=samples["write"],
            reads=samples["read"],
            window=(start, end),
        )
    finally:
        drop_database(target, database)


# -- report ---------------------------------------------------------------------------------------


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def optional(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.3f}"


HEADER = (
    f"{'db':<10} {'rnd':>3} {'tool':<9} {'load':>4} {'wall s':>7} {'copy s':>7} {'step s':>7} "
    f"{'writes':>6} {'max write ms (at s)':>20} {'max read ms (at s)':>19} {'idle w/r ms':>12} {'err':>3}  outcome"
)


def print_run(run: Run) -> None:
    (write_s, write_at), (read_s, read_at) = run.write_max, run.read_max
    idle = f"{ms(run.idle_max(run.writes))}/{ms(run.idle_max(run.reads))}"
    errors = run.writes.errors + run.reads.errors
    result = run.outcome.describe() if run.outcome else f"exit {run.exit_code}"
    print(
        f"{LABELS[run.dialect]:<10} {run.round_no:>3} {run.tool:<9} {run.load:>4.2f} {run.wall_s:>7.3f} "
        f"{optional(run.copy_s):>7} {optional(run.step_s):>7} {run.writes_committed:>6} "
        f"{ms(write_s):>11} ({write_at:5.2f}) {ms(read_s):>10} ({read_at:5.2f}) {idle:>12} {errors:>3}  {result}",
        flush=True,
    )
    copy = run.during_copy()
    if copy is not None:
        reads, longest_read, writes = copy
        began = run.copy[0] - run.window[0] if run.copy else 0.0
        print(
            f"    the step began at {began:.2f} s; while dbmigrate copied ({optional(run.copy_s)} s): {reads} reads "
            f"completed (the longest {ms(longest_read)} ms), {writes} writes completed",
            flush=True,
        )
    for samples in (run.writes, run.reads):
        if samples.errors:
            print(f"    {samples.errors} failed statement(s), the first: {samples.first_error}", flush=True)


def summary(dialect: str, runs: list[Run]) -> None:
    """Each tool's median over the rounds, and dbmigrate against alembic."""
    mine = [r for r in runs if r.dialect == dialect and r.ok]
    by_tool = {tool: [r for r in mine if r.tool == tool] for tool in TOOLS}
    if not all(by_tool.values()):
        print(f"\n{LABELS[dialect]}: no ratios, a tool has no successful run")
        return

    def median(tool: str, value: Callable[[Run], float]) -> float:
        return statistics.median(value(r) for r in by_tool[tool])

    rounds = min(len(found) for found in by_tool.values())
    print(f"\n{LABELS[dialect]}, median of {rounds} round(s):")
    rows: list[tuple[str, Callable[[Run], float], str]] = [
        ("upgrade wall time", lambda r: r.wall_s, "s"),
        ("longest write", lambda r: r.write_max[0], "ms"),
        ("longest read", lambda r: r.read_max[0], "ms"),
    ]
    for name, value, unit in rows:
        ours, theirs = median("dbmigrate", value), median("alembic", value)
        scale, digits = (1000, 1) if unit == "ms" else (1, 3)
        ratio = ours / theirs if theirs else float("inf")
        print(
            f"  {name:<18} dbmigrate {ours * scale:9.{digits}f} {unit:<2} / "
            f"alembic {theirs * scale:9.{digits}f} {unit:<2} = {ratio:7.2f}"
        )
    copies = [r.copy_s for r in by_tool["dbmigrate"] if r.copy_s is not None]
    during = [found for r in by_tool["dbmigrate"] if (found := r.during_copy()) is not None]
    if copies and during:
        reads, longest_read, writes = (statistics.median(values) for values in zip(*during, strict=True))
        print(
            f"  dbmigrate's copy (lock, copy, count, registry row): {statistics.median(copies):.3f} s; during it "
            f"{reads:.0f} reads completed (the longest {ms(longest_read)} ms) and {writes:.0f} writes"
        )
        rest = statistics.median(r.wall_s - r.copy_s for r in by_tool["dbmigrate"] if r.copy_s is not None)
        plain = median("alembic", lambda r: r.wall_s)
        print(f"  dbmigrate's wall time without its copy: {rest:.3f} s / alembic {plain:.3f} s = {rest / plain:.2f}")
    for tool in TOOLS:
        committed = median(tool, lambda r: r.writes_committed)
        per_s = median(tool, lambda r: r.writes_committed / r.wall_s)
        print(f"  writes committed during the upgrade, {tool:<9} {committed:6.0f} ({per_s:5.1f}/s)")
    idle_write = statistics.median(r.idle_max(r.writes) for r in mine)
    idle_read = statistics.median(r.idle_max(r.reads) for r in mine)
    print(f"  longest write / read in the second before an upgrade (median): {ms(idle_write)} / {ms(idle_read)} ms")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dialects", nargs="+", choices=DIALECTS, default=list(DIALECTS))
    parser.add_argument("--host", default="127.0.0.1", help="PostgreSQL host [127.0.0.1]")
    parser.add_argument("--port", type=int, default=5432, help="PostgreSQL port [5432]")
    parser.add_argument("--user", default="postgres", help="PostgreSQL user [postgres]")
    parser.add_argument("--mariadb-host", default="127.0.0.1")
    parser.add_argument("--mariadb-port", type=int, default=3306)
    parser.add_argument("--mariadb-user", default="root")
    parser.add_argument("--rounds", type=int, default=ROUNDS, help=f"rounds of both tools per database [{ROUNDS}]")
    parser.add_argument("--rows", type=int, default=ROWS, help=f"rows in the table [{ROWS}]")
    parser.add_argument(
        "--rate",
        type=float,
        default=RATE_PER_S,
        help=f"statements per second per client, 0 = no pause [{RATE_PER_S:g}]",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    targets = {
        "postgresql": Target("postgresql", args.host, args.port, args.user),
        "mariadb": Target("mariadb", args.mariadb_host, args.mariadb_port, args.mariadb_user),
    }
    byte_compile_dbmigrate()
    print(
        f"backup: drop a column of a {args.rows:,}-row table with a writer and a reader at {args.rate:g}/s each; "
        f"{args.rounds} round(s) on {', '.join(LABELS[d] for d in args.dialects)}; {os.cpu_count()} CPU(s); "
        f"load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    print(HEADER, flush=True)
    started = time.monotonic()
    runs: list[Run] = []
    for dialect in args.dialects:
        for round_no in range(1, args.rounds + 1):
            for i in range(len(TOOLS)):
                tool = TOOLS[(round_no + i) % len(TOOLS)]  # rotate which tool goes first
                runs.append(run_once(targets[dialect], tool, round_no, args.rows, args.rate))
                print_run(runs[-1])
    print(
        "\nwall: the upgrade process, start to exit; writes: UPDATEs committed in that window; max: the longest "
        "statement that overlapped it, (at s) when it began after the upgrade started; idle: the longest in "
        "the second before; copy/step: from dbmigrate's log"
    )
    for dialect in args.dialects:
        summary(dialect, runs)
    print(f"total {time.monotonic() - started:.0f}s; load average at the end {os.getloadavg()[0]:.2f}")
    return 0 if all(r.ok for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
