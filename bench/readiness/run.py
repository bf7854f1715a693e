"""How fast does a waiting application pod learn that the migration committed?

Twenty trials on PostgreSQL: a waiter blocks in `dbmigrate.wait_until_ready()` (LISTEN/NOTIFY with
polling as fallback) while `dbmigrate upgrade` applies the last revision; the latency is the time from
the commit (the step's `finished_at` in dbmigrate_history, written right after it) to the waiter
returning. In the same run, the same is measured for a polling init container that checks
alembic_version every 2 s (the k8s-wait-for pattern). Run from the repository root:

    .venv/bin/python bench/readiness/run.py
"""

from __future__ import annotations

import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import timezone
from pathlib import Path

import sqlalchemy as sa

REPO = Path(__file__).resolve().parents[2]
ADMIN_URL = os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
TRIALS = 20
LAST = "0006_name_contract"
BEFORE_LAST = "0005_full_name_expand"

DBMIGRATE_WAITER = """
import json, sys, time
import dbmigrate
dbmigrate.observability.configure_logging("json")
dbmigrate.wait_until_ready(timeout=120, config_file=sys.argv[1])
print(json.dumps({"returned": time.time()}), flush=True)
"""

POLLING_WAITER = """
import json, sys, time
import sqlalchemy as sa
engine = sa.create_engine(sys.argv[2])
print("waiting for the schema", file=sys.stderr, flush=True)
while True:
    with engine.connect() as connection:
        if connection.exec_driver_sql("SELECT version_num FROM alembic_version").scalar() == sys.argv[3]:
            break
    time.sleep(2.0)
print(json.dumps({"returned": time.time()}), flush=True)
"""


def dbmigrate_cli(*args: str, cwd: Path, url: str) -> None:
    env = {**os.environ, "DATABASE_URL": url, "DBMIGRATE_LOG_FORMAT": "json", "DBMIGRATE_TERMINATION_LOG": os.devnull}
    subprocess.run([sys.executable, "-m", "dbmigrate", *args], cwd=cwd, env=env, check=True, capture_output=True)


def commit_time(url: str) -> float:
    engine = sa.create_engine(url)
    with engine.connect() as connection:
        finished = connection.exec_driver_sql(
            "SELECT finished_at FROM dbmigrate_history WHERE revision = %(r)s AND direction = 'upgrade' "
            "ORDER BY id DESC LIMIT 1",
            {"r": LAST},
        ).scalar_one()
    engine.dispose()
    return float(finished.replace(tzinfo=timezone.utc).timestamp())


def trial(waiter_code: str, project: Path, url: str, rng: random.Random) -> float:
    """One upgrade of the last revision with a waiter blocked on it; returns commit-to-return seconds."""
    dbmigrate_cli("downgrade", BEFORE_LAST, cwd=project, url=url)
    env = {**os.environ, "DATABASE_URL": url}
    log = project / "waiter.log"
    with log.open("w") as stderr:
        waiter = subprocess.Popen(
            [sys.executable, "-c", waiter_code, str(project / "alembic.ini"), url, LAST],
            cwd=project,
            env=env,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
    deadline = time.monotonic() + 60
    while "waiting for the schema" not in log.read_text():
        if time.monotonic() > deadline:
            waiter.kill()
            raise RuntimeError("the waiter never started waiting: " + log.read_text())
        time.sleep(0.05)
    time.sleep(rng.uniform(0.5, 3.0))  # the migration starts at an arbitrary moment of the waiter's cycle
    dbmigrate_cli("upgrade", cwd=project, url=url)
    stdout, _ = waiter.communicate(timeout=60)
    return float(json.loads(stdout.strip().splitlines()[-1])["returned"]) - commit_time(url)


def summary(name: str, latencies: list[float]) -> dict[str, float | str]:
    return {
        "waiter": name,
        "median_ms": round(statistics.median(latencies) * 1000, 1),
        "mean_ms": round(statistics.mean(latencies) * 1000, 1),
        "max_ms": round(max(latencies) * 1000, 1),
    }


def main() -> None:
    rng = random.Random(20261125)
    name = f"bench_ready_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.exec_driver_sql(f"CREATE DATABASE {name}")
    url = sa.engine.make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    workdir = Path(tempfile.mkdtemp(prefix="bench-readiness-"))
    try:
        project = workdir / "project"
        project.mkdir()
        shutil.copy(REPO / "alembic.ini", project / "alembic.ini")
        shutil.copytree(REPO / "alembic", project / "alembic", ignore=shutil.ignore_patterns("__pycache__"))
        dbmigrate_cli("upgrade", cwd=project, url=url)
        results = []
        for label, code in (
            ("dbmigrate wait (LISTEN/NOTIFY)", DBMIGRATE_WAITER),
            ("polling every 2 s", POLLING_WAITER),
        ):
            latencies = [trial(code, project, url, rng) for _ in range(TRIALS)]
            results.append(summary(label, latencies))
        for row in results:
            print(
                f"{row['waiter']:<32} median {row['median_ms']:>8} ms   mean {row['mean_ms']:>8} ms   "
                f"max {row['max_ms']:>8} ms   ({TRIALS} trials)"
            )
        ratio = float(results[1]["median_ms"]) / max(float(results[0]["median_ms"]), 0.1)
        print(f"polling median / dbmigrate median: {ratio:.1f}x; target: dbmigrate median <= 100 ms")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        with admin.connect() as connection:
            connection.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.dispose()


if __name__ == "__main__":
    main()
