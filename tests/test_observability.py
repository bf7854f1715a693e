"""Everything is observable: JSON log lines with run id and revision, and the pod termination message."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import EXAMPLE_HEAD, EXAMPLE_REVISIONS, add_revision, every_line_as_json, run_dbmigrate

pytestmark = pytest.mark.parametrize("backend", ["sqlite", "postgresql"])


def log_lines(stderr: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


def test_every_log_line_of_a_run_carries_the_run_id(project: Path, database_url: str) -> None:
    proc = run_dbmigrate("upgrade", "--format", "json", cwd=project, database_url=database_url)

    run_id = json.loads(proc.stdout)["run_id"]
    lines = log_lines(proc.stderr)
    assert lines
    assert {line["run_id"] for line in lines} == {run_id}
    step_lines = [line for line in lines if line["event"] in ("applying revision", "revision applied")]
    assert [line["revision"] for line in step_lines] == [r for r in EXAMPLE_REVISIONS for _ in range(2)]


def test_text_logs_for_a_terminal(project: Path, database_url: str) -> None:
    proc = run_dbmigrate("upgrade", "--log-format", "text", cwd=project, database_url=database_url)

    assert proc.returncode == 0
    assert log_lines(proc.stderr) == []
    assert "applying revision" in proc.stderr


def test_what_a_migration_prints_becomes_a_json_log_line_of_its_revision(project: Path, database_url: str) -> None:
    add_revision(
        project, "0007_prints", EXAMPLE_HEAD, 'print("backfilled", 0, "rows")\nprint("done", end="", flush=True)'
    )

    proc = run_dbmigrate("upgrade", "--format", "json", cwd=project, database_url=database_url)

    assert proc.returncode == 0, proc.stderr
    run_id = json.loads(proc.stdout)["run_id"]  # stdout holds the result alone
    lines = every_line_as_json(proc.stderr)
    printed = [(line["event"], line["revision"], line["run_id"]) for line in lines if line.get("printed")]
    assert printed == [("backfilled 0 rows", "0007_prints", run_id), ("done", "0007_prints", run_id)]


def test_a_failed_run_ends_its_log_with_a_json_error_line(project: Path, database_url: str) -> None:
    add_revision(project, "0007_fails", EXAMPLE_HEAD, "op.execute('SELECT * FROM no_such_table')")

    proc = run_dbmigrate("upgrade", cwd=project, database_url=database_url)

    assert proc.returncode == 1
    lines = every_line_as_json(proc.stderr)
    failed_step = next(line for line in lines if line["event"] == "revision failed")
    assert (failed_step["level"], failed_step["revision"]) == ("error", "0007_fails")
    last = lines[-1]
    assert (last["event"], last["level"], last["exit_code"], last["error"]) == (
        "command failed",
        "error",
        1,
        "MigrationFailed",
    )
    assert "no_such_table" in last["message"] and last["run_id"] == failed_step["run_id"]


def test_a_terminal_gets_the_error_as_one_readable_line(project: Path, database_url: str) -> None:
    add_revision(project, "0007_fails", EXAMPLE_HEAD, "op.execute('SELECT * FROM no_such_table')")

    proc = run_dbmigrate("upgrade", "--log-format", "text", cwd=project, database_url=database_url)

    assert proc.returncode == 1
    assert proc.stderr.splitlines()[-1].startswith("error: Revision 0007_fails")


def test_termination_message_summarises_a_successful_run(project: Path, database_url: str, tmp_path: Path) -> None:
    termination_log = tmp_path / "termination-log"
    termination_log.touch()

    proc = run_dbmigrate(
        "upgrade", cwd=project, database_url=database_url, DBMIGRATE_TERMINATION_LOG=str(termination_log)
    )

    assert proc.returncode == 0
    message = termination_log.read_text()
    assert f"{len(EXAMPLE_REVISIONS)} revision(s) applied" in message and EXAMPLE_REVISIONS[-1] in message


def test_termination_message_explains_a_failure(project: Path, database_url: str, tmp_path: Path) -> None:
    termination_log = tmp_path / "termination-log"
    termination_log.touch()
    (project / "alembic" / "versions" / "0007_bad.py").write_text(
        'revision = "0007_bad"\ndown_revision = "0006_name_contract"\nfrom alembic import op\n\n\n'
        'def upgrade():\n    op.execute("SELECT * FROM no_such_table")\n\n\ndef downgrade():\n    pass\n'
    )

    proc = run_dbmigrate(
        "upgrade", cwd=project, database_url=database_url, DBMIGRATE_TERMINATION_LOG=str(termination_log)
    )

    assert proc.returncode == 1
    message = termination_log.read_text()
    assert message.startswith("dbmigrate upgrade failed: Revision 0007_bad")
    assert "no_such_table" in message


def test_no_termination_message_where_kubernetes_did_not_create_the_file(
    project: Path, database_url: str, tmp_path: Path
) -> None:
    missing = tmp_path / "not-there"

    proc = run_dbmigrate("upgrade", cwd=project, database_url=database_url, DBMIGRATE_TERMINATION_LOG=str(missing))

    assert proc.returncode == 0
    assert not missing.exists()


def test_help_lists_the_exit_codes(project: Path, database_url: str) -> None:
    proc = run_dbmigrate("--help", cwd=project, database_url=database_url)

    assert proc.returncode == 0
    for code in range(6):
        assert f"  {code}  " in proc.stdout
