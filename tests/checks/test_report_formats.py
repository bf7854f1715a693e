"""The report as JSON, SARIF 2.1.0 and text."""

from __future__ import annotations

import json
from pathlib import Path

from tests.checks.conftest import REVISION, REVISION_FILE, CheckRevision, line_of

SOURCE = """
# dbmigrate: allow-data-loss reason="archived"
def upgrade() -> None:
    op.drop_column("customers", "email")
    op.create_index("ix_amount", "orders", ["amount_cents"])
"""


def test_json_has_the_documented_shape(check_revision: CheckRevision, project: Path) -> None:
    document = json.loads(json.dumps(check_revision(SOURCE, "postgresql").as_dict()))
    assert document["revisions_checked"] == 1
    assert document["not_analysed"] == []
    first = document["findings"][0]
    assert set(first) == {
        "revision", "direction", "rule", "category", "severity", "message", "suggestion", "file", "line",
        "allowed", "allowed_reason", "table", "column",
    }  # fmt: skip
    assert (first["revision"], first["direction"], first["rule"], first["category"], first["file"], first["line"]) == (
        REVISION, "upgrade", "DL002", "data-loss", REVISION_FILE, line_of(project, "op.drop_column"),
    )  # fmt: skip
    assert (first["allowed"], first["allowed_reason"]) == (True, "archived")
    assert (first["table"], first["column"]) == ("customers", "email")


def test_sarif_lists_rules_results_locations_and_suppressions(check_revision: CheckRevision, project: Path) -> None:
    sarif = check_revision(SOURCE, "postgresql").to_sarif()
    assert sarif["version"] == "2.1.0"
    run = sarif["runs"][0]
    rules = run["tool"]["driver"]["rules"]
    assert [rule["id"] for rule in rules] == ["BL001", "BR001", "DL002"]
    assert all(rule["shortDescription"]["text"] and rule["help"]["text"] for rule in rules)
    results = {result["ruleId"]: result for result in run["results"]}
    assert set(results) == {"DL002", "BR001", "BL001"}
    assert results["DL002"]["level"] == "error" and results["BL001"]["level"] == "warning"
    assert rules[results["BL001"]["ruleIndex"]]["id"] == "BL001"
    location = results["BL001"]["locations"][0]["physicalLocation"]
    assert location == {
        "artifactLocation": {"uri": REVISION_FILE},
        "region": {"startLine": line_of(project, "op.create_index")},
    }
    assert results["DL002"]["suppressions"] == [{"kind": "inSource", "justification": "archived"}]
    assert "suppressions" not in results["BL001"]


def test_text_names_file_line_rule_and_the_safe_alternative(check_revision: CheckRevision, project: Path) -> None:
    text = check_revision(SOURCE, "postgresql").render_text()
    line = line_of(project, "op.create_index")
    assert f"{REVISION_FILE}:{line}: {REVISION} upgrade BL001 blocking warning" in text
    assert "(allowed: archived)" in text
    assert "Instead: Build it with op.create_index" in text
    assert text.endswith("1 revision(s) checked: 2 finding(s), 1 allowed.\n")
