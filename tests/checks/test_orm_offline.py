"""`dbmigrate check` follows ORM data migrations offline, and says in the revision's words what it cannot follow.

Each case is one revision of ``tests/checks/orm_offline`` put on top of the example application and
checked through the CLI for every dialect. Every revision drops ``customers.email`` at the line
marked ``# the drop``; where the check cannot go on, or the revision's own code fails, the line is
marked ``# stops here``.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import EXAMPLE_HEAD, add_revision, current_revisions, log_events, run_dbmigrate

CORPUS = Path(__file__).parent / "orm_offline"
DIALECTS = ["postgresql", "mysql", "sqlite"]  # mysql is how check renders for MariaDB

ORM_CASES = [
    "declarative_query_all",
    "count_scalar",
    "single_rows_and_iteration",
    "typed_models_execute_select",
    "add_flush_commit",
    "automap_declared_tables",
    "bulk_update_by_primary_key",
]
# What the revision needed at its `# stops here` line, in the words the reason must use.
OFFLINE_LIMITS = {
    "inspector_has_table": "reads the database's schema",
    "inspector_get_columns": "reads the database's schema",
    "reflected_table": "reads the database's schema",
    "automap_reflected": "reads the database's schema",
    "bind_has_table": "needs a live database connection",
    "raw_cursor": "uses `connection` of the migration's connection",
    "needs_a_row": "needs a row from a query",
    "empty_answer_used": "answered offline as an empty database would",
    # Missing where check runs, not wrong in the revision: not blamed on it.
    "missing_package": "ModuleNotFoundError: No module named 'billing_service'",
    "missing_environment_variable": "KeyError: 'ORM_OFFLINE_TENANT_SCHEMA'",
}
REVISION_ERRORS = {
    "revision_name_error": "NameError: name 'backfill_full_names' is not defined",
    "revision_type_error": "TypeError: can only concatenate str",
}
# How the offline machinery's own classes are named: none of them may reach a user.
INTERNAL_NAME = re.compile(r"\b_[A-Z]\w+|dbmigrate\.checks")


def check_case(project: Path, case: str, dialect: str) -> tuple[int, dict[str, Any]]:
    """Put ``case`` on top of the example project and run ``dbmigrate check`` on it offline; (exit code, JSON)."""
    shutil.copy(CORPUS / f"{case}.py", project / "alembic" / "versions" / f"0007_{case}.py")
    proc = run_dbmigrate(
        "check",
        "--range",
        f"{EXAMPLE_HEAD}:head",
        "--dialect",
        dialect,
        "--format",
        "json",
        cwd=project,
        database_url=f"sqlite:///{project / 'never-created.db'}",
    )
    assert proc.stdout, proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def line_of(case: str, marker: str) -> int:
    """The 1-based line of ``case``'s revision marked with ``# marker``."""
    lines = (CORPUS / f"{case}.py").read_text().splitlines()
    return next(number for number, line in enumerate(lines, start=1) if f"# {marker}" in line)


def upgrade_rules(report: dict[str, Any]) -> list[tuple[str, int]]:
    """The upgrade's findings as (rule, line), in order."""
    return [(f["rule"], f["line"]) for f in report["findings"] if f["direction"] == "upgrade"]


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("case", ORM_CASES)
def test_orm_queries_answer_as_an_empty_database_and_the_drop_after_them_is_found(
    project: Path, case: str, dialect: str
) -> None:
    code, report = check_case(project, case, dialect)

    assert report["not_analysed"] == []
    drop = line_of(case, "the drop")
    assert ("DL002", drop) in upgrade_rules(report)
    assert code == 4  # the drop is not declared intended


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("case", sorted(OFFLINE_LIMITS))
def test_what_an_offline_check_cannot_follow_is_named_at_its_revision_line_in_user_words(
    project: Path, case: str, dialect: str
) -> None:
    _, report = check_case(project, case, dialect)

    file = f"alembic/versions/0007_{case}.py"
    stops = line_of(case, "stops here")
    [gap] = report["not_analysed"]
    assert (gap["revision"], gap["direction"], gap["file"], gap["line"]) == (f"0007_{case}", "upgrade", file, stops)
    assert gap["reason"].startswith("`")  # the line itself, quoted; file and line are fields of their own
    assert OFFLINE_LIMITS[case] in gap["reason"]
    assert not INTERNAL_NAME.search(gap["reason"]), gap["reason"]
    # What ran before that line was checked, and nothing is blamed on the revision.
    assert ("DL002", line_of(case, "the drop")) in upgrade_rules(report)
    assert "DM003" not in {f["rule"] for f in report["findings"]}


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest.mark.parametrize("case", sorted(REVISION_ERRORS))
def test_an_error_in_the_revisions_own_code_is_a_finding_at_its_line_not_a_gap_in_the_analysis(
    project: Path, case: str, dialect: str
) -> None:
    code, report = check_case(project, case, dialect)

    assert report["not_analysed"] == []
    [error] = [f for f in report["findings"] if f["rule"] == "DM003"]
    assert (error["revision"], error["direction"], error["severity"]) == (f"0007_{case}", "upgrade", "error")
    assert (error["file"], error["line"]) == (f"alembic/versions/0007_{case}.py", line_of(case, "stops here"))
    assert REVISION_ERRORS[case] in error["message"]
    assert "would fail the same way on a live database" in error["message"]
    assert code == 4


def test_an_error_in_the_revision_alone_makes_check_exit_4(project: Path) -> None:
    # Declared data loss: the only problem left is the revision's own error.
    source = (CORPUS / "revision_name_error.py").read_text()
    declared = source.replace(
        "\nimport sqlalchemy", '\n# dbmigrate: allow-data-loss reason="emails moved"\nimport sqlalchemy'
    )
    (project / "alembic" / "versions" / "0007_revision_name_error.py").write_text(declared)
    proc = run_dbmigrate(
        "check",
        "--range",
        f"{EXAMPLE_HEAD}:head",
        "--dialect",
        "postgresql",
        cwd=project,
        database_url=f"sqlite:///{project / 'never-created.db'}",
    )

    assert proc.returncode == 4, proc.stdout + proc.stderr
    assert "DM003" in proc.stdout and "NameError" in proc.stdout
    assert "not fully analysed" not in proc.stdout


@pytest.mark.parametrize("backend", ["sqlite"])
def test_the_upgrade_gate_warns_of_an_error_in_the_revision_and_the_database_decides(
    project: Path, database_url: str
) -> None:
    add_revision(
        project,
        "0007_broken",
        EXAMPLE_HEAD,
        'width = "200"\nop.add_column("customers", sa.Column("x", sa.String(width + 50)))',
    )

    proc = run_dbmigrate("upgrade", cwd=project, database_url=database_url)

    warnings = [
        e for e in log_events(proc.stderr) if e.get("event") == "check finding" and e["revision"] == "0007_broken"
    ]
    assert [w["rule"] for w in warnings] == ["DM003"]
    assert proc.returncode == 1  # the step itself failed, on the database
    assert current_revisions(database_url) == {EXAMPLE_HEAD}
