"""The Alembic project the benchmarks generate: an alembic.ini and the repository's own env.py."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# The URL only names the dialect for offline rendering; online runs get DATABASE_URL, which env.py prefers.
ALEMBIC_INI = """\
[alembic]
script_location = %(here)s/migrations
path_separator = os
sqlalchemy.url = postgresql://bench@127.0.0.1/bench

[loggers]
keys = root,sqlalchemy,alembic

[handlers]
keys = console

[formatters]
keys = generic

[logger_root]
level = WARNING
handlers = console
qualname =

[logger_sqlalchemy]
level = WARNING
handlers =
qualname = sqlalchemy.engine

[logger_alembic]
level = WARNING
handlers =
qualname = alembic

[handler_console]
class = StreamHandler
args = (sys.stderr,)
level = NOTSET
formatter = generic

[formatter_generic]
format = %(levelname)-5.5s [%(name)s] %(message)s
"""

# Revision rNNNN: a table with an index, chained to the one before; the extras (bench/checks) add to it.
TABLE_REVISION = '''\
"""create table t{n:04d} with an index{title}

Revision ID: {rev}
Revises: {down}
"""

import sqlalchemy as sa

from alembic import op
{directive}
revision = "{rev}"
down_revision = {down_literal}
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "t{n:04d}",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False, server_default=sa.func.now()),
    )
    op.create_index("ix_t{n:04d}_name", "t{n:04d}", ["name"])
{upgrade_extra}

def downgrade() -> None:
{downgrade_extra}    op.drop_index("ix_t{n:04d}_name", table_name="t{n:04d}")
    op.drop_table("t{n:04d}")
'''


def table_revision(
    n: int, title: str = "", directive: str = "", upgrade_extra: str = "", downgrade_extra: str = ""
) -> str:
    """The source of revision ``n`` (``r0001``, ``r0002``, ...): :data:`TABLE_REVISION` with its extras."""
    rev, down = f"r{n:04d}", f"r{n - 1:04d}" if n > 1 else None
    return TABLE_REVISION.format(
        n=n,
        rev=rev,
        down=down or "",
        down_literal=repr(down),
        title=title,
        directive=directive,
        upgrade_extra=upgrade_extra,
        downgrade_extra=downgrade_extra,
    )


def generate_project(root: Path, count: int, revision: Callable[[int], tuple[str, str]]) -> Path:
    """``count`` revisions, ``revision(n)`` giving each one's file name and source; returns the alembic.ini."""
    versions = root / "migrations" / "versions"
    versions.mkdir(parents=True)
    shutil.copy(REPO / "alembic" / "env.py", root / "migrations" / "env.py")
    ini = root / "alembic.ini"
    ini.write_text(ALEMBIC_INI)
    for n in range(1, count + 1):
        name, source = revision(n)
        (versions / name).write_text(source)
    return ini
