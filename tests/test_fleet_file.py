"""Fleet files: what they declare becomes targets, and every mistake is named by file, key (or line) and reason.

A URL with a password in it is refused (without showing the password), as are unknown keys, unsafe
names, duplicate targets, options of the wrong type and a schema on a database that is not
PostgreSQL. Names may come from a SQL query on a catalog database (here a real SQLite one).
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from dbmigrate import fleet_file
from dbmigrate.errors import ConfigurationError
from dbmigrate.settings import Settings
from tests.conftest import REPO
from tests.fleet_support import fleet_env


def load(tmp_path: Path, text: str) -> list[fleet_file.Target]:
    path = tmp_path / "fleet.toml"
    path.write_text(text)
    return fleet_file.load(path, Settings(runner="test"))


def refused(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigurationError) as caught:
        load(tmp_path, text)
    return str(caught.value)


def test_explicit_template_and_schema_targets_in_file_order(tmp_path: Path) -> None:
    targets = load(
        tmp_path,
        """
[settings]
lock_timeout = 5

[[targets]]
name = "billing"
url = "postgresql://billing@db:5432/billing"
password_file = "/secrets/billing"
settings = {lock_timeout = 10}

[[targets]]
url = "mysql+pymysql://app@mariadb/shop_{name}"
names = ["acme", "globex"]
password_env = "SHOP_PASSWORD"

[[targets]]
name = "shared-{name}"
url = "postgresql://app@db/shared"
schema = "tenant_{name}"
names = ["a1"]
""",
    )
    assert [(t.name, t.url, t.schema) for t in targets] == [
        ("billing", "postgresql://billing@db:5432/billing", None),
        ("acme", "mysql+pymysql://app@mariadb/shop_acme", None),
        ("globex", "mysql+pymysql://app@mariadb/shop_globex", None),
        ("shared-a1", "postgresql://app@db/shared", "tenant_a1"),
    ]
    assert targets[0].options == {"lock_timeout": 10}
    assert targets[1].options == {"lock_timeout": 5}
    assert targets[1].password_env == "SHOP_PASSWORD"


def test_names_from_a_catalog_query(tmp_path: Path) -> None:
    catalog = tmp_path / "catalog.db"
    with sqlite3.connect(catalog) as connection:
        connection.execute("CREATE TABLE tenants (name text, active integer)")
        connection.executemany("INSERT INTO tenants VALUES (?, ?)", [("zeta", 1), ("alpha", 1), ("gone", 0)])
    targets = load(
        tmp_path,
        f"""
[[targets]]
url = "sqlite:///{tmp_path}/{{name}}.db"
names_query = {{url = "sqlite:///{catalog}", sql = "SELECT name FROM tenants WHERE active = 1 ORDER BY name"}}
""",
    )
    assert [t.name for t in targets] == ["alpha", "zeta"]


def test_a_password_in_a_url_is_refused_without_showing_it(tmp_path: Path) -> None:
    message = refused(tmp_path, '[[targets]]\nname = "a"\nurl = "postgresql://app:hunter2x@db/a"\n')
    assert "targets[0].url" in message and "password_env" in message
    assert "hunter2x" not in message
    message = refused(tmp_path, '[[targets]]\nname = "a"\nurl = "postgresql://app@db/a?password=hunter2x"\n')
    assert "targets[0].url" in message and "hunter2x" not in message


@pytest.mark.parametrize(
    ("text", "named"),
    [
        (
            '[[targets]]\nname = "a"\nurl = "sqlite:///a.db"\n\n[[targets]]\nnmes = ["b"]\nurl = "x"\n',
            "targets[1].nmes",
        ),
        ('[[targets]]\nurl = "sqlite:///{name}.db"\nnames = ["ok", "not ok"]\n', "targets[0].names"),
        (
            '[[targets]]\nurl = "sqlite:///{name}.db"\nnames = ["a"]\n\n[[targets]]\nname = "a"\nurl = "sqlite:///b.db"\n',
            "targets[1]",
        ),
        ('[[targets]]\nname = "a"\nurl = "sqlite:///a.db"\nsettings = {lock_timeout = "soon"}\n', "lock_timeout"),
        ('[[targets]]\nname = "a"\nurl = "sqlite:///a.db"\nsettings = {database_url = "sqlite://"}\n', "database_url"),
        ('[[targets]]\nurl = "mysql://app@db/shared"\nschema = "{name}"\nnames = ["a"]\n', "targets[0].schema"),
        (
            '[[targets]]\nurl = "postgresql://app@db/shared"\nschema = "{name}"\nnames = ["Upper"]\n',
            "targets[0].schema",
        ),
        ('[[targets]]\nurl = "sqlite:///same.db"\nnames = ["a", "b"]\n', "targets[0].url"),
        ("[[targets]]\nname = 'a'\nurl = \n", "line 3"),
        ("[settings]\nlock_timeout = 1\n", "targets"),
    ],
    ids=[
        "unknown-key",
        "unsafe-name",
        "duplicate",
        "wrong-type",
        "url-in-settings",
        "schema-not-postgres",
        "schema-not-plain",
        "template-without-name",
        "toml-syntax",
        "no-targets",
    ],
)
def test_mistakes_name_their_key(tmp_path: Path, text: str, named: str) -> None:
    message = refused(tmp_path, text)
    assert named in message and "fleet.toml" in message, message


def test_the_command_exits_2_for_a_bad_fleet_file(tmp_path: Path) -> None:
    path = tmp_path / "fleet.toml"
    path.write_text('[[targets]]\nname = "a"\nurl = "postgresql://app:hunter2x@db/a"\n')
    result = subprocess.run(
        [sys.executable, "-m", "dbmigrate", "status", "--fleet", str(path)],
        cwd=REPO,
        env=fleet_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "targets[0].url" in result.stderr and "hunter2x" not in result.stderr + result.stdout
