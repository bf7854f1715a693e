"""A database that is down when dbmigrate starts is waited for, up to --wait-timeout, then exit 3.

The "database" here is a port on 127.0.0.1 where nothing listens at first; the test then starts a
TCP forwarder on that port to the real server, the way a database pod becomes ready after the Job.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

import dbmigrate
from tests.conftest import (
    EXAMPLE_HEAD,
    MARIADB_ADMIN,
    POSTGRES_ADMIN,
    current_revisions,
    dbmigrate_env,
    free_port,
    log_events,
    run_dbmigrate,
)

SERVER_BACKENDS = ["postgresql", "mariadb"]
SERVERS = {"postgresql": POSTGRES_ADMIN, "mariadb": MARIADB_ADMIN}
RETRYING = "database not reachable yet, retrying"


def on_port(url: str, port: int) -> str:
    return make_url(url).set(host="127.0.0.1", port=port).render_as_string(hide_password=False)


class TcpForwarder:
    """Listens on 127.0.0.1:``port`` and pipes every connection to ``target``, until closed."""

    def __init__(self, port: int, target: tuple[str, int]) -> None:
        self.target = target
        self.server = socket.create_server(("127.0.0.1", port))
        self.server.settimeout(0.1)
        self.stopped = threading.Event()
        self.sockets: list[socket.socket] = []
        self.connections = 0
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                client, _ = self.server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self.sockets += [client, upstream]
            self.connections += 1
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.stopped.set()
        self.thread.join()
        self.server.close()
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.close()


@contextlib.contextmanager
def forwarding(port: int, url: str) -> Iterator[TcpForwarder]:
    parsed = make_url(url)
    forwarder = TcpForwarder(port, (str(parsed.host), int(parsed.port or 0)))
    try:
        yield forwarder
    finally:
        forwarder.close()


@pytest.mark.parametrize("backend", SERVER_BACKENDS)
def test_upgrade_waits_for_a_database_that_comes_up_within_the_wait_timeout(
    project: Path, database_url: str, backend: str
) -> None:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "dbmigrate", "upgrade", "--wait-timeout", "60"],
        cwd=project,
        env=dbmigrate_env(on_port(database_url, port)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        early: list[str] = []
        while sum(RETRYING in line for line in early) < 2:  # it is down, and dbmigrate keeps trying
            line = process.stderr.readline()
            assert line, f"dbmigrate ended before retrying twice: {''.join(early)}"
            early.append(line)
        with forwarding(port, database_url) as forwarder:
            stdout, rest = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    stderr = "".join(early) + rest

    assert process.returncode == 0, stderr
    retries = [event for event in log_events(stderr) if event.get("event") == RETRYING]
    assert len(retries) >= 2
    assert all(f":{port}/" in str(event["url"]) for event in retries)
    assert forwarder.connections >= 1
    assert "applied" in stdout
    assert current_revisions(database_url) == {EXAMPLE_HEAD}


@pytest.mark.parametrize("backend", SERVER_BACKENDS)
def test_upgrade_exits_3_saying_unreachable_when_nothing_ever_listens(project: Path, backend: str) -> None:
    result = run_dbmigrate(
        "upgrade", "--wait-timeout", "0.5", cwd=project, database_url=on_port(SERVERS[backend], free_port())
    )

    assert result.returncode == 3, result.stderr
    assert "not reachable" in result.stderr
    assert "--wait-timeout" in result.stderr
    assert any(event.get("event") == RETRYING for event in log_events(result.stderr)), "it gave up without waiting"


@pytest.mark.parametrize("backend", SERVER_BACKENDS)
def test_library_raises_database_unavailable_when_nothing_listens(project: Path, backend: str) -> None:
    settings = dbmigrate.Settings.load(
        config_file=project / "alembic.ini",
        environ={},
        database_url=on_port(SERVERS[backend], free_port()),
        wait_timeout=0,
        termination_log=str(project / "no-termination-log"),
    )

    with pytest.raises(dbmigrate.DatabaseUnavailable, match="not reachable") as raised:
        dbmigrate.upgrade(settings=settings)

    assert raised.value.exit_code == 3
