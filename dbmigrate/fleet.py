"""Many targets, one command: worker processes, canaries, a failure budget and one summary.

Each target runs the single-database machinery unchanged (its own run lock, gate, history,
archive and backups) in a worker process: Alembic's context is one per process, so targets run
side by side in processes, never in threads. Workers are started once and take one target after
another, so a fleet pays for Python and the scripts' import once per worker, not once per target.
Every log line a worker writes carries its target's name. A worker stops with the fleet run: on
SIGTERM the run passes it on, and on Linux a worker is sent SIGTERM when the fleet process dies,
even by SIGKILL, so the step in flight is cancelled and rolled back like a single run's.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import dataclasses
import hashlib
import io
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Lock
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import structlog
from sqlalchemy.exc import SQLAlchemyError

from dbmigrate import api, fleet_file, scripts, termination
from dbmigrate.errors import (
    ChecksFailed,
    ConfigurationError,
    DbmigrateError,
    NotAtHead,
    RepairNeeded,
    Terminated,
)
from dbmigrate.fleet_file import Target
from dbmigrate.masking import redact
from dbmigrate.observability import (
    PrintedLines,
    bind,
    configure_logging,
    parse_grouping,
    publish_registry,
    write_termination_message,
)
from dbmigrate.settings import Settings

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

log = structlog.get_logger("dbmigrate.fleet")

COMMANDS = ("upgrade", "status", "check", "wait")
FAILED = "failed"
NOT_STARTED = "not started"
AT_GOAL = "at goal"
# The worst exit code is the one that needs the most attention: a stopped fleet run, then a target to
# repair, a configuration to fix, a failed step, a check's findings, and last what a rerun fixes (3).
_SEVERITY = (0, 3, 4, 1, 2, 5)
STOP_GRACE = 25.0  # seconds the workers get to end their steps after the fleet run is told to stop


@dataclasses.dataclass
class TargetResult:
    """What the command did to one target: its outcome, revisions before and after, time and exit code."""

    name: str
    where: str
    outcome: str
    before: list[str] | None = None
    after: list[str] | None = None
    duration_s: float = 0.0
    exit_code: int = 0
    error: str | None = None
    message: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class FleetResult:
    """One fleet run: every target's result in the fleet file's order, and why the rollout stopped early."""

    command: str
    targets: list[TargetResult]
    stopped: str | None = None
    signal_exit_code: int | None = None  # the fleet run itself was stopped by this signal's exit code

    @property
    def exit_code(self) -> int:
        """The worst of the targets' exit codes (and the fleet run's own, when a signal stopped it)."""
        codes = [t.exit_code for t in self.targets] + [self.signal_exit_code or 0]
        return worst(codes)

    @property
    def failed(self) -> list[TargetResult]:
        return [t for t in self.targets if t.exit_code != 0]

    def counts(self) -> dict[str, int]:
        """How many targets ended with each outcome."""
        return dict(collections.Counter(t.outcome for t in self.targets))

    def as_dict(self) -> dict[str, Any]:
        return {
            "command": self.command,
            "exit_code": self.exit_code,
            "counts": self.counts(),
            "stopped": self.stopped,
            "targets": [t.as_dict() for t in self.targets],
        }

    def summary(self) -> str:
        """One paragraph: counts, the failed targets with their exit codes, why the rollout stopped."""
        counts = ", ".join(f"{n} {outcome}" for outcome, n in sorted(self.counts().items()))
        text = f"dbmigrate {self.command} --fleet: {len(self.targets)} target(s): {counts}."
        if self.failed:
            text += " Failed: " + ", ".join(f"{t.name} (exit {t.exit_code})" for t in self.failed) + "."
        if self.stopped:
            text += f" Stopped early: {self.stopped}."
        return text

    def render_text(self) -> str:
        """The summary table, then each failure's message."""
        rows = [("target", "outcome", "before", "after", "seconds", "exit")]
        rows += [
            (t.name, t.outcome, _revisions(t.before), _revisions(t.after), f"{t.duration_s:.1f}", str(t.exit_code))
            for t in self.targets
        ]
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]
        for target in self.failed:
            lines.append(f"{target.name} ({target.where}), exit {target.exit_code}: {target.error}: {target.message}")
        lines.append(self.summary())
        return "\n".join(lines)


