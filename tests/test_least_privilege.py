"""A migration role that owns the schema and an application role that only reads and writes rows, made by
running the SQL of docs/how-to/least-privilege.md as written: the migration role upgrades, the application
role waits, probes and reads the status, and cannot drop a table or write dbmigrate's tables.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

import dbmigrate
from tests.conftest import (
    EXAMPLE_HEAD,
    MARIADB_ADMIN,
    POSTGRES_ADMIN,
    REPO,
    connect,
    dbmigrate_env,
    run_dbmigrate,
)

PAGE = REPO / "docs" / "how-to" / "least-privilege.md"
SQL_BLOCK = re.compile(r'^```sql title="(?P<title>[^"]+)"\n(?P<body>.*?)^```$', re.MULTILINE | re.DOTALL)
WAIT_LIMIT = 60.0


def documented_sql(title: str, name: str) -> list[str]:
    """The statements of the page's SQL block ``title``, with the application's name ``shop`` replaced by ``name``."""
    blocks = {match["title"]: match["body"] for match in SQL_BLOCK.finditer(PAGE.read_text())}
    body = re.sub(r"\bshop", name, blocks[title])
    return [statement.strip() for statement in body.split(";") if statement.strip()]


def run_as_admin(url: str, statements: list[str]) -> None:
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            cursor = connection.connection.cursor()  # as written: no parameters, so "%" is only a character
            for statement in statements:
                cursor.execute(statement)
    finally:
        engine.dispose()


@dataclass
class Roles:
    """The two users of one application's database, and the settings every dbmigrate process of it gets."""

    backend: str
    migrator_url: str
    app_url: str
    settings: dict[str, str]
    tables_schema: str

    def dbmigrate(self, project: Path, url: str, *args: str) -> subprocess.CompletedProcess[str]:
        return run_dbmigrate(*args, cwd=project, database_url=url, **self.settings)


def _url(admin: str, user: str, password: str, database: str) -> str:
    return make_url(admin).set(username=user, password=password, database=database).render_as_string(False)


@pytest.fixture
def postgresql_roles() -> Iterator[Roles]:
    name = f"lp_{uuid.uuid4().hex[:10]}"
    run_as_admin(POSTGRES_ADMIN, documented_sql("PostgreSQL: the roles and the database", name))
    try:
        run_as_admin(
            make_url(POSTGRES_ADMIN).set(database=name).render_as_string(False),
            documented_sql("PostgreSQL: schemas and default privileges", name),
        )
        yield Roles(
            "postgresql",
            _url(POSTGRES_ADMIN, f"{name}_migrator", "migrator-password", name),
            _url(POSTGRES_ADMIN, f"{name}_app", "app-password", name),
            {"DBMIGRATE_TABLE_SCHEMA": "dbmigrate"},
            "dbmigrate",
        )
    finally:
        run_as_admin(
            POSTGRES_ADMIN,
            [f"DROP DATABASE IF EXISTS {name} WITH (FORCE)", f"DROP ROLE IF EXISTS {name}_app, {name}_migrator"],
        )


@pytest.fixture
def mariadb_roles() -> Iterator[Roles]:
    name = f"lp_{uuid.uuid4().hex[:10]}"
    try:
        run_as_admin(MARIADB_ADMIN, documented_sql("MariaDB: the users and their grants", name))
        yield Roles(
            "mariadb",
            _url(MARIADB_ADMIN, f"{name}_migrator", "migrator-password", name),
            _url(MARIADB_ADMIN, f"{name}_app", "app-password", name),
            {"DBMIGRATE_TABLE_SCHEMA": f"{name}_dbmigrate", "DBMIGRATE_BACKUP_SCHEMA": f"{name}_backup"},
            f"{name}_dbmigrate",
        )
    finally:
        run_as_admin(
            MARIADB_ADMIN,
            [f"DROP DATABASE IF EXISTS {name}{suffix}" for suffix in ("", "_dbmigrate", "_backup")]
            + [f"DROP USER IF EXISTS '{name}_migrator'@'%', '{name}_app'@'%'"],
        )


@pytest.fixture(params=["postgresql", "mariadb"])
def roles(request: pytest.FixtureRequest) -> Roles:
    return request.getfixturevalue(f"{request.param}_roles")  # type: ignore[no-any-return]


def upgrade_as_the_migration_role(roles: Roles, project: Path) -> None:
    upgraded = roles.dbmigrate(project, roles.migrator_url, "upgrade")
    assert upgraded.returncode == 0, upgraded.stderr
    if roles.backend == "postgresql":
        admin = make_url(POSTGRES_ADMIN).set(database=make_url(roles.app_url).database).render_as_string(False)
        run_as_admin(
            admin, documented_sql("PostgreSQL: after the first upgrade", str(make_url(roles.app_url).database))
        )


def is_ready_as(roles: Roles, project: Path, url: str) -> bool:
    return dbmigrate.is_ready(
        cache_seconds=0,
        config_file=str(project / "alembic.ini"),
        database_url=url,
        table_schema=roles.tables_schema,
    )


def fails_for_the_app_role(roles: Roles, statement: str) -> bool:
    with connect(roles.app_url) as connection:
        try:
            connection.exec_driver_sql(statement)
            connection.commit()
        except DBAPIError:
            return True
    return False


