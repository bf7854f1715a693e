"""Engines, drivers and waiting for the database to accept connections.

A database that is still starting (connection refused, DNS not yet resolvable, "starting up",
too many connections) is retried with exponential backoff until ``wait_timeout``; a database that
answers with a definite "no" (bad credentials, no such database) fails at once.
"""

from __future__ import annotations

import dataclasses
import os
import sqlite3
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import structlog
import tenacity
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError
from sqlalchemy.pool import NullPool, Pool

from dbmigrate.errors import ConfigurationError, DatabaseUnavailable
from dbmigrate.masking import mask_url, redact, url_password

log = structlog.get_logger("dbmigrate.database")

_DRIVER_EXTRAS = {"postgresql": "postgres", "mysql": "mysql", "mariadb": "mysql"}


@dataclasses.dataclass(frozen=True)
class Capabilities:
    """What the dialect can do, as far as dbmigrate's safety guarantees are concerned."""

    name: str
    transactional_ddl: bool

    @property
    def is_postgresql(self) -> bool:
        return self.name == "postgresql"

    @property
    def is_mysql(self) -> bool:
        return self.name in ("mysql", "mariadb")


_AMBIGUOUS = (
    "where its password ends is ambiguous. Percent-encode every @, :, /, ? and # in its user name, password and "
    "query values (@ as %40, : as %3A, / as %2F, ? as %3F, # as %23, and % itself as %25), or give the password "
    "in a password file (--database-password-file)"
)


def parse_url(url: str) -> URL:
    """Parse a database URL; raises :class:`ConfigurationError` (password masked) when malformed.

    A URL whose password SQLAlchemy would read differently from :func:`~dbmigrate.masking.url_password`
    (an unencoded ``@`` in it, a ``/`` in the user name) is malformed too: connecting with it would
    send a piece of the password as the host or database name, where messages show it.
    """
    written = url_password(url)
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as exc:
        # SQLAlchemy's reason can quote a piece of a password it cut at an "@" (the "port" it failed to read).
        reason = _AMBIGUOUS if written is not None and "@" in written else redact(str(exc))
        raise ConfigurationError(_malformed(url, reason)) from None
    if written is not None and parsed.password != urllib.parse.unquote(written):
        raise ConfigurationError(_malformed(url, _AMBIGUOUS))
    return parsed


def _malformed(url: str, reason: str) -> str:
    return (
        f"The database URL {mask_url(url)} is malformed: {reason}. Expected for example "
        "postgresql://user@host:5432/dbname, mysql+pymysql://user@host/dbname (password after user:) "
        "or sqlite:///path/to/file.db."
    )


def create(url: str, pooled: bool = False) -> Engine:
    """An engine for ``url``; unpooled for runs (few connections, each held long), pooled for probes."""
    parsed = parse_url(url)
    try:
        engine = create_engine(parsed, pool_pre_ping=True) if pooled else create_engine(parsed, poolclass=NullPool)
    except (NoSuchModuleError, ModuleNotFoundError, ImportError) as exc:
        extra = _DRIVER_EXTRAS.get(parsed.get_backend_name())
        hint = f" Install it with: pip install 'dbmigrate[{extra}]'." if extra else ""
        raise ConfigurationError(f"No driver for {mask_url(parsed)}: {redact(str(exc))}.{hint}") from None
    return engine


def require_schema(connection: Connection, schema: str) -> None:
    """Raise :class:`ConfigurationError` unless the PostgreSQL schema ``schema`` exists (a tenant's, provisioned)."""
    found = connection.execute(text("SELECT 1 FROM pg_namespace WHERE nspname = :schema"), {"schema": schema}).scalar()
    if not found:
        raise ConfigurationError(
            f"The tenant schema {schema} does not exist in {mask_url(connection.engine.url)}. Create it when the "
            f"tenant is provisioned (CREATE SCHEMA {schema}), or fix the tenant's name."
        )


def capabilities(engine: Engine) -> Capabilities:
    """The dialect's name and whether DDL takes part in transactions."""
    name = engine.dialect.name
    return Capabilities(name=name, transactional_ddl=name in ("postgresql", "sqlite"))


