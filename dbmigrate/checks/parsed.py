"""The rules' reading of statements that need the parser: sqlglot, for the step's dialect."""

from __future__ import annotations

import re
from collections.abc import Iterator

import sqlglot
from sqlglot import exp

from dbmigrate.checks.rules import Hit, NewObjects


def parsed_hits(sql: str, dialect: str, new: NewObjects) -> list[Hit]:
    """The hits of every statement in ``sql`` (sqlglot dialect name); nothing when it does not parse."""
    try:
        parsed = sqlglot.parse(sql, read=dialect)
    except sqlglot.errors.SqlglotError:
        return []
    return [
        hit
        for expression in parsed
        if isinstance(expression, exp.Expression)
        for hit in _matches(expression, dialect, new)
    ]


def _matches(expression: exp.Expression, dialect: str, new: NewObjects) -> Iterator[Hit]:
    if isinstance(expression, exp.Create):
        yield from _create(expression, dialect, new)
    elif isinstance(expression, exp.Drop):
        yield from _drop(expression, new)
    elif isinstance(expression, exp.Alter) and expression.args.get("kind") == "TABLE":
        yield from _alter_table(expression, dialect, new)
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
    if kind == "TABLE":
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


def _alter_table(expression: exp.Alter, dialect: str, new: NewObjects) -> Iterator[Hit]:
    table = _name(expression.this)
    existing_table = not new.has_table(table)
    renamed_column_to = _renamed_column_target(expression)
    for action in expression.args.get("actions") or []:
        if isinstance(action, exp.ColumnDef):
            column = action.name
            if existing_table:
                yield from _added_column(action, table, dialect)
            new.columns.add((table, column))
        elif isinstance(action, exp.Drop) and action.args.get("kind") == "COLUMN":
            for dropped in action.args.get("tables") or []:
                if not new.has_column(table, dropped.name):
                    yield "DL002", {"table": table, "column": dropped.name}
                    yield "BR001", {"table": table, "column": dropped.name}
        elif isinstance(action, exp.RenameColumn) and not new.has_column(table, action.this.name):
            yield "BR003", {"table": table, "column": action.this.name, "new_name": action.args["to"].name}
        elif isinstance(action, exp.ModifyColumn) and action.args.get("rename_from") is not None:
            old, renamed = action.args["rename_from"].name, action.this.name
            if old != renamed and not new.has_column(table, old):
                yield "BR003", {"table": table, "column": old, "new_name": renamed}
        elif isinstance(action, exp.AlterRename) and renamed_column_to is not None:
            # PostgreSQL's COLUMN keyword is optional; sqlglot reads `RENAME a TO b` as this shape.
            if not new.has_column(table, action.this.name):
                yield "BR003", {"table": table, "column": action.this.name, "new_name": renamed_column_to}
        elif isinstance(action, exp.AlterRename) and existing_table:
            yield "BR004", {"table": table, "new_name": _name(action.this)}
        elif isinstance(action, exp.AlterColumn) and dialect == "postgres":
            column = action.name
            if not new.has_column(table, column):
                if action.args.get("dtype") is not None:
                    yield "BL002", {"table": table, "column": column}
                if action.args.get("allow_null") is False:
                    yield "BL005", {"table": table, "column": column}
        elif isinstance(action, exp.AddConstraint) and existing_table:
            yield from _added_constraints(action, expression, table, dialect)


def _renamed_column_target(alter: exp.Alter) -> str | None:
    """The new name in ``ALTER TABLE t RENAME a TO b`` (no COLUMN keyword), else None."""
    target = next((o for o in alter.args.get("options") or [] if isinstance(o, exp.ToTableProperty)), None)
    return target.this.name if target is not None else None


# PostgreSQL functions whose value differs per row: a default using one rewrites the table.
_VOLATILE_FUNCTIONS = re.compile(
    r"\b(random|clock_timestamp|timeofday|gen_random_uuid|uuid_generate_v[14]|nextval)\s*\(", re.IGNORECASE
)


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


def _added_constraints(action: exp.AddConstraint, alter: exp.Alter, table: str, dialect: str) -> Iterator[Hit]:
    not_valid = bool(alter.args.get("not_valid"))
    for constraint in action.expressions:
        name = constraint.name if isinstance(constraint, exp.Constraint) else ""
        kinds = list(constraint.expressions) if isinstance(constraint, exp.Constraint) else [constraint]
        for kind in kinds:
            validated_in_place = isinstance(kind, (exp.ForeignKey, exp.CheckColumnConstraint))
            if validated_in_place and dialect in ("postgres", "mysql") and not not_valid:
                yield "BL004", {"table": table, "constraint": name or "(unnamed)"}
            elif isinstance(kind, exp.UniqueColumnConstraint) and dialect == "postgres":
                yield "BL006", {"table": table, "constraint": name or "(unnamed)"}


def _update(expression: exp.Update, new: NewObjects) -> Iterator[Hit]:
    table = _name(expression.this)
    if expression.args.get("where") or new.has_table(table):
        return
    for assignment in expression.expressions:
        target = assignment.this if isinstance(assignment, exp.EQ) else None
        if isinstance(target, exp.Column) and not new.has_column(table, target.name):
            yield "DL005", {"table": table, "column": target.name}


_RENAME_TABLE = re.compile(r"^\s*TABLE\s+([\w.`\"]+)\s+TO\s+([\w.`\"]+)", re.IGNORECASE)


def _command(expression: exp.Command, new: NewObjects) -> Iterator[Hit]:
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
