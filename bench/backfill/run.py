"""Backfill benchmark: what filling a new column of a busy 1,000,000-row table costs the application.

pgbench clients run point reads and updates (``backfill/app.sql``) at a fixed rate on ``accounts``.
Three ways, each on a copy of the same database (``CREATE DATABASE ... TEMPLATE``, so every way
starts from the same table): no migration; plain ``alembic upgrade head`` of a revision that runs
``ADD COLUMN`` and one ``UPDATE`` of every row (``backfill/plain``, the way most projects write it);
``dbmigrate upgrade`` of the same revision written with ``dbmigrate.backfill`` (``backfill/online``).
The migration starts a few seconds into the load. Per way it prints the application's max and
p99.9 latency (pgbench ``--log``; with ``--rate`` a latency counts from when the request was due, so
requests that arrive during a stall show their whole wait) and the migration's wall time, then the
ratios against the targets, and the load average at the start and the end.

Run from the repository root: ``.venv/bin/python bench/backfill/run.py`` (``--rows 50000`` for a
smoke run). Only 127.0.0.1 is used by default; a password, if the server wants one, comes from
PGPASSWORD and is never printed.
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
    start_pgbench,
)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
VENV_BIN = Path(sys.executable).parent
APP_SCRIPT = HERE / "app.sql"
INI = {"alembic": HERE / "plain.ini", "dbmigrate": HERE / "online.ini"}

ROWS = 1_000_000
CLIENTS = 8
# A fixed arrival rate (pgbench -R): a stalled request's latency includes its whole wait.
RATE_TPS = 400
MIGRATION_AT_S = 3.0
MIGRATION_GRACE_S = 600  # a migration still running this long after the load ended is killed
ROUNDS = 1
WAYS = ("none", "alembic", "dbmigrate")
TARGET_DBMIGRATE_VS_NONE = 2.0  # max latency: dbmigrate / no migration, at most
TARGET_ALEMBIC_VS_DBMIGRATE = 20.0  # max latency: plain alembic / dbmigrate, at least
TARGET_TOTAL = 3.0  # migration wall time: dbmigrate / plain alembic, at most


@dataclasses.dataclass
class WayResult:
    """One way's application latencies (ms), its migration and what the table holds afterwards."""

    way: str
    round_no: int
    latencies_ms: list[float]
    began_s: list[float]  # when each transaction began, seconds after the load started (same order)
    worst_at_s: float  # when the slowest transaction began, seconds after the load started
    failed: int
    migration_s: float | None
    migration_exit: int | None
    unfilled: int | None  # rows whose new column is still NULL (None: no column)
    stale: int | None  # rows whose new column no longer matches abalance * 100 (updated after the fill)
    backfill: tuple[float, float] | None  # dbmigrate's backfill: began, ended (s after the load started)
    load_ended_first: bool

    def percentile(self, fraction: float) -> float:
        ordered = sorted(self.latencies_ms)
        rank = max(0, min(len(ordered) - 1, int(fraction * len(ordered) + 0.999999) - 1))
        return ordered[rank]

    @property
    def max_ms(self) -> float:
        return max(self.latencies_ms)

    def max_between(self, start: float, end: float) -> float:
        """The slowest transaction that began from ``start`` to ``end`` (seconds after the load started)."""
        during = (ms for ms, at in zip(self.latencies_ms, self.began_s, strict=True) if start <= at <= end)
        return max(during, default=0.0)

    @property
    def p999_ms(self) -> float:
        return self.percentile(0.999)


def prepare_template(server: Server, name: str, rows: int) -> None:
    """The database every way copies: ``accounts`` with ``rows`` rows, vacuumed and analysed."""
    admin_execute(server, [f"DROP DATABASE IF EXISTS {name} WITH (FORCE)", f"CREATE DATABASE {name}"])
    admin_execute(
        server,
        [
            "CREATE TABLE accounts (aid integer PRIMARY KEY, abalance integer NOT NULL DEFAULT 0, filler char(84))",
            f"INSERT INTO accounts (aid, filler) SELECT g, '' FROM generate_series(1, {rows}) AS g",
            "VACUUM ANALYZE accounts",
            "CHECKPOINT",
        ],
        database=name,
    )


def copy_database(server: Server, template: str, name: str) -> None:
    admin_execute(
        server, [f"DROP DATABASE IF EXISTS {name} WITH (FORCE)", f"CREATE DATABASE {name} TEMPLATE {template}"]
    )
    admin_execute(server, ["CHECKPOINT"])  # the copy's writes are not flushed during the timed window


def migration_command(way: str) -> list[str]:
    if way == "alembic":
        return [str(VENV_BIN / "alembic"), "-c", str(INI[way]), "upgrade", "head"]
    return [str(VENV_BIN / "dbmigrate"), "upgrade", "-c", str(INI[way]), "--log-format", "json"]


