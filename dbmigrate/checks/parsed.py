"""The rules' reading of statements that need the parser: sqlglot, for the step's dialect.

Type changes (DL006, BL002) compare the column's type before the statement (the existing type
collect found for an ``alter_column`` call, or the type an earlier statement of the step gave the
column) with the type the statement sets, both reduced to a :class:`ColumnType`. Without a known
existing type nothing is guessed: no DL006, and BL002 only where any type change rewrites
(PostgreSQL) or where the statement comes from an ``alter_column`` given ``type_`` (MySQL).
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Callable, Iterator

import sqlglot
from sqlglot import exp

from dbmigrate.checks.rules import Hit, NewObjects

# sqlglot warns through the root logger about syntax it keeps as an opaque command: those are read
# below where a rule knows their form, and a plain-text line would break a pod's JSON logs.
logging.getLogger("sqlglot").setLevel(logging.ERROR)


@dataclasses.dataclass(frozen=True)
class Altering:
    """What collect knows of the ``alter_column`` call behind a statement (see ``Statement``)."""

    existing_type: str | None = None
    changes_type: bool = False
    new_type: str | None = None


def parsed_hits(sql: str, dialect: str, new: NewObjects, altering: Altering = Altering()) -> list[Hit]:
    """The hits of every statement in ``sql`` (sqlglot dialect name); nothing when it does not parse."""
    try:
        parsed = sqlglot.parse(sql, read=dialect)
    except sqlglot.errors.SqlglotError:
        return []
    return [
        hit
        for expression in parsed
        if isinstance(expression, exp.Expression)
        for hit in _matches(expression, dialect, new, altering)
    ]


def _matches(expression: exp.Expression, dialect: str, new: NewObjects, altering: Altering) -> Iterator[Hit]:
    if isinstance(expression, exp.Create):
        yield from _create(expression, dialect, new)
    elif isinstance(expression, exp.Drop):
        yield from _drop(expression, new)
    elif isinstance(expression, exp.Alter) and expression.args.get("kind") == "TABLE":
        yield from _alter_table(expression, dialect, new, altering)
    elif isinstance(expression, exp.TruncateTable):
        for table in expression.expressions:
            if isinstance(table, exp.Table) and not new.has_table(_name(table)):
                yield "DL003", {"table": _name(table)}
    elif isinstance(expression, exp.Delete):
        table = _name(expression.this)
        if not expression.args.get("where") and not new.has_table(table):
            yield "DL004", {"table": table}
    elif isinstance(expression, exp.Update):
        yield from _update(expression, new)
    elif isinstance(expression, exp.Command):
        yield from _command(expression, new)


def _create(expression: exp.Create, dialect: str, new: NewObjects) -> Iterator[Hit]:
    kind = expression.args.get("kind")
    if kind == "TABLE" or (kind == "VIEW" and expression.find(exp.MaterializedProperty)):
        # A materialized view holds rows like a table: indexing the one the step created blocks nobody.
        created = expression.find(exp.Table)
        if created is not None:
            new.tables.add(_name(created))
    elif kind == "INDEX" and dialect == "postgres" and not expression.args.get("concurrently"):
        index = expression.this
        table = _name(index.args["table"]) if isinstance(index, exp.Index) and index.args.get("table") else ""
        if table and not new.has_table(table):
            yield "BL001", {"table": table}


def _drop(expression: exp.Drop, new: NewObjects) -> Iterator[Hit]:
    kind = expression.args.get("kind")
    for target in expression.args.get("tables") or []:
        if kind == "TABLE" and isinstance(target, exp.Table) and not new.has_table(_name(target)):
            yield "DL001", {"table": _name(target)}
            yield "BR002", {"table": _name(target)}
        elif kind == "SCHEMA" and isinstance(target, exp.Table):
            yield "DL007", {"schema": target.db or target.name}


def _alter_table(expression: exp.Alter, dialect: str, new: NewObjects, altering: Altering) -> Iterator[Hit]:
    table = _name(expression.this)
    existing_table = not new.has_table(table)
    renamed_column_to = _renamed_column_target(expression)
    for action in expression.args.get("actions") or []:
        if isinstance(action, exp.ColumnDef):
            column = action.name
            if existing_table:
                yield from _added_column(action, table, dialect)
            new.columns.add((table, column))
            if any(
                isinstance(c.args.get("kind"), exp.DefaultColumnConstraint)
                for c in action.args.get("constraints") or []
            ):
                new.defaulted.add((table, column))
        elif isinstance(action, exp.Drop) and action.args.get("kind") == "COLUMN":
            for dropped in action.args.get("tables") or []:
                if not new.has_column(table, dropped.name):
                    yield "DL002", {"table": table, "column": dropped.name}
                    yield "BR001", {"table": table, "column": dropped.name}
        elif isinstance(action, exp.Drop) and action.args.get("kind") == "CONSTRAINT":
            for dropped in action.args.get("tables") or []:
                new.checked_not_null.discard(new.not_null_checks.pop(dropped.name, ("", "")))
        elif isinstance(action, exp.RenameColumn) and not new.has_column(table, action.this.name):
            yield "BR003", {"table": table, "column": action.this.name, "new_name": action.args["to"].name}
        elif isinstance(action, exp.ModifyColumn) and isinstance(action.this, exp.ColumnDef):
            # MySQL's MODIFY c <definition> and CHANGE old new <definition>.
            renamed = action.this.name
            old = action.args["rename_from"].name if action.args.get("rename_from") is not None else renamed
            if old != renamed and not new.has_column(table, old):
                yield "BR003", {"table": table, "column": old, "new_name": renamed}
            kind = action.this.args.get("kind")
            if (table, old) in new.filled:
                yield from _not_null_after_fill(table, old, _declares_not_null(action.this), dialect, new)
            if isinstance(kind, exp.DataType) and not new.has_column(table, old):
                after = _type_sql(kind, dialect) + _charset_clause(action.this.sql(dialect=dialect))
                yield from _type_change(table, old, after, False, dialect, new, altering)
                new.types[(table, renamed)] = new.types.pop((table, old))
        elif isinstance(action, exp.AlterRename) and renamed_column_to is not None:
            # PostgreSQL's COLUMN keyword is optional; sqlglot reads `RENAME a TO b` as this shape.
            if not new.has_column(table, action.this.name):
                yield "BR003", {"table": table, "column": action.this.name, "new_name": renamed_column_to}
        elif isinstance(action, exp.AlterRename) and existing_table:
            yield "BR004", {"table": table, "new_name": _name(action.this)}
        elif isinstance(action, exp.AlterColumn) and action.args.get("default") is not None:
            new.defaulted.add((table, action.name))
        elif isinstance(action, exp.AlterColumn) and (table, action.name) in new.filled:
            yield from _not_null_after_fill(table, action.name, action.args.get("allow_null") is False, dialect, new)
        elif isinstance(action, exp.AlterColumn) and not new.has_column(table, action.name):
            column = action.name
            dtype = action.args.get("dtype")
            if isinstance(dtype, exp.DataType):
                using = bool(action.args.get("using"))
                after = altering.new_type or _type_sql(dtype, dialect)
                yield from _type_change(table, column, after, using, dialect, new, altering)
            elif altering.existing_type is not None:
                new.types.setdefault((table, column), altering.existing_type)
            proven = (table, column) in new.checked_not_null
            if action.args.get("allow_null") is False and dialect == "postgres" and not proven:
                yield "BL005", {"table": table, "column": column}
        elif isinstance(action, exp.AddConstraint) and existing_table:
            yield from _added_constraints(action, expression, table, dialect, new)


def _not_null_after_fill(table: str, column: str, not_null: bool, dialect: str, new: NewObjects) -> Iterator[Hit]:
    """A column the step added to an existing table and filled, made NOT NULL: BL005 (PostgreSQL) and BR006.

    The fill wrote every existing row, so the constraint checks them all under the ALTER's lock, and
    the previous application version, which does not write the column, can no longer insert.
    """
    if not not_null:
        return
    if dialect == "postgres" and (table, column) not in new.checked_not_null:
        yield "BL005", {"table": table, "column": column}
    if (table, column) not in new.defaulted:
        yield "BR006", {"table": table, "column": column}


def _declares_not_null(column: exp.ColumnDef) -> bool:
    """A MySQL MODIFY/CHANGE column definition says NOT NULL (it restates the whole column)."""
    kinds = [c.args.get("kind") for c in column.args.get("constraints") or []]
    return any(isinstance(k, exp.NotNullColumnConstraint) and not k.args.get("allow_null") for k in kinds)


def _type_change(
    table: str, column: str, after_sql: str, using: bool, dialect: str, new: NewObjects, altering: Altering
) -> Iterator[Hit]:
    """DL006 and BL002 for a statement that sets ``table.column``'s type to ``after_sql``."""
    before_sql = altering.existing_type or new.types.get((table, column))
    new.types[(table, column)] = after_sql
    names = {"table": table, "column": column}
    if before_sql is None:
        # Nothing to compare with: no DL006. PostgreSQL rewrites for almost every change; on MySQL a
        # MODIFY may only restate the type, unless alter_column was given a new one.
        if dialect == "postgres" or (dialect == "mysql" and altering.changes_type):
            yield "BL002", {**names, "rewrite": _REWRITE[dialect]}
        return
    before, after = column_type(before_sql, dialect), column_type(after_sql, dialect)
    if dialect == "postgres" and _one_postgres_enum(before, after):
        # Two declarations of one enum type: the column keeps its type and its values (the values a
        # declaration lists are what it claims, the type's are changed by ALTER TYPE).
        if not after.values:
            new.types[(table, column)] = before_sql
        if using:
            yield "BL002", {**names, "rewrite": _REWRITE[dialect]}
        return
    if before == after and not using:
        return
    loss = lossy_change(before, after, dialect)
    if loss is not None:
        yield "DL006", {**names, "old_type": before_sql, "new_type": after_sql, "loss": loss}
    if (dialect == "postgres" and (using or not _postgres_keeps_rows(before, after))) or (
        dialect == "mysql" and not _mysql_in_place(before, after)
    ):
        yield "BL002", {**names, "rewrite": _REWRITE[dialect]}


