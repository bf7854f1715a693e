"""The database password never appears in any output: stdout, stderr, JSON, termination message, history.

Every run here fails in a way that tempts a leak: a driver error that echoes the URL, a malformed
URL that cannot be parsed (so its password is not known as such), a revision whose exception
message contains the full connection URL. The password comes from the URL, from a URL file or
from a password file, as a Kubernetes Secret would provide it.
"""

from __future__ import annotations

import json
import subprocess
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

import dbmigrate
from tests.conftest import (
    MARIADB_ADMIN,
    add_revision,
    every_line_as_json,
    free_port,
    history_rows,
    remove_revisions,
    run_dbmigrate,
)

SECRET = "Sup3rSecretPw"
SERVER_BACKENDS = ["postgresql", "mariadb"]


def forms(secret: str) -> list[str]:
    """The secret as it is and URL-encoded, the ways it could show up."""
    return sorted({secret, urllib.parse.quote(secret, safe=""), urllib.parse.quote_plus(secret)})


def assert_not_leaked(secret: str, result: subprocess.CompletedProcess[str], termination_log: Path) -> None:
    outputs = {"stdout": result.stdout, "stderr": result.stderr, "termination log": termination_log.read_text()}
    for name, text in outputs.items():
        for form in forms(secret):
            assert form not in text, f"the password leaked into {name}: {text}"


def run(
    *args: str, cwd: Path, database_url: str, tmp_path: Path, **env: str
) -> tuple[subprocess.CompletedProcess[str], Path]:
    """Run dbmigrate with --format json and an (existing, empty) termination-log file."""
    termination_log = tmp_path / f"termination-log-{uuid.uuid4().hex[:6]}"
    termination_log.write_text("")
    result = run_dbmigrate(
        *args,
        "--format",
        "json",
        cwd=cwd,
        database_url=database_url,
        DBMIGRATE_TERMINATION_LOG=str(termination_log),
        **env,
    )
    return result, termination_log


FAILING_URLS = {
    "postgresql-unresolvable-host": (f"postgresql://postgres:{SECRET}@no-such-host.invalid:5432/test", 3, SECRET),
    "postgresql-password-in-query": ("postgresql://postgres@127.0.0.1:{port}/test?password={secret}", 3, SECRET),
    "postgresql-malformed-port": (f"postgresql://postgres:{SECRET}@127.0.0.1:notaport/test", 2, SECRET),
    "postgresql-encoded-password": (
        "postgresql://postgres:{secret}@127.0.0.1:notaport/test",
        2,
        "Sup3r/Secret@Pw:x",
    ),
    "mariadb-wrong-password": (f"mysql+pymysql://root:{SECRET}@127.0.0.1:3306/test", 3, SECRET),
    "mariadb-refused-port": ("mysql+pymysql://root:{secret}@127.0.0.1:{port}/test", 3, SECRET),
}


@pytest.mark.parametrize(("template", "exit_code", "secret"), FAILING_URLS.values(), ids=FAILING_URLS.keys())
def test_failed_connection_never_shows_the_password(
    project: Path, tmp_path: Path, template: str, exit_code: int, secret: str
) -> None:
    url = template.format(secret=urllib.parse.quote(secret, safe=""), port=free_port())

    result, termination_log = run("upgrade", "--wait-timeout", "0", cwd=project, database_url=url, tmp_path=tmp_path)

    assert result.returncode == exit_code, result.stderr
    assert json.loads(result.stdout)["exit_code"] == exit_code
    assert termination_log.read_text().startswith("dbmigrate upgrade failed")
    assert_not_leaked(secret, result, termination_log)


