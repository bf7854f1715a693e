"""The allow-data-loss directive: findings it covers stay reported, marked allowed; a bad one is a finding."""

from __future__ import annotations

from pathlib import Path

from tests.checks.conftest import CheckRevision, line_of, rules

DROP_ORDERS = """
{directive}
def upgrade() -> None:
    op.drop_table("orders")


def downgrade() -> None:
    op.execute("DELETE FROM customers")
"""


def test_directive_with_reason_marks_data_loss_allowed_in_both_directions(check_revision: CheckRevision) -> None:
    directive = '# dbmigrate: allow-data-loss reason="orders moved to the billing service (OPS-12)"'
    report = check_revision(DROP_ORDERS.format(directive=directive), "postgresql")
    assert [(f.rule, f.direction, f.allowed_reason) for f in report.findings] == [
        ("DL001", "upgrade", "orders moved to the billing service (OPS-12)"),
        ("BR002", "upgrade", None),
        ("DL004", "downgrade", "orders moved to the billing service (OPS-12)"),
    ]
    assert report.problems("upgrade", "data-loss") == []
    assert [f.rule for f in report.problems("upgrade", "breaking")] == ["BR002"]


def test_directive_without_reason_allows_nothing_and_is_a_finding(check_revision: CheckRevision, project: Path) -> None:
    report = check_revision(DROP_ORDERS.format(directive="# dbmigrate: allow-data-loss"), "postgresql")
    assert rules(report) == ["DM001", "DL001", "BR002"]
    assert report.findings[0].line == line_of(project, "# dbmigrate: allow-data-loss")
    assert report.findings[0].severity == "error"
    assert [f.rule for f in report.problems("upgrade", "data-loss")] == ["DL001"]


def test_empty_reason_and_misspelt_directives_are_findings(check_revision: CheckRevision) -> None:
    directives = '# dbmigrate: allow-data-loss reason=""\n# dbmigrate: allow-dataloss reason="typo"'
    report = check_revision(DROP_ORDERS.format(directive=directives), "sqlite")
    assert rules(report) == ["DM001", "DM001", "DL001", "BR002"]
    assert not any(f.allowed for f in report.findings)


def test_directive_text_inside_a_string_is_not_a_directive(check_revision: CheckRevision) -> None:
    directive = 'NOTE = "# dbmigrate: allow-data-loss reason=\\"not a comment\\""'
    report = check_revision(DROP_ORDERS.format(directive=directive), "postgresql")
    assert rules(report) == ["DL001", "BR002"]
    assert not any(f.allowed for f in report.findings)
