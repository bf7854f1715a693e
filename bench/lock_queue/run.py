"""Lock-queue benchmark: does a migration stall the application while a long transaction is open?

Eight pgbench clients run a select+update load on a 100,000-row table. At t=2 s a reader opens a
transaction on that table and keeps it for 6 s; at t=3 s an Alembic revision runs
``ALTER TABLE accounts ADD COLUMN``. Plain ``alembic upgrade head`` queues its ACCESS EXCLUSIVE
request behind the reader, and every application query queues behind it until the reader ends;
``dbmigrate upgrade`` is meant to wait without queueing. The same load runs three ways, each on a
fresh database: no migration, plain alembic, dbmigrate. It prints each way's max and p99.9
per-transaction latency and the two ratios the issue sets targets for.

A single run's max latency is one extreme sample, and on a small shared machine it swings by 10x
between identical runs (WAL flushes, other processes). So the three ways run interleaved for a few
rounds and the ratios use each way's median over the rounds (with two rounds, their mean); every
round's numbers are printed, with the machine's load average.

Run from the repository root: ``.venv/bin/python bench/lock_queue/run.py``. Only 127.0.0.1 is
used by default; a password, if the server wants one, comes from PGPASSWORD and is never printed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import psycopg

# The scripts run as files (python bench/NAME/run.py): make the shared bench module importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from installed import byte_compile_dbmigrate
from postgres_server import (
    Server,
    add_server_arguments,
    admin_execute,
    drop_database,
    finish_pgbench,
    recreate_database,
    start_pgbench,
)

HERE = Path(__file__).resolve().parent
VENV_BIN = Path(sys.executable).parent
ALEMBIC_INI = HERE / "alembic.ini"
APP_SCRIPT = HERE / "app.sql"

ROWS = 100_000
CLIENTS = 8
# A fixed arrival rate (pgbench -R) makes each logged latency count from when the request was due,
# so requests that arrive during a stall show the whole wait, not only the few already running.
RATE_TPS = 800
# Long enough for plain alembic's stall (until the reader ends at 8 s) and its backlog to drain.
DURATION_S = 10
READER_AT_S = 2.0
READER_HOLDS_S = 6.0
MIGRATION_AT_S = 3.0
MIGRATION_TIMEOUT_S = 30.0
# Two interleaved rounds keep the whole run near one minute; --rounds 3 or more for a steadier median.
ROUNDS = 2
WAYS = ("none", "alembic", "dbmigrate")
# Targets from the issue: dbmigrate stays close to no migration and far below plain alembic.
TARGET_DBMIGRATE_VS_NONE = 2.0
TARGET_ALEMBIC_VS_DBMIGRATE = 20.0


@dataclasses.dataclass
class Latencies:
    """Per-transaction latencies (ms) and when each transaction finished (s after the start)."""

    ms: list[float]
    at_s: list[float]

    def percentile(self, fraction: float) -> float:
        ordered = sorted(self.ms)
        rank = max(0, min(len(ordered) - 1, int(fraction * len(ordered) + 0.999999) - 1))
        return ordered[rank]

    @property
    def worst(self) -> tuple[float, float]:
        index = max(range(len(self.ms)), key=self.ms.__getitem__)
        return self.ms[index], self.at_s[index]


@dataclasses.dataclass
class WayResult:
    way: str
    round_no: int
    latencies: Latencies
    events: list[tuple[float, str]]
    migration_exit: int | None
    column_added: bool

    @property
    def max_ms(self) -> float:
        return max(self.latencies.ms)

    @property
    def p999_ms(self) -> float:
        return self.latencies.percentile(0.999)


def prepare_database(server: Server, name: str) -> None:
    """A fresh database with the application's table, analysed."""
    recreate_database(server, name)
    admin_execute(
        server,
        [
            "CREATE TABLE accounts (aid integer PRIMARY KEY, abalance integer NOT NULL DEFAULT 0, filler char(84))",
            f"INSERT INTO accounts (aid, filler) SELECT g, '' FROM generate_series(1, {ROWS}) AS g",
            "VACUUM ANALYZE accounts",
        ],
        database=name,
    )


