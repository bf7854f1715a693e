"""`check --fleet`, `wait --fleet` and `status --fleet` read each target and change none.

On three fresh SQLite targets: `wait` times out on each (exit 3, NotReady), `check` reports each
target as the single-database `check` does, and `status --check` exits 4; nothing is written to the
targets by any of them. After `upgrade --fleet`, `wait` finds every target ready, `check` finds
nothing pending and `status --check` passes.
"""

from __future__ import annotations

from pathlib import Path

from tests.conftest import current_revisions, run_dbmigrate, table_names
from tests.fleet_support import run_fleet, sqlite_fleet_file, summary


def test_read_only_commands_read_each_target(project: Path, tmp_path: Path) -> None:
    names = ["r0", "r1", "r2"]
    fleet_file = sqlite_fleet_file(tmp_path, names)
    urls = {name: f"sqlite:///{tmp_path}/{name}.db" for name in names}
    single = run_dbmigrate("check", "--format", "json", cwd=project, database_url=urls["r0"])

    waited = run_fleet("wait", "--fleet", str(fleet_file), "--timeout", "1", "--parallel", "3", cwd=project)
    checked = run_fleet("check", "--fleet", str(fleet_file), cwd=project)
    state = run_fleet("status", "--fleet", str(fleet_file), "--check", cwd=project)

    assert waited.returncode == 3, waited.stderr[-3000:]
    assert {t["error"] for t in summary(waited)["targets"]} == {"NotReady"}
    assert checked.returncode == single.returncode
    assert {t["exit_code"] for t in summary(checked)["targets"]} == {single.returncode}
    assert state.returncode == 4
    assert {t["outcome"] for t in summary(state)["targets"]} == {"6 pending"}
    for url in urls.values():
        assert current_revisions(url) == set()
        assert not {t for t in table_names(url) if t.startswith("dbmigrate_")}, "a read-only command wrote"

    assert run_fleet("upgrade", "--fleet", str(fleet_file), cwd=project).returncode == 0

    waited = run_fleet("wait", "--fleet", str(fleet_file), "--timeout", "5", cwd=project)
    checked = run_fleet("check", "--fleet", str(fleet_file), cwd=project)
    state = run_fleet("status", "--fleet", str(fleet_file), "--check", cwd=project)

    assert waited.returncode == 0 and {t["outcome"] for t in summary(waited)["targets"]} == {"ready"}
    assert checked.returncode == 0 and {t["outcome"] for t in summary(checked)["targets"]} == {"passed (0 finding(s))"}
    assert state.returncode == 0 and {t["outcome"] for t in summary(state)["targets"]} == {"at head"}
