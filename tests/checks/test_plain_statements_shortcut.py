"""Plain statements read without sqlglot find exactly what parsing them finds."""

from __future__ import annotations

import pytest
import sqlglot

from dbmigrate.checks import rules
from dbmigrate.checks.collect import Statement

PREFIX = [
    'CREATE TABLE "Accounts" (id INTEGER PRIMARY KEY)',
    "CREATE TABLE IF NOT EXISTS billing.invoices (id INTEGER, total NUMERIC(10, 2) DEFAULT 0)",
    "CREATE TABLE `orders` (id INT, customer_id INT REFERENCES customers (id))",
]
STATEMENTS = [
    "CREATE INDEX ix_customers_name ON customers (name);",
    'CREATE INDEX ix_accounts_id ON "Accounts" (id)',
    "CREATE UNIQUE INDEX IF NOT EXISTS ix_invoices_total ON billing.invoices USING btree (total)",
    "CREATE INDEX CONCURRENTLY ix_customers_email ON customers (email)",
    "CREATE INDEX ON ONLY customers (email)",
    "CREATE INDEX ix_orders_customer ON `orders` (customer_id)",
    "INSERT INTO customers (name) VALUES ('a; DROP TABLE customers')",
    "INSERT INTO customers (name) VALUES ('x'); DROP TABLE customers",
    "SELECT 1",
    "COMMENT ON TABLE customers IS 'drop table customers'",
    "-- CREATE TABLE customers (id int)\nDROP TABLE customers",
    'DROP TABLE "Accounts"',
    "DROP TABLE customers",
    "DELETE FROM billing.invoices",
    "ALTER TABLE customers ADD COLUMN note TEXT",
    "UPDATE customers SET note = 'x'",
    'ALTER TABLE "Accounts" ADD COLUMN "Balance" NUMERIC(12, 2)',
    "ALTER TABLE `orders` ADD `shipped_at` DATETIME",
    "ALTER TABLE billing.invoices ADD COLUMN paid_at TIMESTAMP WITHOUT TIME ZONE",
    "ALTER TABLE customers ADD COLUMN tags VARCHAR(20)[]",
    "ALTER TABLE customers ADD COLUMN code VARCHAR(8) NOT NULL",
    "ALTER TABLE customers ADD COLUMN seen TIMESTAMP DEFAULT now()",
    "ALTER TABLE customers ADD COLUMN token UUID DEFAULT gen_random_uuid()",
    "ALTER TABLE customers ADD COLUMN number BIGSERIAL",
    "ALTER TABLE customers ADD COLUMN number2 INTEGER GENERATED ALWAYS AS IDENTITY",
    "ALTER TABLE customers ADD COLUMN gross INTEGER GENERATED ALWAYS AS (id * 2) STORED",
    "ALTER TABLE customers ADD COLUMN owner_id INTEGER REFERENCES customers (id)",
    "ALTER TABLE customers ADD COLUMN a INTEGER, ADD COLUMN b INTEGER NOT NULL",
]


def parsed_only(statements: tuple[Statement, ...], dialect: str, monkeypatch: pytest.MonkeyPatch) -> list[rules.Match]:
    with monkeypatch.context() as patched:
        patched.setattr(rules, "_without_parsing", lambda sql, dialect, new: None)
        return list(rules.evaluate(statements, dialect))


@pytest.mark.parametrize("dialect", ["postgresql", "mysql", "sqlite"])
def test_shortcut_and_parser_agree_on_every_statement(dialect: str, monkeypatch: pytest.MonkeyPatch) -> None:
    statements = tuple(Statement(sql, line) for line, sql in enumerate(PREFIX + STATEMENTS, start=1))
    read = rules.SQLGLOT_DIALECTS[dialect]
    parseable = tuple(s for s in statements if _parses(s.sql, read))

    assert list(rules.evaluate(parseable, dialect)) == parsed_only(parseable, dialect, monkeypatch)


def test_the_shortcut_takes_plain_statements_and_leaves_the_rest_to_the_parser() -> None:
    new = rules.NewObjects()

    assert rules._without_parsing(PREFIX[0], "postgres", new) == []
    assert new.tables == {"Accounts"}
    assert rules._without_parsing("CREATE INDEX ix ON customers (name)", "postgres", new) == [
        ("BL001", {"table": "customers"})
    ]
    assert rules._without_parsing("INSERT INTO t VALUES (1); DROP TABLE customers", "postgres", new) is None
    assert rules._without_parsing("-- note\nDROP TABLE customers", "postgres", new) is None
    assert rules._without_parsing("CREATE TABLE t AS SELECT * FROM customers", "postgres", new) is None
    assert rules._without_parsing("ALTER TABLE customers ADD COLUMN note TEXT", "postgres", new) == []
    assert ("customers", "note") in new.columns
    assert rules._without_parsing("ALTER TABLE customers ADD COLUMN n INTEGER NOT NULL", "postgres", new) is None
    assert rules._without_parsing("ALTER TABLE customers ADD COLUMN n SERIAL", "postgres", new) is None


def _parses(sql: str, read: str) -> bool:
    try:
        sqlglot.parse(sql, read=read)
    except sqlglot.errors.SqlglotError:
        return False
    return True
