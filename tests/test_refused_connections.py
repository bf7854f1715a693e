"""A database that answers "no" (bad credentials, no such database) fails at once with exit 3.

Retrying would not help, so dbmigrate must not wait out --wait-timeout: the logs show no retry.
On the test PostgreSQL (trust authentication) bad credentials means a role that does not exist;
on MariaDB it is a wrong password (error 1045).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

import dbmigrate
from tests.conftest import MARIADB_ADMIN, POSTGRES_ADMIN, log_events, run_dbmigrate

SERVERS = {"postgresql": POSTGRES_ADMIN, "mariadb": MARIADB_ADMIN}
SERVER_BACKENDS = list(SERVERS)
RETRYING = "database not reachable yet, retrying"


def with_bad_credentials(backend: str) -> str:
    url = make_url(SERVERS[backend])
    url = url.set(username="dbm_no_such_role") if backend == "postgresql" else url.set(password="WrongPassw0rd")
    return url.render_as_string(hide_password=False)


def with_missing_database(backend: str) -> str:
    return make_url(SERVERS[backend]).set(database="dbm_no_such_database").render_as_string(hide_password=False)


def retries(stderr: str) -> list[dict[str, object]]:
    return [event for event in log_events(stderr) if event.get("event") == RETRYING]


@pytest.mark.parametrize("backend", SERVER_BACKENDS)
def test_bad_credentials_exit_3_at_once_without_retrying(project: Path, backend: str) -> None:
    result = run_dbmigrate("upgrade", "--wait-timeout", "30", cwd=project, database_url=with_bad_credentials(backend))

    assert result.returncode == 3, result.stderr
    assert "refused the credentials" in result.stderr
    assert "Check the user and password" in result.stderr
    assert ("dbm_no_such_role" if backend == "postgresql" else "Access denied") in result.stderr
    assert retries(result.stderr) == []


@pytest.mark.parametrize("backend", SERVER_BACKENDS)
def test_missing_database_exits_3_at_once_saying_it_does_not_exist(project: Path, backend: str) -> None:
    result = run_dbmigrate("upgrade", "--wait-timeout", "30", cwd=project, database_url=with_missing_database(backend))

    assert result.returncode == 3, result.stderr
    assert "does not exist" in result.stderr
    assert "dbm_no_such_database" in result.stderr
    assert retries(result.stderr) == []


@pytest.mark.parametrize("backend", SERVER_BACKENDS)
def test_library_raises_database_unavailable_for_bad_credentials_and_missing_databases(
    project: Path, backend: str
) -> None:
    for url, message in (
        (with_bad_credentials(backend), "refused the credentials"),
        (with_missing_database(backend), "does not exist"),
    ):
        settings = dbmigrate.Settings.load(
            config_file=project / "alembic.ini",
            environ={},
            database_url=url,
            wait_timeout=30,
            termination_log=str(project / "no-termination-log"),
        )
        with pytest.raises(dbmigrate.DatabaseUnavailable, match=message) as raised:
            dbmigrate.upgrade(settings=settings)
        assert raised.value.exit_code == 3


def test_sqlite_file_in_a_missing_directory_is_a_configuration_error(project: Path, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-directory" / "app.db"

    result = run_dbmigrate("upgrade", "--wait-timeout", "30", cwd=project, database_url=f"sqlite:///{missing}")

    assert result.returncode == 2, result.stderr
    assert "Cannot open the database" in result.stderr
    assert retries(result.stderr) == []
    assert not missing.parent.exists()
