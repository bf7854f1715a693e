"""Alembic's habit works: the shared options go before the command as well as after it, after winning."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import EXAMPLE_HEAD, current_revisions, dbmigrate_env

# Every command, with arguments that make it do its work on a database at head, and the exit it
# gives there: the same in both positions.
COMMANDS = {
    "upgrade": ([], 0),
    "downgrade": (["-1"], 0),
    "rollback": ([], 0),
    "status": (["--check"], 0),
    "check": (["--all"], 0),
    "verify": (["--range", "base:0002_orders"], 0),
    "wait": (["--timeout", "10"], 0),
    "history": ([], 0),
    "repair": (["--reverted"], 2),  # nothing to repair: a usage error, said in JSON
    "backups list": ([], 0),
    "backups restore": (["999"], 2),
    "backups drop": (["999"], 2),
}


def run(*args: str, cwd: Path, decoy_url: str) -> subprocess.CompletedProcess[str]:
    """dbmigrate in ``cwd``, where no alembic.ini is, with DATABASE_URL naming a database that must stay untouched."""
    environment = dbmigrate_env(decoy_url)
    environment.pop("DBMIGRATE_LOG_FORMAT")
    return subprocess.run(
        [sys.executable, "-m", "dbmigrate", *args],
        cwd=cwd,
        env=environment,
        capture_output=True,
        text=True,
        check=False,
    )


def at_head(project: Path, database: Path) -> str:
    url = f"sqlite:///{database}"
    upgraded = run("upgrade", "-c", str(project / "alembic.ini"), "--database-url", url, cwd=project, decoy_url=url)
    assert upgraded.returncode == 0, upgraded.stderr
    return url


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("position", ["before", "after"])
def test_shared_options_work_before_and_after_every_command(
    command: str, position: str, project: Path, tmp_path: Path
) -> None:
    arguments, exit_code = COMMANDS[command]
    database = tmp_path / "app.db"
    url = f"sqlite:///{database}" if command == "upgrade" else at_head(project, database)
    decoy = tmp_path / "decoy.db"
    shared = ["-c", "project/alembic.ini", "--database-url", url, "--format", "json", "--log-format", "json"]
    words = command.split()
    args = [*shared, *words, *arguments] if position == "before" else [*words, *arguments, *shared]

    proc = run(*args, cwd=tmp_path, decoy_url=f"sqlite:///{decoy}")

    assert proc.returncode == exit_code, proc.stderr
    output = json.loads(proc.stdout)  # --format json took effect
    if exit_code:
        assert output["exit_code"] == exit_code
    for line in proc.stderr.splitlines():
        json.loads(line)  # --log-format json took effect
    assert not decoy.exists(), "the run used DATABASE_URL instead of --database-url"
    expected_revision = "0005_full_name_expand" if command == "downgrade" else EXAMPLE_HEAD
    assert current_revisions(url) == {expected_revision}


def test_the_option_after_the_command_wins(project: Path, tmp_path: Path) -> None:
    chosen = at_head(project, tmp_path / "chosen.db")
    other = tmp_path / "other.db"

    proc = run(
        "--database-url", f"sqlite:///{other}", "--format", "text",
        "status", "-c", "project/alembic.ini", "--database-url", chosen, "--format", "json",
        cwd=tmp_path, decoy_url=f"sqlite:///{tmp_path / 'decoy.db'}",
    )  # fmt: skip

    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["current"] == [EXAMPLE_HEAD]
    assert not other.exists()


def test_debug_before_the_command_shows_the_traceback(tmp_path: Path) -> None:
    proc = run("--debug", "status", "--database-url", "sqlite:///x.db", cwd=tmp_path, decoy_url="sqlite:///y.db")

    assert proc.returncode == 2, proc.stderr
    assert "Traceback (most recent call last)" in proc.stderr


def test_a_format_the_command_does_not_offer_is_a_usage_error(project: Path, tmp_path: Path) -> None:
    proc = run("--format", "sarif", "status", cwd=project, decoy_url=f"sqlite:///{tmp_path / 'decoy.db'}")

    assert proc.returncode == 2
    assert "--format sarif is not available for this command" in proc.stderr


def test_help_lists_the_options_that_may_come_first(tmp_path: Path) -> None:
    proc = run("--help", cwd=tmp_path, decoy_url="sqlite:///y.db")

    assert proc.returncode == 0
    for option in ("-c, --config", "--database-url", "--format", "--log-format", "--debug", "--lock-timeout"):
        assert option in proc.stdout