def shard_of(name: str, shards: int) -> int:
    """The shard (0 to ``shards`` - 1) of the target ``name``: a digest of the name alone.

    So a target is in exactly one shard, and stays in it whatever the fleet's size or order.
    """
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") % shards


def worst(codes: Iterable[int]) -> int:
    """The exit code that needs the most attention: a signal's (128+), then 5, 2, 1, 4, 3 and 0."""
    return max(codes, key=lambda code: (code >= 128, _SEVERITY.index(code) if code in _SEVERITY else 0, code))


def run(
    command: str,
    fleet: str | Path,
    *,
    settings: Settings | None = None,
    parallel: int = 2,
    canary: int = 0,
    max_failures: int | None = None,
    shards: int = 1,
    shard_index: int = 0,
    arguments: Mapping[str, Any] | None = None,
) -> FleetResult:
    """Run ``command`` (upgrade, status, check or wait) on every target of the fleet file ``fleet``.

    Targets run ``parallel`` at a time in worker processes, in the file's order. ``canary`` runs
    the first K targets first and starts no other when one of them fails; ``max_failures`` starts
    no new target once that many have failed. A target that is down, locked or broken does not
    stop the others otherwise. ``upgrade`` skips targets already at its goal, so a rerun retries
    only the rest. ``arguments`` are the command's own (upgrade: ``target``; status: ``check``;
    wait: ``revision``, ``exact``, ``timeout``). ``settings`` (default: resolved from the
    environment and config files) apply to every target; the fleet file's settings win over them.
    With ``shards`` N, only the targets of shard ``shard_index`` (0 to N-1, see :func:`shard_of`)
    run: N runs with the indexes 0 to N-1 (a Kubernetes Indexed Job) cover each target once.
    Raises :class:`ConfigurationError` for a bad fleet file or option; a target's failure is in
    its result, and the result's ``exit_code`` is the worst of them.
    """
    base = settings if settings is not None else Settings.load()
    if command not in COMMANDS:
        raise ConfigurationError(f"A fleet runs {', '.join(COMMANDS)}, not {command!r}.")
    if parallel < 1 or canary < 0 or (max_failures is not None and max_failures < 1):
        raise ConfigurationError("--parallel and --max-failures must be 1 or more, --canary 0 or more.")
    if shards < 1 or not 0 <= shard_index < shards:
        raise ConfigurationError(f"The shard index must be 0 to {shards - 1} for {shards} shard(s), not {shard_index}.")
    targets = [t for t in fleet_file.load(Path(fleet), base) if shard_of(t.name, shards) == shard_index]
    # Each target's outcome is in the summary: no target writes the termination message or publishes metrics.
    per_target = base.override(termination_log=os.devnull, pushgateway=None, metrics_textfile=None)
    jobs = [_Job(command, target, per_target, dict(arguments or {})) for target in targets]
    log.info(
        "fleet run starting", command=command, fleet=str(fleet), targets=len(jobs), parallel=parallel, shard=shard_index
    )
    results: dict[str, TargetResult] = {}
    stopped: str | None = None
    signal_exit_code: int | None = None
    with _Workers(min(parallel, len(jobs)), base.log_format) as workers:
        try:
            failures = workers.run(jobs[:canary], results, budget=None)
            if failures:
                stopped = f"a canary failed, so none of the {len(jobs[canary:])} other target(s) was started"
            else:
                budget = None if max_failures is None else max_failures - failures
                failures += workers.run(jobs[canary:], results, budget)
                if len(results) < len(jobs):
                    stopped = f"{failures} target(s) failed (--max-failures {max_failures})"
        except Terminated as exc:
            workers.stop(results)
            stopped, signal_exit_code = f"the fleet run was stopped by {exc.signal_name}", exc.exit_code
    outcome = FleetResult(
        command,
        [results.get(t.name) or TargetResult(t.name, t.describe(), NOT_STARTED) for t in targets],
        stopped,
        signal_exit_code,
    )
    log.info("fleet run finished", counts=outcome.counts(), exit_code=outcome.exit_code, stopped=stopped)
    write_termination_message(base.termination_log, outcome.summary())
    if base.pushgateway or base.metrics_textfile is not None:
        grouping = parse_grouping(base.metrics_grouping) | ({"shard": str(shard_index)} if shards > 1 else {})
        publish_registry(fleet_metrics(outcome), base.pushgateway, grouping, base.metrics_textfile, "dbmigrate-fleet")
    return outcome


