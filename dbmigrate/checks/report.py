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
    """A step that could not be rendered to its end offline: findings after ``reason`` are unknown.

    ``reason`` starts with ``file:line`` (the revision's line that stopped, quoted after it) when
    the revision was running; ``file`` and ``line`` say the same for tools (``line`` None otherwise).
    """

    revision: str
    direction: Direction
    reason: str
    file: str = ""
    line: int | None = None


@dataclasses.dataclass(frozen=True)
class Report:
    """The outcome of checking some revisions for one dialect."""

    revisions_checked: int
    findings: tuple[Finding, ...]
    not_analysed: tuple[NotAnalysed, ...] = ()

    def problems(self, direction: Direction, category: Category) -> list[Finding]:
        """The findings of ``category`` in ``direction`` that the revisions do not declare intended."""
        return [f for f in self.findings if f.direction == direction and f.category == category and not f.allowed]

    def as_dict(self) -> dict[str, Any]:
        """The JSON shape: revisions_checked, findings (in revision and statement order), not_analysed."""
        return {
            "revisions_checked": self.revisions_checked,
            "findings": [finding.as_dict() for finding in self.findings],
            "not_analysed": [dataclasses.asdict(step) for step in self.not_analysed],
        }

    def to_sarif(self) -> dict[str, Any]:
        """A SARIF 2.1.0 log with one run; allowed findings carry an in-source suppression with their reason."""
        used = sorted({finding.rule for finding in self.findings})
        rules = [
            {
                "id": rule_id,
                "name": RULES[rule_id].name,
                "shortDescription": {"text": RULES[rule_id].summary},
                "help": {"text": RULES[rule_id].suggestion.replace("{", "").replace("}", "")},
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
            lines.append(f"{step.revision} {step.direction}: not fully analysed offline: {step.reason}")
        counted = [f for f in self.findings if not f.allowed]
        lines.append(
            f"{self.revisions_checked} revision(s) checked: {len(counted)} finding(s)"
            + (f", {len(self.findings) - len(counted)} allowed" if len(counted) != len(self.findings) else "")
            + (f", {len(self.not_analysed)} step(s) not fully analysed" if self.not_analysed else "")
            + "."
        )
        return "\n".join(lines) + "\n"
