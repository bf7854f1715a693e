"""Findings and the report: JSON (``as_dict``), SARIF 2.1.0 for code scanning, and text."""

from __future__ import annotations

import dataclasses
from typing import Any

from dbmigrate.checks.collect import Direction
from dbmigrate.checks.rules import RULES, Category, Severity

SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"


@dataclasses.dataclass(frozen=True)
class Finding:
    """One thing a revision step does to a live database; ``file`` is relative to the project when inside it.

    ``allowed_reason`` is set when the revision declares the data loss intended: the finding is
    still reported, but does not count against the revision. ``table`` and ``column`` name what the
    finding is about, where a rule knows it (``schema.table`` when the statement names a schema).
    """

    revision: str
    direction: Direction
    rule: str
    category: Category
    severity: Severity
    message: str
    suggestion: str
    file: str
    line: int
    allowed_reason: str | None = None
    table: str | None = None
    column: str | None = None

    @property
    def allowed(self) -> bool:
        return self.allowed_reason is not None

    def as_dict(self) -> dict[str, Any]:
        return {
            "revision": self.revision,
            "direction": self.direction,
            "rule": self.rule,
            "category": self.category,
            "severity": self.severity,
            "message": self.message,
            "suggestion": self.suggestion,
            "file": self.file,
            "line": self.line,
            "allowed": self.allowed,
            "allowed_reason": self.allowed_reason,
            "table": self.table,
            "column": self.column,
        }


@dataclasses.dataclass(frozen=True)
class NotAnalysed:
    """A step that could not be rendered to its end offline: what it executes after ``line`` is unknown.

    ``reason`` says what the revision did there, in the revision's words; ``file`` is relative like a
    finding's, ``line`` where in it the step stopped (None when the revision file was not on the
    stack, for example when env.py raised).
    """

    revision: str
    direction: Direction
    reason: str
    file: str = ""
    line: int | None = None

    @property
    def where(self) -> str:
        """``file:line``, or the file alone when the line is not known."""
        return f"{self.file}:{self.line}" if self.line is not None else self.file

    def unseen(self) -> str:
        """What the offline pass could not see, for messages: the rest of the step from where it stopped."""
        start = f"from line {self.line} on" if self.line is not None else "from where it stopped on"
        return f"what its {self.direction}() executes {start}"


# SARIF has no place for a step outside its rules: a step not analysed is a result of this rule.
NOT_ANALYSED_RULE = {
    "id": "DM002",
    "name": "not-analysed",
    "shortDescription": {"text": "A step could not be analysed offline to its end."},
    "help": {
        "text": "Make the step render offline: guard what needs real query results or inspects the database "
        "with `if not op.get_context().as_sql:`, or answer as an empty database would (.scalar() instead of "
        ".scalar_one()). `dbmigrate upgrade` watches such a step's statements as they run."
    },
    "properties": {"category": "not-analysed"},
    "defaultConfiguration": {"level": "error"},
}


