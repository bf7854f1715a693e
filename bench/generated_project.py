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
