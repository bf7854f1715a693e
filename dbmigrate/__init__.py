"""dbmigrate: safe Alembic migrations for Kubernetes.

>>> import dbmigrate
>>> dbmigrate.upgrade(database_url="sqlite:///app.db")      # doctest: +SKIP

Every error is a :class:`DbmigrateError`; its ``exit_code`` is what the CLI exits with.
"""

from dbmigrate._version import __version__
from dbmigrate.api import (
    Status,
    downgrade,
    history,
    is_ready,
    repair,
    status,
    upgrade,
    wait_until_ready,
)
from dbmigrate.errors import (
    ConfigurationError,
    DatabaseUnavailable,
    DbmigrateError,
    LockTimeout,
    MigrationFailed,
    NotAtHead,
    NotReady,
    RepairNeeded,
)
from dbmigrate.readiness import Readiness
from dbmigrate.runner import RunResult, StepResult
from dbmigrate.settings import Settings

__all__ = [
    "ConfigurationError",
    "DatabaseUnavailable",
    "DbmigrateError",
    "LockTimeout",
    "MigrationFailed",
    "NotAtHead",
    "NotReady",
    "Readiness",
    "RepairNeeded",
    "RunResult",
    "Settings",
    "Status",
    "StepResult",
    "__version__",
    "downgrade",
    "history",
    "is_ready",
    "repair",
    "status",
    "upgrade",
    "wait_until_ready",
]
