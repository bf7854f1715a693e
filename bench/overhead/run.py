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

The deploy users feel comes first (``--parts deploy``): 1, 3 and 5 pending revisions of the same
project, cold processes, ``dbmigrate upgrade TARGET`` against ``alembic upgrade TARGET`` interleaved
in one run, several repetitions, medians:

* the usual deploy: each tool upgrades a copy (``CREATE DATABASE ... TEMPLATE``) of a database it
  migrated itself to 5 revisions below the head, so dbmigrate's own tables, history and archive
  exist; target: 3 pending <= 1.2;
* the first deploy: each tool upgrades an empty database by 1, 3 or 5 revisions (dbmigrate creates
  its tables); reported, no target;
* ``dbmigrate status`` against ``alembic current`` on the usual deploy's databases, after it;
  target <= 1.2.

Each figure is printed with the load average around it: the machine's other work moves wall times.

Run from the repository root: ``.venv/bin/python bench/overhead/run.py`` (``--parts deploy`` or
``--parts full`` for one half). Only 127.0.0.1 is used
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
from postgres_server import Server, add_server_arguments, admin_execute, drop_database, recreate_database

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
REVISIONS = 300
UPGRADE_REPS = 5
STATUS_REPS = 11
COMMAND_TIMEOUT_S = 300.0
TARGET_UPGRADE = 1.15
TARGET_STATUS = 1.2
TARGET_DEPLOY = 1.2  # 3 pending revisions, the usual deploy
DEPLOY_PENDING = (1, 3, 5)
DEPLOY_REPS = 7
PER_REVISION = "alembic-per-revision"


def generate_project(root: Path, count: int) -> Path:
    """An Alembic project with ``count`` chained revisions; returns its alembic.ini."""

    return generated_project.generate_project(
        root, count, lambda n: (f"r{n:04d}_create_t{n:04d}.py", generated_project.table_revision(n))
    )


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


def command(tool: str, action: str, ini: Path, target: str | None = None) -> list[str]:
    if tool.startswith("alembic"):
        args = ALEMBIC_ARGS[action] if target is None else [action, target]
        return [str(VENV_BIN / "alembic"), "-c", str(ini), *args]
    return [str(VENV_BIN / "dbmigrate"), action, *([target] if target else []), "-c", str(ini), "--log-format", "json"]


@dataclasses.dataclass
class Timings:
    """Per tool: wall seconds of each cold process, and the CPU seconds (user+sys) it used."""

    wall: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    cpu: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    load: list[float] = dataclasses.field(default_factory=list)  # 1-minute load average at each process

    def loads(self) -> str:
        return f"load {min(self.load):.1f} to {max(self.load):.1f}" if self.load else "load not recorded"


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
    timings.load.append(os.getloadavg()[0])
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


def bench_deploy(server: Server, ini: Path, revisions: int, reps: int) -> dict[str, Timings]:
    """1, 3 and 5 pending revisions, on the usual deploy's database and on the first deploy's, and status.

    Keys: ``usual N``, ``first N`` and ``status``. Each tool's usual database is a copy of a template
    the same tool migrated to ``revisions - 5``, so every repetition starts from the same state.
    """
    base = revisions - max(DEPLOY_PENDING)
    suffix = os.getpid()
    templates = {"alembic": f"bench_oh_tpl_a_{suffix}", "dbmigrate": f"bench_oh_tpl_d_{suffix}"}
    scratch = f"bench_oh_deploy_{suffix}"
    results: dict[str, Timings] = {"status": Timings()}
    try:
        for tool, template in templates.items():
            recreate_database(server, template)
            timed(command(tool, "upgrade", ini, f"r{base:04d}"), server.url(template), tool, Timings())
        for pending in DEPLOY_PENDING:
            for kind in ("usual", "first"):
                timings = results[f"{kind} {pending}"] = Timings()
                target = f"r{base + pending:04d}" if kind == "usual" else f"r{pending:04d}"
                for rep in range(reps):
                    for tool in order(rep):
                        template = f" TEMPLATE {templates[tool]}" if kind == "usual" else ""
                        admin_execute(
                            server,
                            [f"DROP DATABASE IF EXISTS {scratch} WITH (FORCE)", f"CREATE DATABASE {scratch}{template}"],
                        )
                        timed(command(tool, "upgrade", ini, target), server.url(scratch), tool, timings)
                        if version_of(server, scratch) != target:
                            raise RuntimeError(f"{tool} did not reach {target}")
                        if kind == "usual" and pending == 3:
                            action = "status" if tool == "dbmigrate" else "current"
                            timed(command(tool, action, ini), server.url(scratch), tool, results["status"])
                print(f"  deploy   {kind:<5} {pending} pending  " + _medians(timings), flush=True)
    finally:
        for name in (*templates.values(), scratch):
            drop_database(server, name)
    return results


def _medians(timings: Timings) -> str:
    return (
        ", ".join(
            f"{tool} wall {statistics.median(timings.wall[tool]):.3f} s "
            f"cpu {statistics.median(timings.cpu[tool]):.3f} s"
            for tool in sorted(timings.wall)
        )
        + f" ({timings.loads()})"
    )


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
        f"cpu median {cpu:.3f} s / {their_cpu:.3f} s = {cpu / their_cpu:.2f}; {timings.loads()}"
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
    parser.add_argument("--deploy-reps", type=int, default=DEPLOY_REPS)
    parser.add_argument("--parts", choices=("all", "deploy", "full"), default="all", help="deploy: 1, 3, 5 pending")
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
        if args.parts in ("all", "deploy"):
            deploy = bench_deploy(server, ini, args.revisions, args.deploy_reps)
            for pending in DEPLOY_PENDING:
                for kind in ("usual", "first"):
                    target = TARGET_DEPLOY if (kind, pending) == ("usual", 3) else None
                    verdict(
                        f"deploy, {kind}, {pending} pending (dbmigrate upgrade / alembic upgrade)",
                        deploy[f"{kind} {pending}"],
                        target,
                    )
            verdict("deploy, status after it (dbmigrate status / alembic current)", deploy["status"], TARGET_STATUS)
        if args.parts == "deploy":
            print(f"load average at the end {os.getloadavg()[0]:.2f}")
            return 0
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
