"""Logs, the pod termination message, and Prometheus metrics.

Logs go to stderr: JSON lines in a pod (stderr is not a terminal) or with ``log_format="json"``,
readable lines in a terminal. Every event, and every line a migration prints, passes through
:func:`dbmigrate.masking.redact`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import sys
from collections.abc import Callable, Iterator, Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from dbmigrate.masking import redact

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry


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


def configure_logging(log_format: str = "auto", debug: bool = False) -> bool:
    """Set up structlog for the CLI: ``auto`` is JSON unless stderr is a terminal; returns whether it is JSON.

    Warnings that Alembic, a project's env.py or its revisions send through the standard library's
    logging come out in the same format, with the run id and revision.
    """
    json_output = log_format == "json" or (log_format == "auto" and not sys.stderr.isatty())
    renderer: Any = structlog.processors.JSONRenderer() if json_output else structlog.dev.ConsoleRenderer(colors=False)
    enrich: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        _redact_event,
    ]
    structlog.configure(
        processors=[*enrich, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG if debug else logging.INFO),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.WARNING)  # Alembic's own progress lines repeat dbmigrate's step lines
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *enrich],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    logging.root.handlers[:] = [handler]
    return json_output


class PrintedLines(io.TextIOBase):
    """A stand-in for stdout or stderr while a command runs: what is written comes out line by line, masked.

    With JSON logs each line becomes a log line (``printed``) with the run id and revision, so
    stderr stays one JSON object per line; otherwise it goes to the real stderr as it was written.
    Whole lines are what :func:`dbmigrate.masking.redact` sees, so a password written in pieces
    is still found.
    """

    encoding = "utf-8"  # io.TextIOBase says None, and code that prints may read it (the real stderr had one)

    def __init__(self, as_log_lines: bool) -> None:
        super().__init__()
        self._pending = ""
        self._log = structlog.get_logger("dbmigrate.printed") if as_log_lines else None
        self._stderr = sys.stderr  # taken now, before stdout and stderr are redirected here

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        *complete, self._pending = (self._pending + text).split("\n")
        for line in complete:
            self._emit(line, "\n")
        return len(text)

    def flush(self) -> None:
        """A line written without its end (``print(..., end="", flush=True)``) comes out as it is."""
        if self._pending:
            self._emit(self._pending, "")
            self._pending = ""
        self._stderr.flush()

    def _emit(self, line: str, end: str) -> None:
        if self._log is not None:
            self._log.info(line, printed=True)  # masked with every other log event
        else:
            self._stderr.write(redact(line) + end)


@contextlib.contextmanager
def errors_only() -> Iterator[None]:
    """Inside the block, log lines below error level are dropped, the standard library's and structlog's."""
    previous = logging.root.manager.disable
    processors = structlog.get_config()["processors"]
    logging.disable(logging.WARNING)
    structlog.configure(processors=[_drop_below_error, *processors])
    try:
        yield
    finally:
        structlog.configure(processors=processors)
        logging.disable(previous)


def _drop_below_error(_logger: Any, method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    if method in ("error", "critical", "exception", "fatal"):
        return event
    raise structlog.DropEvent


@dataclasses.dataclass
class _LoggingSetup:
    """The process's logging set-up at one moment: structlog's configuration and every stdlib logger's state."""

    structlog_config: dict[str, Any]
    loggers: dict[logging.Logger, tuple[int, bool, bool, list[logging.Handler]]]

    @classmethod
    def now(cls) -> _LoggingSetup:
        named = logging.Logger.manager.loggerDict.values()
        loggers = [logging.root, *(logger for logger in named if isinstance(logger, logging.Logger))]
        return cls(dict(structlog.get_config()), {logger: _state(logger) for logger in loggers})

    def restore(self) -> None:
        if structlog.get_config() != self.structlog_config:
            structlog.configure(**self.structlog_config)
        for logger, state in self.loggers.items():
            if _state(logger) != state:
                logger.setLevel(state[0])
                logger.disabled, logger.propagate, logger.handlers[:] = state[1], state[2], state[3]


