"""A missing or broken Alembic project is a usage error (exit 2), reported before the database is touched."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

import dbmigrate
from tests.conftest import log_events, remove_revisions, run_dbmigrate


def set_script_location(project: Path, location: str) -> None:
    ini = project / "alembic.ini"
    lines = ini.read_text().splitlines()
    ini.write_text(
        "\n".join(f"script_location = {location}" if line.startswith("script_location") else line for line in lines)
    )


def table_names(database_url: str) -> list[str]:
    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as connection:
            return sa.inspect(connection).get_table_names()
    finally:
        engine.dispose()


def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'app.db'}"


def upgrade_in_process(config_file: Path, database_url: str) -> dbmigrate.RunResult:
    settings = dbmigrate.Settings.load(
        config_file=config_file,
        environ={},
        database_url=database_url,
        termination_log=str(config_file.parent / "no-termination-log"),
    )
    return dbmigrate.upgrade(settings=settings)


def test_missing_alembic_ini_in_the_working_directory_exits_2(tmp_path: Path) -> None:
    result = run_dbmigrate("upgrade", cwd=tmp_path, database_url=sqlite_url(tmp_path))

    assert result.returncode == 2, result.stderr
    assert "alembic.ini not found" in result.stderr
    assert "-c/--config" in result.stderr
    assert not (tmp_path / "app.db").exists()


def test_config_file_that_does_not_exist_is_a_configuration_error(project: Path, tmp_path: Path) -> None:
    with pytest.raises(dbmigrate.ConfigurationError, match=r"elsewhere\.ini not found"):
        upgrade_in_process(project / "elsewhere.ini", sqlite_url(tmp_path))


def test_unparseable_alembic_ini_is_a_configuration_error(project: Path, tmp_path: Path) -> None:
    (project / "alembic.ini").write_text("[alembic\nscript_location = alembic\n")

    with pytest.raises(dbmigrate.ConfigurationError, match="not a valid ini file"):
        upgrade_in_process(project / "alembic.ini", sqlite_url(tmp_path))


def test_script_location_pointing_nowhere_exits_2_naming_the_path(project: Path, tmp_path: Path) -> None:
    set_script_location(project, "%(here)s/no-such-scripts")

    result = run_dbmigrate("upgrade", cwd=project, database_url=sqlite_url(tmp_path))

    assert result.returncode == 2, result.stderr
    assert "no-such-scripts" in result.stderr
    assert "script_location" in result.stderr
    assert [e["event"] for e in log_events(result.stderr)] == ["command failed"]  # nothing ran
    assert not (tmp_path / "app.db").exists()


def test_scripts_directory_without_env_py_is_a_configuration_error_found_before_connecting(
    project: Path, tmp_path: Path
) -> None:
    (project / "alembic" / "env.py").unlink()

    with pytest.raises(dbmigrate.ConfigurationError, match=r"has no env\.py"):
        upgrade_in_process(project / "alembic.ini", sqlite_url(tmp_path))

    assert not (tmp_path / "app.db").exists()


def test_env_py_with_a_syntax_error_is_a_configuration_error_naming_file_and_line(
    project: Path, tmp_path: Path
) -> None:
    env_py = project / "alembic" / "env.py"
    env_py.write_text(env_py.read_text() + "\n\ndef broken(:\n    pass\n")
    line = len(env_py.read_text().splitlines()) - 1

    with pytest.raises(dbmigrate.ConfigurationError) as raised:
        upgrade_in_process(project / "alembic.ini", sqlite_url(tmp_path))

    assert f"{env_py} has a syntax error at line {line}" in raised.value.message
    assert not (tmp_path / "app.db").exists()


def test_revision_with_a_syntax_error_exits_2_naming_file_and_line_and_leaves_the_database_untouched(
    project: Path, database_url: str
) -> None:
    broken = project / "alembic" / "versions" / "0007_broken.py"
    broken.write_text('revision = "0007_broken"\ndown_revision = "0006_name_contract"\n\n\ndef upgrade(:\n    pass\n')

    result = run_dbmigrate("upgrade", cwd=project, database_url=database_url)

    assert result.returncode == 2, result.stderr
    assert f"Revision file {broken} has a syntax error at line 5" in result.stderr
    assert "nothing was run" in result.stderr
    assert table_names(database_url) == []


def test_revision_that_fails_to_import_is_a_configuration_error_naming_the_file(project: Path, tmp_path: Path) -> None:
    broken = project / "alembic" / "versions" / "0007_bad_import.py"
    broken.write_text(
        'import no_such_module_anywhere\n\nrevision = "0007_bad_import"\ndown_revision = "0006_name_contract"\n'
    )

    with pytest.raises(dbmigrate.ConfigurationError) as raised:
        upgrade_in_process(project / "alembic.ini", sqlite_url(tmp_path))

    assert str(broken) in raised.value.message
    assert "no_such_module_anywhere" in raised.value.message
    assert not (tmp_path / "app.db").exists()


def test_scripts_directory_without_revisions_is_not_an_error(project: Path, tmp_path: Path) -> None:
    """The boundary of the above: a fresh `alembic init` with no revisions yet has nothing to do."""
    remove_revisions(project)

    result = upgrade_in_process(project / "alembic.ini", sqlite_url(tmp_path))

    assert result.outcome == "nothing-to-do"


def test_env_py_that_raises_while_running_exits_2_naming_env_py(project: Path, tmp_path: Path) -> None:
    env_py = project / "alembic" / "env.py"
    env_py.write_text(env_py.read_text().replace("target_metadata = None", 'raise RuntimeError("no settings module")'))

    result = run_dbmigrate("upgrade", cwd=project, database_url=f"sqlite:///{tmp_path / 'app.db'}")

    assert result.returncode == 2, result.stderr
    assert "env.py" in result.stderr and "no settings module" in result.stderr
