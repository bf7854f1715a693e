"""The rules: what a step's statements do to a live database, by category, for one dialect.

Statements are parsed with sqlglot for the dialect (comments and string literals are never
statements). Objects the same step created earlier (tables, columns) are new: dropping, filling or
constraining them touches no existing data and no running code, so they produce no finding.

Dialect decisions (InnoDB online DDL is not PostgreSQL's locking):
  * PostgreSQL: every blocking rule applies.
  * MySQL/MariaDB: ``CREATE INDEX`` and ``ADD UNIQUE`` run with ALGORITHM=INPLACE, LOCK=NONE (writes
    continue), so BL001 and BL006 do not apply; adding a foreign key (with foreign_key_checks on)
    or a CHECK constraint copies the table and blocks writes, so BL004 applies. ``MODIFY``/``CHANGE``
    carry the whole column definition, so a type change cannot be told from a nullability change
    without the existing type: BL002 and BL005 are not reported there (not yet covered).
  * SQLite: one writer locks the whole database for any write, so there is no online DDL to lose:
    blocking rules do not apply; data-loss and breaking rules do.
Not yet covered on any dialect: DL006 lossy type change (needs the column's existing type).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from typing import Literal

import sqlglot
from sqlglot import exp

from dbmigrate.checks.collect import Statement

Category = Literal["data-loss", "blocking", "breaking", "directive"]
Severity = Literal["error", "warning"]

SQLGLOT_DIALECTS = {"postgresql": "postgres", "mysql": "mysql", "mariadb": "mysql", "sqlite": "sqlite"}


@dataclasses.dataclass(frozen=True)
class Rule:
    """A stable rule id and what it means; ``message``/``suggestion`` are templates over the finding's names."""

    id: str
    name: str
    category: Category
    severity: Severity
    summary: str
    message: str
    suggestion: str


