"""The PostgreSQL server the benchmarks run against, shared by the benchmark scripts.

A password, if the server wants one, comes from PGPASSWORD and is never printed.
"""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
from collections.abc import Sequence
from pathlib import Path

import psycopg


@dataclasses.dataclass(frozen=True)
class Server:
    """Where PostgreSQL listens."""

    host: str
    port: int
    user: str

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Server:
        return cls(args.host, args.port, args.user)

    def conninfo(self, database: str) -> str:
        return f"host={self.host} port={self.port} user={self.user} dbname={database} application_name=bench"

    def url(self, database: str) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{database}"


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    """--host, --port and --user, defaulting to the local test server."""
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5432)
    parser.add_argument("--user", default="postgres")


def admin_execute(server: Server, statements: Sequence[str], database: str = "postgres") -> None:
    """Run statements in autocommit (CREATE/DROP DATABASE cannot run in a transaction)."""
    with psycopg.connect(server.conninfo(database), autocommit=True) as connection:
        for statement in statements:
            connection.execute(statement)


def recreate_database(server: Server, name: str) -> None:
    admin_execute(server, [f"DROP DATABASE IF EXISTS {name} WITH (FORCE)", f"CREATE DATABASE {name}"])


def drop_database(server: Server, name: str) -> None:
    admin_execute(server, [f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"])


def start_pgbench(
    server: Server,
    database: str,
    script: Path,
    *,
    clients: int,
    rate: int,
    seconds: int,
    log_dir: Path,
    defines: Sequence[str] = (),
) -> subprocess.Popen[bytes]:
    """Start pgbench running ``script`` at ``rate`` transactions/s for ``seconds``, each transaction logged under
    ``log_dir/tx*``; ``defines`` are its ``name=value`` variables. End it with :func:`finish_pgbench`."""
    command = [
        "pgbench",
        "--no-vacuum",
        f"--file={script}",
        *(f"--define={define}" for define in defines),
        f"--client={clients}",
        "--jobs=2",
        f"--rate={rate}",
        f"--time={seconds}",
        "--log",
        f"--log-prefix={log_dir / 'tx'}",
        f"--host={server.host}",
        f"--port={server.port}",
        f"--username={server.user}",
        database,
    ]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def finish_pgbench(load: subprocess.Popen[bytes], timeout: float) -> None:
    """Wait up to ``timeout`` seconds for a pgbench load to end (killing it, ours, after that); raise if it failed."""
    try:
        _, stderr = load.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        load.kill()  # ours, by its own handle
        _, stderr = load.communicate()
    if load.returncode != 0:
        raise RuntimeError(f"pgbench failed ({load.returncode}): {stderr.decode(errors='replace').strip()}")
