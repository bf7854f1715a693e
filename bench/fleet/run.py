"""Fleet benchmark: many PostgreSQL databases through the same revisions, dbmigrate against a shell loop.

Generates an Alembic project with 10 revisions (each creates a table and an index; the repository's
own env.py) in a temporary directory and creates ``--targets`` empty databases per tool (default
200). Then, in the same run, on fresh databases:

* ``dbmigrate upgrade --fleet fleet.toml --parallel P``: one command, P worker processes;
* a shell loop of ``alembic upgrade head``, one cold process per database, one after the other.

It prints the wall time of both, the time per target and the ratio (target: dbmigrate at least 5x
faster), checks that every database is at head, and does the same for ``--small`` targets (default
50) to show how the time grows with the fleet. The 1-minute load average is printed before each run.

Run from the repository root: ``.venv/bin/python bench/fleet/run.py`` (``--targets 50`` for a quick
look). Only 127.0.0.1 is used by default; a password, if the server wants one, comes from PGPASSWORD
and is never printed.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg

# The scripts run as files (python bench/NAME/run.py): make the shared bench module importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import generated_project
from installed import byte_compile_dbmigrate
from postgres_server import Server, add_server_arguments, admin_execute

VENV_BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[2]
# This checkout's dbmigrate, whatever copy the virtualenv has installed.
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
REVISIONS = 10
TARGET_RATIO = 5.0

REVISION_TEMPLATE = '''\
"""create table t{n:02d} with an index

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
        "t{n:02d}",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(100), nullable=False),
    )
    op.create_index("ix_t{n:02d}_name", "t{n:02d}", ["name"])


def downgrade() -> None:
    op.drop_index("ix_t{n:02d}_name", table_name="t{n:02d}")
    op.drop_table("t{n:02d}")
'''


def generate_project(root: Path) -> Path:
    def revision(n: int) -> tuple[str, str]:
        rev, down = f"r{n:02d}", f"r{n - 1:02d}" if n > 1 else None
        return f"{rev}_create_t{n:02d}.py", REVISION_TEMPLATE.format(
            n=n, rev=rev, down=down or "", down_literal=repr(down)
        )

    return generated_project.generate_project(root, REVISIONS, revision)


def create_databases(server: Server, names: list[str]) -> None:
    admin_execute(server, [f"DROP DATABASE IF EXISTS {n} WITH (FORCE)" for n in names])
    admin_execute(server, [f"CREATE DATABASE {n}" for n in names])


def drop_databases(server: Server, names: list[str]) -> None:
    admin_execute(server, [f"DROP DATABASE IF EXISTS {n} WITH (FORCE)" for n in names])


def check_at_head(server: Server, names: list[str], head: str, tool: str) -> None:
    for name in names:
        with psycopg.connect(server.conninfo(name)) as connection:
            row = connection.execute("SELECT version_num FROM alembic_version").fetchone()
        if not row or row[0] != head:
            raise RuntimeError(f"{tool}: {name} is at {row[0] if row else None}, not {head}")


def load() -> str:
    return f"{os.getloadavg()[0]:.2f}"


def run_dbmigrate(server: Server, ini: Path, names: list[str], parallel: int, work: Path) -> float:
    template = server.url("DBNAME").replace("DBNAME", "{name}")
    fleet = work / f"fleet-{len(names)}.toml"
    fleet.write_text(f'[[targets]]\nurl = "{template}"\nnames = {json.dumps(names)}\n')
    argv = [
        sys.executable,
        "-m",
        "dbmigrate",
        "upgrade",
        "-c",
        str(ini),
        "--fleet",
        str(fleet),
        "--parallel",
        str(parallel),
        "--format",
        "json",
        "--log-format",
        "json",
    ]
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, check=False, env=ENV)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"dbmigrate exited with {done.returncode}: {done.stderr[-2000:]}")
    return elapsed


def run_loop(server: Server, ini: Path, names: list[str]) -> float:
    """The shell loop a team writes today: one ``alembic upgrade head`` process per database."""
    urls = " ".join(shlex.quote(server.url(name)) for name in names)
    alembic = shlex.quote(str(VENV_BIN / "alembic"))
    script = f"set -e; for url in {urls}; do DATABASE_URL=$url {alembic} -c {shlex.quote(str(ini))} upgrade head; done"
    started = time.perf_counter()
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"the alembic loop exited with {done.returncode}: {done.stderr[-2000:]}")
    return elapsed


def measure(server: Server, ini: Path, size: int, parallel: int, work: Path) -> tuple[float, float]:
    prefix = f"bench_fl_{os.getpid()}_{size}"
    sets = {tool: [f"{prefix}_{tool[0]}{i:04d}" for i in range(size)] for tool in ("dbmigrate", "alembic")}
    head = f"r{REVISIONS:02d}"
    try:
        for names in sets.values():
            create_databases(server, names)
        print(f"{size} targets, load {load()}: dbmigrate --parallel {parallel} ...", flush=True)
        fleet_s = run_dbmigrate(server, ini, sets["dbmigrate"], parallel, work)
        check_at_head(server, sets["dbmigrate"], head, "dbmigrate")
        print(f"{size} targets, load {load()}: alembic loop ...", flush=True)
        loop_s = run_loop(server, ini, sets["alembic"])
        check_at_head(server, sets["alembic"], head, "alembic")
    finally:
        for names in sets.values():
            drop_databases(server, names)
    print(
        f"{size} targets: dbmigrate {fleet_s:.1f} s ({fleet_s / size * 1000:.0f} ms/target), "
        f"alembic loop {loop_s:.1f} s ({loop_s / size * 1000:.0f} ms/target), "
        f"ratio {loop_s / fleet_s:.2f}, load {load()}",
        flush=True,
    )
    return fleet_s, loop_s


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_server_arguments(parser)
    parser.add_argument("--targets", type=int, default=200, help="databases per tool (default 200)")
    parser.add_argument("--small", type=int, default=50, help="the smaller fleet, for growth (0: skip)")
    parser.add_argument("--parallel", type=int, default=4, help="dbmigrate's worker processes (default 4)")
    args = parser.parse_args()
    server = Server.from_args(args)
    byte_compile_dbmigrate()
    sizes = [s for s in (args.small, args.targets) if s and s != args.targets] + [args.targets]
    results: dict[int, tuple[float, float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp:
        work = Path(tmp)
        ini = generate_project(work / "project")
        for size in sizes:
            results[size] = measure(server, ini, size, args.parallel, work)
    big = results[args.targets]
    ratio = big[1] / big[0]
    verdict = "ok" if ratio >= TARGET_RATIO else "MISSED"
    print(f"\nratio at {args.targets} targets: {ratio:.2f} (target >= {TARGET_RATIO}): {verdict}")
    if len(results) == 2:
        small = results[sizes[0]]
        grow = args.targets / sizes[0]
        print(
            f"growth {sizes[0]} -> {args.targets} targets (x{grow:g}): dbmigrate x{big[0] / small[0]:.2f}, "
            f"alembic loop x{big[1] / small[1]:.2f}"
        )
    return 0 if ratio >= TARGET_RATIO else 1


if __name__ == "__main__":
    sys.exit(main())
