"""The repair message lists what committed in full, or says exactly where a statement is cut and where it is whole."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import history_rows, run_dbmigrate

pytestmark = pytest.mark.parametrize("backend", ["mariadb"])

# A table wide enough that its CREATE TABLE is far longer than one line of a message.
WIDE_TABLE = """revision = "0007_wide_table"
down_revision = "0006_name_contract"
import sqlalchemy as sa
from alembic import op


def upgrade():
    op.create_table(
        "measurements",
        sa.Column("id", sa.Integer, primary_key=True),
        *[sa.Column(f"reading_{{n:03d}}_in_millivolts", sa.Integer) for n in range({columns})],
        sa.Column("last_reading_column", sa.String(10)),
    )
    op.add_column("orders", sa.Column("amount_cents", sa.Integer))  # exists already: fails after the commit


def downgrade():
    op.drop_table("measurements")
"""


def fail_half_way(project: Path, database_url: str, columns: int) -> str:
    (project / "alembic" / "versions" / "0007_wide_table.py").write_text(WIDE_TABLE.format(columns=columns))
    proc = run_dbmigrate("upgrade", cwd=project, database_url=database_url)
    assert proc.returncode == 5, proc.stderr
    status = run_dbmigrate("status", "--format", "json", cwd=project, database_url=database_url)
    assert status.returncode == 5, status.stderr
    return str(json.loads(status.stdout)["needs_repair"])


def test_a_long_committed_statement_is_given_whole(project: Path, database_url: str) -> None:
    message = fail_half_way(project, database_url, columns=40)

    statement = json.loads(str(history_rows(database_url)[-1]["statements"]))[0]["sql"].strip()
    assert len(statement) > 1000  # far past one line
    assert statement in message
    assert "last_reading_column" in message
    assert "CUT HERE" not in message and "--sql" not in message


def test_a_statement_too_long_to_keep_says_where_it_is_cut_and_where_the_whole_text_is(
    project: Path, database_url: str
) -> None:
    message = fail_half_way(project, database_url, columns=400)

    assert "CUT HERE" in message
    assert "last_reading_column" not in message
    kept = json.loads(str(history_rows(database_url)[-1]["statements"]))[0]
    assert f"{len(kept['sql'])} of its {kept['length']} characters are kept" in message
    assert "`alembic upgrade 0006_name_contract:0007_wide_table --sql` prints the revision's full SQL" in message