@pytest.fixture
def secret_url(backend: str, database_url: str) -> Iterator[str]:
    """``database_url`` as a user whose password is SECRET (PostgreSQL trusts, MariaDB checks it)."""
    url = make_url(database_url)
    if backend == "postgresql":
        yield url.set(password=SECRET).render_as_string(hide_password=False)
        return
    user = f"dbm_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(MARIADB_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f"CREATE USER '{user}'@'%' IDENTIFIED BY '{SECRET}'"))
        connection.execute(sa.text(f"GRANT ALL PRIVILEGES ON `{url.database}`.* TO '{user}'@'%'"))
    try:
        yield url.set(username=user, password=SECRET).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(sa.text(f"DROP USER IF EXISTS '{user}'@'%'"))
        admin.dispose()


def add_leaky_revisions(project: Path) -> None:
    """One revision that works, then one that fails with the full connection URL in its message."""
    remove_revisions(project)
    add_revision(
        project,
        "0001_works",
        None,
        "op.create_table('works', sa.Column('id', sa.Integer, primary_key=True))",
        "op.drop_table('works')",
    )
    add_revision(
        project,
        "0002_leaks",
        "0001_works",
        """
if op.get_context().as_sql:
    return
url = op.get_bind().engine.url
raise RuntimeError(
    "cannot use " + url.render_as_string(hide_password=False) + " (password " + str(url.password) + ")"
)
""",
    )


@pytest.mark.parametrize(
    ("backend", "source"),
    # MariaDB checks the password, so there the files are proven to deliver it; PostgreSQL trusts.
    [("postgresql", "url"), ("mariadb", "url"), ("mariadb", "url-file"), ("mariadb", "password-file")],
)
def test_failing_revision_that_prints_the_url_leaks_no_password_anywhere(
    project: Path, tmp_path: Path, database_url: str, secret_url: str, source: str
) -> None:
    add_leaky_revisions(project)
    args: list[str] = []
    env_url = secret_url
    if source == "url-file":
        (tmp_path / "database-url").write_text(secret_url + "\n")
        args, env_url = ["--database-url-file", str(tmp_path / "database-url")], ""
    elif source == "password-file":
        (tmp_path / "password").write_text(SECRET + "\n")
        args = ["--database-password-file", str(tmp_path / "password")]
        env_url = make_url(secret_url).set(password=None).render_as_string(hide_password=False)

    result, termination_log = run("upgrade", *args, cwd=project, database_url=env_url, tmp_path=tmp_path)

    assert result.returncode == 1, result.stderr
    error = json.loads(result.stdout)
    assert error["exit_code"] == 1 and "0002_leaks" in error["message"]
    rows = history_rows(database_url)
    assert [(row["revision"], row["status"]) for row in rows] == [("0001_works", "applied"), ("0002_leaks", "failed")]
    assert "RuntimeError: cannot use" in str(rows[-1]["error"]) and "***" in str(rows[-1]["error"])
    assert "0002_leaks" in termination_log.read_text()
    assert_not_leaked(SECRET, result, termination_log)
    for row in rows:
        for form in forms(SECRET):
            assert form not in json.dumps(row, default=str), f"the password leaked into history: {row}"


@pytest.mark.parametrize("backend", SERVER_BACKENDS)
def test_status_and_history_output_never_show_the_password(
    project: Path, tmp_path: Path, database_url: str, secret_url: str
) -> None:
    add_leaky_revisions(project)
    settings = dbmigrate.Settings.load(
        config_file=project / "alembic.ini",
        environ={},
        database_url=secret_url,
        termination_log=str(tmp_path / "no-termination-log"),
    )
    with pytest.raises(dbmigrate.MigrationFailed):
        dbmigrate.upgrade(settings=settings)

    for command, output_format in (("status", "json"), ("history", "text")):
        result = run_dbmigrate(command, "--format", output_format, cwd=project, database_url=secret_url)
        assert result.returncode == 0, result.stderr
        assert "0002_leaks" in result.stdout
        for form in forms(SECRET):
            assert form not in result.stdout + result.stderr, f"the password leaked into {command}"