_REWRITE = {
    "postgres": "rewrites the table and rebuilds its indexes under an ACCESS EXCLUSIVE lock (unless the change "
    "is binary-compatible, such as widening a varchar): reads and writes on the table wait until it ends",
    "mysql": "is not an in-place change for InnoDB (only widening a VARCHAR within its length-byte class or "
    "adding ENUM values at the end is): the table is copied (ALGORITHM=COPY) and writes to it wait until the "
    "copy ends",
}


@dataclasses.dataclass(frozen=True)
class ColumnType:
    """A column type reduced to what decides whether its values survive a change to another type.

    ``size`` is, by family: text, the characters it holds; binary, bytes; bit, bits; integer, bytes of
    storage; decimal, the precision; float, the mantissa bits; time and timestamp, the fractional
    second digits. None means unbounded. ``scale`` is a decimal's (None: unbounded numeric);
    ``bytes_per_char`` a MySQL text's, from its character set (utf8mb4, 4, unless it names another).
    A float is named by its bits (``FLOAT(53)`` is ``DOUBLE``), so that two spellings of one type
    compare equal; a PostgreSQL enum, and a type of the database's own (``other``), by its name as
    PostgreSQL resolves it (``status``; ``app.Status`` when quoted), so that a declaration and the
    raw SQL naming the same type compare equal.
    """

    family: str  # text binary bit integer decimal float boolean date time timestamp interval json uuid enum other
    name: str
    size: int | None = None
    scale: int | None = 0
    zone: bool = False
    unsigned: bool = False
    values: tuple[str, ...] = ()
    bytes_per_char: int = 0