def fleet_metrics(result: FleetResult) -> CollectorRegistry:
    """The fleet run's Prometheus metrics: per target (labelled with its name, never its URL), and totals."""
    from prometheus_client import CollectorRegistry, Gauge

    registry = CollectorRegistry()
    prefix = "dbmigrate_fleet_"
    Gauge(prefix + "last_run_timestamp_seconds", "When the fleet run ended", registry=registry).set_to_current_time()
    Gauge(
        prefix + "exit_code", "The fleet run's exit code (the worst of its targets')", ["command"], registry=registry
    ).labels(result.command).set(result.exit_code)
    exit_code = Gauge(prefix + "target_exit_code", "Each target's exit code", ["target"], registry=registry)
    duration = Gauge(prefix + "target_duration_seconds", "Time each target took", ["target"], registry=registry)
    outcome = Gauge(
        prefix + "target_outcome", "Each target's outcome (value 1)", ["target", "outcome"], registry=registry
    )
    for target in result.targets:
        exit_code.labels(target.name).set(target.exit_code)
        duration.labels(target.name).set(target.duration_s)
        outcome.labels(target.name, target.outcome).set(1)
    totals = Gauge(prefix + "targets", "Targets by state: at_goal, failed, pending", ["state"], registry=registry)
    for state, count in collections.Counter(_state(target) for target in result.targets).items():
        totals.labels(state).set(count)
    return registry


def _state(target: TargetResult) -> str:
    """failed (exit code not 0), pending (not started, or revisions pending), or at_goal."""
    if target.exit_code != 0:
        return "failed"
    if target.outcome == NOT_STARTED or target.outcome.endswith("pending"):
        return "pending"
    return "at_goal"


@dataclasses.dataclass(frozen=True)
class _Job:
    command: str
    target: Target
    settings: Settings
    arguments: dict[str, Any]


@dataclasses.dataclass
class _Worker:
    process: BaseProcess
    connection: multiprocessing.connection.Connection


class _Workers:
    """``count`` worker processes (spawned, not forked), each running one target at a time."""

    def __init__(self, count: int, log_format: str) -> None:
        self._context = multiprocessing.get_context("spawn")
        self._count = count
        self._log_format = log_format
        self._idle: list[_Worker] = []
        self._busy: dict[int, tuple[_Worker, _Job]] = {}
        self._stderr_lock = self._context.Lock()  # one log line at a time on the shared stderr
        self._stopping = False

    def __enter__(self) -> _Workers:
        self._idle = [self._start() for _ in range(self._count)]
        return self

    def __exit__(self, *_: object) -> None:
        workers = self._idle + [worker for worker, _ in self._busy.values()]
        for worker in workers:
            with contextlib.suppress(OSError):
                worker.connection.send(None)
        deadline = time.monotonic() + STOP_GRACE
        for worker in workers:
            worker.process.join(max(0.0, deadline - time.monotonic()))
            if worker.process.is_alive():
                worker.process.kill()
            worker.connection.close()

    def _start(self) -> _Worker:
        ours, theirs = self._context.Pipe()
        arguments = (theirs, os.getpid(), self._log_format, self._stderr_lock)
        process = self._context.Process(target=_worker_main, args=arguments, name="dbmigrate-fleet-worker", daemon=True)
        process.start()
        theirs.close()
        return _Worker(process, ours)

    def run(self, jobs: list[_Job], results: dict[str, TargetResult], budget: int | None) -> int:
        """Run ``jobs``, starting none once ``budget`` of them failed; returns how many failed."""
        pending = collections.deque(jobs)
        failures = 0
        while pending or self._busy:
            while pending and self._idle and (budget is None or failures < budget):
                worker, job = self._idle.pop(), pending.popleft()
                try:
                    worker.connection.send(job)
                except OSError:  # it died after its last target: another takes the job
                    pending.appendleft(job)
                    worker.process.join(5)
                    self._release(worker)
                    continue
                self._busy[id(worker)] = (worker, job)
            if not self._busy:
                break
            for job, result in self._collect(None):
                results[job.target.name] = result
                failures += result.exit_code != 0
        return failures

    def stop(self, results: dict[str, TargetResult]) -> None:
        """Tell the busy workers to stop (SIGTERM: their steps roll back) and record how their targets ended."""
        self._stopping = True
        for worker, _ in self._busy.values():
            with contextlib.suppress(OSError):
                worker.process.terminate()
        deadline = time.monotonic() + STOP_GRACE
        while self._busy and time.monotonic() < deadline:
            for job, result in self._collect(deadline - time.monotonic()):
                results[job.target.name] = result

    def _collect(self, timeout: float | None) -> list[tuple[_Job, TargetResult]]:
        """Wait for busy workers to finish a target (or die), at most ``timeout`` seconds."""
        waiting: dict[Any, _Worker] = {}
        for worker, _ in self._busy.values():
            waiting[worker.connection] = worker
            waiting[worker.process.sentinel] = worker
        finished = []
        for ready in multiprocessing.connection.wait(list(waiting), timeout):
            worker = waiting[ready]
            if id(worker) not in self._busy:
                continue  # both its pipe and its sentinel were ready
            _, job = self._busy.pop(id(worker))
            try:
                result: TargetResult = worker.connection.recv()
            except (EOFError, OSError):
                worker.process.join(5)
                result = _died(job, worker.process.exitcode)
            self._release(worker)
            finished.append((job, result))
        return finished

    def _release(self, worker: _Worker) -> None:
        """Make a worker that finished a target idle again, or replace it when it is gone (unless stopping)."""
        if worker.process.is_alive():
            self._idle.append(worker)
            return
        worker.connection.close()
        if not self._stopping:
            self._idle.append(self._start())


