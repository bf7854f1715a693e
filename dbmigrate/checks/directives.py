"""The directives a revision file uses to declare what it intends, each a comment line with a reason.

A directive is a comment line in the revision file (a real comment: the same text inside a string
is not a directive)::

    # dbmigrate: allow-data-loss reason="the legacy audit table was exported to S3 in ticket OPS-12"
    # dbmigrate: non-transactional reason="CREATE INDEX CONCURRENTLY cannot run in a transaction"

``allow-data-loss`` covers every data-loss finding of that revision file, upgrade and downgrade:
they are still reported, marked allowed with the reason. It allows nothing else (blocking and
breaking findings stay as they are). ``non-transactional`` makes dbmigrate run the revision's
upgrade and downgrade outside a transaction (every statement commits on its own; see the runner).
Any other ``# dbmigrate:`` comment, or a directive with an empty or missing reason, does nothing and
is itself a finding (DM001).
"""

from __future__ import annotations

import dataclasses
import io
import re
import tokenize
from pathlib import Path

# Tokenizing is what costs; a file that never names dbmigrate cannot hold a directive.
_MENTION = re.compile(rb"dbmigrate", re.IGNORECASE)
_DIRECTIVE = re.compile(r"^#\s*dbmigrate\s*:", re.IGNORECASE)
_KNOWN = re.compile(r'^#\s*dbmigrate:\s*(?P<name>allow-data-loss|non-transactional)\s+reason="(?P<reason>[^"]*)"\s*$')
NON_TRANSACTIONAL = '# dbmigrate: non-transactional reason="..."'


@dataclasses.dataclass(frozen=True)
class Directives:
    """What a revision file declares: why data loss is intended, why it runs outside a transaction, and
    malformed directives."""

    allow_data_loss_reason: str | None
    invalid: tuple[tuple[int, str], ...]  # (line, the comment as written)
    non_transactional_reason: str | None = None


def read_directives(path: Path) -> Directives:
    """The directives in the revision file at ``path`` (of each directive, the first valid reason wins)."""
    reasons: dict[str, str] = {}
    invalid = []
    source = path.read_bytes()
    if _MENTION.search(source) is None:
        return Directives(None, ())
    for token in tokenize.tokenize(io.BytesIO(source).readline):
        if token.type != tokenize.COMMENT or not _DIRECTIVE.match(token.string):
            continue
        found = _KNOWN.match(token.string.strip())
        if found and found["reason"].strip():
            reasons.setdefault(found["name"], found["reason"].strip())
        else:
            invalid.append((token.start[0], token.string.strip()))
    return Directives(reasons.get("allow-data-loss"), tuple(invalid), reasons.get("non-transactional"))
