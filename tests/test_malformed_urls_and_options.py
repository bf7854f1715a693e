"""A database URL or option that cannot work is a usage error: exit 2, and nothing is changed."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import dbmigrate
from tests.conftest import current_revisions, log_events, run_dbmigrate

MALFORMED = {
    "port-not-a-number": "postgresql://user:pw@host:notaport/db",
    "not-a-url": "nonsense",
}
NO_DRIVER = {
    "unknown-postgresql-driver": ("postgresql+nodriver://postgres@127.0.0.1/test", "dbmigrate[postgres]"),
    "unknown-database": ("nosuchdb://user@127.0.0.1/test", "No driver"),
}
LIBRARY_ONLY = ["mysql+pymysql://root:pw@127.0.0.1:notaport/test", "mysql+nodriver://root@127.0.0.1/test"]


def settings_for(project: Path, **options: object) -> dbmigrate.Settings:
    return dbmigrate.Settings.load(
        config_file=project / "alembic.ini", environ={}, termination_log=str(project / "no-termination-log"), **options
    )


@pytest.mark.parametrize("url", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_url_exits_2_saying_so(project: Path, url: str) -> None:
    result = run_dbmigrate("upgrade", cwd=project, database_url=url)

    assert result.returncode == 2, result.stderr
    assert "is malformed" in result.stderr
    assert "Expected for example" in result.stderr
    assert [e["event"] for e in log_events(result.stderr)] == ["command failed"]  # it did not try to connect


@pytest.mark.parametrize(("url", "hint"), NO_DRIVER.values(), ids=NO_DRIVER.keys())
def test_unknown_driver_exits_2_naming_what_to_install(project: Path, url: str, hint: str) -> None:
    result = run_dbmigrate("upgrade", cwd=project, database_url=url)

    assert result.returncode == 2, result.stderr
    assert "No driver for" in result.stderr
    assert hint in result.stderr


@pytest.mark.parametrize("url", [*MALFORMED.values(), *(url for url, _ in NO_DRIVER.values()), *LIBRARY_ONLY])
def test_library_raises_configuration_error_for_urls_that_cannot_work(project: Path, url: str) -> None:
    with pytest.raises(dbmigrate.ConfigurationError) as raised:
        dbmigrate.upgrade(settings=settings_for(project, database_url=url))

    assert raised.value.exit_code == 2


def test_no_database_url_anywhere_exits_2_naming_the_ways_to_give_one(project: Path) -> None:
    ini = project / "alembic.ini"
    ini.write_text("\n".join(line for line in ini.read_text().splitlines() if not line.startswith("sqlalchemy.url")))

    result = run_dbmigrate("upgrade", cwd=project, database_url="")

    assert result.returncode == 2, result.stderr
    assert "No database URL" in result.stderr
    assert "DATABASE_URL" in result.stderr and "--database-url-file" in result.stderr


def test_unreadable_url_or_password_file_is_a_configuration_error_naming_the_file(
    project: Path, tmp_path: Path
) -> None:
    missing = tmp_path / "secret" / "database-url"
    with pytest.raises(dbmigrate.ConfigurationError, match=re.escape(f"Cannot read the database URL file {missing}")):
        dbmigrate.upgrade(settings=settings_for(project, database_url_file=str(missing)))

    with pytest.raises(
        dbmigrate.ConfigurationError, match=re.escape(f"Cannot read the database password file {missing}")
    ):
        dbmigrate.upgrade(
            settings=settings_for(project, database_url="sqlite:///unused.db", database_password_file=str(missing))
        )


def test_non_numeric_option_on_the_command_line_exits_2(project: Path) -> None:
    result = run_dbmigrate("upgrade", "--lock-timeout", "soon", cwd=project, database_url="sqlite:///unused.db")

    assert result.returncode == 2, result.stderr
    assert "--lock-timeout" in result.stderr
    assert not (project / "unused.db").exists()


def test_unknown_options_and_non_numbers_are_configuration_errors(project: Path) -> None:
    with pytest.raises(dbmigrate.ConfigurationError, match="Unknown dbmigrate option"):
        settings_for(project, wait_timout=5)
    with pytest.raises(dbmigrate.ConfigurationError, match="max_lock_retries must be a number"):
        settings_for(project, max_lock_retries="many")
    with pytest.raises(dbmigrate.ConfigurationError, match="wait_timeout must be a number"):
        dbmigrate.Settings.load(config_file=project / "alembic.ini", environ={"DBMIGRATE_WAIT_TIMEOUT": "a minute"})


OUT_OF_RANGE = [
    ("wait_timeout", "-1"),
    ("wait_timeout", "nan"),
    ("lock_timeout", "-0.5"),
    ("lock_timeout", "inf"),
    ("statement_timeout", "-3"),
    ("lock_wait_timeout", "-1"),
    ("lock_conflict_wait", "-1"),
    ("max_lock_retries", "-2"),
]


@pytest.mark.parametrize(("option", "value"), OUT_OF_RANGE)
def test_negative_or_non_finite_numbers_are_configuration_errors(project: Path, option: str, value: str) -> None:
    """A negative lock or statement timeout would quietly become "no limit" in the database."""
    with pytest.raises(dbmigrate.ConfigurationError, match=f"{option} must be a number, 0 or more"):
        settings_for(project, **{option: value})


def test_negative_timeout_on_the_command_line_exits_2(project: Path) -> None:
    result = run_dbmigrate("upgrade", "--statement-timeout", "-3", cwd=project, database_url="sqlite:///unused.db")

    assert result.returncode == 2, result.stderr
    assert "statement_timeout must be a number, 0 or more" in result.stderr
    assert not (project / "unused.db").exists()


def test_table_schema_that_does_not_exist_is_a_configuration_error(project: Path, database_url: str) -> None:
    with pytest.raises(dbmigrate.ConfigurationError, match="dbm_no_such_schema"):
        dbmigrate.upgrade(settings=settings_for(project, database_url=database_url, table_schema="dbm_no_such_schema"))

    assert current_revisions(database_url) == set()