def test_the_application_role_waits_probes_and_reads_status_after_the_migration_role_upgrades(
    roles: Roles, project: Path
) -> None:
    # Before the first upgrade nothing exists: not ready yet, and nothing was created by asking.
    early = roles.dbmigrate(project, roles.app_url, "wait", "--timeout", "1")
    assert early.returncode == 3, early.stderr
    assert "6 revision(s) pending" in early.stderr
    assert is_ready_as(roles, project, roles.app_url) is False

    upgrade_as_the_migration_role(roles, project)

    waited = roles.dbmigrate(project, roles.app_url, "wait", "--timeout", "10", "--format", "json")
    assert waited.returncode == 0, waited.stderr
    assert json.loads(waited.stdout)["current"] == [EXAMPLE_HEAD]
    assert is_ready_as(roles, project, roles.app_url) is True
    status = roles.dbmigrate(project, roles.app_url, "status", "--check", "--format", "json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["last_run"][-1]["status"] == "applied"


def test_the_application_role_writes_rows_but_cannot_change_the_schema_or_dbmigrates_tables(
    roles: Roles, project: Path
) -> None:
    upgrade_as_the_migration_role(roles, project)
    with connect(roles.app_url) as connection:
        connection.exec_driver_sql("INSERT INTO customers (id, email, full_name) VALUES (1000, 'a@example.com', 'A')")
        connection.exec_driver_sql("UPDATE customers SET email = 'b@example.com' WHERE id = 1000")
        connection.commit()

    assert fails_for_the_app_role(roles, "DROP TABLE customers")
    assert fails_for_the_app_role(roles, "ALTER TABLE customers ADD COLUMN extra INTEGER")
    assert fails_for_the_app_role(roles, "CREATE TABLE sneaky (id INTEGER)")
    assert fails_for_the_app_role(roles, f"DELETE FROM {roles.tables_schema}.dbmigrate_history")
    assert fails_for_the_app_role(roles, f"DROP TABLE {roles.tables_schema}.dbmigrate_history")
    if roles.backend == "postgresql":  # MySQL cannot take one table back from a database-wide grant (documented)
        assert fails_for_the_app_role(roles, "UPDATE alembic_version SET version_num = 'x'")
    assert roles.dbmigrate(project, roles.app_url, "wait", "--timeout", "5").returncode == 0


WRITES = re.compile(r"^\s*(INSERT|UPDATE|DELETE|CREATE|ALTER|DROP|TRUNCATE|GRANT|REVOKE|LOCK)\b", re.IGNORECASE)
LOCKS = re.compile(r"advisory_lock|GET_LOCK\s*\(", re.IGNORECASE)


def test_wait_status_and_is_ready_send_no_write_and_take_no_lock(roles: Roles, project: Path) -> None:
    upgrade_as_the_migration_role(roles, project)
    sent: list[str] = []

    def record(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        sent.append(statement)

    options = {"config_file": str(project / "alembic.ini"), "database_url": roles.app_url}
    options["table_schema"] = roles.tables_schema
    sa.event.listen(sa.engine.Engine, "before_cursor_execute", record)
    try:
        assert dbmigrate.wait_until_ready(timeout=10, **options).ready
        assert dbmigrate.status(**options).at_head
        assert dbmigrate.is_ready(cache_seconds=0, **options)
    finally:
        sa.event.remove(sa.engine.Engine, "before_cursor_execute", record)

    assert any("alembic_version" in statement for statement in sent)
    assert [statement for statement in sent if WRITES.search(statement) or LOCKS.search(statement)] == []


def test_a_grant_the_application_role_lacks_is_named_with_the_fix(roles: Roles, project: Path) -> None:
    upgrade_as_the_migration_role(roles, project)
    user = make_url(roles.app_url).username
    history = f"{roles.tables_schema}.dbmigrate_history"
    grantee = f"'{user}'@'%'" if roles.backend == "mariadb" else user
    admin = POSTGRES_ADMIN if roles.backend == "postgresql" else MARIADB_ADMIN
    admin = make_url(admin).set(database=make_url(roles.app_url).database).render_as_string(False)
    run_as_admin(
        admin,
        [f"REVOKE SELECT ON {roles.tables_schema}.* FROM {grantee}"]
        if roles.backend == "mariadb"
        else [f"REVOKE SELECT ON {history}, {roles.tables_schema}.dbmigrate_backfills FROM {grantee}"],
    )

    waited = roles.dbmigrate(project, roles.app_url, "wait", "--timeout", "10")

    assert waited.returncode == 2, waited.stderr
    assert f"The database user {user} may not read what dbmigrate wait needs" in waited.stderr
    assert f"GRANT SELECT ON alembic_version, {history}" in waited.stderr
    assert "app-password" not in waited.stderr
    assert is_ready_as(roles, project, roles.app_url) is False


def test_the_init_container_with_the_application_role_wakes_when_the_migration_job_finishes(
    postgresql_roles: Roles, project: Path
) -> None:
    roles = postgresql_roles
    log = project / "wait.log"
    with log.open("w") as stderr:
        waiting = subprocess.Popen(
            [sys.executable, "-m", "dbmigrate", "wait", "--timeout", str(WAIT_LIMIT)],
            cwd=project,
            env=dbmigrate_env(roles.app_url, **roles.settings),
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
    try:
        deadline = time.monotonic() + WAIT_LIMIT
        while "waiting for the schema" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        upgrade_as_the_migration_role(roles, project)
        waiting.communicate(timeout=WAIT_LIMIT)
    finally:
        if waiting.poll() is None:
            waiting.kill()
            waiting.wait()
    assert waiting.returncode == 0, log.read_text()
    assert "notified: a migration run finished" in log.read_text()
