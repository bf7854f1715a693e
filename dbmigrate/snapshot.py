"""Schema snapshots: what SQLAlchemy's inspector sees of a database, normalised to compare exactly.

A snapshot is one line per object (table, column with type, nullability and default, primary key,
foreign key, unique and check constraint, index, view, sequence, PostgreSQL enum type), keyed so
that two snapshots compare line by line. Spelling the server chose does not count: column order,
a default's redundant parentheses, a number or boolean default quoted or not, the names a server
gives unnamed CHECK constraints, the sequence PostgreSQL makes for a SERIAL or identity column (it
is part of that column). :func:`compare` says what is missing, extra and changed.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any

from sqlalchemy import inspect
from sqlalchemy import types as sqltypes
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.sql.elements import ClauseElement

_PG_SYSTEM_SCHEMAS = ("information_schema", "pg_catalog", "pg_toast")


def snapshot(connection: Connection, excluded: Callable[[str | None, str], bool]) -> dict[str, str]:
    """The schema as ``{object: definition}``: every table, column, key, index, constraint, view, sequence, enum.

    Objects are named so that two snapshots compare key by key; definitions are normalised (types
    rendered by the dialect, whitespace collapsed, lists in a fixed order). Column order is ignored.
    ``excluded(schema, name)`` leaves a table out, ``excluded(schema, "")`` a whole schema.
    """
    inspector = inspect(connection)
    found: dict[str, str] = {}
    for schema in schemas(connection):
        if schema is not None and excluded(schema, ""):
            continue
        prefix = f"{schema}." if schema else ""
        names = [name for name in inspector.get_table_names(schema=schema) if not excluded(schema, name)]
        for name in names:
            found[f"table {prefix}{name}"] = ""
        if names:
            _describe_tables(connection, schema, names, found)
        views = list(inspector.get_view_names(schema=schema))
        with contextlib.suppress(NotImplementedError):
            views += inspector.get_materialized_view_names(schema=schema)
        for view in views:
            if excluded(schema, view):
                continue
            try:
                definition = inspector.get_view_definition(view, schema=schema)
            except (NotImplementedError, SQLAlchemyError):
                definition = ""
            found[f"view {prefix}{view}"] = _norm(definition)
        with contextlib.suppress(NotImplementedError):
            owned = _column_sequences(connection, schema or inspector.default_schema_name)
            for sequence in inspector.get_sequence_names(schema=schema):
                if not excluded(schema, sequence) and sequence not in owned:
                    found[f"sequence {prefix}{sequence}"] = ""
        get_enums = getattr(inspector, "get_enums", None)
        if get_enums is not None:
            for enum in get_enums(schema=schema or inspector.default_schema_name):
                found[f"enum type {prefix}{enum['name']}"] = "(" + ", ".join(repr(v) for v in enum["labels"]) + ")"
    return found


def _column_sequences(connection: Connection, schema: str | None) -> set[str]:
    """PostgreSQL: the sequences a column owns (SERIAL's, an identity's), part of that column rather than objects.

    They come and go with their table, and the column's default (``nextval(...)``) or identity
    already names them; listed apart, a table left behind would read differently than on MySQL or
    SQLite, which have no such sequence.
    """
    if connection.dialect.name != "postgresql" or schema is None:
        return set()
    rows = connection.exec_driver_sql(
        "SELECT s.relname FROM pg_class s JOIN pg_namespace n ON n.oid = s.relnamespace "
        "JOIN pg_depend d ON d.objid = s.oid AND d.classid = 'pg_class'::regclass "
        "AND d.refclassid = 'pg_class'::regclass AND d.refobjsubid > 0 AND d.deptype IN ('a', 'i') "
        "WHERE s.relkind = 'S' AND n.nspname = %(schema)s",
        {"schema": schema},
    )
    return {str(row[0]) for row in rows}


def schemas(connection: Connection) -> list[str | None]:
    """None for the connection's default schema, plus PostgreSQL's other user schemas."""
    if connection.dialect.name != "postgresql":
        return [None]
    inspector = inspect(connection)
    default = inspector.default_schema_name
    others = [
        s
        for s in inspector.get_schema_names()
        if s != default and s not in _PG_SYSTEM_SCHEMAS and not s.startswith("pg_")
    ]
    return [None, *sorted(others)]


def _describe_tables(connection: Connection, schema: str | None, names: list[str], found: dict[str, str]) -> None:
    inspector = inspect(connection)
    dialect = connection.dialect
    default_schema = inspector.default_schema_name

    def multi(method: str) -> dict[tuple[str | None, str], Any]:
        try:
            return dict(getattr(inspector, method)(schema=schema, filter_names=names))
        except NotImplementedError:
            return {}

    columns, pks, fks = multi("get_multi_columns"), multi("get_multi_pk_constraint"), multi("get_multi_foreign_keys")
    indexes, uniques = multi("get_multi_indexes"), multi("get_multi_unique_constraints")
    checks = multi("get_multi_check_constraints")
    for (table_schema, table), table_columns in columns.items():
        label = f"{table_schema}.{table}" if table_schema else table
        for column in table_columns:
            parts = [_type(column["type"], dialect), "NULL" if column["nullable"] else "NOT NULL"]
            if column.get("default") is not None:
                parts.append(f"DEFAULT {_default(column['default'], column['type'])}")
            computed = column.get("computed")
            if computed:
                parts.append(f"GENERATED ({_norm(computed['sqltext'])})")
            if column.get("identity"):
                parts.append("IDENTITY")
            if column.get("comment"):
                parts.append(f"COMMENT {column['comment']!r}")
            found[f"column {label}.{column['name']}"] = " ".join(parts)
        pk = pks.get((table_schema, table)) or {}
        if pk.get("constrained_columns"):
            found[f"primary key of {label}"] = (
                f"{pk.get('name') or ''} ({', '.join(pk['constrained_columns'])})".strip()
            )
        for fk in fks.get((table_schema, table), []):
            referred_schema = fk.get("referred_schema")
            referred = (f"{referred_schema}." if referred_schema and referred_schema != default_schema else "") + str(
                fk["referred_table"]
            )
            options = " ".join(f"{k.upper()} {v}" for k, v in sorted((fk.get("options") or {}).items()) if v)
            columns_text = ", ".join(fk["constrained_columns"])
            name = fk.get("name") or f"({columns_text})"
            found[f"foreign key {name} on {label}"] = (
                f"({columns_text}) REFERENCES {referred} ({', '.join(fk['referred_columns'])}) {options}".strip()
            )
        for index in indexes.get((table_schema, table), []):
            if index.get("duplicates_constraint"):
                continue  # reported as the constraint itself
            expressions = index.get("expressions") or index.get("column_names") or []
            text = f"{'UNIQUE ' if index.get('unique') else ''}({', '.join(str(e) for e in expressions)})"
            index_options = {k: _option(v) for k, v in (index.get("dialect_options") or {}).items()}
            if any(v is not None for v in index_options.values()):
                text += " " + " ".join(f"{k}={v}" for k, v in sorted(index_options.items()) if v is not None)
            found[f"index {index['name']} on {label}"] = text
        for unique in uniques.get((table_schema, table), []):
            columns_text = ", ".join(unique["column_names"])
            found[f"unique constraint {unique.get('name') or f'({columns_text})'} on {label}"] = f"({columns_text})"
        for check in checks.get((table_schema, table), []):
            sqltext = _norm(check["sqltext"])
            name = check.get("name") or ""
            if dialect.name in ("mysql", "mariadb") and _generated_check_name(name, table):
                name = ""  # numbered by the server in table order: the same constraint may come back renumbered
            found[f"check constraint {name or sqltext} on {label}"] = sqltext


def _generated_check_name(name: str, table: str) -> bool:
    """A name MySQL/MariaDB gave an unnamed CHECK: ``CONSTRAINT_<n>`` (MariaDB), ``<table>_chk_<n>`` (MySQL)."""
    return re.fullmatch(rf"CONSTRAINT_\d+|{re.escape(table)}_chk_\d+", name) is not None


def _type(type_: sqltypes.TypeEngine[Any], dialect: Any) -> str:
    try:
        return _norm(type_.compile(dialect=dialect)).upper()
    except Exception:  # noqa: BLE001 - a type the dialect cannot render (SQLite's NullType) still compares by name
        return type(type_).__name__.upper()


def _expression(value: object) -> str:
    """A default's SQL, without what does not change its meaning: redundant outer parentheses, spaces inside them.

    SQLite keeps a default as written, and Alembic's batch mode writes a reflected one back in
    parentheses: a downgrade that recreates a table turns ``(expr)`` into ``((expr))``.
    """
    parts = _norm(value).split("'")  # even parts are outside string literals
    text = "'".join(re.sub(r"\(\s+", "(", re.sub(r"\s+\)", ")", p)) if i % 2 == 0 else p for i, p in enumerate(parts))
    while text.startswith("(") and text.endswith(")") and _closes_at_end(text):
        text = text[1:-1].strip()
    return text


def _default(value: object, type_: sqltypes.TypeEngine[Any]) -> str:
    """A column default's SQL; for a number or boolean column, a literal as the value it stores.

    SQLite keeps a default as written: ``'-1'`` and ``-1`` in an INTEGER column, ``false`` and
    ``'0'`` in a BOOLEAN one, store the same value.
    """
    text = _expression(value)
    try:
        python_type = type_.python_type
    except NotImplementedError:
        return text
    if python_type not in (int, float, Decimal, bool):
        return text
    literal = text[1:-1] if len(text) > 1 and text[0] == text[-1] == "'" else text
    if python_type is bool and literal.lower() in ("false", "true"):
        return "1" if literal.lower() == "true" else "0"
    return literal if re.fullmatch(r"[-+]?\d+(\.\d+)?", literal) else text


def _closes_at_end(text: str) -> bool:
    """Whether the parenthesis opening ``text`` is the one closing it (quoted parentheses do not count)."""
    depth, quoted = 0, False
    for index, char in enumerate(text):
        if char == "'":
            quoted = not quoted
        elif not quoted and char in "()":
            depth += 1 if char == "(" else -1
            if depth == 0:
                return index == len(text) - 1
    return False


def _option(value: object) -> str | None:
    """An index's dialect option as text, None when unset; a clause (SQLite's partial-index WHERE) by its SQL.

    Never by truth value: a clause has none.
    """
    if isinstance(value, ClauseElement):
        return _norm(value)
    if value is None or value is False or (isinstance(value, (str, list, tuple, dict)) and not value):
        return None
    return _norm(value)


def _norm(value: object) -> str:
    return " ".join(str(value).split())


def compare(before: Mapping[str, str], after: Mapping[str, str]) -> tuple[list[str], list[str], list[str]]:
    """What ``after`` has that ``before`` lacks, what it lacks, and what differs; one sentence each, sorted."""
    extra = [f"{key} {after[key]}".strip() + " is still there" for key in sorted(set(after) - set(before))]
    missing = [f"{key} {before[key]}".strip() + " is gone" for key in sorted(set(before) - set(after))]
    changed = [
        f"{key} was {before[key] or '(empty)'}, is {after[key] or '(empty)'}"
        for key in sorted(set(before) & set(after))
        if before[key] != after[key]
    ]
    # A table that is still there explains its columns, keys and indexes: name the table only.
    gone_tables = {k.removeprefix("table ") for k in set(before) - set(after) if k.startswith("table ")}
    left_tables = {k.removeprefix("table ") for k in set(after) - set(before) if k.startswith("table ")}
    return _fold(extra, left_tables), _fold(missing, gone_tables), changed


def _fold(lines: list[str], tables: set[str]) -> list[str]:
    if not tables:
        return lines
    kept = []
    for line in lines:
        if not line.startswith("table ") and any(_belongs(line, table) for table in tables):
            continue
        kept.append(line)
    return kept


def _belongs(line: str, table: str) -> bool:
    return line.startswith(f"column {table}.") or f" on {table} " in line or f" of {table} " in line
