"""Checks benchmark: what ``dbmigrate check`` costs against rendering the same revisions with Alembic.

Generates an Alembic project with 300 revisions in a temporary directory, with the repository's own
env.py. Each revision creates a table with an index (as in bench/overhead) and, from the sixth on,
does one more thing to an earlier table, in turn: add a column; build an index without
CONCURRENTLY; raw SQL through ``op.execute`` (a CHECK constraint, with a comment and a string
literal that mention DROP TABLE); a data backfill ``UPDATE ... WHERE``; drop the column added four
revisions before, declared with ``# dbmigrate: allow-data-loss reason="..."``; build an index
CONCURRENTLY in an autocommit block. Downgrades undo each step. The project is the same on every run.

No database is needed: everything runs offline for PostgreSQL. It times, as cold processes,
alternating which goes first, several repetitions:

* ``dbmigrate check --all --dialect postgresql --format json``: every revision's upgrade and
  downgrade (the default of ``check``, the revisions pending on a database, needs a database;
  with an empty one it is the same 300 revisions);
* ``alembic upgrade head --sql``: the upgrades' SQL, rendered offline in one pass;
* the upgrade gate's check of the 300 upgrades (``dbmigrate.checks.check_steps`` for "upgrade", one offline
  pass, what ``dbmigrate upgrade`` runs before applying), as a library call in a cold process.

Target (issue 4): checking 300 revisions takes at most 2x the time of ``alembic upgrade head --sql``
on them, i.e. median wall of ``check --all`` / median wall of ``alembic upgrade head --sql`` <= 2.
CPU time (user+sys of the child) is printed beside wall time; other load on the machine moves it least.

Run from the repository root: ``.venv/bin/python bench/checks/run.py``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
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

# The scripts run as files (python bench/NAME/run.py): make the shared bench module importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import generated_project
from installed import byte_compile_dbmigrate

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
REVISIONS = 300
REPS = 11
COMMAND_TIMEOUT_S = 600.0
TARGET = 2.0
KINDS = ("add column", "index", "raw SQL", "backfill", "drop column (declared)", "index concurrently")

# Per kind: (title, directive, upgrade lines, downgrade lines); {p} is the previous table, and kinds
# 3 and 4 use the column that kind 0 added three and four revisions before ({m}: that revision).
EXTRAS = (
    (
        ", and t{p:04d}.extra_{n:04d}",
        "",
        '    op.add_column("t{p:04d}", sa.Column("extra_{n:04d}", sa.String(100), nullable=True))\n',
        '    op.drop_column("t{p:04d}", "extra_{n:04d}")\n',
    ),
    (
        ", and an index on t{p:04d}.created_at",
        "",
        '    op.create_index("ix_t{p:04d}_created_at", "t{p:04d}", ["created_at"])\n',
        '    op.drop_index("ix_t{p:04d}_created_at", table_name="t{p:04d}")\n',
    ),
    (
        ", and a CHECK constraint on t{p:04d} in raw SQL",
        "",
        "    op.execute(\n"
        '        "-- names must not be empty (this comment and the literal below are not a DROP TABLE)\\n"\n'
        "        \"ALTER TABLE t{p:04d} ADD CONSTRAINT ck_t{p:04d}_name CHECK (name <> 'DROP TABLE t{p:04d}')\"\n"
        "    )\n",
        '    op.execute("ALTER TABLE t{p:04d} DROP CONSTRAINT ck_t{p:04d}_name")\n',
    ),
    (
        ", and a backfill of t{q:04d}.extra_{m:04d}",
        "",
        "    op.execute(\n"
        '        "UPDATE t{q:04d} SET extra_{m:04d} = upper(name) "\n'
        "        \"WHERE extra_{m:04d} IS NULL AND created_at < '2026-01-01'\"\n"
        "    )\n",
        "",
    ),
    (
        ", and drop t{q:04d}.extra_{m:04d}",
        '\n# dbmigrate: allow-data-loss reason="extra_{m:04d} was never read by any released version"\n',
        '    op.drop_column("t{q:04d}", "extra_{m:04d}")\n',
        '    op.add_column("t{q:04d}", sa.Column("extra_{m:04d}", sa.String(100), nullable=True))\n',
    ),
    (
        ", and an index built concurrently on t{p:04d}.created_at",
        "",
        "    with op.get_context().autocommit_block():\n"
        "        op.create_index(\n"
        '            "ix_t{p:04d}_created_at_c", "t{p:04d}", ["created_at"],\n'
        "            postgresql_concurrently=True, if_not_exists=True,\n"
        "        )\n",
        "    with op.get_context().autocommit_block():\n"
        '        op.drop_index("ix_t{p:04d}_created_at_c", table_name="t{p:04d}", '
        "postgresql_concurrently=True, if_exists=True)\n",
    ),
)

GATE = """\
import sys
from alembic.config import Config
from alembic.script import ScriptDirectory
from dbmigrate.checks import check_steps