_RULE_LIST = [
    Rule(
        "DL001",
        "drop-table",
        "data-loss",
        "error",
        "A table with its rows is dropped.",
        "DROP TABLE {table} deletes the table and every row in it; no downgrade can bring the rows back.",
        "Back up or archive the rows first (or rename the table and drop it in a later release), and declare the "
        'loss in the revision: # dbmigrate: allow-data-loss reason="...".',
    ),
    Rule(
        "DL002",
        "drop-column",
        "data-loss",
        "error",
        "A column with its values is dropped.",
        "Dropping {table}.{column} deletes its value in every row; no downgrade can bring the values back.",
        "Copy the values elsewhere first if they may be needed, and declare the loss in the revision: "
        '# dbmigrate: allow-data-loss reason="...".',
    ),
    Rule(
        "DL003",
        "truncate",
        "data-loss",
        "error",
        "A table is emptied with TRUNCATE.",
        "TRUNCATE {table} deletes every row of the table (and takes an exclusive lock while doing it).",
        "Delete only the rows that must go, with a WHERE clause, in batches; declare intended loss with "
        '# dbmigrate: allow-data-loss reason="...".',
    ),
    Rule(
        "DL004",
        "delete-without-where",
        "data-loss",
        "error",
        "DELETE without WHERE removes every row.",
        "DELETE FROM {table} has no WHERE clause: it deletes every row of the table.",
        "Add a WHERE clause naming the rows to delete, and delete in batches; declare intended loss with "
        '# dbmigrate: allow-data-loss reason="...".',
    ),
    Rule(
        "DL005",
        "update-without-where",
        "data-loss",
        "error",
        "UPDATE without WHERE overwrites a column in every row.",
        "UPDATE {table} without a WHERE clause overwrites {column} in every row; the previous values are gone.",
        "Restrict the UPDATE with a WHERE clause (for a backfill: WHERE {column} IS NULL), or write the new values "
        "into a new column.",
    ),
    Rule(
        "DL007",
        "drop-schema",
        "data-loss",
        "error",
        "A schema with everything in it is dropped.",
        "DROP SCHEMA {table} drops the schema and, with CASCADE, every table and row in it.",
        'Back up the schema first and declare the loss in the revision: # dbmigrate: allow-data-loss reason="...".',
    ),
    Rule(
        "BL001",
        "index-not-concurrent",
        "blocking",
        "warning",
        "An index is built on an existing table without CONCURRENTLY.",
        "CREATE INDEX on {table} without CONCURRENTLY holds a SHARE lock for the whole build: every INSERT, UPDATE "
        "and DELETE on {table} waits until the index is built.",
        "Build it with op.create_index(..., postgresql_concurrently=True) inside "
        "`with op.get_context().autocommit_block():` (CONCURRENTLY cannot run in a transaction).",
    ),
    Rule(
        "BL002",
        "type-change-rewrite",
        "blocking",
        "warning",
        "A column's type change rewrites the table.",
        "Changing the type of {table}.{column} rewrites the table and rebuilds its indexes under an ACCESS "
        "EXCLUSIVE lock (unless the change is binary-compatible, such as widening a varchar): reads and writes "
        "on {table} wait until it ends.",
        "Add a new column of the new type, backfill it in batches, switch the application over, then drop the old "
        "column in a later release.",
    ),
    Rule(
        "BL003",
        "volatile-default",
        "blocking",
        "warning",
        "A column is added with a volatile default.",
        "Adding {table}.{column} with a volatile default ({default}) makes PostgreSQL compute it for every row: "
        "the table is rewritten under an ACCESS EXCLUSIVE lock, blocking reads and writes.",
        "Add the column without a default (or with a constant one), backfill it in batches, then set the default "
        "for new rows.",
    ),
    Rule(
        "BL004",
        "constraint-validated-in-place",
        "blocking",
        "warning",
        "A foreign key or CHECK constraint is validated while holding the table lock.",
        "Adding constraint {constraint} on {table} checks every existing row while holding a lock that blocks "
        "writes to {table} (and, for a foreign key, to the referenced table).",
        "PostgreSQL: add it NOT VALID (op.create_foreign_key(..., postgresql_not_valid=True) or raw SQL), then "
        "run ALTER TABLE ... VALIDATE CONSTRAINT in a later step, which does not block writes. MySQL: use an "
        "online schema change tool (gh-ost, pt-online-schema-change).",
    ),
    Rule(
        "BL005",
        "set-not-null-scan",
        "blocking",
        "warning",
        "SET NOT NULL scans the table under an exclusive lock.",
        "SET NOT NULL on {table}.{column} scans every row under an ACCESS EXCLUSIVE lock: reads and writes on "
        "{table} wait until the scan ends.",
        "Add CHECK ({column} IS NOT NULL) NOT VALID, VALIDATE CONSTRAINT it, then SET NOT NULL (PostgreSQL 12+ "
        "skips the scan) and drop the CHECK.",
    ),
    Rule(
        "BL006",
        "unique-in-place",
        "blocking",
        "warning",
        "A unique constraint is built in place.",
        "Adding unique constraint {constraint} on {table} builds its index under an ACCESS EXCLUSIVE lock: reads "
        "and writes on {table} wait until it is built.",
        "CREATE UNIQUE INDEX CONCURRENTLY first (in an autocommit block), then ALTER TABLE ... ADD CONSTRAINT ... "
        "UNIQUE USING INDEX.",
    ),
    Rule(
        "BR001",
        "drop-column-in-use",
        "breaking",
        "warning",
        "A column the running application may use is dropped.",
        "Dropping {table}.{column} breaks the previous application version while it still runs during the rolling "
        "deploy: its queries naming {column} fail.",
        "Expand/contract: release code that no longer uses {column} first, and drop it in a later release.",
    ),
    Rule(
        "BR002",
        "drop-table",
        "breaking",
        "warning",
        "A table the running application may use is dropped.",
        "Dropping {table} breaks the previous application version while it still runs: its queries on {table} fail.",
        "Release code that no longer uses {table} first, and drop the table in a later release.",
    ),
    Rule(
        "BR003",
        "rename-column",
        "breaking",
        "warning",
        "A column is renamed under the running application.",
        "Renaming {table}.{column} to {new_name} breaks the previous application version while it still runs: "
        "its queries naming {column} fail.",
        "Add {new_name}, write both and backfill, switch reads, then drop {column} in a later release.",
    ),
    Rule(
        "BR004",
        "rename-table",
        "breaking",
        "warning",
        "A table is renamed under the running application.",
        "Renaming {table} to {new_name} breaks the previous application version while it still runs: its queries "
        "on {table} fail.",
        "Create {new_name} (or a view named {table} over it), move the code over, then drop the old name in a "
        "later release.",
    ),
    Rule(
        "BR005",
        "add-not-null-without-default",
        "breaking",
        "warning",
        "A NOT NULL column without a default is added.",
        "Adding {table}.{column} NOT NULL without a default breaks the previous application version: its INSERTs "
        "do not set {column} and fail (and the ALTER itself fails if {table} has rows).",
        "Add the column nullable or with a server default; make it NOT NULL in a later release once every writer "
        "sets it.",
    ),
    Rule(
        "DM001",
        "invalid-directive",
        "directive",
        "error",
        "A dbmigrate directive in a revision is malformed or has no reason.",
        'The directive `{directive}` is not valid: it must read # dbmigrate: allow-data-loss reason="..." with a '
        "non-empty reason. It allows nothing.",
        'Write # dbmigrate: allow-data-loss reason="why losing this data is intended".',
    ),
]
RULES = {rule.id: rule for rule in _RULE_LIST}