_INTEGER_BYTES = {
    "TINYINT": 1, "SMALLINT": 2, "SMALLSERIAL": 2, "MEDIUMINT": 3, "INT": 4, "SERIAL": 4, "BIGINT": 8,
    "BIGSERIAL": 8,
}  # fmt: skip
_UNSIGNED = {
    "UTINYINT": "TINYINT",
    "USMALLINT": "SMALLINT",
    "UMEDIUMINT": "MEDIUMINT",
    "UINT": "INT",
    "UBIGINT": "BIGINT",
}
_FAMILIES = {
    "text": {"CHAR", "NCHAR", "VARCHAR", "NVARCHAR", "BPCHAR", "TEXT", "TINYTEXT", "MEDIUMTEXT", "LONGTEXT", "NAME"},
    "binary": {"BINARY", "VARBINARY", "BLOB", "TINYBLOB", "MEDIUMBLOB", "LONGBLOB", "IMAGE"},
    "decimal": {"DECIMAL", "UDECIMAL", "BIGDECIMAL"},
    "float": {"FLOAT", "DOUBLE"},
    "boolean": {"BOOLEAN"},
    "date": {"DATE", "DATE32"},
    "time": {"TIME", "TIMETZ"},
    "timestamp": {"TIMESTAMP", "DATETIME", "DATETIME2", "TIMESTAMPTZ", "TIMESTAMPLTZ", "TIMESTAMPNTZ", "SMALLDATETIME"},
    "interval": {"INTERVAL"},
    "json": {"JSON", "JSONB"},
    "uuid": {"UUID"},
    "enum": {"ENUM", "ENUM8", "ENUM16"},
}
_FAMILY = {name: family for family, names in _FAMILIES.items() for name in names}
# MySQL sizes in bytes (TEXT and BLOB kinds); a text's characters also depend on its character set.
_MYSQL_BYTES = {"TINYTEXT": 255, "TEXT": 65535, "MEDIUMTEXT": 16777215, "TINYBLOB": 255, "BLOB": 65535}
_MYSQL_BYTES["MEDIUMBLOB"] = _MYSQL_BYTES["MEDIUMTEXT"]
_CHARSET = re.compile(r"\b(?:CHARACTER\s+SET|CHARSET)\s*=?\s*[`'\"]?(\w+)", re.IGNORECASE)
_BYTES_PER_CHAR = {"latin1": 1, "ascii": 1, "binary": 1, "ucs2": 2, "utf8": 3, "utf8mb3": 3, "utf16": 4}


# How collect writes a PostgreSQL enum: the name its DDL uses, then its values (see collect._render_type).
_POSTGRES_ENUM = re.compile(
    r'(?P<name>(?:"(?:[^"]|"")+"|[^\s"(]+)(?:\.(?:"(?:[^"]|"")+"|[^\s"(]+))?) ENUM\((?P<values>.*)\)', re.S
)
# sqlglot reads BIT VARYING(n) as BIT and does not read VARBIT(n); it drops INTERVAL(p)'s precision.
_POSTGRES_BITS = re.compile(r"(?P<name>BIT\s+VARYING|VARBIT|BIT)\s*(?:\(\s*(?P<size>\d+)\s*\))?", re.I)
_POSTGRES_INTERVAL = re.compile(r"INTERVAL\s*(?:\(\s*(?P<size>\d+)\s*\))?", re.I)


