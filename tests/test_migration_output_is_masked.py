"""Whatever a migration prints, logs or raises about its connection never shows the password.

A revision that prints its connection URL (to stdout and stderr), logs it through the standard
library's logging and through structlog (with tracebacks), and raises an exception holding it,
runs as a PostgreSQL role whose password holds ``/``, ``@`` and ``:``. The password comes from
the URL, a URL file or a password file; logs are JSON or text, with and without ``--debug``; the
revision fails once, then succeeds. The password must appear in no output: stdout, stderr, the
termination message, the history table.
"""

from __future__ import annotations

import json
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from tests.conftest import (
    POSTGRES_ADMIN,
    add_revision,
    create_database,
    drop_database,
    every_line_as_json,
    history_rows,
    remove_revisions,
    run_dbmigrate,
)

SECRET = "Pr1nt3d/S3cr3t@Pw:x"

TELLS_ITS_URL = """
if op.get_context().as_sql:
    return
import logging
import sys

import structlog

url = op.get_bind().engine.url
shown = url.render_as_string(hide_password=False)
print("printed:", shown)
print("printed to stderr:", shown, file=sys.stderr)
logging.getLogger("app.migrations").warning("stdlib logged: %s (password %s)", shown, url.password)
structlog.get_logger("app.migrations").warning("structlog logged", url=shown, password=url.password)
try:
    raise ValueError("cannot reach " + shown)
except ValueError:
    logging.getLogger("app.migrations").exception("stdlib logged a traceback")
    structlog.get_logger("app.migrations").exception("structlog logged a traceback")
if os.environ.get("TEST_FAIL"):
    raise RuntimeError("cannot use " + shown + " (password " + str(url.password) + ")")
"""


def forms(secret: str) -> list[str]:
    """The secret as it is and URL-encoded, the ways it could show up."""
    return sorted({secret, urllib.parse.quote(secret, safe=""), urllib.parse.quote_plus(secret)})


@pytest.fixture
def role_url(tmp_path: Path) -> Iterator[str]:
    """A fresh PostgreSQL database owned by a new role whose password is SECRET; the URL to it as that role."""
    database_url = create_database("postgresql", tmp_path)
    role = f"dbm_role_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(POSTGRES_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.exec_driver_sql(f"CREATE ROLE {role} LOGIN PASSWORD '{SECRET}'")
        connection.exec_driver_sql(f"ALTER DATABASE {make_url(database_url).database} OWNER TO {role}")
    try:
        yield make_url(database_url).set(username=role, password=SECRET).render_as_string(hide_password=False)
    finally:
        drop_database(database_url)
        with admin.connect() as connection:
            connection.exec_driver_sql(f"DROP ROLE IF EXISTS {role}")
        admin.dispose()


def source_args(source: str, url: str, tmp_path: Path) -> tuple[list[str], str]:
    """The options and DATABASE_URL that hand dbmigrate the password through ``source``."""
    if source == "url-file":
        (tmp_path / "database-url").write_text(url + "\n")
        return ["--database-url-file", str(tmp_path / "database-url")], ""
    if source == "password-file":
        (tmp_path / "password").write_text(SECRET + "\n")
        without_password = make_url(url).set(password=None).render_as_string(hide_password=False)
        return ["--database-password-file", str(tmp_path / "password")], without_password
    return [], url


# Every pair of (password source, log format, --debug) once; each case runs failing, then succeeding.
# The full product (12 cases) would take twice as long: once the password is known, where it came
# from changes nothing on the way out, which only the log format and --debug decide.
CASES = [
    ("url", "json", False),
    ("url", "text", True),
    ("url-file", "json", True),
    ("url-file", "text", False),
    ("password-file", "json", False),
    ("password-file", "text", True),
]


@pytest.mark.parametrize(
    ("source", "log_format", "debug"),
    CASES,
    ids=[f"{source}-{log_format}" + ("-debug" if debug else "") for source, log_format, debug in CASES],
)
def test_a_migration_that_prints_logs_and_raises_its_url_never_shows_the_password(
    project: Path, tmp_path: Path, role_url: str, source: str, log_format: str, debug: bool
) -> None:
    remove_revisions(project)
    add_revision(project, "0001_tells", None, TELLS_ITS_URL)
    args, env_url = source_args(source, role_url, tmp_path)
    args += ["--format", log_format, *(["--debug"] if debug else [])]
    termination_log = tmp_path / "termination-log"
    role = make_url(role_url).username

    for fail in (True, False):
        termination_log.write_text("")
        result = run_dbmigrate(
            "upgrade",
            *args,
            cwd=project,
            database_url=env_url,
            DBMIGRATE_LOG_FORMAT=log_format,
            DBMIGRATE_TERMINATION_LOG=str(termination_log),
            **({"TEST_FAIL": "1"} if fail else {}),
        )

        assert result.returncode == (1 if fail else 0), result.stderr
        outputs = {"stdout": result.stdout, "stderr": result.stderr, "termination log": termination_log.read_text()}
        for name, text in outputs.items():
            for form in forms(SECRET):
                assert form not in text, f"the password leaked into {name}: {text}"
        # The revision did tell its URL, masked, through each way out (not merely never ran).
        for said in ("printed:", "printed to stderr:", "stdlib logged", "structlog logged", "cannot reach"):
            assert said in result.stderr
        assert f"{role}:***@127.0.0.1" in result.stderr
        if log_format == "json":
            every_line_as_json(result.stderr)
        if fail:
            assert "0001_tells" in outputs["termination log"]
            assert "RuntimeError: cannot use" in result.stdout + result.stderr
            assert ("raise RuntimeError(" in result.stderr) is debug  # the failure's traceback, --debug's alone

    rows = history_rows(role_url)
    assert [(row["revision"], row["status"]) for row in rows] == [("0001_tells", "failed"), ("0001_tells", "applied")]
    assert "RuntimeError: cannot use" in str(rows[0]["error"]) and "***" in str(rows[0]["error"])
    for row in rows:
        for form in forms(SECRET):
            assert form not in json.dumps(row, default=str), f"the password leaked into history: {row}"
