"""A URL inside any text loses its whole password, even one holding "@", ":" and "/", and nothing else.

Error messages, SQL, JSON and log lines quote URLs. A password written into a URL unencoded is
masked up to the URL's last "@", never cut at its first; the URL ends at whitespace or a quote,
so the text after it (an e-mail address, the next value) stays as it was.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import dbmigrate
from dbmigrate.masking import mask_url, redact

IN_TEXT = {
    "error-message": (
        "could not connect to postgresql+psycopg://app:p@ss:w/rd%@db.internal/shop: timeout (ask dba@example.com)",
        "could not connect to postgresql+psycopg://app:***@db.internal/shop: timeout (ask dba@example.com)",
    ),
    "sql": (
        "INSERT INTO settings VALUES ('mysql+pymysql://root:a@b/c:d@db/shop', 'owner@example.com')",
        "INSERT INTO settings VALUES ('mysql+pymysql://root:***@db/shop', 'owner@example.com')",
    ),
    "json": (
        '{"url": "postgresql://app:p@ss@db/shop", "owner": "me@example.com"}',
        '{"url": "postgresql://app:***@db/shop", "owner": "me@example.com"}',
    ),
    "log-line": (
        "url=postgresql://app:p@ss:w/rd@db:5432/shop attempt=1\nnext line: user@host:22",
        "url=postgresql://app:***@db:5432/shop attempt=1\nnext line: user@host:22",
    ),
    "angle-brackets": ("<postgresql://app:p/w@x@db/shop>", "<postgresql://app:***@db/shop>"),
    "scheme-with-underscore": ("oracle+cx_oracle://scott:ti@g:er@db/orcl", "oracle+cx_oracle://scott:***@db/orcl"),
}

UNTOUCHED = [
    "postgresql://postgres@127.0.0.1:5432/test and later admin:x@example.com",
    "sqlite:////var/lib/app@2/app.db",
    "mail me at someone@example.com: thanks",
]


@pytest.mark.parametrize(("text", "masked"), IN_TEXT.values(), ids=IN_TEXT.keys())
def test_a_url_in_a_text_is_masked_up_to_its_last_at_and_no_further(text: str, masked: str) -> None:
    assert redact(text) == masked


@pytest.mark.parametrize("text", UNTOUCHED)
def test_texts_without_a_password_in_a_url_are_left_alone(text: str) -> None:
    assert redact(text) == text


def test_a_whole_url_loses_a_password_with_spaces_and_quotes_and_keeps_user_host_and_database() -> None:
    assert (
        mask_url("postgresql://app:it's a @secret\"@db.internal:5432/shop")
        == "postgresql://app:***@db.internal:5432/shop"
    )


def test_the_password_of_a_configured_url_that_does_not_parse_is_masked_wherever_it_appears(tmp_path: Path) -> None:
    password = "Unp4rs@ble:Pw/x%"
    dbmigrate.Settings.load(
        config_file=tmp_path / "alembic.ini", environ={}, database_url=f"postgresql://app:{password}@db/shop"
    )

    assert redact(f"the driver said: password {password!r} rejected") == "the driver said: password '***' rejected"