def column_type(sql: str, dialect: str) -> ColumnType:
    """The :class:`ColumnType` of a type as ``dialect`` writes it (family ``other`` when unrecognised)."""
    if dialect == "postgres":
        named_enum = _POSTGRES_ENUM.fullmatch(sql.strip())
        if named_enum:
            values = column_type(f"ENUM({named_enum['values']})", dialect).values
            return ColumnType("enum", _postgres_name(named_enum["name"]), values=values)
        bit_string = _POSTGRES_BITS.fullmatch(sql.strip())
        if bit_string:
            varying = bit_string["name"].upper() != "BIT"
            size = int(bit_string["size"]) if bit_string["size"] else (None if varying else 1)
            return ColumnType("bit", "VARBIT" if varying else "BIT", size)
        interval = _POSTGRES_INTERVAL.fullmatch(sql.strip())
        if interval:
            return ColumnType("interval", "INTERVAL", int(interval["size"]) if interval["size"] else 6)
    try:
        # On PostgreSQL a name sqlglot does not know is a type of the database's own (an enum, a domain).
        dtype = exp.DataType.build(sql, dialect=dialect, udt=dialect == "postgres")
    except (sqlglot.errors.SqlglotError, ValueError):
        return ColumnType("other", " ".join(sql.upper().split()))
    name = dtype.this.name
    params = [p.this if isinstance(p, exp.DataTypeParam) else p for p in dtype.expressions]
    numbers = [int(p.name) if isinstance(p, exp.Literal) and p.name.isdigit() else None for p in params]
    first = numbers[0] if numbers else None
    if name in _UNSIGNED or name in _INTEGER_BYTES:
        return ColumnType("integer", name, _INTEGER_BYTES[_UNSIGNED.get(name, name)], unsigned=name in _UNSIGNED)
    family = _FAMILY.get(name, "other")
    if family == "boolean" and dialect == "mysql":
        return ColumnType("integer", name, 1)  # BOOL is TINYINT(1) there
    if family == "text":
        per_char = _BYTES_PER_CHAR.get(m[1].lower(), 4) if (m := _CHARSET.search(sql)) else 4
        if name in ("CHAR", "NCHAR"):
            return ColumnType(family, name, first or 1, bytes_per_char=per_char if dialect == "mysql" else 0)
        if dialect != "mysql":
            return ColumnType(family, name, first)
        size = _MYSQL_BYTES[name] // per_char if name in _MYSQL_BYTES else first
        return ColumnType(family, name, size, bytes_per_char=per_char)
    if family == "binary":
        size = _MYSQL_BYTES.get(name) if dialect == "mysql" else None
        return ColumnType(family, name, first if first is not None else (1 if name == "BINARY" else size))
    if family == "decimal":
        if not numbers:
            return ColumnType(family, name, 10, 0) if dialect == "mysql" else ColumnType(family, name, None, None)
        return ColumnType(family, name, first, numbers[1] if len(numbers) > 1 else 0)
    if family == "float":
        bits = 24 if name == "FLOAT" else 53
        if len(numbers) == 1 and first is not None:
            bits = 24 if first <= 24 else 53
        return ColumnType(family, "FLOAT" if bits == 24 else "DOUBLE", bits)
    if family in ("time", "timestamp"):
        default = 0 if dialect == "mysql" else 6
        zone = name in ("TIMETZ", "TIMESTAMPTZ", "TIMESTAMPLTZ")
        return ColumnType(family, name, first if first is not None else default, zone=zone)
    if family == "enum":
        return ColumnType(family, name, values=tuple(p.name for p in params))
    if family == "other":
        if dialect == "postgres" and dtype.this == exp.DataType.Type.USERDEFINED:
            return ColumnType(family, _postgres_name(dtype.sql(dialect=dialect)))
        return ColumnType(family, dtype.sql(dialect=dialect).upper())
    return ColumnType(family, name)


def _postgres_name(name: str) -> str:
    """A type's name as PostgreSQL resolves it: unquoted parts folded to lower case, quoted ones kept."""
    parts = re.findall(r'"((?:[^"]|"")+)"|([^."]+)', name)
    return ".".join(quoted.replace('""', '"') if quoted else plain.lower() for quoted, plain in parts)


# Characters the longest value of a type takes as text (a sign, digits, separators).
_TEXT_WIDTH = {"boolean": 5, "date": 10, "time": 21, "timestamp": 32, "uuid": 36}


def lossy_change(before: ColumnType, after: ColumnType, dialect: str) -> str | None:
    """What a change from ``before`` to ``after`` does to existing values, when some may be lost; else None.

    The answer completes "Changing the type of t.c from X to Y loses data: ...".
    """
    old, new = before.family, after.family
    if before == after:
        return None
    if new == "boolean" and old != "boolean":
        return (
            "every existing value collapses to true or false, or makes the ALTER fail when it is not a boolean "
            "literal, so what the values were is gone"
        )
    if new == "text" and old != "text":
        width = _text_width(before)
        declared_length = after.name in ("VARCHAR", "NVARCHAR", "CHAR", "NCHAR")
        if old == "other" or after.size is None or (width is None and not declared_length):
            return None  # not guessed; unlimited; a MySQL TEXT kind for values of no known length (JSON)
        return _too_long(after.size) if width is None or after.size < width else None
    handler = _LOSSES.get(old)
    return handler(before, after, dialect) if handler is not None else None


