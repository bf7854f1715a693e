"""The run's deadline: seconds from the start of the process that every wait of the run respects.

Kubernetes ends a Job at its ``activeDeadlineSeconds`` by killing the pod: no exit code of dbmigrate's,
no history row, no termination message, and the logs go with the pod. With a deadline (``--deadline``,
``DBMIGRATE_DEADLINE``, ``deadline``; the chart passes ``activeDeadlineSeconds`` minus a margin), each
wait (for the database to accept connections, for another run's lock, for long transactions on a
step's tables, between a step's lock-timeout retries, for the schema in ``dbmigrate wait``) is cut to
the time left, and a wait that the deadline cut ends the run with :class:`DeadlineReached` (exit 3).

The CLI counts from the start of its process (Kubernetes counts from before it: the margin covers
that); a library call counts from the call.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Iterator

from dbmigrate.errors import DatabaseUnavailable, DeadlineReached, LockTimeout, NotReady


def _process_start() -> float:
    """When this process started, on the ``time.monotonic()`` clock: from /proc on Linux, else now."""
    try:
        with open("/proc/self/stat") as stat, open("/proc/uptime") as uptime:
            # The process's start, in clock ticks after boot, is the 20th field after the command's ")".
            started_ticks = int(stat.read().rpartition(")")[2].split()[19])
            since_boot = float(uptime.read().split()[0])
        running = since_boot - started_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        running = 0.0
    return time.monotonic() - max(running, 0.0)


_PROCESS_START = _process_start()
_count_from: float | None = None  # set by the CLI: count from the process's start


def count_from_process_start() -> None:
    """Make every later deadline count from the start of this process (the CLI), not from each call."""
    global _count_from
    _count_from = _PROCESS_START


class Deadline:
    """``seconds`` (0: none) from ``started`` (a ``time.monotonic()`` value; default: see the module)."""

    def __init__(self, seconds: float, started: float | None = None) -> None:
        self.seconds = seconds
        if started is None:
            started = _count_from if _count_from is not None else time.monotonic()
        self.started = started

    def left(self) -> float:
        """Seconds left; infinite without a deadline, 0 or less once it has passed."""
        if not self.seconds:
            return math.inf
        return self.started + self.seconds - time.monotonic()

    def cap(self, seconds: float) -> float:
        """``seconds``, or the time left when that is shorter (never below 0)."""
        return max(0.0, min(seconds, self.left()))

    def reached(self, what: str) -> DeadlineReached:
        """The error that ends the run because the deadline came during ``what``."""
        return DeadlineReached(
            f"The run's deadline of {self.seconds:g}s (--deadline, DBMIGRATE_DEADLINE) was reached while {what}, so "
            "dbmigrate stopped on its own, before Kubernetes would kill the pod (activeDeadlineSeconds). Whatever "
            "was applied before stays; run it again (a Job retries exit 3), or raise the deadline with "
            "activeDeadlineSeconds."
        )

    @contextlib.contextmanager
    def within(self, seconds: float, what: str) -> Iterator[float]:
        """A wait of up to ``seconds`` for ``what``: yields it cut to the time left. The wait's own timeout error
        (exit 3), once the cut one has passed, becomes :class:`DeadlineReached` naming the deadline."""
        limit = self.cap(seconds)
        try:
            yield limit
        except (DatabaseUnavailable, LockTimeout, NotReady) as exc:
            if limit < seconds and self.left() <= 0:
                raise self.reached(what) from exc
            raise
