"""Keeping passwords out of every output: logs, errors, JSON, history rows.

Two nets: any ``scheme://user:password@host`` or ``?password=...`` in a text loses its password,
and every secret registered with :func:`register_secret` (the password of the configured URL, the
contents of a password file) is replaced wherever it appears, even in a driver's error message.
"""

from __future__ import annotations

import re
import urllib.parse

MASK = "***"

_URL_CREDENTIALS = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.\-]*://[^:/@\s]*:)(?P<password>[^@\s]*)@")
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
    text = _URL_CREDENTIALS.sub(lambda m: m.group("head") + MASK + "@", text)
    text = _QUERY_PASSWORD.sub(lambda m: m.group("head") + MASK, text)
    for secret in sorted(_secrets, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


def mask_url(url: object) -> str:
    """Render a database URL (string or SQLAlchemy URL) for humans, password hidden."""
    rendered = url.render_as_string(hide_password=False) if hasattr(url, "render_as_string") else str(url)
    return redact(rendered)
