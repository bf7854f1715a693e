"""`--canary K`: when a canary fails, no target outside the first K is touched, not even opened.

Six SQLite targets; the second already holds the table the new revision creates, so the revision
fails there. With `--canary 3` the other two canaries run, and the three targets after them are
reported as not started and their database files are never created.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from tests.conftest import EXAMPLE_HEAD, add_revision
from tests.fleet_support import run_fleet, sqlite_fleet_file, summary

HEAD = "0007_audit_log"


def test_a_failed_canary_stops_the_rollout_before_any_other_target(project: Path, tmp_path: Path) -> None:
    add_revision(project, HEAD, EXAMPLE_HEAD, 'op.create_table("audit_log", sa.Column("id", sa.Integer))')
    names = [f"t{i}" for i in range(6)]
    with sqlite3.connect(tmp_path / "t1.db") as connection:
        connection.execute("CREATE TABLE audit_log (id integer)")
    fleet_file = sqlite_fleet_file(tmp_path, names)

    result = run_fleet("upgrade", "--fleet", str(fleet_file), "--canary", "3", "--parallel", "2", cwd=project)

    data = summary(result)
    assert result.returncode == 1, result.stderr[-3000:]
    outcomes = {name: data["by_name"][name]["outcome"] for name in names}
    assert outcomes == {
        "t0": "upgraded",
        "t1": "failed",
        "t2": "upgraded",
        "t3": "not started",
        "t4": "not started",
        "t5": "not started",
    }
    assert "canary" in data["stopped"]
    for name in ("t3", "t4", "t5"):
        assert not (tmp_path / f"{name}.db").exists(), f"{name} is outside the canary but was opened"
