"""The rules: what a step's statements do to a live database, by category, for one dialect.

Statements are parsed with sqlglot for the dialect (comments and string literals are never
statements; see ``parsed.py``), except plain single statements whose shape decides everything
(``CREATE TABLE name (``, ``CREATE INDEX ... ON table``, ``ALTER TABLE ... ADD COLUMN name type``,
``INSERT``): those are read without the parser, with the same outcome. Objects the same step
created earlier (tables, columns) are new: dropping, filling or constraining them touches no
existing data and no running code, so they produce no finding; except a new column of an existing
table once the step fills it: every existing row then holds a value, and constraining it NOT NULL
scans them all and shuts out the code that does not write it (BL005, BR006).

Data changes in the step (BL007, BL008, see ``_data_change_hits``): on PostgreSQL a long UPDATE,
DELETE or INSERT ... SELECT on an existing table, or a loop of queries, after DDL locked an existing
table in the step's transaction holds that lock throughout (BL007); elsewhere, and without such a
lock, a long one holds its own row locks until the step commits (BL008). What ``dbmigrate.backfill()``
renders is filled after the step and is no finding; a loop outside a transaction is batches.

Type changes need the column's existing type: the ``existing_type=`` an ``alter_column`` call was
given (autogenerate always writes it), else the type an earlier ``create_table``/``add_column``/
``alter_column`` of the same offline pass gave the column (for a downgrade, the upgrades' pass
included; both found by ``collect.py``), else the type an earlier statement of the step set. Raw
SQL changing a column whose type is unknown is not guessed at: no DL006. DL006 (lossy type
change) applies on every dialect: narrower text, fewer digits or decimal places, a smaller integer
range, fewer float bits, a timestamp losing its time of day, zone or fractional digits, any type
to boolean, text to a type its values must parse as.

Dialect decisions (InnoDB online DDL is not PostgreSQL's locking):
  * PostgreSQL: every blocking rule applies. Types are compared as PostgreSQL reads them, not as
    SQLAlchemy spells them (``FLOAT(53)`` is ``FLOAT``, ``FLOAT(24)`` is ``REAL``), and one enum
    type declared twice (same name, whatever values each declaration lists) is no change. BL002 is
    not reported for a change known to need no rewrite (varchar widened, made unlimited or made
    text; numeric precision raised at the same scale; time/timestamp/interval precision raised;
    bit varying widened; cidr to inet) and is reported for any type change of unknown origin
    (timestamp to timestamptz included: it skips the rewrite only in a UTC session).
  * MySQL/MariaDB: ``CREATE INDEX`` and ``ADD UNIQUE`` run with ALGORITHM=INPLACE, LOCK=NONE (writes
    continue), so BL001 and BL006 do not apply; adding a foreign key (with foreign_key_checks on)
    or a CHECK constraint copies the table and blocks writes, so BL004 applies. ``MODIFY``/``CHANGE``
    carry the whole column definition: with the existing type known, a type change other than
    widening a VARCHAR within its length-byte class (255 bytes; utf8mb4 unless the type names another
    character set) or appending ENUM values copies the table (ALGORITHM=COPY), so BL002 applies;
    without it, BL002 applies only when ``alter_column`` was given ``type_``. Making a column NOT
    NULL rebuilds the table in place with writes allowed: no BL005. MariaDB's extra instant changes
    are not modelled (MySQL's rules are applied). Each DDL statement commits on its own, so no DDL
    lock outlives it: BL007 does not apply, BL008 does.
  * SQLite: one writer locks the whole database for any write, so there is no online DDL to lose:
    blocking rules do not apply (a batch's table recreate blocks nothing more); data-loss (DL006
    included: the type the revision declares no longer holds the values, though SQLite does not
    enforce lengths) and breaking rules do.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from typing import Literal

from dbmigrate.checks.collect import Statement

Category = Literal["data-loss", "blocking", "breaking", "directive", "revision"]
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
    # dbmigrate's own safe way, named before ``suggestion`` (the way without it) wherever dbmigrate offers one.
    safe_way: str = ""

    @property
    def advice(self) -> str:
        """What to do instead: dbmigrate's own safe way first, then the way without it."""
        return f"{self.safe_way} {self.suggestion}" if self.safe_way else self.suggestion