def _too_long(size: int) -> str:
    return (
        f"existing values longer than {size} characters are truncated or make the ALTER fail, depending on "
        "the database and its SQL mode"
    )


def _does_not_convert(before: ColumnType, after: ColumnType) -> str:
    return (
        "existing values that do not convert to the new type are lost (set to 0, NULL or a zero date by a "
        "lenient database) or make the ALTER fail part-way through the deploy"
    )


def _text_width(column: ColumnType) -> int | None:
    """The characters the longest value of ``column`` takes as text (None: no limit known)."""
    if column.family == "integer":
        return len(str(2 ** (8 * (column.size or 8)))) + 1
    if column.family == "decimal":
        return None if column.size is None else column.size + 2
    if column.family == "float":
        return 24
    if column.family == "enum":
        return max((len(value) for value in column.values), default=0)
    return _TEXT_WIDTH.get(column.family)


def _narrower(old: int | None, new: int | None, loss: Callable[[int], str]) -> str | None:
    if new is not None and (old is None or new < old):
        return loss(new)
    return None


def _from_text(before: ColumnType, after: ColumnType, dialect: str) -> str | None:
    if after.family in ("text", "binary"):
        return _narrower(before.size, after.size, _too_long)
    return _does_not_convert(before, after)


def _from_binary(before: ColumnType, after: ColumnType, dialect: str) -> str | None:
    if after.family == "binary":
        return _narrower(
            before.size,
            after.size,
            lambda size: f"existing values longer than {size} bytes are truncated or make the ALTER fail",
        )
    return _does_not_convert(before, after)


def _integer_range(column: ColumnType) -> tuple[int, int]:
    bits = 8 * (column.size or 8)
    return (0, 2**bits - 1) if column.unsigned else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)


def _overflow(low: int, high: int) -> str:
    return (
        f"the new type holds only {low} to {high}, and existing values outside that range are clipped or make "
        "the ALTER fail"
    )


def _from_integer(before: ColumnType, after: ColumnType, dialect: str) -> str | None:
    low, high = _integer_range(before)
    if after.family == "integer":
        new_low, new_high = _integer_range(after)
        return _overflow(new_low, new_high) if new_low > low or new_high < high else None
    if after.family == "decimal":
        if after.size is not None and after.size - (after.scale or 0) < len(str(max(high, -low))):
            return _integer_digits(after.size - (after.scale or 0))
        return None
    if after.family == "float":
        value_bits = 8 * (before.size or 8) - (0 if before.unsigned else 1)
        return _rounded(after) if (after.size or 53) < value_bits else None
    return None if after.family == "json" else _does_not_convert(before, after)


def _integer_digits(digits: int) -> str:
    return (
        f"the new type keeps {digits} digits before the decimal point, and larger existing values make the "
        "ALTER fail (or are clipped)"
    )


def _rounded(after: ColumnType) -> str:
    digits = 6 if (after.size or 53) <= 24 else 15
    return f"the new type keeps about {digits} significant digits, so existing values with more are rounded"


def _from_decimal(before: ColumnType, after: ColumnType, dialect: str) -> str | None:
    if after.family == "float":
        digits = 6 if (after.size or 53) <= 24 else 15
        return _rounded(after) if before.size is None or before.size > digits else None
    if after.family not in ("decimal", "integer"):
        return None if after.family == "json" else _does_not_convert(before, after)
    if before.scale is None or before.size is None:
        if after.family == "decimal" and after.size is None:
            return None
        return (
            "the old type has no precision limit, so existing values with more digits than the new type allows "
            "are rounded or make the ALTER fail"
        )
    new_scale = 0 if after.family == "integer" else after.scale
    if new_scale is not None and new_scale < before.scale:
        return (
            f"existing values are rounded to {new_scale} decimal places instead of {before.scale}, and the digits "
            "after that are lost"
        )
    integer_digits = before.size - before.scale
    if after.family == "integer":
        low, high = _integer_range(after)
        return _overflow(low, high) if integer_digits >= len(str(high)) else None
    if after.size is not None and after.size - (after.scale or 0) < integer_digits:
        return _integer_digits(after.size - (after.scale or 0))
    return None


def _from_float(before: ColumnType, after: ColumnType, dialect: str) -> str | None:
    if after.family == "float":
        return _rounded(after) if (after.size or 53) < (before.size or 53) else None
    if after.family == "integer":
        return (
            "the fractional part of every existing value is rounded away, and values beyond the new type's range "
            "make the ALTER fail"
        )
    if after.family == "decimal":
        if after.size is None:
            return None
        return (
            f"existing values beyond {after.size} digits or {after.scale} decimal places are rounded or make the "
            "ALTER fail"
        )
    return None if after.family == "json" else _does_not_convert(before, after)


def _from_boolean(before: ColumnType, after: ColumnType, dialect: str) -> str | None:
    if after.family in ("integer", "decimal", "float", "json"):
        return None
    return _does_not_convert(before, after)