def _died(job: _Job, exitcode: int | None) -> TargetResult:
    code = 128 - exitcode if exitcode is not None and exitcode < 0 else (exitcode or 1)
    return TargetResult(
        job.target.name,
        job.target.describe(),
        FAILED,
        exit_code=code,
        error="WorkerDied",
        message=f"The worker process running this target ended with exit code {code}. The target is where "
        "`dbmigrate status --fleet` says; rerun the fleet to continue.",
    )


def _revisions(revisions: list[str] | None) -> str:
    if revisions is None:
        return "-"
    return ", ".join(revisions) or "base"


# -- in the worker processes ----------------------------------------------------------------------


def _worker_main(connection: multiprocessing.connection.Connection, parent: int, log_format: str, lock: Lock) -> None:
    """A worker's life: take a job, run it, send its result back; until told to stop or the pipe closes."""
    _stop_with(parent)
    scripts.share_loaded_scripts()
    termination.install()
    sys.stderr = _WholeLines(sys.stderr, lock)
    configure_logging(log_format)
    # What migrations print goes to stderr as log lines (with the target's name), never to the fleet's stdout.
    printed, printed_to_stderr = PrintedLines(as_log_lines=True), PrintedLines(as_log_lines=True)
    with contextlib.suppress(Terminated, EOFError, OSError):
        while (job := connection.recv()) is not None:
            with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed_to_stderr):
                try:
                    result = _execute(job)
                finally:
                    printed.flush()
                    printed_to_stderr.flush()
            connection.send(result)


class _WholeLines(io.TextIOBase):
    """The worker's stderr: each line leaves in one piece under a lock the workers share, so lines never mix."""

    def __init__(self, stream: TextIO, lock: Lock) -> None:
        super().__init__()
        self._stream, self._lock, self._pending = stream, lock, ""

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return self._stream.isatty()

    def fileno(self) -> int:
        return self._stream.fileno()

    def write(self, text: str) -> int:
        complete, newline, self._pending = (self._pending + text).rpartition("\n")
        if newline:
            self._emit(complete + newline)
        return len(text)

    def flush(self) -> None:
        if self._pending:
            self._emit(self._pending)
            self._pending = ""

    def _emit(self, text: str) -> None:
        with self._lock:
            self._stream.write(text)
            self._stream.flush()


def _stop_with(parent: int) -> None:
    """On Linux, have the kernel send this process SIGTERM when the fleet process dies (even by SIGKILL)."""
    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() != parent:  # it died before the request above was in place
        os._exit(0)


@dataclasses.dataclass
class _Progress:
    """What a command learnt about its target before it ended (kept when it fails later)."""

    before: list[str] | None = None
    after: list[str] | None = None
    message: str | None = None


_Command = Callable[[Settings, Mapping[str, Any], _Progress], tuple[str, int]]