@dataclasses.dataclass(frozen=True)
class Report:
    """The outcome of checking some revisions for one dialect."""

    revisions_checked: int
    findings: tuple[Finding, ...]
    not_analysed: tuple[NotAnalysed, ...] = ()
    steps_checked: int = 0

    @property
    def blind(self) -> bool:
        """Part of what was checked could not be analysed: ``check`` exits 4 for it."""
        return bool(self.not_analysed)

    def summary(self) -> dict[str, int]:
        """The counts CI gates on: findings that count, allowed ones, steps checked and steps not fully analysed."""
        counted = sum(1 for f in self.findings if not f.allowed)
        return {
            "revisions_checked": self.revisions_checked,
            "steps_checked": self.steps_checked,
            "findings": counted,
            "allowed": len(self.findings) - counted,
            "not_analysed": len(self.not_analysed),
        }

    def problems(self, direction: Direction, category: Category) -> list[Finding]:
        """The findings of ``category`` in ``direction`` that the revisions do not declare intended."""
        return [f for f in self.findings if f.direction == direction and f.category == category and not f.allowed]

    def as_dict(self) -> dict[str, Any]:
        """The JSON shape: revisions_checked, findings (in revision and statement order), not_analysed, summary."""
        return {
            "revisions_checked": self.revisions_checked,
            "findings": [finding.as_dict() for finding in self.findings],
            "not_analysed": [dataclasses.asdict(step) for step in self.not_analysed],
            "summary": self.summary(),
        }

    def to_sarif(self) -> dict[str, Any]:
        """A SARIF 2.1.0 log with one run; allowed findings carry an in-source suppression with their reason."""
        used = sorted({finding.rule for finding in self.findings})
        rules = [
            {
                "id": rule_id,
                "name": RULES[rule_id].name,
                "shortDescription": {"text": RULES[rule_id].summary},
                "help": {"text": RULES[rule_id].advice.replace("{", "").replace("}", "")},
                "properties": {"category": RULES[rule_id].category},
                "defaultConfiguration": {"level": RULES[rule_id].severity},
            }
            for rule_id in used
        ]
        results = []
        for finding in self.findings:
            result: dict[str, Any] = {
                "ruleId": finding.rule,
                "ruleIndex": used.index(finding.rule),
                "level": finding.severity,
                "message": {"text": f"{finding.message} {finding.suggestion}"},
                "locations": [
                    {
                        "physicalLocation": {
                            "artifactLocation": {"uri": finding.file},
                            "region": {"startLine": finding.line},
                        }
                    }
                ],
                "properties": {"revision": finding.revision, "direction": finding.direction},
            }
            if finding.allowed_reason is not None:
                result["suppressions"] = [{"kind": "inSource", "justification": finding.allowed_reason}]
            results.append(result)
        if self.not_analysed:
            rules.append(NOT_ANALYSED_RULE)
        for step in self.not_analysed:
            region = {"region": {"startLine": step.line}} if step.line is not None else {}
            results.append(
                {
                    "ruleId": NOT_ANALYSED_RULE["id"],
                    "ruleIndex": len(rules) - 1,
                    "level": "error",
                    "message": {"text": f"Not analysed offline: {step.unseen()} is unknown ({step.reason})."},
                    "locations": [{"physicalLocation": {"artifactLocation": {"uri": step.file}, **region}}],
                    "properties": {"revision": step.revision, "direction": step.direction},
                }
            )
        return {
            "$schema": SARIF_SCHEMA,
            "version": "2.1.0",
            "runs": [
                {
                    "tool": {
                        "driver": {
                            "name": "dbmigrate",
                            "informationUri": "https://pypi.org/project/dbmigrate/",
                            "rules": rules,
                        }
                    },
                    "results": results,
                    "properties": {"summary": self.summary()},
                }
            ],
        }

    def render_text(self) -> str:
        """One paragraph per finding (``file:line revision direction RULE severity``), then a summary line."""
        lines = []
        for f in self.findings:
            allowed = f" (allowed: {f.allowed_reason})" if f.allowed_reason is not None else ""
            lines.append(f"{f.file}:{f.line}: {f.revision} {f.direction} {f.rule} {f.category} {f.severity}{allowed}")
            lines.append(f"    {f.message}")
            lines.append(f"    Instead: {f.suggestion}")
        for step in self.not_analysed:
            lines.append(f"{step.where}: {step.revision} {step.direction} not fully analysed offline: {step.reason}")
        counts = self.summary()
        lines.append(
            f"{self.revisions_checked} revision(s) checked: {counts['findings']} finding(s)"
            + (f", {counts['allowed']} allowed" if counts["allowed"] else "")
            + (
                f", {counts['not_analysed']} of {self.steps_checked} step(s) not fully analysed offline"
                if self.not_analysed
                else ""
            )
            + "."
        )
        return "\n".join(lines) + "\n"
