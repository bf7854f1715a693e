"""Run dbmigrate as an installation does: its modules byte-compiled, like alembic's.

``pip install`` writes ``__pycache__`` for every package it installs, alembic included. An editable
install of this repository has none until an import writes it, and with ``PYTHONDONTWRITEBYTECODE``
set no import does: every cold process would then compile dbmigrate's sources again, a cost that no
installed copy pays. The benchmarks compile them once before timing anything.
"""

from __future__ import annotations

import compileall
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "dbmigrate"


def byte_compile_dbmigrate() -> None:
    if not compileall.compile_dir(PACKAGE, quiet=1):
        raise RuntimeError(f"byte-compiling {PACKAGE} failed")