_MYSQL_TIMESTAMP_RANGE = (
    "MySQL's TIMESTAMP holds only 1970-01-01 to 2038-01-19 UTC, and existing values outside that range become "
    "zero dates or make the ALTER fail"
)


def _from_date(before: ColumnType, after: ColumnType, dialect: str) -> str | None:
    if after.family == "timestamp":
        return _MYSQL_TIMESTAMP_RANGE if dialect == "mysql" and after.zone else None
    return None if after.family == "date" else _does_not_convert(before, after)


def _from_time(before: ColumnType, after: ColumnType, dialect: str) -> str | None:
    if after.family == "time":
        return _time_precision(before, after)
    return _does_not_convert(before, after)


def _time_precision(before: ColumnType, after: ColumnType) -> str | None:
    if before.zone and not after.zone:
        return (
            "the time zone of existing values is lost (each is converted to the session's time zone and stored "
            "without one), so the instant a value names now depends on that setting"
        )
    if (after.size or 0) < (before.size or 0):
        return f"fractional seconds beyond {after.size} digits are rounded away from existing values"
    return None


def _from_timestamp(before: ColumnType, after: ColumnType, dialect: str) -> str | None:
    if after.family == "date":
        return "the time of day of every existing value is dropped, only the date is kept"
    if after.family == "time":
        return "the date of every existing value is dropped, only the time of day is kept"
    if after.family == "timestamp":
        if dialect == "mysql" and after.zone and not before.zone:
            return _MYSQL_TIMESTAMP_RANGE
        return _time_precision(before, after)
    return _does_not_convert(before, after)


def _from_enum(before: ColumnType, after: ColumnType, dialect: str) -> str | None:
    if (dialect == "postgres" and after.family == "other") or (after.family == "enum" and not after.values):
        return None  # a type named without its values (another enum, a domain): not guessed
    if after.family == "enum":
        removed = [value for value in before.values if value not in after.values]
        if removed:
            return (
                f"rows holding {', '.join(repr(v) for v in removed)} no longer fit, and become empty strings or "
                "make the ALTER fail"
            )
        return None
    return _does_not_convert(before, after)


def _between_kinds(before: ColumnType, after: ColumnType, dialect: str) -> str | None:
    """json, uuid and interval keep their values only within their family (text is handled before)."""
    if after.family == before.family:
        return _time_precision(before, after) if before.family == "interval" else None
    return _does_not_convert(before, after)


_LOSSES: dict[str, Callable[[ColumnType, ColumnType, str], str | None]] = {
    "text": _from_text,
    "binary": _from_binary,
    "integer": _from_integer,
    "decimal": _from_decimal,
    "float": _from_float,
    "boolean": _from_boolean,
    "date": _from_date,
    "time": _from_time,
    "timestamp": _from_timestamp,
    "enum": _from_enum,
    "json": _between_kinds,
    "uuid": _between_kinds,
    "interval": _between_kinds,
}


def _one_postgres_enum(before: ColumnType, after: ColumnType) -> bool:
    """Both name the same PostgreSQL enum type (declared with or without values, or named by raw SQL)."""
    named = {"enum", "other"}
    return (
        "enum" in (before.family, after.family)
        and {before.family, after.family} <= named
        and before.name == after.name != "ENUM"
    )


# Binary-coercible changes between types of different families (PostgreSQL's pg_cast, method 'b').
_POSTGRES_RELABELLED = {("cidr", "inet")}


def _postgres_keeps_rows(before: ColumnType, after: ColumnType) -> bool:
    """PostgreSQL changes the type without a rewrite.

    Its ALTER COLUMN TYPE skips the rewrite when the conversion is binary-coercible (a relabel) or a
    length/precision coercion its support function proves is a no-op for every existing value: a
    varchar or varbit widened or made unlimited, varchar to text, numeric precision raised at the
    same scale, time/timestamp/interval precision raised. Between timestamp and timestamptz the
    rewrite is skipped only when the session's time zone is UTC, which an offline check cannot
    know: that change is not listed.
    """
    if (before.name.lower(), after.name.lower()) in _POSTGRES_RELABELLED:
        return True
    if before.family == after.family == "bit":
        widened = after.size is None or (before.size is not None and after.size >= before.size)
        return before.name == after.name == "VARBIT" and widened
    if before.family == after.family == "text":
        unlimited_or_wider = after.size is None or (before.size is not None and after.size >= before.size)
        return {before.name, after.name} <= {"VARCHAR", "NVARCHAR", "TEXT"} and unlimited_or_wider
    if before.family == after.family == "decimal":
        if after.size is None:
            return True
        return before.size is not None and before.scale == after.scale and after.size >= before.size
    if before.family == after.family and before.family in ("time", "timestamp", "interval"):
        return before.zone == after.zone and (after.size or 0) >= (before.size or 0)
    return False