@dataclasses.dataclass(frozen=True)
class Match:
    """One rule that fired on one statement, with the names its templates need."""

    rule: Rule
    line: int
    names: dict[str, str]

    @property
    def message(self) -> str:
        return self.rule.message.format_map(_Names(self.names))

    @property
    def suggestion(self) -> str:
        return self.rule.suggestion.format_map(_Names(self.names))


class _Names(dict[str, str]):
    def __missing__(self, key: str) -> str:
        return f"<{key}>"


@dataclasses.dataclass
class _NewObjects:
    """Tables and columns the step created so far: changes to them touch nothing that existed."""

    tables: set[str] = dataclasses.field(default_factory=set)
    columns: set[tuple[str, str]] = dataclasses.field(default_factory=set)

    def has_table(self, table: str) -> bool:
        return table in self.tables

    def has_column(self, table: str, column: str) -> bool:
        return table in self.tables or (table, column) in self.columns


def evaluate(statements: tuple[Statement, ...], dialect: str) -> Iterator[Match]:
    """Every rule that fires on a step's statements, in statement order, for ``dialect``.

    A chunk sqlglot cannot parse at all yields nothing; statements it only understands as an
    opaque command are matched where a rule knows their form (MySQL ``RENAME TABLE``).
    """
    read = SQLGLOT_DIALECTS[dialect]
    new = _NewObjects()
    for statement in statements:
        try:
            parsed = sqlglot.parse(statement.sql, read=read)
        except sqlglot.errors.SqlglotError:
            continue
        for expression in parsed:
            if isinstance(expression, exp.Expression):
                for rule_id, names in _matches(expression, read, new):
                    yield Match(RULES[rule_id], statement.line, names)


Hit = tuple[str, dict[str, str]]


def _matches(expression: exp.Expression, dialect: str, new: _NewObjects) -> Iterator[Hit]:
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


def _create(expression: exp.Create, dialect: str, new: _NewObjects) -> Iterator[Hit]:
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


def _drop(expression: exp.Drop, new: _NewObjects) -> Iterator[Hit]:
    kind = expression.args.get("kind")
    for target in expression.args.get("tables") or []:
        if kind == "TABLE" and isinstance(target, exp.Table) and not new.has_table(_name(target)):
            yield "DL001", {"table": _name(target)}
            yield "BR002", {"table": _name(target)}
        elif kind == "SCHEMA" and isinstance(target, exp.Table):
            yield "DL007", {"table": target.db or target.name}


def _alter_table(expression: exp.Alter, dialect: str, new: _NewObjects) -> Iterator[Hit]:
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


def _update(expression: exp.Update, new: _NewObjects) -> Iterator[Hit]:
    table = _name(expression.this)
    if expression.args.get("where") or new.has_table(table):
        return
    for assignment in expression.expressions:
        target = assignment.this if isinstance(assignment, exp.EQ) else None
        if isinstance(target, exp.Column) and not new.has_column(table, target.name):
            yield "DL005", {"table": table, "column": target.name}


_RENAME_TABLE = re.compile(r"^\s*TABLE\s+([\w.`\"]+)\s+TO\s+([\w.`\"]+)", re.IGNORECASE)


def _command(expression: exp.Command, new: _NewObjects) -> Iterator[Hit]:
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
