"""Fleet metrics: each target labelled with its name (never its URL or password), and the fleet's totals.

Three SQLite targets (one broken: it already holds the table the new revision creates) and one
PostgreSQL database reached with a password from the environment. `upgrade --fleet
--metrics-textfile` must write each target's exit code and outcome, the totals (3 at goal, 1
failed), the fleet's exit code, and no password; per-target runs must not write the file themselves.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import EXAMPLE_HEAD, add_revision
from tests.fleet_support import SECRET, Fleet, forms, run_fleet

HEAD = "0007_audit_log"


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    built = Fleet(tmp_path)
    yield built
    built.drop()


def samples(path: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(path.read_text())
        for sample in family.samples
    }


def test_each_target_and_the_totals_are_published_without_a_password(
    fleet: Fleet, project: Path, tmp_path: Path
) -> None:
    add_revision(project, HEAD, EXAMPLE_HEAD, 'op.create_table("audit_log", sa.Column("id", sa.Integer))')
    lite = fleet.add_sqlite(3)
    postgres = fleet.add_postgres_databases(1)
    with sqlite3.connect(tmp_path / "sqlite" / f"{lite[1]}.db") as connection:
        connection.execute("CREATE TABLE audit_log (id integer)")
    metrics = tmp_path / "fleet.prom"

    result = run_fleet("upgrade", "--fleet", str(fleet.write()), "--metrics-textfile", str(metrics), cwd=project)

    assert result.returncode == 1, result.stderr[-3000:]
    found = samples(metrics)
    for name in [*lite, *postgres]:
        expected = 1 if name == lite[1] else 0
        assert found[("dbmigrate_fleet_target_exit_code", (("target", name),))] == expected
    assert found[("dbmigrate_fleet_target_outcome", (("outcome", "failed"), ("target", lite[1])))] == 1
    assert found[("dbmigrate_fleet_targets", (("state", "at_goal"),))] == 3
    assert found[("dbmigrate_fleet_targets", (("state", "failed"),))] == 1
    assert found[("dbmigrate_fleet_exit_code", (("command", "upgrade"),))] == 1
    assert not [key for key in found if key[0].startswith("dbmigrate_last_run")], "a target wrote its own metrics"
    text = metrics.read_text()
    assert not [form for form in forms(SECRET) if form in text]
    assert "postgresql://" not in text