config = Config(sys.argv[1])
script = ScriptDirectory.from_config(config)
ids = [r.revision for r in reversed(list(script.walk_revisions("base", "heads")))]
report = check_steps(config, script, ids, "upgrade", "postgresql")
print(len(ids), len(report.findings), len(report.not_analysed))
"""


def kind_of(n: int) -> int | None:
    """Which extra operation revision ``n`` does (an index into EXTRAS), None for the first five."""
    return n % len(EXTRAS) if n >= len(EXTRAS) else None


def revision_source(n: int) -> str:
    kind = kind_of(n)
    title = directive = upgrade_extra = downgrade_extra = ""
    if kind is not None:
        m = n - kind  # kinds 3 and 4: the revision (of kind 0) that added the column
        names = {"n": n, "p": n - 1, "m": m, "q": m - 1}
        title, directive, upgrade_extra, downgrade_extra = (part.format(**names) for part in EXTRAS[kind])
    return generated_project.table_revision(n, title, directive, upgrade_extra, downgrade_extra)


def generate_project(root: Path, count: int) -> Path:
    """An Alembic project with ``count`` chained revisions; returns its alembic.ini."""
    return generated_project.generate_project(root, count, lambda n: (f"r{n:04d}.py", revision_source(n)))


@dataclasses.dataclass
class Way:
    """One way of processing the revisions: its command line, the exit codes that mean it ran, timings."""

    name: str
    argv: list[str]
    ok: tuple[int, ...] = (0,)
    wall: list[float] = dataclasses.field(default_factory=list)
    cpu: list[float] = dataclasses.field(default_factory=list)
    stdout: str = ""


def environment() -> dict[str, str]:
    # env.py prefers DATABASE_URL over the ini; nothing here may point at a real database.
    drop = ("DATABASE_URL", "DBMIGRATE_", "ALEMBIC_CONFIG")
    return {k: v for k, v in os.environ.items() if not k.startswith(drop)}


def timed(way: Way) -> None:
    """Run one cold process and record its wall and CPU time; raises with its stderr when it fails."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(
        way.argv, env=environment(), capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=False
    )
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode not in way.ok:
        raise RuntimeError(f"{way.name} exited with {done.returncode}: {done.stderr.strip()[-2000:]}")
    way.wall.append(elapsed)
    way.cpu.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    way.stdout = done.stdout


def verify(ways: dict[str, Way], count: int) -> str:
    """Each way really processed ``count`` revisions; returns a one-line summary of the check's report."""
    report = json.loads(ways["check"].stdout)
    if report["revisions_checked"] != count:
        raise RuntimeError(f"check --all checked {report['revisions_checked']} revisions, not {count}")
    rendered = ways["alembic"].stdout
    if f"t{count:04d}" not in rendered or "CREATE INDEX ix_t0001_name" not in rendered:
        raise RuntimeError("alembic upgrade head --sql did not render every revision")
    gate = ways["gate"].stdout.split()
    if gate[0] != str(count):
        raise RuntimeError(f"the gate's check saw {gate[0]} revisions, not {count}")
    by_rule: dict[str, int] = {}
    for finding in report["findings"]:
        key = f"{finding['rule']}{'' if not finding['allowed'] else ' allowed'} {finding['direction'][0]}"
        by_rule[key] = by_rule.get(key, 0) + 1
    counts = ", ".join(f"{k} {v}" for k, v in sorted(by_rule.items()))
    return (
        f"check --all: {len(report['findings'])} findings ({counts}),"
        f" {len(report['not_analysed'])} steps not analysed; gate: {gate[1]} findings, {gate[2]} not analysed"
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--revisions", type=int, default=REVISIONS)
    parser.add_argument("--reps", type=int, default=REPS, help="cold processes per way")
    parser.add_argument("--keep-project", type=Path, help="copy the generated Alembic project here")
    return parser.parse_args(argv)


def commit() -> str:
    """The commit of the working tree, and whether dbmigrate/ differs from it (read only)."""

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=False).stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return head + (" + uncommitted changes in dbmigrate/" if git("status", "--porcelain", "--", "dbmigrate") else "")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    byte_compile_dbmigrate()
    print(
        f"checks: {args.revisions} revisions ({', '.join(KINDS)}), {args.reps} cold processes per way, "
        f"{os.cpu_count()} CPU(s), load average {os.getloadavg()[0]:.2f}, dbmigrate/ at {commit()}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="bench_checks_") as tmp:
        ini = generate_project(Path(tmp), args.revisions)
        if args.keep_project:
            shutil.copytree(tmp, args.keep_project, dirs_exist_ok=True)
        check = [str(VENV_BIN / "dbmigrate"), "check", "-c", str(ini), "--all", "--dialect", "postgresql"]
        ways = {
            "alembic": Way(
                "alembic upgrade head --sql", [str(VENV_BIN / "alembic"), "-c", str(ini), "upgrade", "head", "--sql"]
            ),
            "check": Way("dbmigrate check --all", [*check, "--format", "json", "--log-format", "json"], ok=(0, 4)),
            "gate": Way("gate check_steps", [sys.executable, "-c", GATE, str(ini)]),
        }
        names = list(ways)
        for rep in range(args.reps):
            # Rotate which way goes first, so none always meets a warmer cache or a busier machine.
            for name in names[rep % len(names) :] + names[: rep % len(names)]:
                timed(ways[name])
                print(
                    f"  rep {rep + 1:>2}  {ways[name].name:<27} wall {ways[name].wall[-1]:7.3f} s"
                    f"  cpu {ways[name].cpu[-1]:7.3f} s",
                    flush=True,
                )
            if rep == 0:
                print(f"  {verify(ways, args.revisions)}", flush=True)
    base_wall, base_cpu = statistics.median(ways["alembic"].wall), statistics.median(ways["alembic"].cpu)
    print(f"{'way':<28} {'wall median':>11} {'cpu median':>10} {'wall ratio':>10} {'cpu ratio':>9}")
    for way in ways.values():
        wall, cpu = statistics.median(way.wall), statistics.median(way.cpu)
        print(f"{way.name:<28} {wall:9.3f} s {cpu:8.3f} s {wall / base_wall:10.2f} {cpu / base_cpu:9.2f}")
    ratio = statistics.median(ways["check"].wall) / base_wall
    print(
        f"target: dbmigrate check --all / alembic upgrade head --sql = {ratio:.2f} (wall medians), "
        f"target <= {TARGET:g}: {'met' if ratio <= TARGET else 'MISSED'}"
    )
    print(f"load average at the end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
