"""Overhead benchmark: what dbmigrate's safety costs in wall time, against plain alembic.

Generates an Alembic project with 300 revisions (each creates a table and an index) in a temporary
directory, with the repository's own env.py. On PostgreSQL it then times, as cold processes:

* ``dbmigrate upgrade`` against ``alembic upgrade head``, each on a fresh database, alternating
  which tool goes first, several repetitions; target: median ratio <= 1.15;
* ``dbmigrate status`` against ``alembic current`` on the migrated database, alternating, several
  repetitions; target: median ratio <= 1.2.

For reference it also times ``alembic upgrade head`` with ``transaction_per_migration=True`` in the
same env.py (one transaction per revision, as dbmigrate runs them): what that part of dbmigrate's
design costs plain Alembic, and what dbmigrate adds on top of it. And it times ``alembic upgrade head
--sql`` against ``alembic heads`` (the same start and script loading, without the rendering): what
rendering every pending revision offline costs, which the upgrade gate must do before the first step.
Their sum over plain alembic is the floor of the upgrade ratio for any run that checks its plan
offline and then applies it one transaction per revision, before any history row is written.

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
from installed import byte_compile_dbmigrate
from postgres_server import Server, add_server_arguments, drop_database, recreate_database

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
REVISIONS = 300
UPGRADE_REPS = 5
STATUS_REPS = 11
COMMAND_TIMEOUT_S = 300.0
TARGET_UPGRADE = 1.15
TARGET_STATUS = 1.2
PER_REVISION = "alembic-per-revision"

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


def per_revision_project(ini: Path, root: Path) -> Path:
    """A copy of the project whose env.py commits each revision on its own; returns its alembic.ini."""
    shutil.copytree(ini.parent, root, dirs_exist_ok=True)
    env_py = root / "migrations" / "env.py"
    configure = "context.configure(connection=connection, target_metadata=target_metadata"
    source = env_py.read_text()
    if configure not in source:
        raise RuntimeError("the repository's env.py changed: update per_revision_project()")
    env_py.write_text(source.replace(configure, configure + ", transaction_per_migration=True"))
    return root / "alembic.ini"


def version_of(server: Server, database: str) -> str | None:
    with psycopg.connect(server.conninfo(database)) as connection:
        row = connection.execute("SELECT version_num FROM alembic_version").fetchone()
    return str(row[0]) if row else None


ALEMBIC_ARGS = {
    "upgrade": ["upgrade", "head"],
    "current": ["current"],
    "sql": ["upgrade", "head", "--sql"],
    "heads": ["heads"],
}


def command(tool: str, action: str, ini: Path) -> list[str]:
    if tool.startswith("alembic"):
        return [str(VENV_BIN / "alembic"), "-c", str(ini), *ALEMBIC_ARGS[action]]
    return [str(VENV_BIN / "dbmigrate"), action, "-c", str(ini), "--log-format", "json"]


@dataclasses.dataclass
class Timings:
    """Per tool: wall seconds of each cold process, and the CPU seconds (user+sys) it used."""

    wall: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    cpu: dict[str, list[float]] = dataclasses.field(default_factory=dict)


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
    timings.wall.setdefault(tool, []).append(elapsed)
    timings.cpu.setdefault(tool, []).append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)


def order(rep: int, tools: Sequence[str] = ("alembic", "dbmigrate")) -> list[str]:
    """Rotate which tool goes first, so none always meets a warmer cache or a busier server."""
    return [tools[(rep + i) % len(tools)] for i in range(len(tools))]


def bench_upgrade(server: Server, inis: dict[str, Path], reps: int, head: str, keep: str) -> Timings:
    """Upgrade fresh databases with each tool (its own project); leaves ``keep`` migrated by dbmigrate."""
    timings = Timings()
    for rep in range(reps):
        for tool in order(rep, list(inis)):
            name = keep if tool == "dbmigrate" and rep == reps - 1 else f"bench_oh_{os.getpid()}_{rep}"
            recreate_database(server, name)
            try:
                timed(command(tool, "upgrade", inis[tool]), server.url(name), tool, timings)
                if version_of(server, name) != head:
                    raise RuntimeError(f"{tool} did not reach {head}")
            finally:
                if name != keep:
                    drop_database(server, name)
            wall, cpu = timings.wall[tool][-1], timings.cpu[tool][-1]
            print(f"  upgrade  rep {rep + 1}  {tool:<20} wall {wall:7.3f} s  cpu {cpu:7.3f} s", flush=True)
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


def bench_render(server: Server, ini: Path, reps: int) -> Timings:
    """``alembic upgrade head --sql`` (rendering every revision offline) against ``alembic heads``."""
    timings = Timings()
    url = server.url("unused_offline")  # env.py reads the URL; nothing connects to it
    for rep in range(reps):
        for action in order(rep, ("sql", "heads")):
            timed(command("alembic", action, ini), url, action, timings)
    return timings


def verdict(
    name: str, timings: Timings, target: float | None, ours: str = "dbmigrate", theirs: str = "alembic"
) -> None:
    wall, their_wall = statistics.median(timings.wall[ours]), statistics.median(timings.wall[theirs])
    cpu, their_cpu = statistics.median(timings.cpu[ours]), statistics.median(timings.cpu[theirs])
    ratio = wall / their_wall
    goal = f" (target <= {target:g}: {'met' if ratio <= target else 'MISSED'})" if target is not None else ""
    print(
        f"{name}: wall median {ours} {wall:.3f} s / {theirs} {their_wall:.3f} s = {ratio:.2f}{goal}; "
        f"cpu median {cpu:.3f} s / {their_cpu:.3f} s = {cpu / their_cpu:.2f}"
    )


def floor(upgrade: Timings, render: Timings) -> None:
    """What checking the plan offline and committing each revision on its own cost plain alembic."""
    median = statistics.median
    rendering = median(render.wall["sql"]) - median(render.wall["heads"])
    plain, per_revision = median(upgrade.wall["alembic"]), median(upgrade.wall[PER_REVISION])
    print(
        f"reference: rendering the plan offline (alembic upgrade head --sql - alembic heads) {rendering:.3f} s; "
        f"floor of the upgrade ratio with a pre-run check and one transaction per revision: "
        f"({per_revision:.3f} + {rendering:.3f}) / {plain:.3f} = {(per_revision + rendering) / plain:.2f}"
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
    byte_compile_dbmigrate()
    print(
        f"overhead: {args.revisions} revisions (a table and an index each), {args.upgrade_reps} upgrade and "
        f"{args.status_reps} status repetitions per tool, {os.cpu_count()} CPU(s), "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    migrated = f"bench_oh_status_{os.getpid()}"
    with tempfile.TemporaryDirectory(prefix="bench_overhead_") as tmp:
        ini = generate_project(Path(tmp) / "project", args.revisions)
        if args.keep_project:
            shutil.copytree(ini.parent, args.keep_project, dirs_exist_ok=True)
        inis = {"alembic": ini, "dbmigrate": ini, PER_REVISION: per_revision_project(ini, Path(tmp) / "per_revision")}
        try:
            upgrade = bench_upgrade(server, inis, args.upgrade_reps, f"r{args.revisions:04d}", migrated)
            status = bench_status(server, ini, args.status_reps, migrated)
            render = bench_render(server, ini, args.status_reps)
        finally:
            drop_database(server, migrated)
    verdict("upgrade (dbmigrate upgrade / alembic upgrade head)", upgrade, TARGET_UPGRADE)
    verdict("status (dbmigrate status / alembic current)", status, TARGET_STATUS)
    verdict("reference: one transaction per revision in plain alembic", upgrade, None, PER_REVISION, "alembic")
    verdict(
        "reference: dbmigrate upgrade / alembic with one transaction per revision", upgrade, None, theirs=PER_REVISION
    )
    floor(upgrade, render)
    print(f"load average at the end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
