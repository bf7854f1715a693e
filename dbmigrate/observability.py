"""Logs and the pod termination message.

Logs go to stderr: JSON lines in a pod (stderr is not a terminal) or with ``log_format="json"``,
readable lines in a terminal. Every event passes through :func:`dbmigrate.masking.redact`.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping, MutableMapping
from pathlib import Path
from typing import Any

import structlog

from dbmigrate.masking import redact


def _redact_event(logger: Any, method: str, event: MutableMapping[str, Any]) -> Mapping[str, Any]:
    return {key: redact(value) if isinstance(value, str) else _redact_nested(value) for key, value in event.items()}


def _redact_nested(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_redact_nested(v) for v in value]
    if isinstance(value, dict):
        return {k: _redact_nested(v) for k, v in value.items()}
    if isinstance(value, str):
        return redact(value)
    return value


def configure_logging(log_format: str = "auto", debug: bool = False) -> None:
    """Set up structlog for the CLI: ``auto`` is JSON unless stderr is a terminal."""
    json_output = log_format == "json" or (log_format == "auto" and not sys.stderr.isatty())
    renderer: Any = structlog.processors.JSONRenderer() if json_output else structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _redact_event,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG if debug else logging.INFO),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )


def bind(**values: Any) -> None:
    """Attach values (run id, revision) to every following log line of this context."""
    structlog.contextvars.bind_contextvars(**values)


def unbind(*keys: str) -> None:
    structlog.contextvars.unbind_contextvars(*keys)


def write_termination_message(path: Path, message: str) -> bool:
    """Write the run's one-paragraph outcome where Kubernetes reads it, if that file is there.

    Kubernetes creates ``/dev/termination-log`` in every container; elsewhere the file does not
    exist and nothing is written. Returns whether it was written.
    """
    try:
        if not path.is_file():
            return False
        # Kubernetes shows at most 4096 bytes of it.
        path.write_text(redact(message)[:4000] + "\n")
    except OSError:
        return False
    return True
