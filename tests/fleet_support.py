"""Building real fleets for the fleet tests: SQLite files, PostgreSQL databases and schemas, MariaDB databases.

A :class:`Fleet` creates its databases (and a MariaDB user with a password), writes the fleet file,
reads each target's revision and history, and drops everything it made.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import urllib.parse
import uuid
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from tests.conftest import (
    MARIADB_ADMIN,
    POSTGRES_ADMIN,
    connect,
    create_database,
    dbmigrate_env,
    drop_database,
    log_events,
)

# A real password with the characters URLs and shells trip on; the MariaDB targets log in with it.
SECRET = "Fl33t:p@ss/w%rd?#&+x"
SECRET_ENV = "FLEET_DB_PASSWORD"


def forms(secret: str) -> list[str]:
    """The secret as it is and URL-encoded, the ways it could show up."""
    return sorted({secret, urllib.parse.quote(secret, safe=""), urllib.parse.quote_plus(secret)})


@dataclasses.dataclass
class Member:
    """One target of a test fleet: its name, the URL to read it with (admin rights) and its schema."""

    name: str
    url: str
    schema: str | None = None


@dataclasses.dataclass
class Fleet:
    """A fleet of real databases for one test; call :meth:`drop` when done."""

    tmp_path: Path
    members: dict[str, Member] = dataclasses.field(default_factory=dict)
    entries: list[str] = dataclasses.field(default_factory=list)
    _databases: list[str] = dataclasses.field(default_factory=list)
    _mariadb_user: str | None = None

    def add_sqlite(self, count: int) -> list[str]:
        names = [f"lite{i:02d}" for i in range(count)]
        directory = self.tmp_path / "sqlite"
        directory.mkdir(exist_ok=True)
        for name in names:
            self.members[name] = Member(name, f"sqlite:///{directory / name}.db")
        self.entries.append(f'[[targets]]\nurl = "sqlite:///{directory}/{{name}}.db"\nnames = {json.dumps(names)}\n')
        return names

    def add_postgres_databases(self, count: int) -> list[str]:
        """PostgreSQL databases named by a template; the password comes from the environment."""
        urls = [create_database("postgresql", self.tmp_path) for _ in range(count)]
        self._databases += urls
        names = [str(make_url(url).database) for url in urls]
        for name, url in zip(names, urls, strict=True):
            self.members[name] = Member(name, url)
        template = make_url(POSTGRES_ADMIN).set(database="DBNAME").render_as_string(hide_password=False)
        self.entries.append(
            f'[[targets]]\nurl = "{template.replace("DBNAME", "{name}")}"\nnames = {json.dumps(names)}\n'
            f'password_env = "{SECRET_ENV}"\n'
        )
        return names

    def add_postgres_schemas(self, count: int) -> list[str]:
        """One PostgreSQL database, one schema per tenant (provisioned here, as a tenant's sign-up would)."""
        url = create_database("postgresql", self.tmp_path)
        self._databases.append(url)
        schemas = [f"tenant_{i}" for i in range(count)]
        with connect(url) as connection:
            for schema in schemas:
                connection.exec_driver_sql(f"CREATE SCHEMA {schema}")
            connection.commit()
        names = [f"schema-{schema}" for schema in schemas]
        for name, schema in zip(names, schemas, strict=True):
            self.members[name] = Member(name, url, schema)
        self.entries.append(
            f'[[targets]]\nname = "schema-{{name}}"\nurl = "{url}"\nschema = "{{name}}"\n'
            f"names = {json.dumps(schemas)}\n"
        )
        return names

    def add_mariadb_databases(self, count: int) -> list[str]:
        """MariaDB databases reached as a user of their own, whose password comes from the environment."""
        urls = [create_database("mariadb", self.tmp_path) for _ in range(count)]
        self._databases += urls
        user = f"fleet_{uuid.uuid4().hex[:8]}"
        backups = f"{user}_bk"
        self._mariadb_user = user
        with connect(MARIADB_ADMIN) as connection:
            create = sa.text("CREATE USER :user@'%' IDENTIFIED BY :password")
            connection.execute(create, {"user": user, "password": SECRET})
            for database in [*(make_url(url).database for url in urls), backups]:
                connection.execute(sa.text(f"GRANT ALL PRIVILEGES ON `{database}`.* TO :user@'%'"), {"user": user})
        names = [str(make_url(url).database) for url in urls]
        for name, url in zip(names, urls, strict=True):
            self.members[name] = Member(name, url)
        template = make_url(MARIADB_ADMIN).set(username=user, database="DBNAME").render_as_string(hide_password=False)
        self.entries.append(
            f'[[targets]]\nurl = "{template.replace("DBNAME", "{name}")}"\nnames = {json.dumps(names)}\n'
            f'password_env = "{SECRET_ENV}"\nsettings = {{backup_schema = "{backups}"}}\n'
        )
        return names

    def add_entry(self, name: str, url: str, entry: str, member_url: str | None = None) -> None:
        """One explicit target; ``entry`` is the rest of its TOML table (after name and url)."""
        self.members[name] = Member(name, member_url or url)
        self.entries.append(f'[[targets]]\nname = "{name}"\nurl = "{url}"\n{entry}')

    def write(self, path: Path | None = None) -> Path:
        path = path or self.tmp_path / "fleet.toml"
        path.write_text("\n".join(self.entries))
        return path

    def current(self, name: str) -> set[str]:
        """The target's alembic_version, read with admin rights (empty when it has none)."""
        member = self.members[name]
        table = f"{member.schema}.alembic_version" if member.schema else "alembic_version"
        with connect(member.url) as connection:
            if not sa.inspect(connection).has_table("alembic_version", schema=member.schema):
                return set()
            return {row[0] for row in connection.exec_driver_sql(f"SELECT version_num FROM {table}")}

    def history_runs(self, name: str) -> set[str]:
        """The run ids in the target's dbmigrate_history."""
        member = self.members[name]
        table = f"{member.schema}.dbmigrate_history" if member.schema else "dbmigrate_history"
        with connect(member.url) as connection:
            if not sa.inspect(connection).has_table("dbmigrate_history", schema=member.schema):
                return set()
            return {row[0] for row in connection.exec_driver_sql(f"SELECT run_id FROM {table}")}

    def drop(self) -> None:
        for url in self._databases:
            drop_database(url)
        if self._mariadb_user:
            with connect(MARIADB_ADMIN) as connection:
                connection.exec_driver_sql(f"DROP DATABASE IF EXISTS `{self._mariadb_user}_bk`")
                connection.execute(sa.text("DROP USER IF EXISTS :user@'%'"), {"user": self._mariadb_user})


def fleet_env(**extra: str) -> dict[str, str]:
    """A dbmigrate process's environment for a fleet: no DATABASE_URL of its own, the password, JSON logs."""
    env = dbmigrate_env("", **{SECRET_ENV: SECRET, **extra})
    env.pop("DATABASE_URL")
    return env


def run_fleet(*args: str, cwd: Path, timeout: float = 300, **extra_env: str) -> subprocess.CompletedProcess[str]:
    """Run ``dbmigrate ARGS`` (with --format json) in a child process and wait for it."""
    return subprocess.run(
        [sys.executable, "-m", "dbmigrate", *args, "--format", "json"],
        cwd=cwd,
        env=fleet_env(**extra_env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def summary(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """The fleet summary a run printed, by target name under ``"by_name"``."""
    try:
        data: dict[str, Any] = json.loads(result.stdout)
    except ValueError:
        raise AssertionError(f"no JSON summary on stdout:\n{result.stdout}\n{result.stderr[-4000:]}") from None
    data["by_name"] = {target["name"]: target for target in data.get("targets", [])}
    return data


def sqlite_fleet_file(directory: Path, names: list[str]) -> Path:
    """A fleet file of SQLite targets ``directory/<name>.db``, in the order of ``names``."""
    path = directory / "fleet.toml"
    path.write_text(f'[[targets]]\nurl = "sqlite:///{directory}/{{name}}.db"\nnames = {json.dumps(names)}\n')
    return path


def applying(log: Path, revision: str) -> set[str]:
    """The targets whose worker logged (in the JSON log file ``log``) that it is applying ``revision``."""
    return {
        str(event.get("target"))
        for event in log_events(log.read_text())
        if event.get("event") == "applying revision" and event.get("revision") == revision
    }
