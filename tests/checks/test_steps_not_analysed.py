"""`dbmigrate check` never passes blind: a step it could not analyse offline fails the check (exit 4) and is counted."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import EXAMPLE_HEAD, add_revision, run_dbmigrate

REVISION = "0007_reads_rows"
RANGE = f"{EXAMPLE_HEAD}:{REVISION}"


@pytest.fixture
def unanalysed(project: Path) -> Path:
    """The example project plus a revision whose upgrade stops offline (scalar_one() finds no row) before a drop."""
    add_revision(
        project,
        REVISION,
        EXAMPLE_HEAD,
        'counted = op.get_bind().execute(sa.text("SELECT COUNT(*) FROM orders")).scalar_one()  # stops here\n'
        'op.drop_table("orders")',
    )
    return project


def line_of_stop(project: Path) -> int:
    source = (project / "alembic" / "versions" / f"{REVISION}.py").read_text().splitlines()
    return next(number for number, text in enumerate(source, start=1) if "# stops here" in text)


def check(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_dbmigrate(
        "check", "--range", RANGE, "--dialect", "postgresql", *args, cwd=project, database_url="sqlite://"
    )


def test_check_exits_4_with_a_summary_line_when_a_step_was_not_analysed(unanalysed: Path) -> None:
    proc = check(unanalysed)

    assert proc.returncode == 4, proc.stdout + proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[-1] == "1 revision(s) checked: 0 finding(s), 1 of 2 step(s) not fully analysed offline."
    assert lines[0].startswith(f"alembic/versions/{REVISION}.py:{line_of_stop(unanalysed)}: {REVISION} upgrade")


def test_check_json_counts_the_steps_not_analysed_and_says_where_each_stopped(unanalysed: Path) -> None:
    proc = check(unanalysed, "--format", "json")

    assert proc.returncode == 4, proc.stderr
    document = json.loads(proc.stdout)
    assert document["summary"] == {
        "revisions_checked": 1,
        "steps_checked": 2,
        "findings": 0,
        "allowed": 0,
        "not_analysed": 1,
    }
    [step] = document["not_analysed"]
    assert (step["revision"], step["direction"]) == (REVISION, "upgrade")
    assert (step["file"], step["line"]) == (f"alembic/versions/{REVISION}.py", line_of_stop(unanalysed))
    assert "needs a row from a query" in step["reason"]


def test_check_sarif_reports_a_step_not_analysed_as_an_error_at_its_line(unanalysed: Path) -> None:
    proc = check(unanalysed, "--format", "sarif")

    assert proc.returncode == 4, proc.stderr
    run = json.loads(proc.stdout)["runs"][0]
    [result] = run["results"]
    assert (result["ruleId"], result["level"]) == ("DM002", "error")
    assert run["tool"]["driver"]["rules"][result["ruleIndex"]]["id"] == "DM002"
    location = result["locations"][0]["physicalLocation"]
    assert location["artifactLocation"]["uri"] == f"alembic/versions/{REVISION}.py"
    assert location["region"]["startLine"] == line_of_stop(unanalysed)
    assert run["properties"]["summary"]["not_analysed"] == 1


def test_check_of_a_fully_analysed_range_still_passes(project: Path) -> None:
    add_revision(project, REVISION, EXAMPLE_HEAD, 'op.add_column("orders", sa.Column("note", sa.Text))')

    proc = check(project, "--format", "json")

    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(proc.stdout)["summary"]["not_analysed"] == 0
