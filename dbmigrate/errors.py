"""The exception hierarchy: every error dbmigrate raises is a :class:`DbmigrateError`.

Each class carries the process exit code the CLI uses for it, so that an exit code means one
thing everywhere (see docs/concepts/exit-codes.md). Messages say what happened, what it means and the
command that fixes it; they never contain a password.
"""

from __future__ import annotations


class DbmigrateError(Exception):
    """Base class of every error dbmigrate raises; ``exit_code`` is what the CLI exits with.

    ``run_id`` names the run that failed, when it got as far as holding the run lock: its history rows
    tell what it did before it stopped.
    """

    exit_code = 1
    run_id: str | None = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ConfigurationError(DbmigrateError):
    """Usage or configuration is wrong: bad URL, missing or broken scripts, ambiguous target."""

    exit_code = 2


class EnvironmentRefused(ConfigurationError):
    """The project's env.py does something under which dbmigrate's promises would not hold; refused before any step.

    The message names the pattern and the change that makes env.py work.
    """


class PermissionDenied(ConfigurationError):
    """The database user lacks a privilege the command needs (``wait``, ``status`` and ``is_ready`` only read);
    the message names the table and the grant that gives it."""


class DatabaseUnavailable(DbmigrateError):
    """The database could not be reached in time, or refused the credentials."""

    exit_code = 3


class LockTimeout(DbmigrateError):
    """Another run held the run lock, or other sessions held a table's lock, for too long."""

    exit_code = 3


class DeadlineReached(DbmigrateError):
    """The run's deadline (``--deadline``) came while it waited: it stopped on its own, before Kubernetes would
    kill the pod."""

    exit_code = 3


class NotReady(DbmigrateError):
    """``wait``: the database did not reach the expected revision in time."""

    exit_code = 3


class MigrationFailed(DbmigrateError):
    """A migration step raised; its transaction was rolled back where the database allows it."""

    exit_code = 1


class ConnectionLost(DbmigrateError):
    """The connection to the database broke during a run (restart, failover, a cut network); a rerun continues."""

    exit_code = 3


class Terminated(BaseException):
    """The process was asked to stop (SIGTERM, SIGINT); raised where it runs, so the step in flight rolls back.

    Like ``KeyboardInterrupt`` it is not an ``Exception``: no broad ``except Exception`` on the way
    (in env.py, a revision or a library) can swallow it. ``exit_code`` is 128 + the signal's number.
    """

    def __init__(self, signal_name: str, signal_number: int) -> None:
        self.signal_name = signal_name
        self.exit_code = 128 + signal_number
        self.message = (
            f"dbmigrate was stopped by {signal_name} (the pod is being stopped, or Ctrl-C) before any step was in "
            "flight; every step before stays applied. Run the command again to continue."
        )
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message


class UnsafeMigration(DbmigrateError):
    """The upgrade gate refused: a pending revision would lose data (or hit another refused finding)."""

    exit_code = 4


class ChecksFailed(DbmigrateError):
    """``check`` found an error-severity finding that the revision does not declare intended, or a step it could
    not analyse offline."""

    exit_code = 4


class VerificationFailed(DbmigrateError):
    """``verify``: a revision's downgrade failed, left a trace of its upgrade, or lost seeded data."""

    exit_code = 4


class NotAtHead(DbmigrateError):
    """``status --check``: the database is not at the heads of the scripts."""

    exit_code = 4


class RepairNeeded(DbmigrateError):
    """A step was partially applied (MySQL DDL, an autocommit block, a non-transactional revision); repair it first."""

    exit_code = 5


EXIT_CODES: dict[int, str] = {
    0: "success (also: nothing to do)",
    1: "a migration step failed (its transaction was rolled back where the database allows)",
    2: "usage or configuration error (bad URL, broken scripts, multiple heads, unknown revision), or the database "
    "user lacks a privilege the command needs",
    3: "database unreachable or connection lost (a rerun continues), credentials refused, a lock not acquired, "
    "(wait) the schema not ready in time, or the run's --deadline reached",
    4: "a check or verification found problems (for example status --check: not at head; check could not analyse "
    "part of the range offline; a statement would have lost data a revision does not declare)",
    5: "the database needs repair: a step was partially applied; status names the fix",
    130: "stopped by SIGINT (Ctrl-C): the statement in flight was cancelled on the server and rolled back",
    143: "stopped by SIGTERM (the pod is being stopped): the statement in flight was cancelled and rolled back",
}
