"""The example application's revisions, checked for each dialect: what a reviewer should be told."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.checks.conftest import DIALECTS, check_project
from tests.conftest import EXAMPLE_REVISIONS


def contract_line(project: Path) -> int:
    """The line of 0006's batch block that drops ``name`` (its statements run when the block ends)."""
    lines = (project / "alembic" / "versions" / "0006_name_contract.py").read_text().splitlines()
    return lines.index('    with op.batch_alter_table("customers") as batch:') + 1


def findings_of(project: Path, dialect: str) -> list[tuple[str, str, str, int]]:
    report = check_project(project, EXAMPLE_REVISIONS, dialect)
    assert report.revisions_checked == 6
    assert report.not_analysed == ()
    return [(f.revision, f.direction, f.rule, f.line) for f in report.findings]


@pytest.mark.parametrize("dialect", DIALECTS)
def test_upgrades_lose_only_the_contracted_name_column(project: Path, dialect: str) -> None:
    upgrades = [f for f in findings_of(project, dialect) if f[1] == "upgrade" and not f[2].startswith("BL")]
    line = contract_line(project)
    assert upgrades == [
        ("0006_name_contract", "upgrade", "DL002", line),
        ("0006_name_contract", "upgrade", "BR001", line),
    ]


def test_concurrent_index_of_0003_is_not_blocking_but_set_not_null_of_0006_is(project: Path) -> None:
    upgrades = [f for f in findings_of(project, "postgresql") if f[1] == "upgrade"]
    assert not any(f[0] == "0003_orders_customer_idx" for f in upgrades)
    assert ("0006_name_contract", "upgrade", "BL005", contract_line(project)) in upgrades


@pytest.mark.parametrize("dialect", DIALECTS)
def test_downgrades_drop_what_their_upgrades_created(project: Path, dialect: str) -> None:
    dropping = ("DL001", "DL002", "BR001", "BR002")
    downgrades = {(f[0], f[2]) for f in findings_of(project, dialect) if f[1] == "downgrade" and f[2] in dropping}
    assert downgrades == {
        ("0001_customers", "DL001"), ("0001_customers", "BR002"),
        ("0002_orders", "DL001"), ("0002_orders", "BR002"),
        ("0004_email_domain", "DL002"), ("0004_email_domain", "BR001"),
        ("0005_full_name_expand", "DL002"), ("0005_full_name_expand", "BR001"),
    }  # fmt: skip


@pytest.mark.parametrize("dialect", DIALECTS)
def test_the_example_fills_its_new_columns_online_and_only_its_rollback_fills_in_the_step(
    project: Path, dialect: str
) -> None:
    """0004 and 0005 fill with dbmigrate.backfill; 0006's downgrade brings `name` back with a plain UPDATE."""
    found = findings_of(project, dialect)
    data_changes = [(f[0], f[1], f[2]) for f in found if f[2] in ("BL007", "BL008", "BR006")]
    contract = "0006_name_contract"
    expected = {
        "postgresql": [
            (contract, "upgrade", "BL008"),  # the catch-up for rows old code wrote under plain alembic
            (contract, "downgrade", "BL007"),  # ADD COLUMN name, then UPDATE under its lock
            (contract, "downgrade", "BR006"),
        ],
        "mysql": [(contract, "upgrade", "BL008"), (contract, "downgrade", "BL008"), (contract, "downgrade", "BR006")],
        "sqlite": [(contract, "downgrade", "BR006")],
    }
    assert data_changes == expected[dialect]


def test_the_example_declares_every_data_loss_it_intends(project: Path) -> None:
    report = check_project(project, EXAMPLE_REVISIONS, "postgresql")
    data_loss = [f for f in report.findings if f.category == "data-loss"]
    assert data_loss and all(f.allowed for f in data_loss)
