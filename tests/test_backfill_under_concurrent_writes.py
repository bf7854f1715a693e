"""A backfill stays correct while the application writes: inserts, and updates of the source column.

A writer thread plays the previous application version (which knows nothing of the new column)
during a real ``dbmigrate upgrade``: it inserts rows and changes the email of existing rows, those
the backfill has already passed included. Afterwards every row's domain is the one its current email
gives, which only holds if the sync trigger computed it for the writes the batches had passed.
"""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.exc import OperationalError

from tests.conftest import add_backfill_revisions, connect, run_dbmigrate

ROWS = 3000
SLOW_BATCHES = {"DBMIGRATE_BACKFILL_BATCH_TIME": "0.02", "DBMIGRATE_BACKFILL_PAUSE": "0.02"}


class Writer(threading.Thread):
    """Inserts rows and updates emails in small transactions of its own until told to stop."""

    def __init__(self, database_url: str) -> None:
        super().__init__(daemon=True)
        self.engine = sa.create_engine(database_url)
        self.stop = threading.Event()
        self.updates_behind = 0  # updates, while the backfill ran, of rows its batches had already passed
        self.error: BaseException | None = None

    def run(self) -> None:
        rng = random.Random(7)
        next_id = ROWS + 1
        try:
            while not self.stop.is_set():
                passed = self._passed_by_backfill()
                try:
                    with self.engine.begin() as connection:
                        if rng.random() < 0.3:
                            connection.execute(
                                sa.text("INSERT INTO items (id, email) VALUES (:id, :email)"),
                                {"id": next_id, "email": f"new{next_id}@inserted{next_id % 5}.example"},
                            )
                            next_id += 1
                        else:
                            row = rng.randint(1, next_id - 1)
                            connection.execute(
                                sa.text("UPDATE items SET email = :email WHERE id = :id"),
                                {"id": row, "email": f"moved{row}@changed{rng.randint(0, 9)}.example"},
                            )
                            self.updates_behind += row <= passed
                except OperationalError as exc:  # a lock wait that timed out, or a deadlock victim: try again
                    if "lock" not in str(exc).lower() and "deadlock" not in str(exc).lower():
                        raise
                    continue
                # An application has gaps between its writes; a loop without any would starve SQLite's readers.
                time.sleep(0.005)
        except BaseException as exc:  # noqa: BLE001 - reported by the test, in the main thread
            self.error = exc
        finally:
            self.engine.dispose()

    def _passed_by_backfill(self) -> int:
        """The last key of the running backfill's last committed batch (0 when none is running)."""
        try:
            with self.engine.connect() as connection:
                row = connection.execute(sa.text("SELECT state, last_key FROM dbmigrate_backfills")).first()
        except sa.exc.DBAPIError:
            return 0  # not created yet
        return int(row.last_key) if row is not None and row.state == "running" and row.last_key else 0


def test_every_row_gets_the_value_of_its_current_source_while_the_application_writes(
    project: Path, database_url: str
) -> None:
    add_backfill_revisions(project, ROWS, '{"domain": DOMAIN}')
    assert run_dbmigrate("upgrade", "0001_items", cwd=project, database_url=database_url).returncode == 0
    writer = Writer(database_url)
    writer.start()
    try:
        upgrade = run_dbmigrate("upgrade", cwd=project, database_url=database_url, **SLOW_BATCHES)
    finally:
        writer.stop.set()
        writer.join(30)

    assert writer.error is None, writer.error
    assert upgrade.returncode == 0, upgrade.stderr
    assert writer.updates_behind > 0, "the writer changed no row that the backfill had passed"
    with connect(database_url) as connection:
        rows = connection.exec_driver_sql("SELECT id, email, domain FROM items").all()
    assert len(rows) > ROWS
    assert [(id_, email, domain) for id_, email, domain in rows if domain != email.split("@")[1]] == []
