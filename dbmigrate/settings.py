"""One Settings object, resolved from flags > environment > config files > defaults.

Environment variables are ``DBMIGRATE_<OPTION>`` (``DBMIGRATE_WAIT_TIMEOUT=30``); the database URL
also comes from ``DATABASE_URL``. Config files are the ``[dbmigrate]`` section of ``alembic.ini``
and ``[tool.dbmigrate]`` of ``pyproject.toml`` beside it. Without any URL, Alembic's own
``sqlalchemy.url`` from the ini file is used, so an existing Alembic project works as it is.
"""

from __future__ import annotations

import configparser
import dataclasses
import math
import os
import re
import socket
import sys
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from dbmigrate.database import parse_url
from dbmigrate.errors import ConfigurationError
from dbmigrate.masking import register_secret, url_password

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ENV_PREFIX = "DBMIGRATE_"
# What an upgrade does with a database ahead of its scripts (an older image deployed): refuse it (exit 2), keep
# the newer schema, or roll back as `dbmigrate rollback --schema auto` does. The first is the default.
WHEN_AHEAD = ("refuse", "keep", "rollback")
_LIST_SEPARATORS = re.compile(r"[\s,]+")


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything a run needs to know; build it with :meth:`Settings.load`."""

    config_file: Path = Path("alembic.ini")
    database_url: str | None = None
    database_url_file: Path | None = None
    database_password_file: Path | None = None
    wait_timeout: float = 60.0
    lock_wait_timeout: float = 300.0
    lock_timeout: float = 2.0
    statement_timeout: float = 3600.0
    lock_conflict_wait: float = 60.0
    max_lock_retries: int = 10
    # Seconds this process may run in all (0: no limit): every wait is cut to what is left, then exit 3.
    deadline: float = 0.0
    when_ahead: str = WHEN_AHEAD[0]
    history_table: str = "dbmigrate_history"
    table_schema: str | None = None
    # PostgreSQL schema per tenant: search_path, the version table and dbmigrate's tables in it.
    tenant_schema: str | None = None
    termination_log: Path = Path("/dev/termination-log")
    log_format: str = "auto"
    app_version: str | None = None
    allow_data_loss: bool = False
    refuse_findings: str = "data-loss"
    refuse_unanalysed: bool = False
    # Revisions (full ids) that run outside a transaction, for files the project does not own.
    non_transactional_revisions: tuple[str, ...] = ()
    backup: bool = True
    backup_schema: str = "dbmigrate_backup"
    backups_table: str = "dbmigrate_backups"
    archive_table: str = "dbmigrate_archive"
    backfills_table: str = "dbmigrate_backfills"
    backfill_batch_time: float = 0.05
    backfill_pause: float = 0.02
    # Queued backfills left to `dbmigrate backfill run` (a CronJob, an off-peak window): upgrade changes the schema.
    defer_backfills: bool = False
    archive_key: str | None = None
    pushgateway: str | None = None
    metrics_grouping: str | None = None
    metrics_textfile: Path | None = None
    runner: str = dataclasses.field(default_factory=lambda: default_runner(os.environ))

    @classmethod
    def load(
        cls,
        config_file: str | Path | None = None,
        environ: Mapping[str, str] | None = None,
        **flags: Any,
    ) -> Settings:
        """Resolve every option: a flag that is not None wins, then ``DBMIGRATE_*``, then files.

        Raises :class:`ConfigurationError` for an unknown option, a value of the wrong type or an
        unreadable URL/password file.
        """
        environ = os.environ if environ is None else environ
        unknown = set(flags) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ConfigurationError(f"Unknown dbmigrate option(s): {', '.join(sorted(unknown))}.")
        if config_file is None:
            config_file = flags.pop("config_file", None) or environ.get(ENV_PREFIX + "CONFIG")
        else:
            flags.pop("config_file", None)
        config_path = Path(config_file or "alembic.ini")
        file_values = _read_config_files(config_path)

        values: dict[str, Any] = {"config_file": config_path}
        ranks: dict[str, int] = {}
        for field in dataclasses.fields(cls):
            if field.name == "config_file":
                continue
            raw, rank = _lookup(field.name, flags, environ, file_values)
            if raw is not None:
                values[field.name] = _convert(field.name, field.type, raw)
                ranks[field.name] = rank
        if ranks.get("database_url_file", -1) >= ranks.get("database_url", -1) >= 0:
            values.pop("database_url")
        settings = cls(**values)
        if settings.when_ahead not in WHEN_AHEAD:
            raise ConfigurationError(
                f"Option when_ahead must be one of {', '.join(WHEN_AHEAD)}, not {settings.when_ahead!r}."
            )
        for secret in _passwords_of(settings.database_url):
            register_secret(secret)
        if settings.archive_key:
            register_secret(settings.archive_key)
        return settings

    def resolved_url(self, ini_url: str | None) -> str:
        """The URL to connect to: ours if set (file, flag, env), else Alembic's ``sqlalchemy.url``.

        A password file, when given, replaces the URL's password.
        """
        url = self.database_url
        if self.database_url_file is not None:
            url = _read_secret_file(self.database_url_file, "database URL")
        url = url or ini_url
        if not url:
            raise ConfigurationError(
                "No database URL: set DATABASE_URL (or DBMIGRATE_DATABASE_URL), pass --database-url "
                f"or --database-url-file, or set sqlalchemy.url in {self.config_file}."
            )
        for secret in _passwords_of(url):
            register_secret(secret)
        if self.database_password_file is not None:
            password = _read_secret_file(self.database_password_file, "database password")
            register_secret(password)
            url = _with_password(url, password)
        if self.tenant_schema is not None:
            url = _with_search_path(url, self.tenant_schema)
        return url

    def override(self, **options: Any) -> Settings:
        """A copy with ``options`` set, each converted and checked as its flag would be.

        Raises :class:`ConfigurationError` for an unknown option or a value of the wrong type.
        """
        fields = {field.name: field for field in dataclasses.fields(self)}
        unknown = set(options) - set(fields)
        if unknown:
            raise ConfigurationError(f"Unknown dbmigrate option(s): {', '.join(sorted(unknown))}.")
        values: dict[str, Any] = {
            name: None if value is None else _convert(name, fields[name].type, value) for name, value in options.items()
        }
        settings = dataclasses.replace(self, **values)
        for secret in _passwords_of(settings.database_url):
            register_secret(secret)
        return settings


def default_runner(environ: Mapping[str, str]) -> str:
    """Who is running: the pod name in Kubernetes (POD_NAME or HOSTNAME), else the host name."""
    return environ.get("POD_NAME") or environ.get("HOSTNAME") or socket.gethostname()


def _lookup(
    name: str, flags: Mapping[str, Any], environ: Mapping[str, str], file_values: Mapping[str, str]
) -> tuple[Any, int]:
    if flags.get(name) is not None:
        return flags[name], 3
    env_names = [ENV_PREFIX + name.upper()]
    if name == "database_url":
        env_names.append("DATABASE_URL")
    for env_name in env_names:
        if environ.get(env_name):
            return environ[env_name], 2
    if name in file_values:
        return file_values[name], 1
    return None, -1


def _convert(name: str, annotation: Any, raw: Any) -> Any:
    kind = str(annotation)
    if kind.startswith("tuple"):
        # A list in pyproject.toml, or text (a flag, the environment, an ini value that may span lines).
        items = raw if isinstance(raw, (list, tuple)) else _LIST_SEPARATORS.split(str(raw))
        return tuple(str(item).strip() for item in items if str(item).strip())
    if kind == "bool":
        if isinstance(raw, bool):
            return raw
        if str(raw).strip().lower() in ("1", "true", "yes", "on"):
            return True
        if str(raw).strip().lower() in ("0", "false", "no", "off", ""):
            return False
        raise ConfigurationError(f"Option {name} must be true or false, not {raw!r}.")
    try:
        if kind.startswith("float"):
            number: float = float(raw)
        elif kind.startswith("int"):
            number = int(raw)
        elif "Path" in kind:
            return Path(str(raw))
        else:
            return str(raw)
    except ValueError:
        raise ConfigurationError(f"Option {name} must be a number, not {raw!r}.") from None
    # Every number is a count or a duration: a negative one (or nan, inf) would silently mean "no limit".
    if not math.isfinite(number) or number < 0:
        raise ConfigurationError(f"Option {name} must be a number, 0 or more, not {raw!r}.")
    return number


def _read_config_files(config_path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    pyproject = config_path.parent / "pyproject.toml"
    if pyproject.is_file():
        try:
            tool = tomllib.loads(pyproject.read_text()).get("tool", {})
        except tomllib.TOMLDecodeError as exc:
            raise ConfigurationError(f"{pyproject} is not valid TOML: {exc}") from None
        values.update(
            {
                k.replace("-", "_"): ",".join(map(str, v)) if isinstance(v, list) else str(v)
                for k, v in tool.get("dbmigrate", {}).items()
            }
        )
    if config_path.is_file():
        parser = configparser.ConfigParser(interpolation=None)
        try:
            parser.read(config_path)
        except configparser.Error as exc:
            raise ConfigurationError(f"{config_path} is not a valid ini file: {exc}") from None
        if parser.has_section("dbmigrate"):
            values.update({k.replace("-", "_"): v for k, v in parser.items("dbmigrate")})
    return values


def _read_secret_file(path: Path, what: str) -> str:
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise ConfigurationError(f"Cannot read the {what} file {path}: {exc.strerror}.") from None


def _passwords_of(url: str | None) -> list[str]:
    """The URL's password and any ``?password=``/``?passwd=`` query value (drivers accept both).

    The password is read both as written up to the URL's last ``@`` (so a URL that does not parse,
    or parses wrongly, still has its whole password masked) and as SQLAlchemy reads it.
    """
    if not url:
        return []
    written = url_password(url)
    found = [written, urllib.parse.unquote(written)] if written else []
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        return found
    found += [parsed.password] if parsed.password else []
    for key in ("password", "passwd"):
        value = parsed.query.get(key)
        found.extend([value] if isinstance(value, str) else list(value or ()))
    return [str(secret) for secret in found]


# A tenant schema: a PostgreSQL name that needs no quoting, so search_path and SQL take it as it is.
SCHEMA_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def _with_search_path(url: str, schema: str) -> str:
    """A PostgreSQL URL whose connections have ``search_path`` set to ``schema`` alone (libpq's ``options``)."""
    if not SCHEMA_NAME.fullmatch(schema):
        raise ConfigurationError(
            f"The tenant schema {schema!r} is not a plain PostgreSQL name: use lower-case letters, digits and _, "
            "starting with a letter or _, at most 63 characters."
        )
    parsed = parse_url(url)
    if parsed.get_backend_name() != "postgresql":
        raise ConfigurationError(
            f"A tenant schema ({schema}) needs PostgreSQL, not {parsed.get_backend_name()}: give each tenant a "
            "database of its own there."
        )
    given = parsed.query.get("options")
    options = " ".join([*([given] if isinstance(given, str) else list(given or ())), f"-csearch_path={schema}"])
    return parsed.update_query_dict({"options": options}).render_as_string(hide_password=False)


def _with_password(url: str, password: str) -> str:
    # Checked before the password goes in: once rendered, a URL that parsed wrongly looks well-formed.
    return parse_url(url).set(password=password).render_as_string(hide_password=False)