def _state(logger: logging.Logger) -> tuple[int, bool, bool, list[logging.Handler]]:
    return logger.level, logger.disabled, logger.propagate, list(logger.handlers)


@contextlib.contextmanager
def logging_kept() -> Iterator[Callable[[], None]]:
    """While a project's own code runs (env.py, revision modules), keep the logging set-up it found.

    Projects set up their logging as they load: the env.py of ``alembic init`` calls ``fileConfig``
    (text lines on stderr, other loggers disabled or reset), and some configure structlog (Airflow
    does). What they changed of structlog and of the loggers that existed before is put back when
    the block ends, and whenever the yielded function is called: env.py hands its steps over after
    its own set-up ran, before the first step logs anything.
    """
    before = _LoggingSetup.now()
    try:
        yield before.restore
    finally:
        before.restore()


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


def format_seconds(seconds: float) -> str:
    """A duration as people read it: ``45s``, ``3m20s``, ``2h05m``."""
    whole = round(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def render_bar(label: str, done: int, total: int, detail: str, width: int = 30) -> str:
    """One line: ``label [#####.....]  50% 500/1000 detail``."""
    fraction = min(1.0, done / total) if total > 0 else 0.0
    filled = int(fraction * width)
    return f"{label} [{'#' * filled}{'.' * (width - filled)}] {fraction:4.0%} {done}/{total} {detail}"


class ProgressBar:
    """A progress bar redrawn in place on a terminal; does nothing unless stderr is a terminal with text logs.

    Written to the process's real stderr (a command's output is redirected while it runs); :meth:`end`
    closes the line before anything else is logged.
    """

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.enabled = stream is not None
        self._open = False

    @classmethod
    def for_terminal(cls, log_format: str) -> ProgressBar:
        stream = sys.__stderr__
        terminal = stream is not None and stream.isatty() and log_format != "json"
        return cls(stream if terminal else None)

    def show(self, label: str, done: int, total: int, detail: str) -> None:
        if self.stream is None:
            return
        self.stream.write("\r" + redact(render_bar(label, done, total, detail)) + "\033[K")
        self.stream.flush()
        self._open = True

    def end(self) -> None:
        if self.stream is not None and self._open:
            self.stream.write("\n")
            self.stream.flush()
            self._open = False


@dataclasses.dataclass(frozen=True)
class RunReport:
    """What one run did, as the metrics describe it."""

    command: str
    run_id: str
    outcome: str
    exit_code: int
    steps: Sequence[Mapping[str, Any]] = ()
    current: Sequence[str] = ()
    pending: int | None = None
    runs_by_outcome: Mapping[str, int] = dataclasses.field(default_factory=dict)
    backfills: Sequence[Mapping[str, Any]] = ()  # those whose sync trigger is still installed (as_dict of each)


def run_metrics(report: RunReport) -> CollectorRegistry:
    """The Prometheus metrics of one run, in a registry of their own (pushed or written, never served)."""
    from prometheus_client import CollectorRegistry, Gauge, Info  # only runs that publish metrics pay for it

    registry = CollectorRegistry()
    prefix = "dbmigrate_"
    Gauge(prefix + "last_run_timestamp_seconds", "When the last run ended", registry=registry).set_to_current_time()
    Gauge(
        prefix + "last_run_exit_code", "Exit code of the last run (0 = success)", ["command"], registry=registry
    ).labels(report.command).set(report.exit_code)
    Gauge(prefix + "last_run_success", "1 if the last run succeeded", ["command"], registry=registry).labels(
        report.command
    ).set(1 if report.exit_code == 0 else 0)
    outcome = Gauge(prefix + "last_run_outcome", "The last run's outcome (value 1)", ["outcome"], registry=registry)
    outcome.labels(report.outcome).set(1)
    duration = Gauge(
        prefix + "step_duration_seconds",
        "Duration of each revision step of the last run",
        ["revision", "direction", "status"],
        registry=registry,
    )
    attempts = Gauge(
        prefix + "step_attempts",
        "Attempts of each step (more than 1: lock timeouts were retried)",
        ["revision", "direction"],
        registry=registry,
    )
    waits = Gauge(
        prefix + "step_lock_waits", "Lock waits and retries of each step", ["revision", "direction"], registry=registry
    )
    wait_seconds = Gauge(
        prefix + "step_lock_wait_seconds",
        "Time each step spent waiting for locks",
        ["revision", "direction"],
        registry=registry,
    )
    for step in report.steps:
        labels = (str(step["revision"]), str(step["direction"]))
        duration.labels(*labels, str(step["status"])).set((step.get("duration_ms") or 0) / 1000)
        attempts.labels(*labels).set(step.get("attempts") or 1)
        waits.labels(*labels).set(step.get("lock_waits") or 0)
        wait_seconds.labels(*labels).set((step.get("lock_wait_ms") or 0) / 1000)
    if report.pending is not None:
        Gauge(prefix + "pending_revisions", "Revisions not yet applied", registry=registry).set(report.pending)
    if report.current:
        Info(prefix + "current_revision", "The database's current revision(s)", registry=registry).info(
            {"revision": ",".join(report.current)}
        )
    runs = Gauge(
        prefix + "runs",
        "Runs recorded in the history table, by outcome of their last step",
        ["outcome"],
        registry=registry,
    )
    for name, count in report.runs_by_outcome.items():
        runs.labels(name).set(count)
    if report.backfills:
        _backfill_metrics(report.backfills, registry)
    return registry


def _backfill_metrics(backfills: Sequence[Mapping[str, Any]], registry: CollectorRegistry) -> None:
    from prometheus_client import Gauge

    labels = ["backfill", "revision", "table"]
    gauges = {
        field: Gauge(f"dbmigrate_backfill_{field}", help_, labels, registry=registry)
        for field, help_ in (
            ("rows_done", "Rows each backfill has filled so far"),
            ("rows_estimated", "Rows each backfill has to fill in all, as estimated when its last run began"),
            ("batches", "Batches each backfill has committed"),
            ("lock_retries", "Batches of each backfill retried after a lock timeout"),
        )
    }
    state = Gauge(
        "dbmigrate_backfill_state",
        "Each backfill's state (value 1): queued, running, paused, done, failed",
        [*labels, "state"],
        registry=registry,
    )
    for item in backfills:
        values = (str(item["id"]), str(item["revision"]), str(item["table"]))
        for field, gauge in gauges.items():
            if item.get(field) is not None:
                gauge.labels(*values).set(item[field])
        state.labels(*values, str(item["state"])).set(1)


def publish_metrics(report: RunReport, pushgateway: str | None, grouping: str | None, textfile: Path | None) -> None:
    """Push the run's metrics to a Pushgateway and/or write them for node-exporter's textfile collector.

    Failing to publish is logged, never raised: metrics must not fail a migration.
    """
    if not pushgateway and textfile is None:
        return
    publish_registry(run_metrics(report), pushgateway, parse_grouping(grouping), textfile)


def publish_registry(
    registry: CollectorRegistry,
    pushgateway: str | None,
    grouping: Mapping[str, str],
    textfile: Path | None,
    job: str = "dbmigrate",
) -> None:
    """Push ``registry`` to a Pushgateway (as ``job``, grouped by ``grouping``) and/or write it to ``textfile``.

    Failing to publish is logged, never raised: metrics must not fail a migration.
    """
    from prometheus_client import push_to_gateway, write_to_textfile

    log = structlog.get_logger("dbmigrate.metrics")
    if pushgateway:
        try:
            push_to_gateway(pushgateway, job=job, registry=registry, grouping_key=dict(grouping), timeout=10)
        except OSError as exc:
            log.warning("could not push metrics", pushgateway=pushgateway, error=str(exc))
    if textfile is not None:
        try:
            write_to_textfile(str(textfile), registry)
        except OSError as exc:
            log.warning("could not write the metrics file", path=str(textfile), error=str(exc))


def parse_grouping(grouping: str | None) -> dict[str, str]:
    """``"release=shop,namespace=prod"`` -> Pushgateway grouping labels."""
    pairs = [item.split("=", 1) for item in (grouping or "").split(",") if "=" in item]
    return {key.strip(): value.strip() for key, value in pairs if key.strip()}
