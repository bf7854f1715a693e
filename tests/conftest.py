"""Fixtures that build real databases: a fresh PostgreSQL or MariaDB database, or a SQLite file, per test.

The servers are the ones every development and CI machine runs (README and docs/development.md, "Tests"): PostgreSQL on
127.0.0.1:5432 (user postgres) and MariaDB on 127.0.0.1:3306 (user root). Point elsewhere with
DBMIGRATE_TEST_POSTGRES_URL / DBMIGRATE_TEST_MARIADB_URL (an admin URL; the database part is replaced).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

REPO = Path(__file__).resolve().parent.parent
POSTGRES_ADMIN = os.environ.get("DBMIGRATE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
MARIADB_ADMIN = os.environ.get("DBMIGRATE_TEST_MARIADB_URL", "mysql+pymysql://root@127.0.0.1:3306/test")
BACKENDS = ["postgresql", "mariadb", "sqlite"]
EXAMPLE_HEAD = "0006_name_contract"
EXAMPLE_REVISIONS = [
    "0001_customers",
    "0002_orders",
    "0003_orders_customer_idx",
    "0004_email_domain",
    "0005_full_name_expand",
    EXAMPLE_HEAD,
]


def create_database(backend: str, tmp_path: Path) -> str:
    """A new, empty database on ``backend``; returns its URL."""
    name = f"dbm_{uuid.uuid4().hex[:12]}"
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / (name + '.db')}"
    admin = POSTGRES_ADMIN if backend == "postgresql" else MARIADB_ADMIN
    engine = sa.create_engine(admin, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.exec_driver_sql(f"CREATE DATABASE {name}")
    engine.dispose()
    return make_url(admin).set(database=name).render_as_string(hide_password=False)


def drop_database(url: str) -> None:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return
    admin = POSTGRES_ADMIN if parsed.get_backend_name() == "postgresql" else MARIADB_ADMIN
    engine = sa.create_engine(admin, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        force = " WITH (FORCE)" if parsed.get_backend_name() == "postgresql" else ""
        connection.exec_driver_sql(f"DROP DATABASE IF EXISTS {parsed.database}{force}")
    engine.dispose()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def database_url(backend: str, tmp_path: Path) -> Iterator[str]:
    """A fresh database on each backend in turn (the test runs once per backend)."""
    url = create_database(backend, tmp_path)
    yield url
    drop_database(url)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of the example application's Alembic project (alembic.ini + alembic/), safe to edit."""
    target = tmp_path / "project"
    target.mkdir()
    shutil.copy(REPO / "alembic.ini", target / "alembic.ini")
    shutil.copytree(REPO / "alembic", target / "alembic", ignore=shutil.ignore_patterns("__pycache__"))
    return target


@pytest.fixture
def pristine_project(tmp_path: Path) -> Path:
    """A project made by a real ``alembic init`` (env.py untouched), holding the example revisions."""
    target = tmp_path / "pristine"
    target.mkdir()
    subprocess.run([sys.executable, "-m", "alembic", "init", "migrations"], cwd=target, check=True, capture_output=True)
    for revision in (REPO / "alembic" / "versions").glob("*.py"):
        shutil.copy(revision, target / "migrations" / "versions" / revision.name)
    return target


def dbmigrate_env(database_url: str, **extra: str) -> dict[str, str]:
    """The environment for a dbmigrate process: this interpreter's, plus the URL and JSON logs."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DBMIGRATE_") and k != "DATABASE_URL"}
    env.update({"DATABASE_URL": database_url, "DBMIGRATE_LOG_FORMAT": "json", "DBMIGRATE_TERMINATION_LOG": os.devnull})
    env.update(extra)
    return env


def run_dbmigrate(
    *args: str, cwd: Path, database_url: str, timeout: float = 120, **extra_env: str
) -> subprocess.CompletedProcess[str]:
    """Run the real CLI in a child process and wait for it."""
    return subprocess.run(
        [sys.executable, "-m", "dbmigrate", *args],
        cwd=cwd,
        env=dbmigrate_env(database_url, **extra_env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@contextlib.contextmanager
def connect(url: str) -> Iterator[sa.Connection]:
    """A connection of its own to ``url`` (no pool), closed with its engine after the block."""
    engine = sa.create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            yield connection
    finally:
        engine.dispose()


def table_names(database_url: str) -> set[str]:
    """The tables the database holds now."""
    with connect(database_url) as connection:
        return set(sa.inspect(connection).get_table_names())


def current_revisions(database_url: str) -> set[str]:
    """alembic_version as the database holds it (empty when the table is missing)."""
    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as connection:
            if not sa.inspect(connection).has_table("alembic_version"):
                return set()
            return {row[0] for row in connection.exec_driver_sql("SELECT version_num FROM alembic_version")}
    finally:
        engine.dispose()


def history_rows(database_url: str) -> list[dict[str, object]]:
    """dbmigrate_history, oldest first."""
    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as connection:
            if not sa.inspect(connection).has_table("dbmigrate_history"):
                return []
            result = connection.exec_driver_sql("SELECT * FROM dbmigrate_history ORDER BY id")
            return [dict(row._mapping) for row in result]
    finally:
        engine.dispose()


_REVISION_TEMPLATE = '''"""{revision}: added by a test"""

import os
import time

import sqlalchemy as sa

from alembic import op

revision = {revision!r}
down_revision = {down_revision!r}
branch_labels = None
depends_on = None


def pause(name: str) -> None:
    """Sleep TEST_PAUSE_SECONDS, then wait (60 s at most) for the file TEST_GATE_DIR/name; not offline."""
    if op.get_context().as_sql:
        return
    time.sleep(float(os.environ.get("TEST_PAUSE_SECONDS") or 0))
    gate_dir = os.environ.get("TEST_GATE_DIR")
    deadline = time.monotonic() + 60
    while gate_dir and not os.path.exists(os.path.join(gate_dir, name)) and time.monotonic() < deadline:
        time.sleep(0.02)


def upgrade() -> None:
{upgrade}


def downgrade() -> None:
{downgrade}
'''


def add_revision(
    project: Path, revision: str, down_revision: str | None, upgrade: str, downgrade: str = "pass"
) -> None:
    """Write a revision into a copied project; ``upgrade``/``downgrade`` are function bodies (unindented).

    The module imports ``os``, ``time``, ``sa`` and ``op``, and defines ``pause(name)``: it sleeps
    ``TEST_PAUSE_SECONDS`` and then waits for the file ``TEST_GATE_DIR/name`` (when those are set).
    """

    def body(code: str) -> str:
        return "\n".join("    " + line if line.strip() else "" for line in code.strip().splitlines())

    source = _REVISION_TEMPLATE.format(
        revision=revision, down_revision=down_revision, upgrade=body(upgrade), downgrade=body(downgrade)
    )
    (project / "alembic" / "versions" / f"{revision}.py").write_text(source)


def log_events(stderr: str) -> list[dict[str, object]]:
    """The JSON log lines of a dbmigrate process's stderr (other lines are skipped)."""
    events = []
    for line in stderr.splitlines():
        if line.startswith("{"):
            try:
                events.append(json.loads(line))
            except ValueError:
                continue
    return events


