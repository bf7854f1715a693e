"""Stopping on SIGTERM and SIGINT without leaving a statement running on the server.

Kubernetes sends SIGTERM when a hook pod is deleted or its deadline passes, and SIGKILL after the
grace period (30 s by default). On a signal, :class:`~dbmigrate.errors.Terminated` is raised in the
main thread where it runs, so the step in flight rolls back and is recorded. The main thread may
be blocked inside a driver call that returns to Python only when the statement ends, so a watcher
thread also wakes at once and runs the registered cancellers, which end the statement in flight
from outside (a cancel request, ``KILL QUERY``, ``sqlite3`` interrupt). The process exits only
once that cancellation has finished: a driver left half-way through connecting while the
interpreter and OpenSSL shut down can crash the process and lose its exit code.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator

import structlog

from dbmigrate.errors import Terminated

log = structlog.get_logger("dbmigrate.termination")

_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_cancellers: list[Callable[[], None]] = []
_received: list[int] = []
_cancelling = threading.Lock()  # held by the watcher while the cancellers run
_cancelled = threading.Event()  # the watcher has run the cancellers for a signal
# How long the exit waits for a cancellation in flight: one connection to the server, well within
# Kubernetes' default 30 s grace period.
_CANCELLATION_GRACE = 10.0


def install() -> None:
    """Handle SIGTERM and SIGINT in this process (the CLI's main thread): raise ``Terminated``, cancel at once."""
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
    for signum in _SIGNALS:
        signal.signal(signum, _raise_terminated)
    threading.Thread(target=_watch, args=(read_end,), name="dbmigrate-signal-watch", daemon=True).start()
    atexit.register(_let_the_cancellation_finish)


@contextlib.contextmanager
def cancelling(cancel: Callable[[], None]) -> Iterator[None]:
    """While the block runs, a signal also calls ``cancel`` from another thread (it must be thread-safe)."""
    _cancellers.append(cancel)
    try:
        yield
    finally:
        _cancellers.remove(cancel)


def _raise_terminated(signum: int, frame: object) -> None:
    if _received:
        return  # already stopping: let the clean-up of the first signal finish within the grace period
    _received.append(signum)
    raise Terminated(signal.Signals(signum).name, signum)


def _watch(read_end: int) -> None:
    while True:
        try:
            data = os.read(read_end, 64)
        except OSError:
            return
        if not data or not any(number in (int(s) for s in _SIGNALS) for number in data):
            continue
        with _cancelling:
            for cancel in list(_cancellers):
                try:
                    cancel()
                except Exception as exc:  # noqa: BLE001 - best effort: the main thread ends the statement too
                    log.debug("cancelling the statement in flight failed", error=str(exc))
        _cancelled.set()


def _let_the_cancellation_finish() -> None:
    """After a signal, return once the watcher has finished cancelling (or the grace has passed)."""
    if _received and _cancelled.wait(_CANCELLATION_GRACE) and _cancelling.acquire(timeout=_CANCELLATION_GRACE):
        _cancelling.release()
