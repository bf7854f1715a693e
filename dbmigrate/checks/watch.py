"""What a step loses, statement by statement as it runs: for steps the offline pass could not analyse.

The runner hands :meth:`StatementWatch.losses` each statement the step is about to execute, before
the database runs it. The data-loss rules of ``dbmigrate check`` are applied to it, with what the
step created so far (a table created earlier in the step holds nothing that existed before it).

A type change is judged against the type the column has in the database just before the statement
(DL006), so a narrowing is seen even when the revision gives no ``existing_type``.

A batch operation that recreates a table (SQLite, or ``recreate="always"``) copies it into
``_alembic_tmp_<table>`` and then drops the original: that DROP loses only the columns the copy
did not carry over as they were (left out, or converted with a CAST). A recreate that keeps every
column as it is loses nothing, and is neither backed up nor refused.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable

import sqlglot
from sqlglot import exp

from dbmigrate.checks.collect import Statement
from dbmigrate.checks.rules import SQLGLOT_DIALECTS, NewObjects, evaluate

# Alembic's batch mode names the copy of a recreated table so (alembic.operations.batch).
BATCH_COPY_PREFIX = "_alembic_tmp_"
# Bound-parameter markers of the pyformat and format styles (psycopg, PyMySQL): sqlglot reads "?" only.
_PYFORMAT = re.compile(r"%\(\w+\)s|(?<!%)%s")
# Statements that read, or only add rows: no rule applies, nothing is created.
_HARMLESS = re.compile(r"\s*(?:SELECT|SHOW|SET|PRAGMA|EXPLAIN|DESCRIBE|SAVEPOINT|RELEASE|BEGIN|COMMIT)\b", re.I)
_ALTER_TABLE = re.compile(
    r"\s*ALTER\s+TABLE\s+(?:ONLY\s+)?(?:IF\s+EXISTS\s+)?(?P<table>[\w$]+(?:\.[\w$]+)?|\"[^\"]+\"(?:\.\"[^\"]+\")?|`[^`]+`(?:\.`[^`]+`)?)",
    re.I,
)
# Row changes create nothing the rules remember: once one is found harmless, the same text always is.
_ROW_CHANGE = re.compile(r"\s*(?:UPDATE|DELETE|INSERT)\b", re.I)


@dataclasses.dataclass(frozen=True)
class OnlineLoss:
    """Data a statement is about to lose: a whole table (``columns`` None) or some of its columns' values.

    ``rule`` is the check rule that saw it; a dropped schema (DL007) names the schema in ``table``.
    """

    rule: str
    table: str
    columns: tuple[str, ...] | None
    message: str


class StatementWatch:
    """One attempt of one step, seen one statement at a time, for one dialect.

    ``columns_of(table)`` maps the columns ``table`` has in the database right now (before the
    statement runs) to their types as the dialect writes them (None when it cannot): what a batch
    recreate's DROP of the original takes with it, and what a type change changes from.
    """

    def __init__(self, dialect: str, columns_of: Callable[[str], dict[str, str | None]]) -> None:
        self.dialect = dialect
        self.read = SQLGLOT_DIALECTS[dialect]
        self.columns_of = columns_of
        self.new = NewObjects()
        self.copied: dict[str, set[str]] = {}  # table -> columns a batch copy carried over as they were
        # A batch loop runs the same UPDATE thousands of times with other parameters: parsed once.
        self.harmless: set[str] = set()

    def losses(self, sql: str) -> list[OnlineLoss]:
        """What ``sql`` (one chunk as the driver gets it, parameters as placeholders) loses, in statement order."""
        if _HARMLESS.match(sql):
            return []
        sql = _PYFORMAT.sub("?", sql)
        if sql in self.harmless or self._batch_copy(sql):
            return []
        altered = _ALTER_TABLE.match(sql)
        if altered:
            table = altered["table"].replace('"', "").replace("`", "")
            for column, type_sql in self.columns_of(table).items():
                if type_sql is not None and not self.new.has_column(table, column):
                    self.new.types[(table, column)] = type_sql
        found = []
        for match in evaluate((Statement(sql, 0),), self.dialect, self.new):
            if match.rule.category != "data-loss":
                continue
            table = match.names.get("table") or match.names.get("schema", "")
            if match.rule.id == "DL001" and table in self.copied:
                kept = self.copied.pop(table)
                lost = [c for c in self.columns_of(table) if c not in kept]
                if lost:
                    message = (
                        f"{table} is recreated (batch mode) without the values of {', '.join(lost)}: dropping the "
                        "original loses them"
                    )
                    found.append(OnlineLoss("DL002", table, tuple(lost), message))
            elif match.rule.id in ("DL001", "DL003", "DL004", "DL007") or "column" not in match.names:
                found.append(OnlineLoss(match.rule.id, table, None, match.message))
            else:
                found.append(OnlineLoss(match.rule.id, table, (match.names["column"],), match.message))
        if not found and _ROW_CHANGE.match(sql):
            self.harmless.add(sql)
        return found

    def _batch_copy(self, sql: str) -> bool:
        """Note what ``INSERT INTO _alembic_tmp_t (...) SELECT ... FROM t`` copies unchanged; True if it is one."""
        if BATCH_COPY_PREFIX not in sql:
            return False
        try:
            insert = sqlglot.parse_one(sql, read=self.read)
        except sqlglot.errors.SqlglotError:
            return False
        target, select = insert.this, insert.expression
        if not (isinstance(insert, exp.Insert) and isinstance(target, exp.Schema) and isinstance(select, exp.Select)):
            return False
        into, source = target.this, select.find(exp.From)
        if not (isinstance(into, exp.Table) and into.name.startswith(BATCH_COPY_PREFIX) and source is not None):
            return False
        table = source.this
        if not isinstance(table, exp.Table):
            return False
        name = f"{table.db}.{table.name}" if table.db else table.name
        kept = set()
        for column, value in zip(target.expressions, select.expressions, strict=False):
            if isinstance(value, exp.Column) and value.name == column.name:
                kept.add(column.name)
        self.copied[name] = kept
        return True
