"""The CLI's exit skips the collector's walk over import-time objects, and nothing else.

The objects SQLAlchemy, Alembic and the revision scripts make at import live as long as the process;
the CLI freezes them, so the interpreter's last collections do not walk them. Everything an exit owes
as under plain Alembic still happens: atexit handlers run, and objects only the collector can free
(in a reference cycle) are finalized.
"""

from __future__ import annotations

from pathlib import Path

from tests.conftest import EXAMPLE_HEAD, current_revisions, run_dbmigrate

# Appended to the example's env.py: an object in a reference cycle whose finalizer writes a line (as a
# project's cleanup might), and an atexit handler that says how many objects the collector skips.
CLEANS_UP_AT_EXIT = """
import atexit as _atexit
import gc as _gc

_here = os.path.dirname(__file__)


class _Cleanup:
    def __init__(self):
        self.myself = self  # only the collector frees it

    def __del__(self):
        with open(os.path.join(_here, "finalized.log"), "a") as out:
            out.write("finalized\\n")


_Cleanup()


def _at_exit():
    with open(os.path.join(_here, "at-exit.log"), "w") as out:
        out.write(f"frozen={_gc.get_freeze_count()}\\n")


_atexit.register(_at_exit)
"""


def test_exit_runs_atexit_handlers_and_finalizes_cycles_while_import_objects_stay_frozen(
    project: Path, database_url: str
) -> None:
    env_py = project / "alembic" / "env.py"
    env_py.write_text(env_py.read_text() + CLEANS_UP_AT_EXIT)

    done = run_dbmigrate("upgrade", cwd=project, database_url=database_url)

    assert done.returncode == 0, done.stdout + done.stderr
    assert current_revisions(database_url) == {EXAMPLE_HEAD}
    # env.py runs three times in an upgrade (the version table's place, the gate, the run): one object each.
    assert (project / "alembic" / "finalized.log").read_text().splitlines() == ["finalized"] * 3
    frozen = (project / "alembic" / "at-exit.log").read_text().strip()
    assert frozen.startswith("frozen=") and int(frozen.removeprefix("frozen=")) > 10_000
