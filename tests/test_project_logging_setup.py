"""A project's own logging set-up (fileConfig in env.py, structlog in its package) leaves dbmigrate's logs alone."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import structlog

import dbmigrate
from tests.conftest import (
    EXAMPLE_HEAD,
    EXAMPLE_REVISIONS,
    add_revision,
    current_revisions,
    every_line_as_json,
    run_dbmigrate,
)

pytestmark = pytest.mark.parametrize("backend", ["sqlite", "postgresql", "mariadb"])

# What Airflow's package does when its env.py imports it: structlog set up for the project's own lines.
PROJECT_STRUCTLOG = (
    "import structlog\n"
    "structlog.configure(processors=[structlog.processors.KeyValueRenderer()], "
    "logger_factory=structlog.PrintLoggerFactory())\n"
)


def test_an_untouched_alembic_init_env_py_leaves_only_json_lines(pristine_project: Path, database_url: str) -> None:
    proc = run_dbmigrate("upgrade", "--format", "json", cwd=pristine_project, database_url=database_url)

    assert proc.returncode == 0, proc.stderr
    run_id = json.loads(proc.stdout)["run_id"]
    lines = every_line_as_json(proc.stderr)
    assert {line["run_id"] for line in lines} == {run_id}
    applied = [line["revision"] for line in lines if line["event"] == "revision applied"]
    assert applied == EXAMPLE_REVISIONS


def test_a_project_that_configures_structlog_keeps_dbmigrate_lines_in_json(
    pristine_project: Path, database_url: str
) -> None:
    env_py = pristine_project / "migrations" / "env.py"
    env_py.write_text(PROJECT_STRUCTLOG + env_py.read_text())

    proc = run_dbmigrate("upgrade", cwd=pristine_project, database_url=database_url)

    assert proc.returncode == 0, proc.stderr
    lines = every_line_as_json(proc.stderr)
    assert [line["revision"] for line in lines if line["event"] == "applying revision"] == EXAMPLE_REVISIONS
    assert current_revisions(database_url) == {EXAMPLE_HEAD}


def test_a_revisions_own_warning_comes_out_once_as_json_with_run_id_and_revision(
    project: Path, database_url: str
) -> None:
    add_revision(
        project,
        "0007_warns",
        EXAMPLE_HEAD,
        "import logging, structlog\n"
        'logging.getLogger("app.migrations").warning("backfilled %d rows", 0)\n'
        'structlog.get_logger().warning("checked the backfill")',
    )

    proc = run_dbmigrate("upgrade", "--format", "json", cwd=project, database_url=database_url)

    assert proc.returncode == 0, proc.stderr
    lines = every_line_as_json(proc.stderr)
    # once each: the gate's offline rendering of the revision runs it too, and says nothing
    checked = [line["revision"] for line in lines if line["event"] == "checked the backfill"]
    assert checked == ["0007_warns"]
    warnings = [line for line in lines if line.get("logger") == "app.migrations"]
    assert warnings == [
        {
            "event": "backfilled 0 rows",
            "logger": "app.migrations",
            "level": "warning",
            "run_id": json.loads(proc.stdout)["run_id"],
            "revision": "0007_warns",
            "timestamp": warnings[0]["timestamp"],
        }
    ]


def test_a_library_callers_logging_is_as_it_was_after_a_run(pristine_project: Path, database_url: str) -> None:
    env_py = pristine_project / "migrations" / "env.py"
    env_py.write_text(PROJECT_STRUCTLOG + env_py.read_text())
    callers_logger = logging.getLogger("callers.app")
    structlog_before = dict(structlog.get_config())
    root_before = (list(logging.root.handlers), logging.root.level)

    result = dbmigrate.upgrade(database_url=database_url, config_file=pristine_project / "alembic.ini")

    assert result.after == (EXAMPLE_HEAD,)
    assert dict(structlog.get_config()) == structlog_before
    assert (list(logging.root.handlers), logging.root.level) == root_before
    assert not callers_logger.disabled  # fileConfig in env.py disables every logger it does not name
