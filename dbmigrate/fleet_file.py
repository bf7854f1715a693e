"""Fleet files: the databases (or PostgreSQL schemas) one release migrates, declared in TOML.

A fleet file holds an optional ``[settings]`` table (dbmigrate options for every target) and a
``[[targets]]`` array. Each entry is one target (``name`` and ``url``) or a group: a ``url`` (and
maybe a ``schema``) holding ``{name}``, with ``names = [...]`` or ``names_query = {url, sql}`` (the
first column of each row of a query on a catalog database). Passwords never live in the file:
``password_env`` names an environment variable, ``password_file`` a mounted file. Every mistake is
reported as :class:`~dbmigrate.errors.ConfigurationError` naming the file and the key
(``targets[2].url``); TOML syntax errors name the line.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import sys
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from dbmigrate import database
from dbmigrate.errors import ConfigurationError, DatabaseUnavailable
from dbmigrate.masking import mask_url, redacted_reason, register_secret, url_password
from dbmigrate.settings import SCHEMA_NAME, Settings

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PLACEHOLDER = "{name}"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_TOP_KEYS = {"settings", "targets"}
_TARGET_KEYS = {"name", "url", "schema", "names", "names_query", "password_env", "password_file", "settings"}
_QUERY_KEYS = {"url", "sql", "password_env", "password_file"}
# Set by the fleet file's own keys (url, password_*, schema), or by the fleet run for the whole fleet.
_NOT_SETTINGS = {"database_url", "database_url_file", "database_password_file", "tenant_schema", "config_file"}


@dataclasses.dataclass(frozen=True)
class Target:
    """One database, or one schema of a PostgreSQL database, that the fleet migrates."""

    name: str
    url: str  # without its password
    schema: str | None = None
    password_env: str | None = None
    password_file: Path | None = None
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # dbmigrate options, file-wide ones merged

    def describe(self) -> str:
        """Where the target is, for humans: its URL (never with a password) and its schema."""
        return mask_url(self.url) + (f" schema {self.schema}" if self.schema else "")

    def settings(self, base: Settings) -> Settings:
        """``base`` (command line, environment, config files) with this target's options, URL and password over it.

        Raises :class:`ConfigurationError` when its password's variable is not set.
        """
        url = self.url
        if self.password_env is not None:
            password = _password_from_env(self.password_env, self.name)
            url = database.parse_url(url).set(password=password).render_as_string(hide_password=False)
        return base.override(
            **self.options,
            database_url=url,
            database_url_file=None,
            database_password_file=self.password_file,
            tenant_schema=self.schema,
        )


def load(path: Path, base: Settings) -> list[Target]:
    """The targets of the fleet file at ``path``, in the file's order (a query's names in the order it returns).

    ``base`` gives the catalog queries their wait timeout. Every password the file points to is
    registered for masking. Raises :class:`ConfigurationError` naming the file and key of a mistake,
    :class:`DatabaseUnavailable` when a catalog database cannot be reached.
    """
    try:
        document = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigurationError(f"Cannot read the fleet file {path}: {exc.strerror}.") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"The fleet file {path} is not valid TOML: {exc}.") from None
    where = _Where(path)
    _refuse_unknown(document, _TOP_KEYS, where, "")
    shared = _options(document.get("settings", {}), where, "settings")
    entries = document.get("targets")
    if not isinstance(entries, list) or not entries or not all(isinstance(e, dict) for e in entries):
        raise where.error("targets", "is missing or not an array of tables: declare at least one [[targets]] entry")
    targets: list[Target] = []
    seen: dict[str, str] = {}
    for index, entry in enumerate(entries):
        key = f"targets[{index}]"
        for target in _expand(entry, key, where, shared, base):
            if target.name in seen:
                raise where.error(key, f"names the target {target.name!r} again (first named by {seen[target.name]})")
            seen[target.name] = key
            targets.append(target)
    return targets


@dataclasses.dataclass(frozen=True)
class _Where:
    path: Path

    def error(self, key: str, message: str) -> ConfigurationError:
        return ConfigurationError(f"Fleet file {self.path}: {key} {message}.")


def _expand(
    entry: Mapping[str, Any], key: str, where: _Where, shared: Mapping[str, Any], base: Settings
) -> list[Target]:
    _refuse_unknown(entry, _TARGET_KEYS, where, key)
    url = _url(entry.get("url"), where, f"{key}.url")
    schema = _optional_text(entry, "schema", where, key)
    password_env, password_file = _password_source(entry, where, key)
    options = {**shared, **_options(entry.get("settings", {}), where, f"{key}.settings")}
    if schema is not None and make_url(url.replace(PLACEHOLDER, "x")).get_backend_name() != "postgresql":
        raise where.error(f"{key}.schema", "needs a PostgreSQL url: schema per tenant is a PostgreSQL layout")
    if "names" in entry and "names_query" in entry:
        raise where.error(key, "has both names and names_query: keep one")
    if "names" not in entry and "names_query" not in entry:
        name = _optional_text(entry, "name", where, key)
        if name is None:
            raise where.error(key, "has no name: give it one, or names / names_query for a group")
        for field, value in (("url", url), ("schema", schema), ("name", name)):
            if value is not None and PLACEHOLDER in value:
                raise where.error(f"{key}.{field}", f"holds {PLACEHOLDER} but the entry has no names or names_query")
        _check_name(name, where, f"{key}.name")
        _check_schema(schema, name, where, f"{key}.schema")
        return [Target(name, url, schema, password_env, password_file, options)]
    if "names" in entry:
        names = entry["names"]
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise where.error(f"{key}.names", "must be an array of strings")
        source = f"{key}.names"
    else:
        names = _query_names(entry["names_query"], where, f"{key}.names_query", base)
        source = f"{key}.names_query"
    name_template = _optional_text(entry, "name", where, key) or PLACEHOLDER
    if not any(PLACEHOLDER in value for value in (url, schema or "")):
        raise where.error(f"{key}.url", f"must hold {PLACEHOLDER} (or the schema must), so that each name is a target")
    if PLACEHOLDER not in name_template:
        raise where.error(f"{key}.name", f"must hold {PLACEHOLDER} in a group")
    targets = []
    for name in names:
        _check_name(name, where, source)
        target_name = name_template.replace(PLACEHOLDER, name)
        _check_name(target_name, where, f"{key}.name")
        target_schema = schema.replace(PLACEHOLDER, name) if schema is not None else None
        _check_schema(target_schema, name, where, f"{key}.schema")
        target_url = url.replace(PLACEHOLDER, urllib.parse.quote(name, safe=""))
        targets.append(Target(target_name, target_url, target_schema, password_env, password_file, options))
    return targets


def _refuse_unknown(table: Mapping[str, Any], allowed: set[str], where: _Where, key: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        prefix = f"{key}." if key else ""
        raise where.error(prefix + unknown[0], f"is not a fleet file key (known here: {', '.join(sorted(allowed))})")


def _optional_text(entry: Mapping[str, Any], field: str, where: _Where, key: str) -> str | None:
    value = entry.get(field)
    if value is not None and (not isinstance(value, str) or not value):
        raise where.error(f"{key}.{field}", "must be a non-empty string")
    return value


def _url(value: Any, where: _Where, key: str) -> str:
    if not isinstance(value, str) or not value:
        raise where.error(key, "is missing or not a string: give the database URL, without its password")
    if url_password(value) is not None:
        raise where.error(
            key, f"holds a password ({mask_url(value)}): a fleet file never does; use password_env or password_file"
        )
    try:
        parsed = make_url(value.replace(PLACEHOLDER, "x"))
    except (ArgumentError, ValueError):
        raise where.error(key, f"is not a database URL: {mask_url(value)}") from None
    if any(k.lower() in ("password", "passwd") for k in parsed.query):
        raise where.error(key, "holds a password in its query: a fleet file never does; use password_env or _file")
    return value


def _password_source(entry: Mapping[str, Any], where: _Where, key: str) -> tuple[str | None, Path | None]:
    """The entry's password source; what it holds now is registered for masking (when it can be read)."""
    env = _optional_text(entry, "password_env", where, key)
    file = _optional_text(entry, "password_file", where, key)
    if env is not None and file is not None:
        raise where.error(key, "has both password_env and password_file: keep one")
    if env is not None:
        if not _ENV_NAME.fullmatch(env):
            raise where.error(f"{key}.password_env", f"must be an environment variable's name, not {env!r}")
        register_secret(os.environ.get(env))
    if file is not None:
        with contextlib.suppress(OSError):  # reported by the target that needs it, when it runs
            register_secret(Path(file).read_text().strip())
    return env, Path(file) if file is not None else None


