"""Where dbmigrate itself offers the safe way, a refusal names it before any way without it.

dbmigrate's own ways: the ``allow-data-loss`` directive or ``--allow-data-loss``, with which it
copies the data aside first; backups (running without ``--no-backup``); ``dbmigrate repair``;
``dbmigrate rollback``. Each refusal below is triggered on a real database and its advice read in
order: dbmigrate's way must come before the first way of doing it by hand.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dbmigrate.checks.rules import RULES
from tests.conftest import add_revision, remove_revisions, run_dbmigrate

pytestmark = pytest.mark.parametrize("backend", ["sqlite", "postgresql"])

DIRECTIVE = "# dbmigrate: allow-data-loss"
ITEMS = """
items = op.create_table(
    "items",
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(50), nullable=False),
    sa.Column("note", sa.String(50)),
)
op.bulk_insert(items, [{"id": i, "name": f"item {i}", "note": f"note {i}"} for i in range(1, 11)])
"""
# Each data-loss rule of the gate, and a revision that makes it fire on the items table.
LOSSES = {
    "DL001": 'op.drop_table("items")',
    "DL002": 'op.drop_column("items", "note")',
    "DL004": 'op.execute("DELETE FROM items")',
    "DL005": "op.execute(\"UPDATE items SET note = 'x'\")",
}
# Words of the ways without dbmigrate, as the rules write them.
BY_HAND = ("rename the table", "keep the column", "WHERE clause", "widen the type", "pg_dump")


def before(text: str, first: str, then: str) -> bool:
    return first in text and (then not in text or text.index(first) < text.index(then))


def first_manual_way(text: str) -> int:
    found = [text.index(words) for words in BY_HAND if words in text]
    return min(found) if found else len(text)


def one_revision(project: Path) -> Path:
    remove_revisions(project)
    add_revision(project, "0001_items", None, ITEMS, 'op.drop_table("items")')
    return project


def losing(project: Path, database_url: str, rule: str) -> Path:
    """The project at 0001_items on the database, with a pending 0002_loss that trips ``rule``."""
    one_revision(project)
    proc = run_dbmigrate("upgrade", cwd=project, database_url=database_url)
    assert proc.returncode == 0, proc.stderr
    add_revision(project, "0002_loss", "0001_items", LOSSES[rule])
    return project


@pytest.mark.parametrize("rule", sorted(LOSSES))
def test_check_names_the_directive_and_the_backup_before_any_way_by_hand(
    project: Path, database_url: str, rule: str
) -> None:
    losing(project, database_url, rule)

    proc = run_dbmigrate("check", "--format", "json", cwd=project, database_url=database_url)

    assert proc.returncode == 4, proc.stderr
    (finding,) = [f for f in json.loads(proc.stdout)["findings"] if f["rule"] == rule]
    advice = finding["suggestion"]
    assert advice.index(DIRECTIVE) < first_manual_way(advice), advice
    assert advice.index("dbmigrate then copies") < first_manual_way(advice), advice


@pytest.mark.parametrize("rule", sorted(LOSSES))
def test_the_gate_names_the_directive_and_the_backup_first(project: Path, database_url: str, rule: str) -> None:
    losing(project, database_url, rule)

    proc = run_dbmigrate("upgrade", cwd=project, database_url=database_url, DBMIGRATE_LOG_FORMAT="text")

    assert proc.returncode == 4, proc.stderr
    advice = proc.stderr[proc.stderr.index("Nothing was applied.") :]
    assert advice.index(DIRECTIVE) < first_manual_way(advice), advice
    assert advice.index("either way dbmigrate copies the data aside") < first_manual_way(advice), advice
    assert advice.index("dbmigrate backups restore") < first_manual_way(advice), advice


def test_backups_off_names_the_backup_before_allowing_the_loss(project: Path, database_url: str) -> None:
    losing(project, database_url, "DL002")

    proc = run_dbmigrate("upgrade", "--no-backup", cwd=project, database_url=database_url, DBMIGRATE_LOG_FORMAT="text")

    assert proc.returncode == 4, proc.stderr
    advice = proc.stderr[proc.stderr.index("Nothing was applied.") :]
    assert before(advice, "Run without --no-backup, so that dbmigrate copies the data aside", "--allow-data-loss")


def test_a_database_ahead_of_the_code_names_rollback_first(project: Path, database_url: str) -> None:
    one_revision(project)
    add_revision(project, "0002_newer", "0001_items", 'op.add_column("items", sa.Column("extra", sa.Integer))')
    assert run_dbmigrate("upgrade", cwd=project, database_url=database_url).returncode == 0
    (project / "alembic" / "versions" / "0002_newer.py").unlink()  # the older image's scripts

    proc = run_dbmigrate("upgrade", cwd=project, database_url=database_url, DBMIGRATE_LOG_FORMAT="text")

    assert proc.returncode == 2, proc.stderr
    assert before(proc.stderr, "run `dbmigrate rollback` with it", "deploy that release's image"), proc.stderr
    # And the way it names works: the newer column stays (this code can run on it), nothing is lost.
    rollback = run_dbmigrate("rollback", cwd=project, database_url=database_url)
    assert rollback.returncode == 0, rollback.stderr
    assert run_dbmigrate("upgrade", cwd=project, database_url=database_url).returncode == 0


def test_a_partial_step_names_repair_before_the_work_by_hand(project: Path, database_url: str) -> None:
    one_revision(project)
    add_revision(
        project,
        "0002_half",
        "0001_items",
        'op.create_index("ix_items_name", "items", ["name"])\nop.execute("INSERT INTO no_such_table (x) VALUES (1)")',
    )
    path = project / "alembic" / "versions" / "0002_half.py"
    path.write_text(
        '# dbmigrate: non-transactional reason="builds its index without blocking writes"\n' + path.read_text()
    )

    proc = run_dbmigrate("upgrade", cwd=project, database_url=database_url, DBMIGRATE_LOG_FORMAT="text")
    status = run_dbmigrate("status", cwd=project, database_url=database_url)

    assert proc.returncode == 5, proc.stderr
    for text in (proc.stderr, status.stdout + status.stderr):
        assert before(text, "Repair it with `dbmigrate repair`", "by hand"), text


def test_every_data_loss_rule_dbmigrate_can_back_up_names_its_way_first(backend: str) -> None:
    """The check rules themselves (the reference is generated from them): dbmigrate's way, then the rest."""
    for rule in RULES.values():
        if rule.category != "data-loss":
            continue
        if rule.id == "DL007":  # a dropped schema is not copied aside: the advice says so first
            assert rule.advice.startswith("dbmigrate does not copy a dropped schema aside")
            continue
        assert rule.advice.index(DIRECTIVE) < first_manual_way(rule.advice), rule.id
        assert "dbmigrate then copies" in rule.safe_way, rule.id
