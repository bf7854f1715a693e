"""Shards: N runs with JOB_COMPLETION_INDEX 0..N-1 (a Kubernetes Indexed Job) cover every target exactly once.

The assignment is a digest of each target's name: checked for fleets of many sizes and shard counts
(every target in one shard, the same one whatever the fleet's size), and with real processes. Three
`upgrade --fleet --shards 3` processes run at once on twelve SQLite targets: their summaries together
name each target once, and each target's history holds exactly one run; then two and four `status`
processes cover the fleet again.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dbmigrate.fleet import shard_of
from tests.conftest import history_rows
from tests.fleet_support import fleet_env, sqlite_fleet_file


@pytest.mark.parametrize("size", [1, 7, 40, 200, 1000])
@pytest.mark.parametrize("shards", [1, 2, 3, 5, 8])
def test_each_target_has_one_shard_whatever_the_fleet_size(size: int, shards: int) -> None:
    names = [f"tenant-{i}" for i in range(size)]
    assignment = {name: shard_of(name, shards) for name in names}
    assert all(0 <= shard < shards for shard in assignment.values())
    bigger = {name: shard_of(name, shards) for name in [*names, *(f"new-{i}" for i in range(50))]}
    assert {name: bigger[name] for name in names} == assignment, "adding targets moved others to another shard"
    if size >= 40 * shards:
        assert set(assignment.values()) == set(range(shards)), "a shard is empty in a large fleet"


def run_shards(command: str, fleet_file: Path, shards: int, cwd: Path) -> list[dict[str, object]]:
    """Run ``shards`` processes at once, JOB_COMPLETION_INDEX 0..shards-1; their summaries' targets, all together."""
    arguments = [command, "--fleet", str(fleet_file), "--shards", str(shards), "--parallel", "1", "--format", "json"]
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "dbmigrate", *arguments],
            cwd=cwd,
            env=fleet_env(JOB_COMPLETION_INDEX=str(index)),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for index in range(shards)
    ]
    targets = []
    for process in processes:
        stdout, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr[-3000:]
        targets += json.loads(stdout)["targets"]
    return targets


def test_indexed_processes_cover_the_fleet_exactly_once(project: Path, tmp_path: Path) -> None:
    names = [f"s{i:02d}" for i in range(12)]
    fleet_file = sqlite_fleet_file(tmp_path, names)

    upgraded = run_shards("upgrade", fleet_file, 3, project)

    assert sorted(str(t["name"]) for t in upgraded) == names
    assert {t["outcome"] for t in upgraded} == {"upgraded"}
    for name in names:
        assert len({row["run_id"] for row in history_rows(f"sqlite:///{tmp_path}/{name}.db")}) == 1, name
    for shards in (2, 4):
        assert sorted(str(t["name"]) for t in run_shards("status", fleet_file, shards, project)) == names