def _password_from_env(variable: str, target: str) -> str:
    value = os.environ.get(variable)
    if not value:
        raise ConfigurationError(
            f"The password of {target} comes from the environment variable {variable}, which is not set. Set it "
            "(in Kubernetes: env valueFrom secretKeyRef), or point password_file at the mounted Secret."
        )
    register_secret(value)
    return value


def _options(table: Any, where: _Where, key: str) -> dict[str, Any]:
    """A settings table, checked now: each option exists, may be set per target, and has a value of its type."""
    if not isinstance(table, dict):
        raise where.error(key, "must be a table of dbmigrate options")
    for name in table:
        if name in _NOT_SETTINGS:
            raise where.error(
                f"{key}.{name}", "cannot be set here: a target's url, schema and password_* keys say where it is"
            )
    try:
        Settings(runner="-").override(**table)
    except ConfigurationError as exc:
        raise where.error(key, f"is wrong: {exc}") from None
    return dict(table)


def _query_names(query: Any, where: _Where, key: str, base: Settings) -> list[str]:
    """The names a catalog query returns: the first column of each row."""
    if not isinstance(query, dict):
        raise where.error(key, "must be a table: {url = ..., sql = ...}")
    _refuse_unknown(query, _QUERY_KEYS, where, key)
    url = _url(query.get("url"), where, f"{key}.url")
    if PLACEHOLDER in url:
        raise where.error(f"{key}.url", f"is the catalog's own URL: it cannot hold {PLACEHOLDER}")
    sql = query.get("sql")
    if not isinstance(sql, str) or not sql.strip():
        raise where.error(f"{key}.sql", "is missing: give the query whose first column is the names")
    password_env, password_file = _password_source(query, where, key)
    catalog = Target("catalog", url, password_env=password_env, password_file=password_file).settings(base)
    engine = database.create(catalog.resolved_url(None))
    try:
        with database.connect(engine, catalog.wait_timeout) as connection:
            rows = connection.exec_driver_sql(sql).all()
    except SQLAlchemyError as exc:
        raise ConfigurationError(
            f"Fleet file {where.path}: {key}: the catalog query failed on {mask_url(url)}: {redacted_reason(exc)}."
        ) from None
    except DatabaseUnavailable as exc:
        raise DatabaseUnavailable(f"Fleet file {where.path}: {key}: {exc}") from None
    finally:
        engine.dispose()
    return [str(row[0]) for row in rows]


def _check_name(name: Any, where: _Where, key: str) -> None:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise where.error(
            key,
            f"gives the name {name!r}: a target's name is letters, digits, '_', '.' and '-' (starting with a letter "
            "or digit, at most 63 characters), so that it is safe in a URL, a schema and a log line",
        )


def _check_schema(schema: str | None, name: str, where: _Where, key: str) -> None:
    if schema is not None and not SCHEMA_NAME.fullmatch(schema):
        raise where.error(
            key,
            f"gives {schema!r} for {name!r}: a schema name here is lower-case letters, digits and _ (starting with a "
            "letter or _, at most 63 characters)",
        )
