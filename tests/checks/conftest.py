"""Check one revision written by a test on top of the example project, for a dialect."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from dbmigrate.checks import Report, check
from dbmigrate.scripts import load_config, load_scripts
from dbmigrate.settings import Settings
from tests.conftest import EXAMPLE_HEAD

REVISION = "0007_under_test"
REVISION_FILE = f"alembic/versions/{REVISION}.py"
DIALECTS = ["postgresql", "mysql", "sqlite"]

_HEADER = f'''"""a revision under check"""

import sqlalchemy as sa
from sqlalchemy import text

from alembic import op

revision = {REVISION!r}
down_revision = {EXAMPLE_HEAD!r}
branch_labels = None
depends_on = None

'''

CheckRevision = Callable[[str, str], Report]


def check_project(project: Path, revisions: list[str], dialect: str) -> Report:
    """dbmigrate.checks.check on a project directory, as the CLI will call it."""
    config = load_config(Settings.load(config_file=project / "alembic.ini"))
    return check(config, load_scripts(config), revisions, dialect)


@pytest.fixture
def check_revision(project: Path) -> CheckRevision:
    """Write ``source`` (module code after the imports: upgrade(), downgrade(), helpers) and check it."""

    def run(source: str, dialect: str) -> Report:
        body = textwrap.dedent(source).strip() + "\n"
        if "def downgrade" not in body:
            body += "\n\ndef downgrade() -> None:\n    pass\n"
        (project / REVISION_FILE).write_text(_HEADER + body)
        return check_project(project, [REVISION], dialect)

    return run


def line_of(project: Path, fragment: str) -> int:
    """The 1-based line of the revision under test where ``fragment`` first appears."""
    for number, line in enumerate((project / REVISION_FILE).read_text().splitlines(), start=1):
        if fragment in line:
            return number
    raise AssertionError(f"{fragment!r} is not in the revision")


def rules(report: Report, direction: str = "upgrade") -> list[str]:
    """The rule ids of ``direction``'s findings, in order."""
    return [finding.rule for finding in report.findings if finding.direction == direction]
