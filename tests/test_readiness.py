"""Application pods wait for the schema: `dbmigrate wait`, wait_until_ready and is_ready."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

import dbmigrate
from tests.conftest import EXAMPLE_HEAD, add_revision, dbmigrate_env, remove_revisions, run_dbmigrate

WAIT_LIMIT = 60.0


def start_wait(project: Path, database_url: str, *args: str) -> tuple[subprocess.Popen[str], Path]:
    log = project / f"wait-{time.monotonic_ns()}.log"
    with log.open("w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "dbmigrate", "wait", "--format", "json", *args],
            cwd=project,
            env=dbmigrate_env(database_url),
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
    return process, log


def wait_for_log(log: Path, text: str, process: subprocess.Popen[str]) -> bool:
    deadline = time.monotonic() + WAIT_LIMIT
    while time.monotonic() < deadline and process.poll() is None:
        if text in log.read_text():
            return True
        time.sleep(0.05)
    return False


def older_release(project: Path, tmp_path: Path) -> Path:
    """The same project without its newest revision: the image of the previous release."""
    older = tmp_path / "older"
    shutil.copytree(project, older)
    (older / "alembic" / "versions" / f"{EXAMPLE_HEAD}.py").unlink()
    return older


def test_wait_returns_once_the_upgrade_has_run(project: Path, database_url: str, backend: str) -> None:
    process, log = start_wait(project, database_url, "--timeout", str(WAIT_LIMIT))
    assert wait_for_log(log, "waiting for the schema", process), log.read_text()

    upgrade = run_dbmigrate("upgrade", cwd=project, database_url=database_url)
    stdout, _ = process.communicate(timeout=WAIT_LIMIT)

    assert upgrade.returncode == 0, upgrade.stderr
    assert process.returncode == 0, log.read_text()
    state = json.loads(stdout)
    assert state["ready"] is True and state["current"] == [EXAMPLE_HEAD]
    if backend == "postgresql":
        assert "notified: a migration run finished" in log.read_text()


def test_wait_reports_progress_and_exits_3_on_timeout(project: Path, database_url: str) -> None:
    run_dbmigrate("upgrade", "0002_orders", cwd=project, database_url=database_url)

    proc = run_dbmigrate("wait", "--timeout", "1", cwd=project, database_url=database_url)

    assert proc.returncode == 3
    assert "database at 0002_orders, expecting 0006_name_contract, 4 revision(s) pending" in proc.stderr


def test_wait_for_a_named_revision(project: Path, database_url: str) -> None:
    run_dbmigrate("upgrade", "0003_orders_customer_idx", cwd=project, database_url=database_url)

    reached = run_dbmigrate(
        "wait", "--revision", "0002_orders", "--timeout", "5", cwd=project, database_url=database_url
    )
    exact = run_dbmigrate(
        "wait", "--revision", "0002_orders", "--exact", "--timeout", "1", cwd=project, database_url=database_url
    )

    assert reached.returncode == 0, reached.stderr
    assert exact.returncode == 3


def test_an_older_release_is_ready_on_a_newer_schema_unless_exact(
    project: Path, database_url: str, tmp_path: Path
) -> None:
    run_dbmigrate("upgrade", cwd=project, database_url=database_url)
    older = older_release(project, tmp_path)

    ahead = run_dbmigrate("wait", "--timeout", "5", "--format", "json", cwd=older, database_url=database_url)
    exact = run_dbmigrate("wait", "--exact", "--timeout", "1", cwd=older, database_url=database_url)

    assert ahead.returncode == 0, ahead.stderr
    assert json.loads(ahead.stdout)["ahead"] is True
    assert exact.returncode == 3


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_is_ready_answers_for_probes(project: Path, database_url: str) -> None:
    options = {"config_file": project / "alembic.ini", "database_url": database_url, "environ": {}}
    settings = dbmigrate.Settings.load(**options)  # type: ignore[arg-type]

    before = dbmigrate.is_ready(settings=settings, cache_seconds=0)
    dbmigrate.upgrade(settings=settings)
    cached = dbmigrate.is_ready(settings=settings, cache_seconds=60)
    after = dbmigrate.is_ready(settings=settings, cache_seconds=0)

    assert before is False
    assert cached is False  # within the cache window the answer is the remembered one
    assert after is True


def test_is_ready_is_false_when_the_database_is_unreachable(project: Path) -> None:
    settings = dbmigrate.Settings.load(
        config_file=project / "alembic.ini", environ={}, database_url="postgresql://nobody@127.0.0.1:9/none"
    )

    assert dbmigrate.is_ready(settings=settings, cache_seconds=0) is False


def two_branches(project: Path) -> None:
    """Scripts with two heads: ``trunk``, then ``left_1`` -> ``left_2`` on one branch and ``right_1`` on the other."""
    remove_revisions(project)
    for revision, down_revision in (("trunk", None), ("left_1", "trunk"), ("left_2", "left_1"), ("right_1", "trunk")):
        table = f"{revision}_items"
        add_revision(
            project,
            revision,
            down_revision,
            f'op.create_table("{table}", sa.Column("id", sa.Integer, primary_key=True))',
            f'op.drop_table("{table}")',
        )


def test_with_two_heads_the_schema_is_ready_only_once_both_are_applied(project: Path, database_url: str) -> None:
    two_branches(project)
    settings = dbmigrate.Settings.load(config_file=project / "alembic.ini", database_url=database_url, environ={})
    one_branch = run_dbmigrate("upgrade", "left_2", cwd=project, database_url=database_url)
    assert one_branch.returncode == 0, one_branch.stderr

    waited = run_dbmigrate("wait", "--timeout", "2", "--format", "json", cwd=project, database_url=database_url)
    probed = dbmigrate.is_ready(settings=settings, cache_seconds=0)

    assert waited.returncode == 3, waited.stdout + waited.stderr
    message = json.loads(waited.stdout)["message"]
    assert "database at left_2, expecting left_2, right_1, 1 revision(s) pending" in message, message
    assert probed is False

    both = run_dbmigrate("upgrade", "heads", cwd=project, database_url=database_url)
    assert both.returncode == 0, both.stderr
    ready = run_dbmigrate("wait", "--timeout", "2", "--format", "json", cwd=project, database_url=database_url)

    assert ready.returncode == 0, ready.stdout + ready.stderr
    assert json.loads(ready.stdout)["current"] == ["left_2", "right_1"]
    assert dbmigrate.is_ready(settings=settings, cache_seconds=0) is True