def _mysql_in_place(before: ColumnType, after: ColumnType) -> bool:
    """InnoDB changes the type without copying the table: VARCHAR widened within its length bytes, ENUM appended."""
    if before.name == after.name == "VARCHAR" and before.size is not None and after.size is not None:
        one_length_byte = before.size * before.bytes_per_char <= 255
        same_charset = before.bytes_per_char == after.bytes_per_char
        return (
            same_charset and after.size >= before.size and one_length_byte == (after.size * after.bytes_per_char <= 255)
        )
    if before.family == after.family == "enum":
        return after.values[: len(before.values)] == before.values and len(after.values) < 256
    return False


def _type_sql(dtype: exp.DataType, dialect: str) -> str:
    """A type as the statement's dialect reads it; SQLite's writer would reduce it to an affinity (TEXT)."""
    return dtype.sql(dialect=None if dialect == "sqlite" else dialect)


def _charset_clause(column_sql: str) -> str:
    found = _CHARSET.search(column_sql)
    return f" CHARACTER SET {found[1]}" if found else ""


def _renamed_column_target(alter: exp.Alter) -> str | None:
    """The new name in ``ALTER TABLE t RENAME a TO b`` (no COLUMN keyword), else None."""
    target = next((o for o in alter.args.get("options") or [] if isinstance(o, exp.ToTableProperty)), None)
    return target.this.name if target is not None else None


# PostgreSQL functions whose value differs per row: a default using one rewrites the table.
_VOLATILE_FUNCTIONS = re.compile(
    r"\b(random|clock_timestamp|timeofday|gen_random_uuid|uuid_generate_v[14]|nextval)\s*\(", re.IGNORECASE
)
# Added to an existing table, these fill every row from a sequence, as a nextval() default (or identity) does.
_SERIAL_TYPES = {"SMALLSERIAL", "SERIAL", "BIGSERIAL"}


def _added_column(column: exp.ColumnDef, table: str, dialect: str) -> Iterator[Hit]:
    constraints = [c.args.get("kind") for c in column.args.get("constraints") or []]
    default = next((c for c in constraints if isinstance(c, exp.DefaultColumnConstraint)), None)
    not_null = any(isinstance(c, exp.NotNullColumnConstraint) and not c.args.get("allow_null") for c in constraints)
    if not_null and default is None:
        yield "BR005", {"table": table, "column": column.name}
    if default is not None and dialect == "postgres":
        default_sql = default.this.sql(dialect="postgres")
        if _VOLATILE_FUNCTIONS.search(default_sql):
            yield "BL003", {"table": table, "column": column.name, "default": default_sql}
    elif dialect == "postgres":
        kind = column.args.get("kind")
        if isinstance(kind, exp.DataType) and kind.this.name in _SERIAL_TYPES:
            yield "BL003", {"table": table, "column": column.name, "default": f"nextval() of its {kind.this.name}"}
        elif any(isinstance(c, exp.ComputedColumnConstraint) for c in constraints):
            # sqlglot reads PostgreSQL's GENERATED ALWAYS AS (expr) STORED as this; without STORED
            # (a virtual column, PostgreSQL 18) it reads an identity with an expression, computed on read.
            yield "BL003", {"table": table, "column": column.name, "default": "its stored generated expression"}
        elif any(
            isinstance(c, exp.GeneratedAsIdentityColumnConstraint) and c.args.get("expression") is None
            for c in constraints
        ):
            yield "BL003", {"table": table, "column": column.name, "default": "nextval() of its identity"}


def _added_constraints(
    action: exp.AddConstraint, alter: exp.Alter, table: str, dialect: str, new: NewObjects
) -> Iterator[Hit]:
    not_valid = bool(alter.args.get("not_valid"))
    for constraint in action.expressions:
        name = constraint.name if isinstance(constraint, exp.Constraint) else ""
        kinds = list(constraint.expressions) if isinstance(constraint, exp.Constraint) else [constraint]
        for kind in kinds:
            validated_in_place = isinstance(kind, (exp.ForeignKey, exp.CheckColumnConstraint))
            if isinstance(kind, exp.CheckColumnConstraint):
                _note_not_null_check(kind, name, table, not_valid, new)
            if validated_in_place and dialect in ("postgres", "mysql") and not not_valid:
                yield "BL004", {"table": table, "constraint": name or "(unnamed)"}
            elif isinstance(kind, (exp.UniqueColumnConstraint, exp.PrimaryKey)) and dialect == "postgres":
                # A primary key builds a unique index the same way (ADD ... USING INDEX stays an opaque command).
                yield "BL006", {"table": table, "constraint": name or "(unnamed)"}


def _note_not_null_check(
    check: exp.CheckColumnConstraint, name: str, table: str, not_valid: bool, new: NewObjects
) -> None:
    """Remember a CHECK (column IS NOT NULL): once valid, SET NOT NULL on the column needs no scan."""
    condition = check.this
    if not (isinstance(condition, exp.Is) and condition.args.get("negate") and isinstance(condition.this, exp.Column)):
        return
    if not isinstance(condition.expression, exp.Null):
        return
    new.not_null_checks[name] = (table, condition.this.name)
    if not not_valid:
        new.checked_not_null.add((table, condition.this.name))


