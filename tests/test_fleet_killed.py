"""A fleet run killed with SIGKILL part way: every target is at a revision its status names, and a rerun finishes.

Two PostgreSQL databases and eight SQLite files. The last revision waits, inside its transaction, for
a gate file named after its database; the gates of the first PostgreSQL database and the first SQLite
file are open, so those reach head, and the run is killed once the next two targets are held mid-step:
either its whole process group (a pod killed outright: the workers die with it), or the fleet process
alone, whose workers must then stop at once (the kernel sends them SIGTERM), not wait on. Afterwards
`status --fleet` must name, for every target, exactly the revision its alembic_version holds, with
nothing to repair, and the next `upgrade --fleet` must take every target to head.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import EXAMPLE_HEAD, EXAMPLE_REVISIONS, add_revision
from tests.fleet_support import Fleet, applying, fleet_env, run_fleet, summary

pytestmark = pytest.mark.slow

HEAD = "0007_slow_audit"
SLOW_STEP = """
op.create_table("audit", sa.Column("id", sa.Integer, primary_key=True))
pause(os.path.basename(str(op.get_bind().engine.url.database)))
op.create_table("audit_archive", sa.Column("id", sa.Integer, primary_key=True))
"""


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    built = Fleet(tmp_path)
    yield built
    built.drop()


def children(pid: int) -> set[int]:
    """The processes whose parent is ``pid`` (from /proc)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.add(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("killed", ["process-group", "fleet-process-only"])
def test_killed_fleet_run_leaves_named_revisions_and_a_rerun_finishes(
    fleet: Fleet, project: Path, tmp_path: Path, killed: str
) -> None:
    add_revision(project, HEAD, EXAMPLE_HEAD, SLOW_STEP, 'op.drop_table("audit_archive")\nop.drop_table("audit")')
    postgres = fleet.add_postgres_databases(2)
    sqlite = fleet.add_sqlite(8)
    fleet_file = fleet.write()
    gates = tmp_path / "gates"
    gates.mkdir()
    for opened in (postgres[0], f"{sqlite[0]}.db"):
        (gates / opened).touch()
    held = {postgres[1], sqlite[1]}
    log = tmp_path / "run.err"
    with open(tmp_path / "run.out", "w") as out, open(log, "w") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "dbmigrate", "upgrade", "--fleet", str(fleet_file), "--parallel", "2"],
            cwd=project,
            env=fleet_env(TEST_GATE_DIR=str(gates)),
            stdout=out,
            stderr=err,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 120
        while not held <= applying(log, HEAD):
            assert process.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "the held targets never reached the slow step"
            time.sleep(0.05)
        workers = children(process.pid)
        assert workers, "the fleet run has no worker processes"
        if killed == "process-group":
            os.killpg(process.pid, signal.SIGKILL)
        else:
            os.kill(process.pid, signal.SIGKILL)
        process.wait(10)
        deadline = time.monotonic() + 20  # a held step would wait 60 s for its gate
        while any(alive(pid) for pid in workers):
            assert time.monotonic() < deadline, "a worker ran on after its fleet run was killed"
            time.sleep(0.05)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
    assert fleet.current(postgres[0]) == fleet.current(sqlite[0]) == {HEAD}
    assert fleet.current(postgres[1]) == fleet.current(sqlite[1]) == {EXAMPLE_HEAD}, "the held steps rolled back"

    state = run_fleet("status", "--fleet", str(fleet_file), cwd=project)

    data = summary(state)
    assert state.returncode == 0, state.stdout
    known = {*EXAMPLE_REVISIONS, HEAD}
    for name in fleet.members:
        target = data["by_name"][name]
        assert target["exit_code"] == 0, target
        assert set(target["after"]) == fleet.current(name), f"{name}: status names another revision than it holds"
        assert set(target["after"]) <= known

    rerun = run_fleet("upgrade", "--fleet", str(fleet_file), "--parallel", "2", cwd=project)

    assert rerun.returncode == 0, rerun.stdout + rerun.stderr[-3000:]
    assert all(fleet.current(name) == {HEAD} for name in fleet.members)