_DECLARE = 'declare the loss in the revision (# dbmigrate: allow-data-loss reason="..."): dbmigrate then copies '


_RULE_LIST = [
    Rule(
        "DL001",
        "drop-table",
        "data-loss",
        "error",
        "A table with its rows is dropped.",
        "DROP TABLE {table} deletes the table and every row in it; no downgrade can bring the rows back.",
        "To keep the rows in the database instead, rename the table and drop it in a later release.",
        "If the rows may go, " + _DECLARE + "the table aside before the step (unless --no-backup), and puts the "
        "rows back when the revision is downgraded (or with dbmigrate backups restore).",
    ),
    Rule(
        "DL002",
        "drop-column",
        "data-loss",
        "error",
        "A column with its values is dropped.",
        "Dropping {table}.{column} deletes its value in every row; no downgrade can bring the values back.",
        "Or keep the column until no code reads it.",
        "If the values may go, " + _DECLARE + "them aside before the step (unless --no-backup), and puts them "
        "back when the revision is downgraded (or with dbmigrate backups restore).",
    ),
    Rule(
        "DL003",
        "truncate",
        "data-loss",
        "error",
        "A table is emptied with TRUNCATE.",
        "TRUNCATE {table} deletes every row of the table (and takes an exclusive lock while doing it).",
        "Otherwise delete only the rows that must go, with a WHERE clause, in batches.",
        "If every row may go, " + _DECLARE + "the table aside before the step (unless --no-backup).",
    ),
    Rule(
        "DL004",
        "delete-without-where",
        "data-loss",
        "error",
        "DELETE without WHERE removes every row.",
        "DELETE FROM {table} has no WHERE clause: it deletes every row of the table.",
        "Otherwise add a WHERE clause naming the rows to delete, and delete in batches.",
        "If every row may go, " + _DECLARE + "the table aside before the step (unless --no-backup).",
    ),
    Rule(
        "DL005",
        "update-without-where",
        "data-loss",
        "error",
        "UPDATE without WHERE overwrites a column in every row.",
        "UPDATE {table} without a WHERE clause overwrites {column} in every row; the previous values are gone.",
        "Otherwise restrict the UPDATE with a WHERE clause (for a backfill: WHERE {column} IS NULL), or write the "
        "new values into a new column.",
        "If the previous values may go, " + _DECLARE + "them aside before the step (unless --no-backup).",
    ),
    Rule(
        "DL006",
        "lossy-type-change",
        "data-loss",
        "error",
        "A column's type change narrows it or loses part of its values.",
        "Changing the type of {table}.{column} from {old_type} to {new_type} loses data: {loss}.",
        "Otherwise widen the type instead if the new one only has to hold the existing values, or add a new "
        "column of the new type, backfill it in batches with an explicit conversion (deciding what happens to "
        "values that do not fit), switch the application over, and drop the old column in a later release.",
        "If the loss is intended, " + _DECLARE + "the column's values aside before the step (unless --no-backup).",
    ),
    Rule(
        "DL007",
        "drop-schema",
        "data-loss",
        "error",
        "A schema with everything in it is dropped.",
        "DROP SCHEMA {schema} drops the schema and, with CASCADE, every table and row in it.",
        "dbmigrate does not copy a dropped schema aside: back it up first (pg_dump --schema {schema}), then "
        'declare the loss in the revision: # dbmigrate: allow-data-loss reason="...".',
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
        "A column's type change rewrites or copies the table.",
        "Changing the type of {table}.{column} {rewrite}.",
        "Add a new column of the new type, backfill it in batches, switch the application over, then drop the old "
        "column in a later release (on MySQL, or run the change with gh-ost or pt-online-schema-change).",
    ),
    Rule(
        "BL003",
        "volatile-default",
        "blocking",
        "warning",
        "A column is added with a volatile default (a serial, identity or stored generated column included).",
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
        "A unique constraint or primary key is built in place.",
        "Adding unique constraint or primary key {constraint} on {table} builds its index under an ACCESS "
        "EXCLUSIVE lock: reads and writes on {table} wait until it is built.",
        "CREATE UNIQUE INDEX CONCURRENTLY first (in an autocommit block), then ALTER TABLE ... ADD CONSTRAINT ... "
        "UNIQUE (or PRIMARY KEY) USING INDEX.",
    ),
    Rule(
        "BL007",
        "data-change-under-ddl-lock",
        "blocking",
        "warning",
        "Rows of an existing table are changed (or queried in a loop) after DDL locked an existing table, in the "
        "same transaction.",
        "{what} on {table} runs after DDL on {locked} in the same transaction: PostgreSQL keeps the DDL's lock on "
        "{locked} (ACCESS EXCLUSIVE for ALTER TABLE) until the step commits, so every query of the application "
        "on {locked} waits until the last row is written.",
        'Fill the rows with dbmigrate.backfill("{table}", {{"column": "sql expression"}}) next to the DDL: it '
        "runs in short keyset batches after the step has committed and released its locks, and a trigger keeps "
        "rows written meanwhile in sync. Batching inside the step protects nothing: the lock stays until commit.",
    ),
    Rule(
        "BL008",
        "long-data-change",
        "blocking",
        "warning",
        "An UPDATE or DELETE that can touch many rows of an existing table (or a loop of them) runs in the step.",
        "{what} on {table} may change many rows in one go: each row it changes stays locked until {until}, so "
        "the application's writes to those rows wait, and on a large table that takes minutes.",
        'Fill or fix the rows with dbmigrate.backfill("{table}", {{"column": "sql expression"}}): short keyset '
        "batches, each its own transaction, after the step commits. Or make the change a revision marked "
        '# dbmigrate: non-transactional reason="..." that loops over small batches, each committing on its own.',
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
        "BR006",
        "not-null-after-fill",
        "breaking",
        "warning",
        "A column added and filled in the same step is made NOT NULL without a default.",
        "{table}.{column} is added, filled and made NOT NULL in one step: application code that does not write "
        "{column} (the version still running during the rollout) can no longer insert into {table}.",
        "Add and fill the column in this release (dbmigrate.backfill), have the new code write it, and make it NOT "
        "NULL in a later release (or give it a server default now).",
    ),
    Rule(
        "DM001",
        "invalid-directive",
        "directive",
        "error",
        "A dbmigrate directive in a revision is malformed or has no reason.",
        'The directive `{directive}` is not valid: it must read # dbmigrate: allow-data-loss reason="..." or '
        '# dbmigrate: non-transactional reason="...", with a non-empty reason. It does nothing.',
        'Write # dbmigrate: allow-data-loss reason="why losing this data is intended", or '
        '# dbmigrate: non-transactional reason="why this revision must run outside a transaction".',
    ),
    Rule(
        "DM004",
        "needs-no-transaction",
        "directive",
        "error",
        "A statement that cannot run inside a transaction runs in the revision's transaction.",
        "{statement} cannot run inside a transaction, and dbmigrate runs each revision in one: the revision "
        "would fail when applied.",
        'Mark the revision as non-transactional: add # dbmigrate: non-transactional reason="..." to its file, or, '
        "for a file you do not own, list its id in non_transactional_revisions (DBMIGRATE_NON_TRANSACTIONAL_"
        "REVISIONS={revision}); or put the statement in `with op.get_context().autocommit_block():`.",
    ),
    Rule(
        "DM003",
        "revision-raises",
        "revision",
        "error",
        "The revision's own code raises an error.",
        "The {direction} stops with an error of its own: {error}. It would fail the same way on a live database; "
        "what it does after that line was not checked.",
        "Fix the revision (run it against a scratch database, for example with dbmigrate verify), then check it again.",
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
        return self.rule.advice.format_map(_Names(self.names))


def alternative(rule_id: str, table: str | None, column: str | None) -> str:
    """A rule's way without dbmigrate's own, for a message that has named dbmigrate's already."""
    return RULES[rule_id].suggestion.format_map(_Names({"table": table or "", "column": column or ""}))


class _Names(dict[str, str]):
    def __missing__(self, key: str) -> str:
        return f"<{key}>"


@dataclasses.dataclass
class NewObjects:
    """Tables and columns the step created so far: changes to them touch nothing that existed.

    ``types`` holds the type an earlier statement of the step gave an existing column (or, from an
    ``alter_column``'s existing type, the type it had), rendered for the dialect: what a later raw
    type change of that column changes from. Columns the step created are not tracked: they hold no
    data that existed before it.
    """

    tables: set[str] = dataclasses.field(default_factory=set)
    columns: set[tuple[str, str]] = dataclasses.field(default_factory=set)
    types: dict[tuple[str, str], str] = dataclasses.field(default_factory=dict)
    # CHECK (column IS NOT NULL) constraints the step added, by name, and the columns a valid one
    # covers (added without NOT VALID, or validated since): PostgreSQL 12+ sets those NOT NULL
    # without scanning the table.
    not_null_checks: dict[str, tuple[str, str]] = dataclasses.field(default_factory=dict)
    checked_not_null: set[tuple[str, str]] = dataclasses.field(default_factory=set)
    # New columns of existing tables that the step writes rows of (an UPDATE, a backfill): filling them
    # touches every existing row, so constraining them afterwards is no longer free.
    filled: set[tuple[str, str]] = dataclasses.field(default_factory=set)
    # Columns the step gave a server default: INSERTs that do not name them still get a value.
    defaulted: set[tuple[str, str]] = dataclasses.field(default_factory=set)
    # The first existing table whose lock an earlier DDL statement of the step holds until commit
    # (PostgreSQL, in the step's transaction); None when no lock is held.
    locked: str | None = None

    def has_table(self, table: str) -> bool:
        return table in self.tables

    def has_column(self, table: str, column: str) -> bool:
        return table in self.tables or (table, column) in self.columns


def evaluate(
    statements: tuple[Statement, ...], dialect: str, new: NewObjects | None = None, transactional: bool = True
) -> Iterator[Match]:
    """Every rule that fires on a step's statements, in statement order, for ``dialect``.

    A chunk sqlglot cannot parse at all yields nothing; statements it only understands as an
    opaque command are matched where a rule knows their form (MySQL ``RENAME TABLE``). ``new``
    carries what the step created across calls, for a step seen one statement at a time.
    ``transactional`` is False for a step that runs outside a transaction (each statement commits
    on its own): no lock outlives its statement there.
    """
    read = SQLGLOT_DIALECTS[dialect]
    new = NewObjects() if new is None else new
    for statement in statements:
        hits = _without_parsing(statement.sql, read, new)
        if hits is None:
            from dbmigrate.checks.parsed import Altering, parsed_hits  # the parser loads only when needed

            hits = parsed_hits(
                statement.sql, read, new, Altering(statement.existing_type, statement.changes_type, statement.new_type)
            )
        hits += _data_change_hits(statement, read, new, transactional, hits)
        for rule_id, names in hits:
            yield Match(RULES[rule_id], statement.line, names)


Hit = tuple[str, dict[str, str]]

# Parsing is most of a check's time, and most statements a step runs are one of a few plain shapes.
# A chunk that holds one statement (no ';' before its end) and starts with one of these is read
# with the patterns below instead: the outcome is the same as parsing it. Anything else is parsed.
_NAME = r"(?P<{}>[\w$]+(?:\.[\w$]+)?|\"[^\"]+\"(?:\.\"[^\"]+\")?|`[^`]+`(?:\.`[^`]+`)?)"
_PLAIN_CREATE_TABLE = re.compile(
    r"CREATE\s+(?:TEMP(?:ORARY)?\s+)?TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?" + _NAME.format("table") + r"\s*\(",
    re.IGNORECASE,
)
_PLAIN_CREATE_INDEX = re.compile(
    r"CREATE\s+(?:UNIQUE\s+)?INDEX\s+(?P<concurrently>CONCURRENTLY\s+)?(?:IF\s+NOT\s+EXISTS\s+)?"
    r"(?:[\w$]+\s+|\"[^\"]+\"\s+)?ON\s+(?:ONLY\s+)?" + _NAME.format("table") + r"[\s(]",
    re.IGNORECASE,
)
# A nullable column without default, constraint or generated value (what add_column renders for
# sa.Column(name, type)): it touches no existing row on any dialect. Type words that could mean more
# (SERIAL, an identity, a collation) are left to the parser.
_PLAIN_ADD_COLUMN = re.compile(
    r"ALTER\s+TABLE\s+"
    + _NAME.format("table")
    + r"\s+ADD\s+(?:COLUMN\s+)?"
    + _NAME.format("column")
    + r"\s+(?P<type>[A-Za-z]\w*(?:\s+[A-Za-z]\w*)*)\s*(?:\(\s*\d+\s*(?:,\s*\d+\s*)?\))?(?:\s*\[\])?"
    + r"(?P<zone>\s+WITH(?:OUT)?\s+TIME\s+ZONE)?",
    re.IGNORECASE,
)
_NOT_A_PLAIN_TYPE = re.compile(
    r"\b(?:NOT|NULL|DEFAULT|GENERATED|AS|REFERENCES|CHECK|UNIQUE|PRIMARY|KEY|COLLATE|CONSTRAINT|IDENTITY|"
    r"AUTO_INCREMENT|FIRST|AFTER|\w*SERIAL)\b",
    re.IGNORECASE,
)
_NO_RULE_READS = re.compile(r"(?:INSERT|SELECT|COMMENT|GRANT|REVOKE)\b", re.IGNORECASE)


def _without_parsing(sql: str, dialect: str, new: NewObjects) -> list[Hit] | None:
    """The hits of a plain single statement, or None when it must be parsed."""
    body = sql.strip().rstrip(";")
    if ";" in body:
        return None
    if _NO_RULE_READS.match(body):
        return []
    created = _PLAIN_CREATE_TABLE.match(body)
    if created:
        new.tables.add(_unquoted(created["table"]))
        return []
    added = _PLAIN_ADD_COLUMN.fullmatch(body)
    if added and not _NOT_A_PLAIN_TYPE.search(added["type"]):
        new.columns.add((_unquoted(added["table"]), _unquoted(added["column"])))
        return []
    index = _PLAIN_CREATE_INDEX.match(body)
    if index:
        table = _unquoted(index["table"])
        if dialect != "postgres" or index["concurrently"] or new.has_table(table):
            return []
        return [("BL001", {"table": table})]
    return None


def _unquoted(name: str) -> str:
    return name.replace('"', "").replace("`", "")


# DDL that locks an existing table until the transaction ends (PostgreSQL): what a later data change waits under.
_LOCKING_DDL = re.compile(
    r"(?:ALTER\s+TABLE\s+(?:IF\s+EXISTS\s+)?(?:ONLY\s+)?"
    r"|CREATE\s+(?:UNIQUE\s+)?INDEX\s+(?!CONCURRENTLY\b)(?:IF\s+NOT\s+EXISTS\s+)?(?:[\w$]+\s+|\"[^\"]+\"\s+)?ON\s+"
    r"(?:ONLY\s+)?"
    r"|LOCK\s+(?:TABLE\s+)?(?:ONLY\s+)?|TRUNCATE\s+(?:TABLE\s+)?(?:ONLY\s+)?)" + _NAME.format("table"),
    re.IGNORECASE,
)
_DATA_CHANGE = re.compile(r"(?:UPDATE|DELETE|INSERT|SELECT|WITH)\b", re.IGNORECASE)
_SELECT = re.compile(r"\bSELECT\b", re.IGNORECASE)
# VALIDATE CONSTRAINT takes SHARE UPDATE EXCLUSIVE: the application's reads and writes go on.
_VALIDATES = re.compile(r"\bVALIDATE\s+CONSTRAINT\b", re.IGNORECASE)


def _data_change_hits(
    statement: Statement, dialect: str, new: NewObjects, transactional: bool, hits: list[Hit]
) -> list[Hit]:
    """BL007 and BL008 for ``statement`` (sqlglot dialect name); notes what it locks and fills for later ones.

    PostgreSQL keeps a DDL statement's lock until the transaction ends, so a long data change (or a
    loop of queries) after it holds that lock throughout: BL007. MySQL/MariaDB commit each DDL
    statement on its own, so only the data change's own row locks remain: BL008 there, as on
    PostgreSQL without an earlier lock. SQLite locks the whole database for any write: no finding.
    The rows ``dbmigrate.backfill()`` renders offline run in batches after the step: no finding.
    """
    in_transaction = transactional and not statement.autocommit
    if statement.autocommit:
        # Alembic commits the step's transaction before an autocommit block: the locks taken so far are released.
        new.locked = None
    found: list[Hit] = []
    for part in statement.sql.split(";"):
        comments = _LEADING_COMMENTS.match(part)
        body = part[comments.end() if comments else 0 :].strip()
        locking = _LOCKING_DDL.match(body)
        if locking and _VALIDATES.search(body) is None:
            table = _unquoted(locking["table"])
            if dialect == "postgres" and in_transaction and new.locked is None and not new.has_table(table):
                new.locked = table
            continue
        kind = _DATA_CHANGE.match(body)
        if kind is None:
            continue
        word = kind[0].upper()
        if not statement.in_loop and (word == "SELECT" or (word == "INSERT" and not _SELECT.search(body))):
            continue  # a lone SELECT, or INSERT ... VALUES (seed data): no rule reads it, so it is not parsed
        from dbmigrate.checks.parsed import data_change  # the parser loads only when needed

        change = data_change(body, dialect)
        if change is None or new.has_table(change.table):
            continue
        new.filled.update((change.table, column) for column in change.columns if (change.table, column) in new.columns)
        if statement.online_backfill or dialect == "sqlite":
            continue
        what = f"A loop of queries ({change.kind} seen offline)" if statement.in_loop else change.kind
        names = {"what": what, "table": change.table}
        if new.locked is not None and in_transaction and (change.many or statement.in_loop):
            found.append(("BL007", {**names, "locked": new.locked}))
            continue
        reported_as_loss = any(rule in ("DL004", "DL005") and hit.get("table") == change.table for rule, hit in hits)
        if statement.in_loop and not in_transaction:
            continue  # a loop of statements that each commit on their own: batches, the way to fill online
        looped_writes = statement.in_loop and change.kind != "SELECT"
        if (change.many and not reported_as_loss) or looped_writes:
            until = "the step commits" if in_transaction else "the statement ends"
            found.append(("BL008", {**names, "until": until}))
    return found


# Statements the database refuses inside a transaction block, by dialect (MySQL/MariaDB have none:
# their DDL commits on its own). Matched at the start of a chunk, after leading comments.
_OUTSIDE_TRANSACTION_ONLY = {
    "postgresql": re.compile(
        r"(?P<what>(?:CREATE\s+(?:UNIQUE\s+)?INDEX|DROP\s+INDEX|REINDEX\s+\w+)\s+CONCURRENTLY"
        r"|ALTER\s+TABLE\s+.*?\bDETACH\s+PARTITION\s+.*?\bCONCURRENTLY"
        r"|VACUUM|(?:CREATE|DROP)\s+(?:DATABASE|TABLESPACE)|ALTER\s+SYSTEM)\b",
        re.IGNORECASE | re.DOTALL,
    ),
    "sqlite": re.compile(r"(?P<what>VACUUM)\b", re.IGNORECASE),
}
_LEADING_COMMENTS = re.compile(r"^(?:\s+|--[^\n]*\n?|/\*.*?\*/)*", re.DOTALL)


def outside_transaction_only(sql: str, dialect: str) -> str | None:
    """What in ``sql`` the database refuses to run inside a transaction (``CREATE INDEX CONCURRENTLY``), if anything.

    ``dialect`` is postgresql, mysql (or mariadb) or sqlite.
    """
    pattern = _OUTSIDE_TRANSACTION_ONLY.get(dialect)
    if pattern is None:
        return None
    comments = _LEADING_COMMENTS.match(sql)
    found = pattern.match(sql, comments.end() if comments else 0)
    if found is None:
        return None
    what = " ".join(found["what"].split()).upper()
    return "ALTER TABLE ... DETACH PARTITION ... CONCURRENTLY" if what.startswith("ALTER TABLE") else what