def hold_reader(server: Server, database: str, start: float, events: list[tuple[float, str]]) -> None:
    """At READER_AT_S, read the table in a transaction and keep it open READER_HOLDS_S seconds."""
    try:
        with psycopg.connect(server.conninfo(database)) as connection:
            sleep_until(start + READER_AT_S)
            connection.execute("SELECT count(*) FROM accounts").fetchone()
            events.append((time.monotonic() - start, "reader holds ACCESS SHARE on accounts"))
            sleep_until(start + READER_AT_S + READER_HOLDS_S)
            connection.rollback()
            events.append((time.monotonic() - start, "reader ended its transaction"))
    except psycopg.Error as exc:  # shown in the timeline: without the reader the round means nothing
        events.append((time.monotonic() - start, f"READER FAILED: {type(exc).__name__}"))


def sleep_until(deadline: float) -> None:
    time.sleep(max(0.0, deadline - time.monotonic()))


def migration_command(way: str) -> list[str]:
    if way == "alembic":
        return [str(VENV_BIN / "alembic"), "-c", str(ALEMBIC_INI), "upgrade", "head"]
    return [str(VENV_BIN / "dbmigrate"), "upgrade", "-c", str(ALEMBIC_INI), "--log-format", "json"]


def run_migration(
    way: str, server: Server, database: str, start: float, log_path: Path, events: list[tuple[float, str]]
) -> int:
    env = {**os.environ, "DATABASE_URL": server.url(database)}
    sleep_until(start + MIGRATION_AT_S)
    events.append((time.monotonic() - start, f"{way} started"))
    with log_path.open("wb") as stderr:
        process = subprocess.Popen(migration_command(way), env=env, stdout=subprocess.DEVNULL, stderr=stderr)
        try:
            code = process.wait(timeout=MIGRATION_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()  # ours, by its own handle; the run must end by itself
            code = process.wait()
    events.append((time.monotonic() - start, f"{way} exited with {code}"))
    return code


def dbmigrate_events(log_path: Path, start_wall: float) -> list[tuple[float, str]]:
    """dbmigrate's JSON log lines as (seconds after the start, event) for the timeline."""
    found = []
    for line in log_path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        stamp = datetime.fromisoformat(record["timestamp"].replace("Z", "+00:00")).timestamp()
        detail = {k: v for k, v in record.items() if k in ("waited_s", "retry_in_s", "duration_ms", "attempt")}
        found.append((stamp - start_wall, f"dbmigrate: {record['event']} {detail or ''}".rstrip()))
    return found


def read_latencies(log_dir: Path, start_wall: float) -> Latencies:
    """pgbench's per-transaction log: client, tx, latency_us, script, epoch_s, epoch_us[, lag_us]."""
    latencies = Latencies(ms=[], at_s=[])
    for path in sorted(log_dir.glob("tx.*")):
        for line in path.read_text().splitlines():
            fields = line.split()
            if len(fields) < 6 or not fields[2].isdigit():
                continue  # a skipped or failed transaction has no latency
            latencies.ms.append(int(fields[2]) / 1000)
            latencies.at_s.append(int(fields[4]) + int(fields[5]) / 1e6 - start_wall)
    return latencies


def column_added(server: Server, database: str) -> bool:
    with psycopg.connect(server.conninfo(database)) as connection:
        row = connection.execute(
            "SELECT count(*) FROM information_schema.columns WHERE table_name = 'accounts' AND column_name = 'note'"
        ).fetchone()
    return bool(row and row[0])


def run_way(way: str, round_no: int, server: Server, scratch: Path) -> WayResult:
    database = f"bench_lq_{way}_{os.getpid()}"
    log_dir = scratch / f"round{round_no}" / way
    log_dir.mkdir(parents=True)
    prepare_database(server, database)
    try:
        events: list[tuple[float, str]] = []
        start, start_wall = time.monotonic(), time.time()
        load = start_pgbench(
            server, database, APP_SCRIPT, clients=CLIENTS, rate=RATE_TPS, seconds=DURATION_S, log_dir=log_dir
        )
        reader = threading.Thread(target=hold_reader, args=(server, database, start, events), daemon=True)
        reader.start()
        code = None
        if way != "none":
            code = run_migration(way, server, database, start, log_dir / "migration.log", events)
        reader.join(timeout=DURATION_S + 10)
        finish_pgbench(load, DURATION_S + 30)
        if way == "dbmigrate":
            events.extend(dbmigrate_events(log_dir / "migration.log", start_wall))
        return WayResult(
            way=way,
            round_no=round_no,
            latencies=read_latencies(log_dir, start_wall),
            events=sorted(events),
            migration_exit=code,
            column_added=column_added(server, database),
        )
    finally:
        drop_database(server, database)


def report(results: list[WayResult]) -> bool:
    """Print every round, the first round's timelines and the ratios; True when every migration applied."""
    print(f"{'round':>5} {'way':<10} {'tx':>6} {'p50 ms':>8} {'p99.9 ms':>9} {'max ms':>9} {'max at s':>8}  migration")
    for r in results:
        worst_ms, worst_at = r.latencies.worst
        outcome = "-" if r.migration_exit is None else f"exit {r.migration_exit}, column added: {r.column_added}"
        print(
            f"{r.round_no:>5} {r.way:<10} {len(r.latencies.ms):>6} {r.latencies.percentile(0.5):>8.1f} "
            f"{r.p999_ms:>9.1f} {worst_ms:>9.1f} {worst_at:>8.2f}  {outcome}"
        )
    for r in results:
        if r.round_no == 1:
            print(f"\ntimeline of round 1, {r.way}:")
            for at, event in r.events:
                print(f"  {at:6.2f}s  {event}")
    print_ratios(results)
    return all(r.migration_exit in (None, 0) and (r.way == "none" or r.column_added) for r in results)


def print_ratios(results: list[WayResult]) -> None:
    medians = {
        way: (statistics.median(r.max_ms for r in found), statistics.median(r.p999_ms for r in found))
        for way in WAYS
        if (found := [r for r in results if r.way == way])
    }
    print()
    for way, (max_ms, p999_ms) in medians.items():
        print(f"median over rounds, {way:<10} max {max_ms:8.1f} ms   p99.9 {p999_ms:8.1f} ms")
    if set(medians) != set(WAYS):
        return
    vs_none = medians["dbmigrate"][0] / medians["none"][0]
    vs_alembic = medians["alembic"][0] / medians["dbmigrate"][0]
    print(
        f"dbmigrate max / no-migration max = {vs_none:.2f} (target <= {TARGET_DBMIGRATE_VS_NONE:g}: "
        f"{'met' if vs_none <= TARGET_DBMIGRATE_VS_NONE else 'MISSED'})"
    )
    print(
        f"plain-alembic max / dbmigrate max = {vs_alembic:.1f} (target >= {TARGET_ALEMBIC_VS_DBMIGRATE:g}: "
        f"{'met' if vs_alembic >= TARGET_ALEMBIC_VS_DBMIGRATE else 'MISSED'})"
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_server_arguments(parser)
    parser.add_argument(
        "--ways", nargs="+", choices=WAYS, default=list(WAYS), help="which ways to run (ratios need all three)"
    )
    parser.add_argument("--rounds", type=int, default=ROUNDS, help=f"interleaved rounds of every way [{ROUNDS}]")
    parser.add_argument("--keep-logs", type=Path, help="copy pgbench and migration logs into this directory")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    server = Server.from_args(args)
    byte_compile_dbmigrate()
    print(
        f"lock_queue: {CLIENTS} clients at {RATE_TPS} tx/s on {ROWS} rows for {DURATION_S}s; reader at "
        f"{READER_AT_S:g}s for {READER_HOLDS_S:g}s; migration at {MIGRATION_AT_S:g}s; {args.rounds} round(s); "
        f"{os.cpu_count()} CPU(s); load average {os.getloadavg()[0]:.2f}"
    )
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench_lock_queue_") as tmp:
        results = [
            run_way(way, round_no, server, Path(tmp)) for round_no in range(1, args.rounds + 1) for way in args.ways
        ]
        if args.keep_logs:
            keep_logs(Path(tmp), args.keep_logs)
    applied = report(results)
    print(f"total {time.monotonic() - started:.0f}s; load average at the end {os.getloadavg()[0]:.2f}")
    return 0 if applied else 1


def keep_logs(source: Path, target: Path) -> None:
    shutil.copytree(source, target, dirs_exist_ok=True)


if __name__ == "__main__":
    sys.exit(main())