def connect(engine: Engine, wait_timeout: float) -> Connection:
    """Connect, retrying transient failures with backoff for up to ``wait_timeout`` seconds.

    Raises :class:`DatabaseUnavailable` when the time is up, or at once on bad credentials or
    a missing database, and :class:`ConfigurationError` when the URL cannot work at all.
    """
    started = time.monotonic()
    target = mask_url(engine.url)

    def log_retry(state: tenacity.RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        log.warning(
            "database not reachable yet, retrying",
            url=target,
            attempt=state.attempt_number,
            waited_s=round(time.monotonic() - started, 1),
            error=_first_line(error),
        )

    backoff = tenacity.wait_exponential_jitter(multiplier=0.2, max=5.0)

    def wait_within_deadline(state: tenacity.RetryCallState) -> float:
        return max(0.0, min(backoff(state), started + wait_timeout - time.monotonic()))

    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception(_is_transient),
        wait=wait_within_deadline,
        stop=tenacity.stop_after_delay(wait_timeout),
        before_sleep=log_retry,
        reraise=True,
    )
    try:
        return retrying(engine.connect)
    except DBAPIError as exc:
        raise _unavailable(exc, target, time.monotonic() - started) from None


def _unavailable(exc: DBAPIError, target: str, waited: float) -> DatabaseUnavailable | ConfigurationError:
    kind = classify(exc)
    reason = _first_line(exc)
    if kind == "credentials":
        return DatabaseUnavailable(
            f"The database at {target} refused the credentials ({reason}). Check the user and password "
            "in the URL or the Secret it comes from; retrying would not help."
        )
    if kind == "missing-database":
        return DatabaseUnavailable(
            f"The database named in {target} does not exist ({reason}). Create it first, or fix the "
            "database name in the URL."
        )
    if kind == "unusable":
        return ConfigurationError(f"Cannot open the database {target}: {reason}.")
    return DatabaseUnavailable(
        f"The database at {target} was not reachable within {waited:.0f}s ({reason}). Check that it "
        "is running and reachable from here, or raise --wait-timeout."
    )


def classify(exc: BaseException) -> str:
    """'transient', 'credentials', 'missing-database', 'unusable' or 'other' for a connect error."""
    orig = getattr(exc, "orig", exc)
    message = str(orig).lower()
    code = orig.args[0] if getattr(orig, "args", None) and isinstance(orig.args[0], int) else None
    if (
        code in (1045, 1044, 1698)
        or "password authentication failed" in message
        or ("role" in message and "does not exist" in message)
    ):
        return "credentials"
    if code == 1049 or ("database" in message and "does not exist" in message):
        return "missing-database"
    if "unable to open database file" in message:
        return "unusable"
    transient_words = (
        "connection refused",
        "could not connect",
        "can't connect",
        "could not translate host name",
        "name or service not known",
        "temporary failure in name resolution",
        "failed to resolve host",
        "starting up",
        "shutting down",
        "too many connections",
        "timeout expired",
        "timed out",
        "no route to host",
        "server closed the connection",
        "lost connection",
        "connection failed",
    )
    if code in (2003, 2005, 2006, 2013, 1040) or any(word in message for word in transient_words):
        return "transient"
    return "other"


# What drivers say when a session ends under them: a server restart or failover, an admin's
# pg_terminate_backend / KILL, or a network that cut the connection.
_LOST_WORDS = (
    "server closed the connection",
    "terminating connection",
    "connection is closed",
    "the connection is lost",
    "connection already closed",
    "consuming input failed",
    "lost connection",
    "server has gone away",
    "connection was killed",
    "server shutdown in progress",
    "connection reset",
    "broken pipe",
    "ssl syscall error",
    "the database system is shutting down",
    "the database system is starting up",
    "the database system is in recovery mode",
    "can't reconnect until invalid transaction is rolled back",
)
_LOST_MYSQL_CODES = (1053, 1927, 2006, 2013, 2055, 4031)