def every_line_as_json(stderr: str) -> list[dict[str, object]]:
    """Each stderr line of a dbmigrate process parsed; fails the test at the first line that is not JSON."""
    lines = []
    for line in stderr.splitlines():
        try:
            lines.append(json.loads(line))
        except ValueError:
            pytest.fail(f"a log line is not JSON: {line!r}")
    return lines


def start_dbmigrate(*args: str, cwd: Path, database_url: str, output: Path, **extra_env: str) -> subprocess.Popen[str]:
    """Start the real CLI in a child process without waiting; stdout and stderr go to ``output``.out/.err."""
    with open(f"{output}.out", "w") as stdout, open(f"{output}.err", "w") as stderr:
        return subprocess.Popen(
            [sys.executable, "-m", "dbmigrate", *args],
            cwd=cwd,
            env=dbmigrate_env(database_url, **extra_env),
            stdout=stdout,
            stderr=stderr,
            text=True,
        )


def free_port() -> int:
    """A TCP port on 127.0.0.1 where nothing listens (at the moment of asking)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def remove_revisions(project: Path) -> None:
    """Delete every revision file of a copied project, to build a small graph with ``add_revision``."""
    for revision in (project / "alembic" / "versions").glob("*.py"):
        revision.unlink()


# The part of an address after its '@' in each database's SQL, as the example app's 0004 revision computes it.
EMAIL_DOMAIN_SQL = {
    "postgresql": "split_part(email, '@', 2)",
    "mysql": "SUBSTRING_INDEX(email, '@', -1)",
    "mariadb": "SUBSTRING_INDEX(email, '@', -1)",
    "sqlite": "substr(email, instr(email, '@') + 1)",
}


def add_backfill_revisions(project: Path, rows: int, values: str, columns: str = "", downgrade: str = "pass") -> None:
    """Replace a copied project's revisions with two.

    ``0001_items`` creates ``items`` (id, email) holding ``rows`` rows (row i's email is
    ``user{i}@d{i % 7}.example``). ``0002_backfill`` adds the columns ``columns`` (Python code: ``sa.Column``
    arguments of ``op.add_column``, separated by ``;``; default: a nullable ``domain``) and calls
    ``dbmigrate.backfill("items", <values>)``, ``values`` being Python code that may use ``DOMAIN``, the
    dialect's email-domain SQL. ``downgrade`` is the body of its ``downgrade()``.
    """
    remove_revisions(project)
    add_revision(
        project,
        "0001_items",
        None,
        f"""
items = op.create_table(
    "items",
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("email", sa.String(100), nullable=True),
)
op.bulk_insert(items, [{{"id": i, "email": f"user{{i}}@d{{i % 7}}.example"}} for i in range(1, {rows} + 1)])
""",
        'op.drop_table("items")',
    )
    added = "\n".join(
        f"op.add_column('items', {column.strip()})"
        for column in (columns or 'sa.Column("domain", sa.String(100), nullable=True)').split(";")
    )
    add_revision(
        project,
        "0002_backfill",
        "0001_items",
        f"""
import dbmigrate

DOMAIN = {EMAIL_DOMAIN_SQL!r}[op.get_context().dialect.name]
{added}
dbmigrate.backfill("items", {values})
""",
        downgrade,
    )


def trigger_names(database_url: str) -> set[str]:
    """The triggers the database holds now (PostgreSQL: those of users, not constraints)."""
    backend = make_url(database_url).get_backend_name()
    query = {
        "postgresql": "SELECT tgname FROM pg_trigger WHERE NOT tgisinternal",
        "sqlite": "SELECT name FROM sqlite_master WHERE type = 'trigger'",
    }.get(backend, "SELECT TRIGGER_NAME FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = DATABASE()")
    with connect(database_url) as connection:
        return {row[0] for row in connection.exec_driver_sql(query)}


def backfill_rows(database_url: str) -> list[dict[str, object]]:
    """dbmigrate_backfills, oldest first (empty when the table is missing)."""
    with connect(database_url) as connection:
        if not sa.inspect(connection).has_table("dbmigrate_backfills"):
            return []
        rows = connection.exec_driver_sql("SELECT * FROM dbmigrate_backfills ORDER BY id")
        return [dict(row._mapping) for row in rows]
