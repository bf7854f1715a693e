"""Keeping passwords out of every output: logs, errors, JSON, history rows.

Three nets. A URL's password is masked from the ``:`` after its user name up to the *last* ``@``
of the URL, so a password holding ``@``, ``:`` or ``/`` unencoded is masked whole instead of being
cut at its first ``@``; inside a longer text a URL ends at whitespace or a quote, so what follows it
is kept. A ``?password=...`` query value is masked. And every secret registered with
:func:`register_secret` (the password of the configured URL, the contents of a password file) is
replaced wherever it appears, even in a driver's error message.
"""

from __future__ import annotations

import re
import urllib.parse

MASK = "***"

# Inside a text (an error message, SQL, JSON) a URL ends where whitespace or a quote starts. Up to
# there, the greedy match runs to the last "@": a password may hold "@", ":" and "/" unencoded.
_URL_END = r"\s'\"`<>"
_URL_IN_TEXT = re.compile(rf"(?P<head>[a-zA-Z][\w+.\-]*://[^:{_URL_END}]*:)[^{_URL_END}]*@")
# A text that is one URL (a configured URL) may hold anything in its password, even spaces and quotes.
_WHOLE_URL = re.compile(r"\A(?P<head>[^:]*://[^:]*:)(?P<password>.*)@", re.DOTALL)
# libpq and the MySQL drivers also take the password as a query parameter: ...?password=secret
_QUERY_PASSWORD = re.compile(r"(?P<head>[?&](?:password|passwd)=)(?P<password>[^&#\s'\"]*)", re.IGNORECASE)
_secrets: set[str] = set()


def register_secret(secret: str | None) -> None:
    """Make ``redact`` replace ``secret`` (and its URL-encoded form) from now on."""
    if secret and len(secret) >= 3:
        _secrets.add(secret)
        _secrets.add(urllib.parse.quote(secret, safe=""))
        _secrets.add(urllib.parse.quote_plus(secret))


def redact(text: str) -> str:
    """Return ``text`` with URL passwords and registered secrets replaced by ``***``."""
    text = _URL_IN_TEXT.sub(lambda m: m.group("head") + MASK + "@", text)
    text = _QUERY_PASSWORD.sub(lambda m: m.group("head") + MASK, text)
    for secret in sorted(_secrets, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


def url_password(url: str) -> str | None:
    """The password of a URL as written (still percent-encoded), or None when it has none.

    It is everything from the ``:`` after the user name to the URL's last ``@``: a URL parser
    stops at the first ``@``, and a password holding one unencoded would be cut there, its rest
    taken for the host, port or database and shown as such.
    """
    match = _WHOLE_URL.match(url)
    return match.group("password") if match else None


def mask_url(url: object) -> str:
    """Render a database URL (string or SQLAlchemy URL) for humans, password hidden.

    The user name, host and database stay readable; for a URL that does not parse, everything
    between the user name and the last ``@`` is hidden.
    """
    rendered = url.render_as_string(hide_password=False) if hasattr(url, "render_as_string") else str(url)
    return redact(_WHOLE_URL.sub(lambda m: m.group("head") + MASK + "@", rendered, count=1))


def redacted_reason(exc: BaseException) -> str:
    """A database error's first two lines (the driver's, not SQLAlchemy's wrapper), redacted, at most 300 characters."""
    orig = getattr(exc, "orig", exc)
    lines = [line.strip() for line in str(orig).strip().splitlines() if line.strip()]
    return redact(" ".join(lines[:2]))[:300] or type(orig).__name__