def _execute(job: _Job) -> TargetResult:
    """Run one job's command on its target; every error becomes the target's result, none escapes."""
    structlog.contextvars.clear_contextvars()
    bind(target=job.target.name)
    started = time.monotonic()
    progress = _Progress()
    error: str | None = None
    settings: Settings | None = None
    try:
        settings = job.target.settings(job.settings)
        outcome, code = _COMMANDS[job.command](settings, job.arguments, progress)
    except (DbmigrateError, Terminated) as exc:
        outcome, code, error, progress.message = FAILED, exc.exit_code, type(exc).__name__, redact(str(exc))
        if settings is not None and job.command == "upgrade" and isinstance(exc, DbmigrateError):
            progress.before, progress.after = _before_and_now(settings, exc.run_id)
    except Exception as exc:  # noqa: BLE001 - one target's surprise must not end the fleet run
        outcome, code, error = FAILED, DbmigrateError.exit_code, type(exc).__name__
        progress.message = redact(f"Unexpected error: {exc}. Run this target alone with --debug for the traceback.")
    duration = round(time.monotonic() - started, 3)
    (log.info if code == 0 else log.error)(
        "target finished", outcome=outcome, exit_code=code, duration_s=duration, error=error, message=progress.message
    )
    return TargetResult(
        job.target.name,
        job.target.describe(),
        outcome,
        progress.before,
        progress.after,
        duration,
        code,
        error,
        progress.message,
    )


def _before_and_now(settings: Settings, run_id: str | None) -> tuple[list[str] | None, list[str] | None]:
    """After a failed upgrade: where the failed run ``run_id`` found the target (from its first history row;
    where it is now, when the run wrote none) and where the target is now; None when they cannot be read."""
    try:
        state = api.status(settings=settings)
    except (DbmigrateError, SQLAlchemyError):
        return None, None
    rows = [entry for entry in state.last_run if entry["run_id"] == run_id]
    if not rows:
        return list(state.current), list(state.current)
    first = rows[0]["from_revision"]
    return (first.split(",") if first else []), list(state.current)


def _upgrade(settings: Settings, arguments: Mapping[str, Any], progress: _Progress) -> tuple[str, int]:
    """The upgrade itself tells a target already at the goal: its run takes the lock, finds nothing to apply
    and writes no history row, so a rerun retries only the rest."""
    result = api.upgrade(str(arguments.get("target") or "head"), settings=settings)
    progress.before, progress.after = list(result.before), list(result.after)
    if result.outcome == "nothing-to-do":
        return AT_GOAL, 0
    return "upgraded", 0


def _status(settings: Settings, arguments: Mapping[str, Any], progress: _Progress) -> tuple[str, int]:
    state = api.status(settings=settings)
    progress.before = progress.after = list(state.current)
    if state.needs_repair:
        progress.message = state.needs_repair
        return "needs repair", RepairNeeded.exit_code
    if state.ahead:
        outcome = "kept ahead" if state.kept_ahead else "ahead"
    else:
        outcome = "at head" if state.at_head else f"{len(state.pending)} pending"
    if state.run_in_progress:
        outcome += ", run in progress"
    refused = arguments.get("check") and not state.at_head and not state.kept_ahead
    return outcome, NotAtHead.exit_code if refused else 0


def _check(settings: Settings, arguments: Mapping[str, Any], progress: _Progress) -> tuple[str, int]:
    report = api.check(settings=settings)
    refused = [f for f in report.findings if f.severity == "error" and not f.allowed]
    if refused or report.blind:
        progress.message = report.render_text()
        return f"{len(refused)} refused finding(s)" + (", not fully analysed" if report.blind else ""), (
            ChecksFailed.exit_code
        )
    return f"passed ({len(report.findings)} finding(s))", 0


def _wait(settings: Settings, arguments: Mapping[str, Any], progress: _Progress) -> tuple[str, int]:
    state = api.wait_until_ready(
        arguments.get("revision"),
        exact=bool(arguments.get("exact")),
        timeout=float(arguments.get("timeout", 300.0)),
        settings=settings,
    )
    progress.before = progress.after = list(state.current)
    return "ready", 0


_COMMANDS: dict[str, _Command] = {"upgrade": _upgrade, "status": _status, "check": _check, "wait": _wait}