@pytest.mark.parametrize("backend", ["mariadb"])  # the test PostgreSQL trusts local connections
def test_wrong_password_from_a_password_file_exits_3_without_showing_it(
    project: Path, tmp_path: Path, database_url: str
) -> None:
    (tmp_path / "password").write_text(SECRET + "\n")

    result, termination_log = run(
        "upgrade",
        "--database-password-file",
        str(tmp_path / "password"),
        cwd=project,
        database_url=database_url,
        tmp_path=tmp_path,
    )

    assert result.returncode == 3, result.stderr
    assert "refused the credentials" in result.stderr
    assert_not_leaked(SECRET, result, termination_log)


def test_unreachable_url_from_a_url_file_exits_3_without_showing_the_password(project: Path, tmp_path: Path) -> None:
    (tmp_path / "database-url").write_text(f"postgresql://postgres:{SECRET}@127.0.0.1:{free_port()}/test\n")

    result, termination_log = run(
        "upgrade",
        "--database-url-file",
        str(tmp_path / "database-url"),
        "--wait-timeout",
        "0",
        cwd=project,
        database_url="",
        tmp_path=tmp_path,
    )

    assert result.returncode == 3, result.stderr
    assert "not reachable" in result.stderr
    assert_not_leaked(SECRET, result, termination_log)


# Passwords holding "@", ":" and "/" unencoded: a URL parser cuts them at the first "@" and reads
# the rest as host, port or database. Each piece is distinctive, so any piece shown is caught.
UNPARSABLE_PIECES = ["Fr4g", "0ne", "Tw0", "Thr33"]
UNPARSABLE_URLS = {
    "port-not-a-number": "postgresql+psycopg://user:Fr4g@0ne:Tw0/Thr33%@127.0.0.1:5432/test",
    "parses-wrongly": "postgresql+psycopg://user:Fr4g@0ne/Tw0:Thr33%@127.0.0.1:5432/test",
}


# Each URL through both commands and both log formats, and once from a URL file.
UNPARSABLE_CASES = [
    (name, command, log_format, "url")
    for name in UNPARSABLE_URLS
    for command in ("upgrade", "status")
    for log_format in ("json", "text")
] + [(name, "upgrade", "json", "url-file") for name in UNPARSABLE_URLS]


@pytest.mark.parametrize(
    ("name", "command", "log_format", "source"), UNPARSABLE_CASES, ids=["-".join(case) for case in UNPARSABLE_CASES]
)
def test_url_with_unencoded_at_colon_and_slash_in_its_password_exits_2_showing_no_piece_of_it(
    project: Path, tmp_path: Path, name: str, command: str, log_format: str, source: str
) -> None:
    # Without a wait, a URL that is wrongly accepted fails at once (exit 3) instead of retrying for a minute.
    url, args = UNPARSABLE_URLS[name], ["--wait-timeout", "0"]
    if source == "url-file":
        (tmp_path / "database-url").write_text(url + "\n")
        args, url = [*args, "--database-url-file", str(tmp_path / "database-url")], ""

    result, termination_log = run(
        command, *args, cwd=project, database_url=url, tmp_path=tmp_path, DBMIGRATE_LOG_FORMAT=log_format
    )

    assert result.returncode == 2, result.stderr
    error = json.loads(result.stdout)
    assert (error["error"], error["exit_code"]) == ("ConfigurationError", 2)
    assert "\n" not in error["message"]
    assert error["message"].startswith(
        "The database URL postgresql+psycopg://user:***@127.0.0.1:5432/test is malformed"
    )
    assert "Percent-encode" in error["message"] and "--database-password-file" in error["message"]
    if command == "upgrade":  # status, which changes nothing, leaves the termination message alone
        assert error["message"] in termination_log.read_text()
    if log_format == "json":
        assert [line["event"] for line in every_line_as_json(result.stderr)] == ["command failed"]
    else:
        assert result.stderr == f"error: {error['message']}\n"
    outputs = {"stdout": result.stdout, "stderr": result.stderr, "termination log": termination_log.read_text()}
    for output, text in outputs.items():
        for piece in UNPARSABLE_PIECES:
            assert piece not in text, f"a piece of the password leaked into {output}: {text}"
