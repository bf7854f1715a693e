"""dbmigrate: safe Alembic migrations for Kubernetes.

>>> import dbmigrate
>>> dbmigrate.upgrade(database_url="sqlite:///app.db")      # doctest: +SKIP

Every error is a :class:`DbmigrateError`; its ``exit_code`` is what the CLI exits with.
"""

from dbmigrate._version import __version__
from dbmigrate.api import (
    BackfillRun,
    Status,
    backfill_run,
    backfill_status,
    backups,
    downgrade,
    drop_backup,
    history,
    is_ready,
    repair,
    restore_backup,
    rollback,
    status,
    upgrade,
    verify,
    wait_until_ready,
)
from dbmigrate.backfill import backfill
from dbmigrate.errors import (
    ConfigurationError,
    DatabaseUnavailable,
    DbmigrateError,
    DeadlineReached,
    LockTimeout,
    MigrationFailed,
    NotAtHead,
    NotReady,
    PermissionDenied,
    RepairNeeded,
    UnsafeMigration,
    VerificationFailed,
)
from dbmigrate.readiness import Readiness
from dbmigrate.rollback import Backup
from dbmigrate.runner import RollbackResult, RunResult, StepResult
from dbmigrate.settings import Settings
from dbmigrate.verify import VerifyResult

__all__ = [
    "BackfillRun",
    "Backup",
    "ConfigurationError",
    "DatabaseUnavailable",
    "DbmigrateError",
    "DeadlineReached",
    "LockTimeout",
    "MigrationFailed",
    "NotAtHead",
    "NotReady",
    "PermissionDenied",
    "Readiness",
    "RepairNeeded",
    "RollbackResult",
    "RunResult",
    "Settings",
    "Status",
    "StepResult",
    "UnsafeMigration",
    "VerificationFailed",
    "VerifyResult",
    "__version__",
    "backfill",
    "backfill_run",
    "backfill_status",
    "backups",
    "downgrade",
    "drop_backup",
    "history",
    "is_ready",
    "repair",
    "restore_backup",
    "rollback",
    "status",
    "upgrade",
    "verify",
    "wait_until_ready",
]
