"""The intent directive a revision file uses to declare that its data loss is intended.

The directive is a comment line in the revision file (a real comment: the same text inside a string
is not a directive)::

    # dbmigrate: allow-data-loss reason="the legacy audit table was exported to S3 in ticket OPS-12"

It covers every data-loss finding of that revision file, upgrade and downgrade: they are still
reported, marked allowed with the reason. It allows nothing else (blocking and breaking findings
stay as they are). Any other ``# dbmigrate:`` comment, or the directive with an empty or missing
reason, allows nothing and is itself a finding (DM001).
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
_ALLOW_DATA_LOSS = re.compile(r'^#\s*dbmigrate:\s*allow-data-loss\s+reason="(?P<reason>[^"]*)"\s*$')


@dataclasses.dataclass(frozen=True)
class Directives:
    """What a revision file declares: the reason data loss is intended, and malformed directives."""

    allow_data_loss_reason: str | None
    invalid: tuple[tuple[int, str], ...]  # (line, the comment as written)


def read_directives(path: Path) -> Directives:
    """The directives in the revision file at ``path`` (the first valid allow-data-loss reason wins)."""
    reason = None
    invalid = []
    source = path.read_bytes()
    if _MENTION.search(source) is None:
        return Directives(None, ())
    for token in tokenize.tokenize(io.BytesIO(source).readline):
        if token.type != tokenize.COMMENT or not _DIRECTIVE.match(token.string):
            continue
        found = _ALLOW_DATA_LOSS.match(token.string.strip())
        if found and found["reason"].strip():
            reason = reason or found["reason"].strip()
        else:
            invalid.append((token.start[0], token.string.strip()))
    return Directives(reason, tuple(invalid))
