"""What check knows of a column's type across revisions: what it survives and what makes it forget.

A type change written without ``existing_type=`` is compared with the type an earlier revision of
the same check declared. A downgrade starts from the types the upgrades declared. A revision that
cannot be analysed to its end forgets only the tables its file names; everything else stays known.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from dbmigrate.checks import Report, check_steps
from dbmigrate.scripts import load_config, load_scripts
from dbmigrate.settings import Settings
from tests.checks.conftest import _HEADER, DIALECTS, REVISION, REVISION_FILE, check_project
from tests.conftest import EXAMPLE_HEAD


def write_chain(project: Path, revisions: dict[str, str]) -> list[str]:
    """Write ``revisions`` (id -> module code after the imports) on top of the example head, in order."""
    down = EXAMPLE_HEAD
    for revision, body in revisions.items():
        header = _HEADER.replace(repr(REVISION), repr(revision)).replace(repr(EXAMPLE_HEAD), repr(down))
        source = textwrap.dedent(body).strip() + "\n"
        if "def downgrade" not in source:
            source += "\n\ndef downgrade() -> None:\n    pass\n"
        (project / REVISION_FILE.replace(REVISION, revision)).write_text(header + source)
        down = revision
    return list(revisions)


def found(report: Report) -> list[tuple[str, str, str, str | None]]:
    return [(f.revision, f.direction, f.rule, f.column) for f in report.findings]


# The upgrade states the type it leaves (TEXT); the downgrade, hand-written, does not restate it.
WIDEN_THEN_NARROW_BACK = {
    "0007_long_notes": """
        def upgrade() -> None:
            op.alter_column("customers", "email", existing_type=sa.String(2048), type_=sa.Text())


        def downgrade() -> None:
            op.alter_column("customers", "email", type_=sa.String(2048))
        """
}


@pytest.mark.parametrize("dialect", DIALECTS)
def test_a_downgrade_type_change_is_compared_with_the_type_the_upgrade_declared(project: Path, dialect: str) -> None:
    revisions = write_chain(project, WIDEN_THEN_NARROW_BACK)

    report = check_project(project, revisions, dialect)

    lossy = [f for f in report.findings if f.rule == "DL006"]
    assert [(f.direction, f.column) for f in lossy] == [("downgrade", "email")]
    assert "from TEXT to VARCHAR(2048)" in lossy[0].message


@pytest.mark.parametrize("dialect", DIALECTS)
def test_the_downgrade_gate_compares_with_the_type_the_upgrade_declared(project: Path, dialect: str) -> None:
    """The runner checks a downgrade plan on its own (check_steps): the loss it backs up must be found there too."""
    revisions = write_chain(project, WIDEN_THEN_NARROW_BACK)
    config = load_config(Settings.load(config_file=project / "alembic.ini"))

    report = check_steps(config, load_scripts(config), revisions, "downgrade", dialect)

    assert [(f.direction, f.rule, f.column) for f in report.findings if f.rule == "DL006"] == [
        ("downgrade", "DL006", "email")
    ]


AROUND_AN_UNANALYSED_STEP = {
    "0007_tags_and_notes": """
        def upgrade() -> None:
            op.create_table("tags", sa.Column("id", sa.Integer), sa.Column("label", sa.String(80)))
            op.create_table("notes", sa.Column("id", sa.Integer), sa.Column("title", sa.String(80)))
        """,
    # Offline, every query answers as an empty database: scalar_one() finds no row and stops the step,
    # before the change of tags.label that the check therefore never sees.
    "0008_count_rows": """
        def upgrade() -> None:
            rows = op.get_bind().execute(sa.text("SELECT count(*) FROM audit_log")).scalar_one()
            if rows:
                op.alter_column("tags", "label", type_=sa.Text())
        """,
    "0009_short_titles": """
        def upgrade() -> None:
            op.alter_column("tags", "label", type_=sa.String(20))
            op.alter_column("notes", "title", type_=sa.String(20))
        """,
}


@pytest.mark.parametrize("dialect", DIALECTS)
def test_an_unanalysed_step_forgets_only_the_tables_its_file_names(project: Path, dialect: str) -> None:
    revisions = write_chain(project, AROUND_AN_UNANALYSED_STEP)

    report = check_project(project, revisions, dialect)

    assert [(n.revision, n.direction) for n in report.not_analysed] == [("0008_count_rows", "upgrade")]
    # notes is not named by 0008: its type is still known. tags is, and what 0008 did to it is unknown.
    lossy = [f for f in report.findings if f.rule == "DL006"]
    assert [(f.revision, f.table, f.column) for f in lossy] == [("0009_short_titles", "notes", "title")]
    assert "from VARCHAR(80) to VARCHAR(20)" in lossy[0].message


@pytest.mark.parametrize("dialect", DIALECTS)
def test_the_steps_after_an_unanalysed_one_are_still_analysed_in_order(project: Path, dialect: str) -> None:
    revisions = write_chain(
        project,
        {
            **AROUND_AN_UNANALYSED_STEP,
            "0010_drop_notes": """
                def upgrade() -> None:
                    op.drop_table("notes")
                """,
        },
    )

    report = check_project(project, revisions, dialect)

    assert [f[:3] for f in found(report) if f[2] in ("DL006", "DL001")] == [
        ("0009_short_titles", "upgrade", "DL006"),
        ("0010_drop_notes", "upgrade", "DL001"),
    ]


@pytest.mark.parametrize("dialect", DIALECTS)
def test_raw_sql_that_only_writes_rows_keeps_the_known_types(project: Path, dialect: str) -> None:
    revisions = write_chain(
        project,
        {
            "0007_tags_and_notes": """
                def upgrade() -> None:
                    op.create_table("tags", sa.Column("id", sa.Integer), sa.Column("label", sa.String(80)))
                    op.create_table("notes", sa.Column("id", sa.Integer), sa.Column("title", sa.String(80)))
                """,
            "0008_backfill": """
                def upgrade() -> None:
                    op.execute("UPDATE tags SET label = lower(label) WHERE label IS NOT NULL")
                    op.get_bind().execute(sa.text("INSERT INTO tags (id, label) VALUES (1, 'x')"))
                    op.execute("-- keep the newest\\nDELETE FROM tags WHERE id < 10")
                    # A row write and a type change in one chunk: the type is no longer known.
                    op.execute("UPDATE notes SET title = 'x' WHERE id = 1; ALTER TABLE notes ALTER title TYPE text")
                """,
            "0009_shorter": """
                def upgrade() -> None:
                    op.alter_column("tags", "label", type_=sa.String(20))
                    op.alter_column("notes", "title", type_=sa.String(20))
                """,
        },
    )

    report = check_project(project, revisions, dialect)

    lossy = [(f.table, f.column) for f in report.findings if f.rule == "DL006" and f.revision == "0009_shorter"]
    assert lossy == [("tags", "label")]
