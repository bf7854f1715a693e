"""Every common env.py shape, unmodified: it works with all of dbmigrate's promises, or is refused at once.

Each shape (``tests/envpy_shapes/README.md``; the ``alembic init`` templates are generated here
with the installed Alembic) runs through ``upgrade``, ``status``, ``check`` and ``verify`` on each
backend it makes sense for, with three revisions: a table, a column, and one that creates a table
and then fails. Working means: history rows for every step, one transaction per revision (on
PostgreSQL and SQLite the failing revision leaves no trace and the message says it was rolled
back; on MariaDB it is partial and the message says so). Refused means: exit 2 before any step
ran, with a message that names the pattern and the change, and never a claim of a rollback.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.conftest import create_database, current_revisions, drop_database, history_rows, run_dbmigrate, table_names

Dbmigrate = Callable[..., subprocess.CompletedProcess[str]]
SHAPES = Path(__file__).resolve().parent / "envpy_shapes"
FLASK_APP = "flaskapp:create_app()"

_REVISION = '''"""{revision}"""

# dbmigrate: allow-data-loss reason="the downgrade drops only what its upgrade created"
import sqlalchemy as sa

from alembic import op

revision = {revision!r}
down_revision = {down!r}
branch_labels = None
depends_on = None


def upgrade() -> None:
{upgrade}


def downgrade() -> None:
{downgrade}
'''
# The first revision prints the lock timeout of the session it runs on: whichever connection env.py
# gives Alembic, dbmigrate's timeouts must be set on it.
SHOW_LOCK_TIMEOUT = """if not op.get_context().as_sql:
    bind = op.get_bind()
    queries = {"postgresql": "SHOW lock_timeout", "sqlite": "PRAGMA busy_timeout"}
    query = queries.get(bind.dialect.name, "SELECT @@SESSION.lock_wait_timeout")
    print("lock timeout in the step:", bind.exec_driver_sql(query).scalar())"""
LOCK_TIMEOUT_SHOWN = {"postgresql": "3s", "mariadb": "3", "sqlite": "3000"}  # with --lock-timeout 3
REVISIONS = [
    (
        "shape_1",
        None,
        'op.create_table("shape_items", sa.Column("id", sa.Integer, primary_key=True), sa.Column("name", sa.Text))\n'
        + SHOW_LOCK_TIMEOUT,
        'op.drop_table("shape_items")',
    ),
    (
        "shape_2",
        "shape_1",
        'op.add_column("shape_items", sa.Column("note", sa.String(200)))',
        'op.drop_column("shape_items", "note")',
    ),
    (
        "shape_3",
        "shape_2",
        'op.create_table("shape_doomed", sa.Column("id", sa.Integer, primary_key=True))\n'
        'op.execute("SELECT no_such_column FROM shape_items")',
        'op.drop_table("shape_doomed")',
    ),
]
# A multidb project's revisions take the database's name, as its template writes them.
_MULTIDB_REVISION = '''"""{revision}"""

# dbmigrate: allow-data-loss reason="the downgrade drops only what its upgrade created"
import sqlalchemy as sa

from alembic import op

revision = {revision!r}
down_revision = {down!r}
branch_labels = None
depends_on = None


def upgrade(engine_name: str) -> None:
    if engine_name == "engine1":
        {upgrade}


def downgrade(engine_name: str) -> None:
    if engine_name == "engine1":
        {downgrade}
'''

# What a refusal must say: the pattern, and the change.
MULTIDB = (
    "env.py migrates several databases in one run (Alembic's multidb template: context.configure(upgrade_token=...)",
    "run dbmigrate once per database",
)
AUTOCOMMIT = (
    "env.py hands Alembic a connection in AUTOCOMMIT mode",
    "Remove that isolation_level setting from env.py",
)


@dataclasses.dataclass(frozen=True)
class Shape:
    name: str
    template: str | None = None  # made by `alembic init -t TEMPLATE`; else tests/envpy_shapes/<name>
    backends: tuple[str, ...] = ("postgresql", "mariadb", "sqlite")
    refused: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)  # backend -> what refusals say
    refuses_reading: bool = False  # status and check are refused too (the pattern is visible without migrating)
    env: dict[str, str] = dataclasses.field(default_factory=dict)

    def __str__(self) -> str:
        return self.name


ALL_REFUSE_AUTOCOMMIT = dict.fromkeys(("postgresql", "mariadb", "sqlite"), AUTOCOMMIT)
SHAPES_UNDER_TEST = [
    Shape("generic", template="generic"),
    Shape("pyproject", template="pyproject"),
    # Async drivers: psycopg 3 serves PostgreSQL; SQLite and MariaDB would need aiosqlite / aiomysql.
    Shape("async", template="async", backends=("postgresql",)),
    Shape("pyproject_async", template="pyproject_async", backends=("postgresql",)),
    Shape(
        "multidb",
        template="multidb",
        refused=dict.fromkeys(("postgresql", "mariadb", "sqlite"), MULTIDB),
        refuses_reading=True,
    ),
    Shape("cookbook_old"),
    Shape("cookbook_new"),
    Shape("flask_migrate", env={"FLASK_APP": FLASK_APP, "DBMIGRATE_CONFIG": "migrations/alembic.ini"}),
    Shape("app_config"),
    # pysqlite under dbmigrate: the driver autocommits and dbmigrate emits BEGIN itself unless the
    # *connection* asks for AUTOCOMMIT, so an AUTOCOMMIT engine still runs one transaction per revision.
    Shape("autocommit_engine", refused={"postgresql": AUTOCOMMIT, "mariadb": AUTOCOMMIT}),
    Shape("autocommit_connection", refused=ALL_REFUSE_AUTOCOMMIT),
]
CASES = [
    pytest.param(shape, backend, id=f"{shape}-{backend}") for shape in SHAPES_UNDER_TEST for backend in shape.backends
]


def write_revisions(versions: Path, multidb: bool = False) -> None:
    for revision, down, upgrade, downgrade in REVISIONS:
        if multidb:
            source = _MULTIDB_REVISION.format(
                revision=revision,
                down=down,
                upgrade=upgrade.replace("\n", "\n        "),
                downgrade=downgrade,
            )
        else:
            source = _REVISION.format(
                revision=revision, down=down, upgrade=_indent(upgrade), downgrade=_indent(downgrade)
            )
        (versions / f"{revision}.py").write_text(source)


def _indent(code: str) -> str:
    return "\n".join("    " + line for line in code.splitlines())


@pytest.fixture(scope="session")
def initialised(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """What `alembic init -t TEMPLATE migrations` makes, once per template and test process."""
    made: dict[str, Path] = {}

    def project_of(template: str) -> Path:
        if template not in made:
            made[template] = tmp_path_factory.mktemp(f"alembic_init_{template}")
            subprocess.run(
                [sys.executable, "-m", "alembic", "init", "-t", template, "migrations"],
                cwd=made[template],
                check=True,
                capture_output=True,
            )
        return made[template]

    return project_of


def make_project(shape: Shape, root: Path, database_url: str, initialised: Callable[[str], Path]) -> Path:
    """A project of ``shape`` holding the three revisions; returns the directory to run dbmigrate in."""
    project = root / f"project_{shape.name}"
    template = shape.template or "generic"
    shutil.copytree(initialised(template), project)
    if shape.template is None:
        stored = SHAPES / shape.name
        shutil.copy(stored / "env.py", project / "migrations" / "env.py")
        for module in stored.glob("*.py"):
            if module.name != "env.py":
                shutil.copy(module, project / module.name)
        if (stored / "alembic.ini").exists():  # the ini lives beside env.py (Flask-Migrate)
            (project / "alembic.ini").unlink()
            shutil.copy(stored / "alembic.ini", project / "migrations" / "alembic.ini")
    if template == "multidb":
        ini = project / "alembic.ini"
        ini.write_text(
            ini.read_text()
            .replace("driver://user:pass@localhost/dbname2", database_url)
            .replace("driver://user:pass@localhost/dbname", database_url)
        )
    write_revisions(project / "migrations" / "versions", multidb=template == "multidb")
    return project


def column_names(database_url: str, table: str) -> set[str]:
    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as connection:
            return {column["name"] for column in sa.inspect(connection).get_columns(table)}
    finally:
        engine.dispose()


@pytest.mark.parametrize(("shape", "backend"), CASES)
def test_env_py_shape_keeps_every_promise_or_is_refused_at_once(
    shape: Shape, backend: str, tmp_path: Path, initialised: Callable[[str], Path]
) -> None:
    database_url = create_database(backend, tmp_path)
    try:
        project = make_project(shape, tmp_path, database_url, initialised)

        def dbmigrate(*args: str) -> subprocess.CompletedProcess[str]:
            return run_dbmigrate(*args, cwd=project, database_url=database_url, **shape.env)

        refusal = shape.refused.get(backend)
        if refusal is None:
            assert_works(dbmigrate, database_url, backend)
        else:
            assert_refused(dbmigrate, database_url, refusal, shape.refuses_reading)
    finally:
        drop_database(database_url)


def assert_works(dbmigrate: Dbmigrate, database_url: str, backend: str) -> None:
    upgraded = dbmigrate("upgrade", "shape_2", "--lock-timeout", "3")
    assert upgraded.returncode == 0, upgraded.stderr
    assert f"lock timeout in the step: {LOCK_TIMEOUT_SHOWN[backend]}" in upgraded.stderr
    assert current_revisions(database_url) == {"shape_2"}
    assert "note" in column_names(database_url, "shape_items")
    assert [(row["revision"], row["status"]) for row in history_rows(database_url)] == [
        ("shape_1", "applied"),
        ("shape_2", "applied"),
    ]

    status = dbmigrate("status", "--format", "json")
    assert status.returncode == 0, status.stderr
    reported = json.loads(status.stdout)
    assert (reported["current"], reported["pending"]) == (["shape_2"], ["shape_3"])

    checked = dbmigrate("check", "--all", "--format", "json")
    assert checked.returncode == 0, checked.stderr
    report = json.loads(checked.stdout)
    assert report["not_analysed"] == [], report  # env.py rendered every step offline
    assert report["revisions_checked"] == 3

    verified = dbmigrate("verify", "--range", "base:shape_1", "--format", "json")
    assert verified.returncode == 0, verified.stderr
    assert json.loads(verified.stdout)["revisions_checked"] == 1
    assert "data backed up before the step" in verified.stderr  # shape_1's downgrade drops its table

    failed = dbmigrate("upgrade")
    last = history_rows(database_url)[-1]
    if backend == "mariadb":  # its CREATE TABLE committed on its own: partial, and said so
        assert failed.returncode == 5, failed.stderr
        assert (last["revision"], last["status"]) == ("shape_3", "partial")
        assert "was rolled back" not in failed.stderr
    else:  # one transaction per revision: the failing one leaves no trace
        assert failed.returncode == 1, failed.stderr
        assert "Its transaction was rolled back: the database is still at shape_2" in failed.stderr
        assert (last["revision"], last["status"]) == ("shape_3", "failed")
        assert "shape_doomed" not in table_names(database_url)
        assert current_revisions(database_url) == {"shape_2"}


def assert_refused(dbmigrate: Dbmigrate, database_url: str, message: tuple[str, ...], refuses_reading: bool) -> None:
    upgraded = dbmigrate("upgrade")
    assert upgraded.returncode == 2, upgraded.stderr
    assert all(phrase in upgraded.stderr for phrase in message), upgraded.stderr
    assert "was rolled back" not in upgraded.stderr
    assert "Nothing was run." in upgraded.stderr
    assert not {"shape_items", "shape_doomed", "alembic_version"} & table_names(database_url)
    assert history_rows(database_url) == []

    verified = dbmigrate("verify")
    assert verified.returncode == 2, verified.stderr
    assert message[0] in verified.stderr

    status = dbmigrate("status", "--format", "json")
    checked = dbmigrate("check", "--all", "--format", "json")
    if refuses_reading:
        for proc in (status, checked):
            assert proc.returncode == 2, proc.stderr
            assert message[0] in proc.stderr
    else:  # reading is safe: only migrating would break the promise
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["pending"] == ["shape_1", "shape_2", "shape_3"]
        assert checked.returncode == 0, checked.stderr
        assert json.loads(checked.stdout)["not_analysed"] == []


def test_flask_migrate_env_py_without_flask_app_is_refused_naming_the_variable(
    tmp_path: Path, initialised: Callable[[str], Path]
) -> None:
    database_url = create_database("sqlite", tmp_path)
    project = make_project(Shape("flask_migrate"), tmp_path, database_url, initialised)

    proc = run_dbmigrate("upgrade", cwd=project, database_url=database_url, DBMIGRATE_CONFIG="migrations/alembic.ini")

    assert proc.returncode == 2, proc.stderr
    assert "env.py uses Flask's current_app (Flask-Migrate's env.py)" in proc.stderr
    assert "Set FLASK_APP" in proc.stderr
    assert table_names(database_url) == set()


def test_env_py_that_connects_to_another_database_is_refused_before_any_step(
    tmp_path: Path, initialised: Callable[[str], Path]
) -> None:
    """The app's settings say DATABASE_URL=one database, dbmigrate was told another: nothing runs on either."""
    apps_database = create_database("sqlite", tmp_path)
    given = create_database("sqlite", tmp_path)
    project = make_project(Shape("app_config"), tmp_path, apps_database, initialised)

    upgrade = run_dbmigrate("upgrade", "--database-url", given, cwd=project, database_url=apps_database)
    status = run_dbmigrate("status", "--database-url", given, cwd=project, database_url=apps_database)

    for proc in (upgrade, status):
        assert proc.returncode == 2, proc.stderr
        assert "env.py connects to sqlite:///" in proc.stderr
        assert 'config.attributes.get(\\"connection\\") or <your engine>' in proc.stderr
    assert "shape_items" not in table_names(apps_database) | table_names(given)
