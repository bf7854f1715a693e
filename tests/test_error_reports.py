"""How a failed run reports itself to machines: one JSON object on stdout, and the pod's termination message.

With ``--format json`` stdout holds exactly one JSON object naming the error, its message and the
exit code (logs stay on stderr); the termination-log file, when it exists, gets the same message.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import add_revision, free_port, remove_revisions, run_dbmigrate


def json_error(result: subprocess.CompletedProcess[str]) -> dict[str, object]:
    """stdout parsed as one JSON error object, checked against the exit code."""
    data = json.loads(result.stdout)  # fails unless stdout is exactly one JSON document
    assert isinstance(data, dict), result.stdout
    assert data["exit_code"] == result.returncode != 0
    assert isinstance(data["message"], str) and data["message"]
    last = json.loads(result.stderr.splitlines()[-1])  # the last log line says the same, as JSON
    assert (last["event"], last["level"], last["message"]) == ("command failed", "error", data["message"])
    assert (last["error"], last["exit_code"]) == (data["error"], data["exit_code"])
    return data


ERRORS = {
    "unknown-driver": ((), {"DATABASE_URL": "nosuchdb://127.0.0.1/db"}, 2, "ConfigurationError"),
    "bad-number": ((), {"DBMIGRATE_LOCK_TIMEOUT": "short"}, 2, "ConfigurationError"),
    "unreachable": (
        ("--wait-timeout", "0"),
        {"DATABASE_URL": "postgresql://u@127.0.0.1:{port}/db"},
        3,
        "DatabaseUnavailable",
    ),
}


@pytest.mark.parametrize(("args", "env", "exit_code", "error"), ERRORS.values(), ids=ERRORS.keys())
def test_json_format_prints_one_error_object_on_stdout(
    project: Path,
    tmp_path: Path,
    args: tuple[str, ...],
    env: dict[str, str],
    exit_code: int,
    error: str,
) -> None:
    env = {"DATABASE_URL": f"sqlite:///{tmp_path / 'app.db'}", **env}
    url = env.pop("DATABASE_URL").format(port=free_port())

    result = run_dbmigrate("upgrade", *args, "--format", "json", cwd=project, database_url=url, **env)

    assert result.returncode == exit_code, result.stderr
    data = json_error(result)
    assert data["error"] == error


@pytest.mark.parametrize("command", [("downgrade", "base"), ("status",), ("history",)], ids=lambda c: c[0])
def test_every_command_reports_errors_as_json(project: Path, command: tuple[str, ...]) -> None:
    result = run_dbmigrate(*command, "--format", "json", cwd=project, database_url="nonsense")

    assert result.returncode == 2, result.stderr
    assert "malformed" in str(json_error(result)["message"])


def test_failed_step_is_reported_as_json_and_in_the_termination_message(
    project: Path, tmp_path: Path, database_url: str
) -> None:
    remove_revisions(project)
    add_revision(project, "0001_fails", None, "op.execute('SELECT no_such_column FROM no_such_table')")
    termination_log = tmp_path / "termination-log"
    termination_log.write_text("")

    result = run_dbmigrate(
        "upgrade",
        "--format",
        "json",
        cwd=project,
        database_url=database_url,
        DBMIGRATE_TERMINATION_LOG=str(termination_log),
    )

    assert result.returncode == 1, result.stderr
    data = json_error(result)
    assert data["error"] == "MigrationFailed"
    assert "0001_fails" in str(data["message"])
    assert termination_log.read_text().strip() == f"dbmigrate upgrade failed: {data['message']}"


def test_configuration_error_found_inside_the_run_is_in_the_termination_message(project: Path, tmp_path: Path) -> None:
    termination_log = tmp_path / "termination-log"
    termination_log.write_text("")

    result = run_dbmigrate(
        "upgrade", cwd=project, database_url="nonsense", DBMIGRATE_TERMINATION_LOG=str(termination_log)
    )

    assert result.returncode == 2, result.stderr
    assert "is malformed" in termination_log.read_text()


def test_invalid_option_value_is_in_the_termination_message(project: Path, tmp_path: Path) -> None:
    termination_log = tmp_path / "termination-log"
    termination_log.write_text("")

    result = run_dbmigrate(
        "upgrade",
        cwd=project,
        database_url=f"sqlite:///{tmp_path / 'app.db'}",
        DBMIGRATE_TERMINATION_LOG=str(termination_log),
        DBMIGRATE_WAIT_TIMEOUT="a minute",
    )

    assert result.returncode == 2, result.stderr
    assert "wait_timeout must be a number" in termination_log.read_text()


def test_usage_error_with_json_format_prints_an_error_object(project: Path, tmp_path: Path) -> None:
    result = run_dbmigrate(
        "upgrade", "--format", "json", "--wait-timeout", "soon", cwd=project, database_url=f"sqlite:///{tmp_path}/a.db"
    )

    assert result.returncode == 2, result.stderr
    assert "--wait-timeout" in str(json.loads(result.stdout)["message"])
