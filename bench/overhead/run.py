"""Overhead benchmark: what dbmigrate's safety costs in wall time, against plain alembic.

Generates an Alembic project with 300 revisions (each creates a table and an index) in a temporary
directory, with the repository's own env.py. On PostgreSQL it then times, as cold processes:

* ``dbmigrate upgrade`` against ``alembic upgrade head``, each on a fresh database, alternating
  which tool goes first, several repetitions; target: median ratio <= 1.15;
* ``dbmigrate status`` against ``alembic current`` on the migrated database, alternating, several
  repetitions; target: median ratio <= 1.2.

Run from the repository root: ``.venv/bin/python bench/overhead/run.py``. Only 127.0.0.1 is used
by default; a password, if the server wants one, comes from PGPASSWORD and is never printed.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import psycopg

# The scripts run as files (python bench/NAME/run.py): make the shared bench module importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import generated_project
from postgres_server import Server, add_server_arguments, drop_database, recreate_database

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
REVISIONS = 300
UPGRADE_REPS = 5
STATUS_REPS = 11
COMMAND_TIMEOUT_S = 300.0
TARGET_UPGRADE = 1.15
TARGET_STATUS = 1.2

REVISION_TEMPLATE = '''\
"""create table t{n:04d} with an index

Revision ID: {rev}
Revises: {down}
"""

import sqlalchemy as sa

from alembic import op

revision = "{rev}"
down_revision = {down_literal}
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "t{n:04d}",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False, server_default=sa.func.now()),
    )
    op.create_index("ix_t{n:04d}_name", "t{n:04d}", ["name"])


def downgrade() -> None:
    op.drop_index("ix_t{n:04d}_name", table_name="t{n:04d}")
    op.drop_table("t{n:04d}")
'''


def generate_project(root: Path, count: int) -> Path:
    """An Alembic project with ``count`` chained revisions; returns its alembic.ini."""

    def revision(n: int) -> tuple[str, str]:
        rev, down = f"r{n:04d}", f"r{n - 1:04d}" if n > 1 else None
        source = REVISION_TEMPLATE.format(n=n, rev=rev, down=down or "", down_literal=repr(down))
        return f"{rev}_create_t{n:04d}.py", source

    return generated_project.generate_project(root, count, revision)


def version_of(server: Server, database: str) -> str | None:
    with psycopg.connect(server.conninfo(database)) as connection:
        row = connection.execute("SELECT version_num FROM alembic_version").fetchone()
    return str(row[0]) if row else None


def command(tool: str, action: str, ini: Path) -> list[str]:
    if tool == "alembic":
        args = ["upgrade", "head"] if action == "upgrade" else ["current"]
        return [str(VENV_BIN / "alembic"), "-c", str(ini), *args]
    return [str(VENV_BIN / "dbmigrate"), action, "-c", str(ini), "--log-format", "json"]


@dataclasses.dataclass
class Timings:
    """Per tool: wall seconds of each cold process, and the CPU seconds (user+sys) it used."""

    wall: dict[str, list[float]] = dataclasses.field(default_factory=lambda: {"alembic": [], "dbmigrate": []})
    cpu: dict[str, list[float]] = dataclasses.field(default_factory=lambda: {"alembic": [], "dbmigrate": []})


def timed(argv: list[str], url: str, tool: str, timings: Timings) -> None:
    """Run one cold process and record its wall and CPU time; raises with its stderr when it fails."""
    env = {**os.environ, "DATABASE_URL": url}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, timeout=COMMAND_TIMEOUT_S, check=False)
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        tail = done.stderr.decode(errors="replace").strip()[-2000:]
        raise RuntimeError(f"{Path(argv[0]).name} {argv[1]} exited with {done.returncode}: {tail}")
    # CPU time barely moves with other load on the machine, so it backs up the noisier wall times.
    timings.wall[tool].append(elapsed)
    timings.cpu[tool].append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)


def order(rep: int) -> tuple[str, str]:
    """Alternate which tool goes first, so neither always meets a warmer cache or a busier server."""
    return ("alembic", "dbmigrate") if rep % 2 == 0 else ("dbmigrate", "alembic")


def bench_upgrade(server: Server, ini: Path, reps: int, head: str, keep: str) -> Timings:
    """Upgrade fresh databases; leaves database ``keep`` migrated by dbmigrate for the status runs."""
    timings = Timings()
    for rep in range(reps):
        for tool in order(rep):
            name = keep if tool == "dbmigrate" and rep == reps - 1 else f"bench_oh_{tool}_{os.getpid()}"
            recreate_database(server, name)
            try:
                timed(command(tool, "upgrade", ini), server.url(name), tool, timings)
                if version_of(server, name) != head:
                    raise RuntimeError(f"{tool} did not reach {head}")
            finally:
                if name != keep:
                    drop_database(server, name)
            wall, cpu = timings.wall[tool][-1], timings.cpu[tool][-1]
            print(f"  upgrade  rep {rep + 1}  {tool:<9} wall {wall:7.3f} s  cpu {cpu:7.3f} s", flush=True)
    return timings


def bench_status(server: Server, ini: Path, reps: int, database: str) -> Timings:
    timings = Timings()
    for rep in range(reps):
        for tool in order(rep):
            action = "status" if tool == "dbmigrate" else "current"
            timed(command(tool, action, ini), server.url(database), tool, timings)
    for tool in ("alembic", "dbmigrate"):
        print(f"  status   {tool:<9} wall " + " ".join(f"{v:.3f}" for v in timings.wall[tool]), flush=True)
        print(f"  status   {tool:<9} cpu  " + " ".join(f"{v:.3f}" for v in timings.cpu[tool]), flush=True)
    return timings


def verdict(name: str, timings: Timings, target: float) -> None:
    ours, theirs = statistics.median(timings.wall["dbmigrate"]), statistics.median(timings.wall["alembic"])
    cpu_ours, cpu_theirs = statistics.median(timings.cpu["dbmigrate"]), statistics.median(timings.cpu["alembic"])
    ratio = ours / theirs
    print(
        f"{name}: wall median dbmigrate {ours:.3f} s / alembic {theirs:.3f} s = {ratio:.2f} "
        f"(target <= {target:g}: {'met' if ratio <= target else 'MISSED'}); "
        f"cpu median {cpu_ours:.3f} s / {cpu_theirs:.3f} s = {cpu_ours / cpu_theirs:.2f}"
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_server_arguments(parser)
    parser.add_argument("--revisions", type=int, default=REVISIONS)
    parser.add_argument("--upgrade-reps", type=int, default=UPGRADE_REPS)
    parser.add_argument("--status-reps", type=int, default=STATUS_REPS)
    parser.add_argument("--keep-project", type=Path, help="copy the generated Alembic project here")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    server = Server.from_args(args)
    print(
        f"overhead: {args.revisions} revisions (a table and an index each), {args.upgrade_reps} upgrade and "
        f"{args.status_reps} status repetitions per tool, {os.cpu_count()} CPU(s), "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    migrated = f"bench_oh_status_{os.getpid()}"
    with tempfile.TemporaryDirectory(prefix="bench_overhead_") as tmp:
        ini = generate_project(Path(tmp), args.revisions)
        if args.keep_project:
            shutil.copytree(tmp, args.keep_project, dirs_exist_ok=True)
        try:
            upgrade = bench_upgrade(server, ini, args.upgrade_reps, f"r{args.revisions:04d}", migrated)
            status = bench_status(server, ini, args.status_reps, migrated)
        finally:
            drop_database(server, migrated)
    verdict("upgrade (dbmigrate upgrade / alembic upgrade head)", upgrade, TARGET_UPGRADE)
    verdict("status (dbmigrate status / alembic current)", status, TARGET_STATUS)
    print(f"load average at the end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