def run_migration(way: str, server: Server, database: str, log_path: Path, timeout_s: float) -> tuple[int, float]:
    """Run ``way``'s upgrade as a cold process; its exit code and wall time."""
    # This checkout's dbmigrate, whatever the virtualenv has installed.
    env = {**os.environ, "DATABASE_URL": server.url(database), "PYTHONPATH": str(ROOT)}
    began = time.monotonic()
    with log_path.open("wb") as stderr:
        process = subprocess.Popen(migration_command(way), env=env, stdout=subprocess.DEVNULL, stderr=stderr)
        try:
            code = process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()  # ours, by its own handle; the run must end by itself
            code = process.wait()
    return code, time.monotonic() - began


def backfill_window(log_path: Path, start_wall: float) -> tuple[float, float] | None:
    """When dbmigrate's backfill started and ended (``backfill starting``/``done`` in its JSON log), in
    seconds after ``start_wall``; None if it did not finish."""
    starts = dones = None
    for line in log_path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        stamp = datetime.fromisoformat(record["timestamp"].replace("Z", "+00:00")).timestamp()
        if record.get("event") == "backfill starting":
            starts = stamp
        elif record.get("event") == "backfill done":
            dones = stamp
    return (starts - start_wall, dones - start_wall) if starts is not None and dones is not None else None


def read_latencies(log_dir: Path, start_wall: float) -> tuple[list[float], list[float], float, int]:
    """pgbench's per-transaction log (client, tx, latency_us, script, epoch_s, epoch_us[, lag_us]).

    The latencies (ms), when each began and when the slowest began (s after ``start_wall``), and how many
    failed.
    """
    latencies: list[float] = []
    began: list[float] = []
    worst, worst_at, failed = -1.0, 0.0, 0
    for path in sorted(log_dir.glob("tx.*")):
        for line in path.read_text().splitlines():
            fields = line.split()
            if len(fields) < 6:
                continue
            if not fields[2].isdigit():
                failed += 1  # skipped (late beyond --latency-limit) or failed
                continue
            latency = int(fields[2]) / 1000
            latencies.append(latency)
            began.append(int(fields[4]) + int(fields[5]) / 1e6 - latency / 1000 - start_wall)  # it stamps the end
            if latency > worst:
                worst, worst_at = latency, began[-1]
    return latencies, began, worst_at, failed


def filled_state(server: Server, database: str) -> tuple[int | None, int | None]:
    """Rows of the new column still NULL, and filled but no longer abalance * 100; (None, None) without it."""
    with psycopg.connect(server.conninfo(database)) as connection:
        present = connection.execute(
            "SELECT count(*) FROM information_schema.columns "
            "WHERE table_name = 'accounts' AND column_name = 'abalance_cents'"
        ).fetchone()
        if not (present and present[0]):
            return None, None
        row = connection.execute(
            "SELECT count(*) FILTER (WHERE abalance_cents IS NULL), "
            "count(*) FILTER (WHERE abalance_cents <> abalance::bigint * 100) FROM accounts"
        ).fetchone()
    return (int(row[0]), int(row[1])) if row else (None, None)


def run_way(
    way: str, round_no: int, args: argparse.Namespace, server: Server, template: str, scratch: Path
) -> WayResult:
    database = f"bench_bf_{way}_{os.getpid()}"
    log_dir = scratch / f"round{round_no}" / way
    log_dir.mkdir(parents=True)
    copy_database(server, template, database)
    try:
        load = start_pgbench(
            server,
            database,
            APP_SCRIPT,
            clients=CLIENTS,
            rate=RATE_TPS,
            seconds=args.load_seconds,
            log_dir=log_dir,
            defines=[f"rows={args.rows}"],
        )
        load_started, start_wall = time.monotonic(), time.time()
        code = duration = backfill = None
        if way != "none":
            time.sleep(MIGRATION_AT_S)
            timeout = args.load_seconds + MIGRATION_GRACE_S
            code, duration = run_migration(way, server, database, log_dir / "migration.log", timeout)
            if way == "dbmigrate":
                backfill = backfill_window(log_dir / "migration.log", start_wall)
        load_ended_first = way != "none" and time.monotonic() - load_started > args.load_seconds
        finish_pgbench(load, args.load_seconds + 60)
        latencies, began, worst_at, failed = read_latencies(log_dir, start_wall)
        unfilled, stale = filled_state(server, database)
        return WayResult(
            way=way,
            round_no=round_no,
            latencies_ms=latencies,
            began_s=began,
            worst_at_s=worst_at,
            failed=failed,
            migration_s=duration,
            migration_exit=code,
            unfilled=unfilled,
            stale=stale,
            backfill=backfill,
            load_ended_first=load_ended_first,
        )
    finally:
        drop_database(server, database)


