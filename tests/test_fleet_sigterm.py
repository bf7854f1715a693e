"""SIGTERM to a fleet run (a pod being stopped): the steps in flight roll back, and the summary says what ran.

Four SQLite targets, two at a time; the last revision waits inside its transaction for a gate that
never opens. Once both running targets are held there, the fleet process alone gets SIGTERM (as
Kubernetes sends it to a container's first process). It must pass it on to its workers, whose steps
roll back, print the summary (the two held targets failed with 143, the other two not started) and
exit 143; the held targets stay at the revision before, and a rerun takes every target to head.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import EXAMPLE_HEAD, add_revision, current_revisions
from tests.fleet_support import applying, fleet_env, run_fleet, sqlite_fleet_file

HEAD = "0007_gated"


def test_sigterm_rolls_back_the_steps_in_flight_and_summarises(project: Path, tmp_path: Path) -> None:
    add_revision(project, HEAD, EXAMPLE_HEAD, 'op.create_table("audit", sa.Column("id", sa.Integer))\npause("never")')
    names = ["t0", "t1", "t2", "t3"]
    fleet_file = sqlite_fleet_file(tmp_path, names)
    log = tmp_path / "run.err"
    with open(log, "w") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "dbmigrate", "upgrade", "--fleet", str(fleet_file), "--format", "json"],
            cwd=project,
            env=fleet_env(TEST_GATE_DIR=str(tmp_path)),
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    deadline = time.monotonic() + 90
    while not {"t0", "t1"} <= applying(log, HEAD):
        assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.05)

    process.send_signal(signal.SIGTERM)
    stdout, _ = process.communicate(timeout=40)

    assert process.returncode == 143, log.read_text()[-3000:]
    data = {t["name"]: t for t in json.loads(stdout)["targets"]}
    assert {name: (t["outcome"], t["exit_code"]) for name, t in data.items()} == {
        "t0": ("failed", 143),
        "t1": ("failed", 143),
        "t2": ("not started", 0),
        "t3": ("not started", 0),
    }
    assert "SIGTERM" in json.loads(stdout)["stopped"]
    for name in ("t0", "t1"):
        assert current_revisions(f"sqlite:///{tmp_path}/{name}.db") == {EXAMPLE_HEAD}

    (tmp_path / "never").touch()
    rerun = run_fleet("upgrade", "--fleet", str(fleet_file), cwd=project)

    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert all(current_revisions(f"sqlite:///{tmp_path}/{name}.db") == {HEAD} for name in names)