def _update(expression: exp.Update, new: NewObjects) -> Iterator[Hit]:
    table = _name(expression.this)
    if expression.args.get("where") or new.has_table(table):
        return
    for assignment in expression.expressions:
        target = assignment.this if isinstance(assignment, exp.EQ) else None
        if isinstance(target, exp.Column) and not new.has_column(table, target.name):
            yield "DL005", {"table": table, "column": target.name}


_RENAME_TABLE = re.compile(r"^\s*TABLE\s+([\w.`\"]+)\s+TO\s+([\w.`\"]+)", re.IGNORECASE)
_VALIDATE_CONSTRAINT = re.compile(
    r"^\s*TABLE\s+(?:ONLY\s+)?([\w.\"]+)\s+VALIDATE\s+CONSTRAINT\s+([\w\"]+)\s*$", re.IGNORECASE
)


def _command(expression: exp.Command, new: NewObjects) -> Iterator[Hit]:
    # sqlglot keeps PostgreSQL's ALTER TABLE ... VALIDATE CONSTRAINT as an opaque command.
    if str(expression.this).upper() == "ALTER":
        rest = expression.expression
        validated = _VALIDATE_CONSTRAINT.match(rest.name if isinstance(rest, exp.Expression) else str(rest or ""))
        checked = new.not_null_checks.get(validated[2].replace('"', "")) if validated else None
        if checked is not None:
            new.checked_not_null.add(checked)
        return
    # sqlglot keeps MySQL's RENAME TABLE as an opaque command.
    if str(expression.this).upper() != "RENAME":
        return
    found = _RENAME_TABLE.match(expression.expression.name if expression.expression else "")
    if found:
        old, renamed = (part.replace("`", "").replace('"', "") for part in found.groups())
        if not new.has_table(old):
            yield "BR004", {"table": old, "new_name": renamed}


def _name(table: exp.Expression) -> str:
    """``schema.table`` or ``table``, as the rest of dbmigrate names tables."""
    if isinstance(table, exp.Table):
        return f"{table.db}.{table.name}" if table.db else table.name
    return table.name


@dataclasses.dataclass(frozen=True)
class DataChange:
    """A statement that reads or writes rows, as the data-change rules (BL007, BL008) see it.

    ``columns`` are those an UPDATE sets. ``many`` is True when it can touch many rows: an UPDATE or
    DELETE without a WHERE, or with one that does not name its rows by equality to given values
    (``id = 5``, ``code IN ('a', 'b')``), and an INSERT from a query. Offline no row can be counted.
    """

    kind: str  # UPDATE, DELETE, INSERT or SELECT
    table: str
    columns: tuple[str, ...]
    many: bool


def data_change(sql: str, dialect: str) -> DataChange | None:
    """The :class:`DataChange` of one statement (sqlglot dialect name); None when it is none or does not parse."""
    try:
        parsed = sqlglot.parse_one(sql, read=dialect)
    except sqlglot.errors.SqlglotError:
        return None
    if isinstance(parsed, exp.Update) and isinstance(parsed.this, exp.Table):
        columns = tuple(
            assignment.this.name
            for assignment in parsed.expressions
            if isinstance(assignment, exp.EQ) and isinstance(assignment.this, exp.Column)
        )
        return DataChange("UPDATE", _name(parsed.this), columns, not _names_its_rows(parsed.args.get("where")))
    if isinstance(parsed, exp.Delete) and isinstance(parsed.this, exp.Table):
        return DataChange("DELETE", _name(parsed.this), (), not _names_its_rows(parsed.args.get("where")))
    if isinstance(parsed, exp.Insert):
        target = parsed.this.this if isinstance(parsed.this, exp.Schema) else parsed.this
        if isinstance(target, exp.Table):
            return DataChange("INSERT", _name(target), (), isinstance(parsed.expression, exp.Query))
    if isinstance(parsed, exp.Select):
        read = parsed.find(exp.Table)
        if read is not None:
            return DataChange("SELECT", _name(read), (), False)
    return None


_GIVEN = (exp.Literal, exp.Placeholder, exp.Parameter, exp.Null, exp.Boolean)


def _names_its_rows(where: exp.Expression | None) -> bool:
    """A WHERE that picks rows by equality of a column to given values, in one of its AND-ed conditions."""
    if not isinstance(where, exp.Where):
        return False
    for condition in where.this.flatten() if isinstance(where.this, exp.And) else [where.this]:
        if isinstance(condition, exp.EQ):
            sides = (_uncast(condition.this), _uncast(condition.expression))
            if any(isinstance(a, exp.Column) and isinstance(b, _GIVEN) for a, b in (sides, sides[::-1])):
                return True
        elif (
            isinstance(condition, exp.In)
            and isinstance(condition.this, exp.Column)
            and condition.expressions
            and all(isinstance(_uncast(value), _GIVEN) for value in condition.expressions)
        ):
            return True
    return False


def _uncast(value: exp.Expression) -> exp.Expression:
    """A value without the casts around it (PostgreSQL's SQLAlchemy writes ``%(name)s::VARCHAR``)."""
    while isinstance(value, exp.Cast):
        value = value.this
    return value
