"""Schema per tenant on PostgreSQL (`--tenant-schema`, a fleet file's `schema`): one tenant, one schema, one lock.

The tenant's schema holds its version table and dbmigrate's tables (search_path is that schema
alone), and env.py gets the tenant as `-x tenant=...` does under Alembic. Two tenants of one database
have run locks of their own: one tenant's run, held inside a step, does not hold up the other's. A
tenant whose schema was never created is a configuration error that says how to create it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.conftest import (
    EXAMPLE_HEAD,
    add_revision,
    connect,
    create_database,
    drop_database,
    log_events,
    run_dbmigrate,
    start_dbmigrate,
)

HEAD = "0007_gated"


@pytest.fixture
def shared(tmp_path: Path) -> Iterator[str]:
    """A PostgreSQL database with the schemas tenant_a and tenant_b (and nothing in public)."""
    url = create_database("postgresql", tmp_path)
    with connect(url) as connection:
        connection.exec_driver_sql("CREATE SCHEMA tenant_a; CREATE SCHEMA tenant_b")
        connection.commit()
    yield url
    drop_database(url)


def tables(url: str, schema: str) -> set[str]:
    with connect(url) as connection:
        return set(sa.inspect(connection).get_table_names(schema=schema))


def test_the_tenant_schema_holds_everything_and_env_py_gets_the_tenant(project: Path, shared: str) -> None:
    env_py = project / "alembic" / "env.py"
    env_py.write_text(
        env_py.read_text().replace(
            "def run_on(connection) -> None:\n",
            "def run_on(connection) -> None:\n"
            '    print("env.py tenant:", context.get_x_argument(as_dictionary=True).get("tenant"))\n',
        )
    )

    result = run_dbmigrate("upgrade", "--tenant-schema", "tenant_a", cwd=project, database_url=shared)

    assert result.returncode == 0, result.stderr[-3000:]
    assert {"alembic_version", "customers", "dbmigrate_history"} <= tables(shared, "tenant_a")
    assert tables(shared, "public") == set() and tables(shared, "tenant_b") == set()
    assert any(e.get("event") == "env.py tenant: tenant_a" for e in log_events(result.stderr)), result.stderr[-2000:]


def test_a_missing_tenant_schema_is_a_configuration_error(project: Path, shared: str) -> None:
    result = run_dbmigrate("upgrade", "--tenant-schema", "tenant_z", cwd=project, database_url=shared)

    assert result.returncode == 2
    assert "CREATE SCHEMA tenant_z" in result.stderr
    assert tables(shared, "public") == set()


def test_tenants_of_one_database_have_run_locks_of_their_own(project: Path, shared: str, tmp_path: Path) -> None:
    add_revision(
        project, HEAD, EXAMPLE_HEAD, 'pause(op.get_bind().exec_driver_sql("SELECT current_schema()").scalar())'
    )
    gates = tmp_path / "gates"
    gates.mkdir()
    (gates / "tenant_b").touch()
    held = start_dbmigrate(
        "upgrade",
        "--tenant-schema",
        "tenant_a",
        cwd=project,
        database_url=shared,
        output=tmp_path / "a",
        TEST_GATE_DIR=str(gates),
    )
    try:
        deadline = time.monotonic() + 60
        while not any(
            e.get("event") == "applying revision" and e.get("revision") == HEAD
            for e in log_events((tmp_path / "a.err").read_text())
        ):
            assert held.poll() is None and time.monotonic() < deadline, (tmp_path / "a.err").read_text()[-2000:]
            time.sleep(0.05)

        other = run_dbmigrate(
            "upgrade",
            "--tenant-schema",
            "tenant_b",
            "--lock-wait-timeout",
            "5",
            cwd=project,
            database_url=shared,
            TEST_GATE_DIR=str(gates),
        )

        assert other.returncode == 0, other.stderr[-3000:]
        assert held.poll() is None, "tenant_a's run should still be held in its step"
        (gates / "tenant_a").touch()
        assert held.wait(60) == 0
    finally:
        with contextlib.suppress(ProcessLookupError):
            held.kill()
    with connect(shared) as connection:
        for schema in ("tenant_a", "tenant_b"):
            assert connection.exec_driver_sql(f"SELECT version_num FROM {schema}.alembic_version").scalar() == HEAD