def connection_lost(exc: BaseException) -> BaseException | None:
    """The error in ``exc``'s chain (itself, or one it was raised from) that says the database session ended
    under us, or None.

    Of several, the first in time: wrappers ("env.py failed", "cannot create the history table")
    quote their cause's message, and a later statement on the dead connection fails with a
    consequence of it ("can't reconnect until invalid transaction is rolled back").
    """
    found = [error for error in _chain(exc) if _says_lost(error)]
    return found[-1] if found else None


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and the errors it was raised from or during, newest first."""
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and all(current is not seen for seen in chain):
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def _codes(error: BaseException) -> tuple[int | None, str]:
    """The driver's numeric error code (MySQL/MariaDB) and SQLSTATE of ``error``, where it has them."""
    orig = getattr(error, "orig", None) or error
    code = orig.args[0] if getattr(orig, "args", None) and isinstance(orig.args[0], int) else None
    return code, str(getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None) or "")


def _says_lost(error: BaseException) -> bool:
    code, sqlstate = _codes(error)
    message = str(getattr(error, "orig", None) or error).lower()
    return (
        (isinstance(error, DBAPIError) and error.connection_invalidated)
        or code in _LOST_MYSQL_CODES
        or sqlstate.startswith(("08", "57P"))
        or any(w in message for w in _LOST_WORDS)
    )


# A privilege the user lacks: PostgreSQL's insufficient_privilege; MySQL/MariaDB's table, column, database
# and command access denied.
_DENIED_SQLSTATE = "42501"
_DENIED_MYSQL_CODES = (1044, 1142, 1143, 1227)


def permission_denied(exc: BaseException) -> BaseException | None:
    """The error in ``exc``'s chain (itself, or one it was raised from) that says the database user lacks a
    privilege (to read a table, say), or None."""
    for error in _chain(exc):
        code, sqlstate = _codes(error)
        if sqlstate == _DENIED_SQLSTATE or code in _DENIED_MYSQL_CODES:
            return error
    return None


def _is_transient(exc: BaseException) -> bool:
    return isinstance(exc, DBAPIError) and classify(exc) == "transient"


def _first_line(exc: BaseException | None) -> str:
    if exc is None:
        return ""
    orig = getattr(exc, "orig", exc)
    lines = [line.strip() for line in str(orig).strip().splitlines() if line.strip()]
    return redact(" ".join(lines[:2]))[:300]


# An execution option: SQLite transactions on this connection take the write lock when they begin,
# waiting for it politely (busy_timeout), instead of failing at once when a read lock taken first
# cannot be promoted while another connection writes.
WRITE_TRANSACTIONS = "dbmigrate_write_transactions"


@contextmanager
def transactional_sqlite_ddl() -> Iterator[None]:
    """While active, SQLite connections (ours and any env.py creates) run DDL in transactions.

    pysqlite only opens a transaction before DML, so a CREATE TABLE commits on its own and a killed
    step would leave half a revision behind. SQLAlchemy's documented recipe: let the driver
    autocommit and emit BEGIN ourselves, so DDL and the version update commit together.
    """

    def autocommit_driver(dbapi_connection, connection_record):  # type: ignore[no-untyped-def]
        if isinstance(dbapi_connection, sqlite3.Connection):
            dbapi_connection.isolation_level = None

    def begin(conn):  # type: ignore[no-untyped-def]
        options = conn.get_execution_options()
        if conn.dialect.name == "sqlite" and options.get("isolation_level") != "AUTOCOMMIT":
            conn.exec_driver_sql("BEGIN IMMEDIATE" if options.get(WRITE_TRANSACTIONS) else "BEGIN")

    event.listen(Pool, "connect", autocommit_driver)
    event.listen(Engine, "begin", begin)
    try:
        yield
    finally:
        event.remove(Pool, "connect", autocommit_driver)
        event.remove(Engine, "begin", begin)