def report(results: list[WayResult]) -> bool:
    """Print every way of every round and the ratios; True when both migrations applied and filled every row."""
    print(f"{'round':>5} {'way':<10} {'tx':>6} {'p50 ms':>8} {'p99.9 ms':>9} {'max ms':>9} {'max at s':>8}  migration")
    for r in results:
        if r.migration_exit is None:
            outcome = "-"
        else:
            during = r.max_between(MIGRATION_AT_S, MIGRATION_AT_S + r.migration_s)
            outcome = (
                f"exit {r.migration_exit}, {r.migration_s:.2f} s from {MIGRATION_AT_S:g} s, rows NULL: {r.unfilled}, "
                f"stale: {r.stale}, max while it ran {during:.1f} ms"
            )
            if r.backfill is not None:
                began, ended = r.backfill
                outcome += f", backfill {ended - began:.2f} s ({began:.1f} to {ended:.1f} s)"
            if r.load_ended_first:
                outcome += " (THE LOAD ENDED BEFORE THE MIGRATION: raise --load-seconds)"
        failed = f", {r.failed} failed" if r.failed else ""
        print(
            f"{r.round_no:>5} {r.way:<10} {len(r.latencies_ms):>6} {r.percentile(0.5):>8.1f} "
            f"{r.p999_ms:>9.1f} {r.max_ms:>9.1f} {r.worst_at_s:>8.2f}  {outcome}{failed}"
        )
    print_ratios(results)
    return all(
        r.migration_exit in (None, 0) and (r.way == "none" or r.unfilled == 0) and not r.load_ended_first
        for r in results
    )


def print_ratios(results: list[WayResult]) -> None:
    def median(way: str, value: str) -> float:
        return statistics.median(getattr(r, value) for r in results if r.way == way)

    if {r.way for r in results} != set(WAYS):
        return
    print()
    for way in WAYS:
        total = f"   migration {median(way, 'migration_s'):7.2f} s" if way != "none" else ""
        print(
            f"median over rounds, {way:<10} max {median(way, 'max_ms'):8.1f} ms   "
            f"p99.9 {median(way, 'p999_ms'):8.1f} ms{total}"
        )
    checks = [
        (
            "dbmigrate max / no-migration max",
            median("dbmigrate", "max_ms") / median("none", "max_ms"),
            "<=",
            TARGET_DBMIGRATE_VS_NONE,
        ),
        (
            "plain-alembic max / dbmigrate max",
            median("alembic", "max_ms") / median("dbmigrate", "max_ms"),
            ">=",
            TARGET_ALEMBIC_VS_DBMIGRATE,
        ),
        (
            "dbmigrate total / plain-alembic total",
            median("dbmigrate", "migration_s") / median("alembic", "migration_s"),
            "<=",
            TARGET_TOTAL,
        ),
    ]
    during = statistics.median(
        r.max_between(MIGRATION_AT_S, MIGRATION_AT_S + (r.migration_s or 0)) for r in results if r.way == "dbmigrate"
    )
    print(
        f"dbmigrate max while its migration ran {during:.1f} ms (median over rounds) / no-migration max = "
        f"{during / median('none', 'max_ms'):.2f} (for reference: the max above counts the whole load)"
    )
    for name, ratio, sense, target in checks:
        met = ratio <= target if sense == "<=" else ratio >= target
        print(f"{name} = {ratio:.2f} (target {sense} {target:g}: {'met' if met else 'MISSED'})")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_server_arguments(parser)
    parser.add_argument("--rows", type=int, default=ROWS, help=f"rows in accounts [{ROWS}]")
    parser.add_argument(
        "--load-seconds",
        type=int,
        help="how long pgbench runs in every way; it must outlast both migrations [150 per million rows, at least 40]",
    )
    parser.add_argument(
        "--ways", nargs="+", choices=WAYS, default=list(WAYS), help="which ways to run (the ratios need all three)"
    )
    parser.add_argument("--rounds", type=int, default=ROUNDS, help=f"rounds of every way [{ROUNDS}]")
    parser.add_argument("--keep-logs", type=Path, help="copy pgbench and migration logs into this directory")
    args = parser.parse_args(argv)
    if args.load_seconds is None:
        args.load_seconds = max(40, round(150 * args.rows / 1_000_000))
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    server = Server.from_args(args)
    byte_compile_dbmigrate()
    print(
        f"backfill: {CLIENTS} clients at {RATE_TPS} tx/s on {args.rows} rows for {args.load_seconds}s per way; "
        f"migration at {MIGRATION_AT_S:g}s; {args.rounds} round(s); {os.cpu_count()} CPU(s); "
        f"load average at the start {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    started = time.monotonic()
    template = f"bench_bf_template_{os.getpid()}"
    try:
        prepare_template(server, template, args.rows)
        print(f"table ready in {time.monotonic() - started:.0f}s")
        with tempfile.TemporaryDirectory(prefix="bench_backfill_") as tmp:
            results = [
                run_way(way, round_no, args, server, template, Path(tmp))
                for round_no in range(1, args.rounds + 1)
                for way in args.ways
            ]
            if args.keep_logs:
                shutil.copytree(Path(tmp), args.keep_logs, dirs_exist_ok=True)
    finally:
        drop_database(server, template)
    applied = report(results)
    print(
        f"total {time.monotonic() - started:.0f}s; load average at the end "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    return 0 if applied else 1


if __name__ == "__main__":
    sys.exit(main())
