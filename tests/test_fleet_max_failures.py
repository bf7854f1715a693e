"""`--max-failures N`: once N targets have failed, no new target starts; without it, failures stop nothing.

Five SQLite targets, the first two broken (they already hold the table the new revision creates).
One at a time, with `--max-failures 2`, the run stops after the second; without the option every
healthy target is migrated.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from tests.conftest import EXAMPLE_HEAD, add_revision
from tests.fleet_support import run_fleet, sqlite_fleet_file, summary

HEAD = "0007_audit_log"


def test_no_target_starts_after_the_failure_budget_is_spent(project: Path, tmp_path: Path) -> None:
    add_revision(project, HEAD, EXAMPLE_HEAD, 'op.create_table("audit_log", sa.Column("id", sa.Integer))')
    names = [f"t{i}" for i in range(5)]
    for broken in ("t0", "t1"):
        with sqlite3.connect(tmp_path / f"{broken}.db") as connection:
            connection.execute("CREATE TABLE audit_log (id integer)")
    fleet_file = sqlite_fleet_file(tmp_path, names)

    limited = run_fleet("upgrade", "--fleet", str(fleet_file), "--parallel", "1", "--max-failures", "2", cwd=project)

    data = summary(limited)
    assert limited.returncode == 1, limited.stderr[-3000:]
    assert [data["by_name"][name]["outcome"] for name in names] == ["failed", "failed"] + ["not started"] * 3
    assert "--max-failures 2" in data["stopped"]

    unlimited = run_fleet("upgrade", "--fleet", str(fleet_file), "--parallel", "2", cwd=project)

    data = summary(unlimited)
    assert unlimited.returncode == 1
    assert [data["by_name"][name]["outcome"] for name in names] == ["failed", "failed"] + ["upgraded"] * 3
    assert data["stopped"] is None