def autocommits(connection: Connection) -> bool:
    """Whether each statement on ``connection`` commits on its own (SQLAlchemy's ``AUTOCOMMIT`` isolation level).

    Set as an execution option (on the connection or its engine), or with ``create_engine(...,
    isolation_level="AUTOCOMMIT")``, which the driver reports. SQLite connections are left to the
    execution option: :func:`transactional_sqlite_ddl` puts every pysqlite driver in autocommit
    mode and begins the transactions itself, unless that option says otherwise.
    """
    if connection.get_execution_options().get("isolation_level") == "AUTOCOMMIT":
        return True
    dbapi_connection = connection.connection.dbapi_connection
    if connection.dialect.name == "sqlite" or dbapi_connection is None:
        return False
    try:
        return bool(connection.dialect.detect_autocommit_setting(dbapi_connection))
    except (AttributeError, NotImplementedError):  # SQLAlchemy 2.0, or a driver that cannot tell
        return False


def database_identity(connection: Connection) -> tuple[str, ...]:
    """What tells this database apart from any other: the server (its start time, host, port) and the database.

    Two connections to one database give the same answer whatever URL each was opened with (host
    names, drivers, async or not). Leaves the connection's transaction state as it found it.
    """
    dialect = connection.dialect.name
    begins = not connection.in_transaction()  # the query below begins a transaction: end it again
    try:
        if dialect == "postgresql":
            found = tuple(connection.exec_driver_sql("SELECT current_database(), pg_postmaster_start_time()").one())
        elif dialect in ("mysql", "mariadb"):
            found = tuple(connection.exec_driver_sql("SELECT DATABASE(), @@hostname, @@port").one())
        elif dialect == "sqlite":
            files = {name: file for _, name, file in connection.exec_driver_sql("PRAGMA database_list")}
            found = (os.path.realpath(files["main"]) if files.get("main") else "",)
        else:
            url = connection.engine.url
            found = (url.host, url.port, url.database)
    finally:
        if begins:
            connection.rollback()  # a read transaction left open would hold SQLite's readers' lock
    return (dialect, *(str(value) for value in found))


def track_statements(
    connection: Connection, before: Callable[[str], None], after: Callable[[str], None] | None = None
) -> None:
    """Call ``before`` with each statement's SQL as it starts (it may raise: the statement does not run)
    and ``after`` once it succeeded."""

    def on_before(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        before(statement)

    def on_after(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        if after is not None:
            after(statement)

    event.listen(connection, "before_cursor_execute", on_before)
    if after is not None:
        event.listen(connection, "after_cursor_execute", on_after)


def advance_sequences(connection: Connection, table: str, columns: Iterable[str]) -> None:
    """PostgreSQL: move each column's sequence past the largest value in ``table`` (quoted, qualified).

    Rows inserted with explicit ids (restored from a backup, seeded by verify) must not be handed out
    again to rows inserted later. MySQL/MariaDB and SQLite move past explicit ids by themselves.
    """
    if connection.dialect.name != "postgresql":
        return
    quote = connection.dialect.identifier_preparer.quote
    for column in columns:
        sequence = connection.exec_driver_sql(
            "SELECT pg_get_serial_sequence(%(table)s, %(column)s)", {"table": table, "column": column}
        ).scalar()
        if sequence:
            largest = f"(SELECT MAX({quote(column)}) FROM {table})"
            connection.exec_driver_sql(
                f"SELECT setval(%(sequence)s, COALESCE({largest}, 1), {largest} IS NOT NULL)", {"sequence": sequence}
            )


def cancel_statement(engine: Engine, caps: Capabilities, dbapi: Any, server_id: int | None) -> None:
    """End the statement running on the driver connection ``dbapi`` (session ``server_id`` on the server).

    Safe from another thread (the signal watcher): PostgreSQL and SQLite interrupt through the
    connection itself, MySQL/MariaDB by ``KILL QUERY`` from a connection of its own. The statement's
    transaction then rolls back.
    """
    if caps.is_mysql:
        if server_id is not None:
            killer = engine.raw_connection()
            try:
                killer.cursor().execute(f"KILL QUERY {int(server_id)}")
            finally:
                killer.close()
    elif caps.is_postgresql:
        (getattr(dbapi, "cancel_safe", None) or dbapi.cancel)()
    else:
        dbapi.interrupt()
