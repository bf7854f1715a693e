"""The ``dbmigrate`` command: parse, call the public API, render, exit."""

from __future__ import annotations

import atexit
import contextlib
import functools
import gc
import inspect
import json
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click
import structlog

from dbmigrate import api, deadline, termination
from dbmigrate._version import __version__
from dbmigrate.errors import (
    EXIT_CODES,
    ChecksFailed,
    ConfigurationError,
    DbmigrateError,
    NotAtHead,
    RepairNeeded,
    Terminated,
    VerificationFailed,
)
from dbmigrate.masking import redact
from dbmigrate.observability import PrintedLines, configure_logging, format_seconds, write_termination_message
from dbmigrate.runner import RunResult
from dbmigrate.settings import WHEN_AHEAD, Settings

log = structlog.get_logger("dbmigrate.cli")

EPILOG = "Exit codes:\n\n" + "\n\n".join(f"  {code}  {meaning}" for code, meaning in EXIT_CODES.items())

_SETTING_OPTIONS: list[tuple[tuple[str, ...], dict[str, Any]]] = [
    (("-c", "--config", "config_file"), {"help": "Alembic config file [alembic.ini; DBMIGRATE_CONFIG]"}),
    (
        ("--database-url",),
        {"help": "Database URL [DATABASE_URL or DBMIGRATE_DATABASE_URL; else the ini's sqlalchemy.url]"},
    ),
    (("--database-url-file",), {"help": "Read the database URL from this file (a mounted Secret)"}),
    (("--database-password-file",), {"help": "Read the password from this file and put it into the URL"}),
    (("--wait-timeout",), {"type": float, "help": "Seconds to wait for the database to accept connections [60]"}),
    (("--lock-wait-timeout",), {"type": float, "help": "Seconds to wait for another run's lock [300]"}),
    (
        ("--lock-timeout",),
        {"type": float, "help": "Seconds a statement may wait for a table lock before the step retries [2]"},
    ),
    (("--statement-timeout",), {"type": float, "help": "Seconds a migration statement may run; 0 = no limit [3600]"}),
    (
        ("--lock-conflict-wait",),
        {"type": float, "help": "Seconds to wait for long transactions on a step's tables [60]"},
    ),
    (("--max-lock-retries",), {"type": int, "help": "Retries of a step that hit its lock timeout [10]"}),
    (
        ("--deadline",),
        {
            "type": float,
            "help": "Seconds this process may run in all, from its start; every wait stops in time, exit 3 [0: none]",
        },
    ),
    (("--history-table",), {"help": "Name of dbmigrate's history table [dbmigrate_history]"}),
    (("--table-schema",), {"help": "Schema for dbmigrate's tables [the connection's default]"}),
    (
        ("--tenant-schema",),
        {
            "help": "PostgreSQL schema per tenant: search_path, version table and dbmigrate's tables in it; "
            "env.py gets -x tenant=SCHEMA"
        },
    ),
    (("--archive-table",), {"help": "Name of dbmigrate's revision archive table [dbmigrate_archive]"}),
    (("--backups-table",), {"help": "Name of dbmigrate's backups registry table [dbmigrate_backups]"}),
    (("--backfills-table",), {"help": "Name of dbmigrate's backfill queue and progress table [dbmigrate_backfills]"}),
    (
        ("--backfill-batch-time",),
        {"type": float, "help": "Seconds each backfill batch should take; its size adapts to it [0.05]"},
    ),
    (("--backfill-pause",), {"type": float, "help": "Seconds to pause between backfill batches [0.02]"}),
    (
        ("--backup-schema",),
        {"help": "Backups go to this schema (PostgreSQL), database (MySQL), table prefix (SQLite) [dbmigrate_backup]"},
    ),
    (
        ("--non-transactional-revisions",),
        {"help": "Revision ids (comma separated) that run outside a transaction, for files you do not own"},
    ),
    (("--termination-log",), {"help": "Where the outcome is written if the file exists [/dev/termination-log]"}),
    (("--app-version",), {"help": "Application version recorded in history [DBMIGRATE_APP_VERSION]"}),
    (("--pushgateway",), {"help": "Push run metrics to this Prometheus Pushgateway URL"}),
    (("--metrics-grouping",), {"help": "Pushgateway grouping labels, e.g. release=shop,namespace=prod"}),
    (("--metrics-textfile",), {"help": "Write run metrics here for node-exporter's textfile collector"}),
    (
        ("--log-format",),
        {"type": click.Choice(["auto", "json", "text"]), "help": "Log format on stderr [auto: JSON unless a terminal]"},
    ),
]


_ALL_FORMATS = ("text", "json", "sarif")


def _shared_options(function: Callable[..., Any], formats: tuple[str, ...], format_help: str) -> Callable[..., Any]:
    """The settings' options, --format (one of ``formats``) and --debug, all unset unless given."""
    # As click's decorators would add them (each command lists them last, in this order), but made once:
    # every command shares them, and building a few hundred options costs each run's start.
    params = getattr(function, "__click_params__", [])
    params.extend(_shared_params(formats, format_help))
    function.__click_params__ = params  # type: ignore[attr-defined]
    return function


@functools.cache
def _shared_params(formats: tuple[str, ...], format_help: str) -> tuple[click.Option, ...]:
    settings = [click.Option(list(names), default=None, **attrs) for names, attrs in reversed(_SETTING_OPTIONS)]
    output = click.Option(
        ["--format", "output_format"], type=click.Choice(list(formats)), default=None, help=format_help
    )
    debug = click.Option(["--debug"], is_flag=True, default=None, help="Show tracebacks and debug logs")
    return (*settings, output, debug)


def common_options(command: Callable[..., Any], formats: tuple[str, ...] = ("text", "json")) -> Callable[..., Any]:
    """The options every command shares; each can also be set as DBMIGRATE_<OPTION>, or before the command."""
    command = _shared_options(command, formats, "Output on stdout: " + " or ".join(formats) + " [text]")
    command.output_formats = formats  # type: ignore[attr-defined]  # what --format before the command may ask
    return command


def _global_options(group: Callable[..., Any]) -> Callable[..., Any]:
    """The shared options, accepted before the command as Alembic users type them (``-c FILE upgrade``)."""
    return _shared_options(group, _ALL_FORMATS, "Output on stdout: text or json (check: also sarif) [text]")


def _with_options_given_first(command: Any, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` (as given after the command), completed by those given before it: after wins."""
    before = click.get_current_context().find_root().obj or {}
    merged = {name: before.get(name) if value is None else value for name, value in options.items()}
    merged["output_format"] = merged.get("output_format") or "text"
    formats = getattr(command, "output_formats", ("text", "json"))
    if merged["output_format"] not in formats:
        raise click.UsageError(
            f"--format {merged['output_format']} is not available for this command (it offers {', '.join(formats)})."
        )
    merged["debug"] = bool(merged.get("debug"))
    return merged


def _data_loss_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """--allow-data-loss and --no-backup, for every command that may lose data."""
    command = click.option(
        "--no-backup",
        "backup",
        flag_value=False,
        default=None,
        help="Do not copy aside data a step would lose (needs --allow-data-loss) [DBMIGRATE_BACKUP=false]",
    )(command)
    return click.option(
        "--allow-data-loss",
        is_flag=True,
        default=None,
        help="Let data-loss findings pass (still backed up unless --no-backup) [DBMIGRATE_ALLOW_DATA_LOSS]",
    )(command)


def _fleet_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """--fleet and the rollout's options, for the commands a fleet runs."""
    options = [
        click.option(
            "--fleet",
            "fleet_file",
            type=click.Path(dir_okay=False, path_type=Path),
            default=None,
            help="Run on every target of this fleet file (TOML) instead of one database",
        ),
        click.option(
            "--parallel",
            type=click.IntRange(min=1),
            default=2,
            show_default=True,
            help="With --fleet: targets at a time, each in a worker process",
        ),
        click.option(
            "--canary",
            type=click.IntRange(min=0),
            default=0,
            show_default=True,
            help="With --fleet: run the first K targets first, and start no other if one of them fails",
        ),
        click.option(
            "--max-failures",
            type=click.IntRange(min=1),
            default=None,
            help="With --fleet: start no new target once N have failed [no limit]",
        ),
        click.option(
            "--shards",
            type=click.IntRange(min=1),
            default=1,
            show_default=True,
            help="With --fleet: split the fleet into N shards by a digest of each target's name",
        ),
        click.option(
            "--shard-index",
            type=click.IntRange(min=0),
            envvar="JOB_COMPLETION_INDEX",
            default=0,
            show_default=True,
            help="With --fleet and --shards: run this shard's targets only [JOB_COMPLETION_INDEX]",
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _run_fleet(command: str, settings: Settings, rollout: dict[str, Any], **arguments: Any) -> tuple[Any, str, int]:
    """A command on every target of a fleet file: the summary table (or JSON), and the worst exit code."""
    from dbmigrate import fleet  # worker processes and the fleet file's parser: only fleet runs load them

    result = fleet.run(command, rollout.pop("fleet_file"), settings=settings, arguments=arguments, **rollout)
    return result.as_dict(), result.render_text(), result.exit_code


def run_command(render: Callable[..., Any]) -> Callable[..., Any]:
    """Turn an API call into a command: settings in, rendered result out, exit code by error type."""

    @functools.wraps(render)
    def wrapper(**kwargs: Any) -> None:
        kwargs = _with_options_given_first(wrapper, kwargs)
        output_format, debug = kwargs.pop("output_format"), kwargs.pop("debug")
        flags = {k: kwargs.pop(k) for k in list(kwargs) if k in Settings.__dataclass_fields__}
        json_logs = configure_logging("auto", debug)  # until the settings say otherwise
        try:
            try:
                settings = Settings.load(**flags)
            except DbmigrateError as exc:
                # No settings, so the API cannot say why the pod stopped: say it here.
                path = flags.get("termination_log") or os.environ.get("DBMIGRATE_TERMINATION_LOG")
                write_termination_message(Path(path or Settings.termination_log), f"dbmigrate: {exc}")
                raise
            json_logs = configure_logging(settings.log_format, debug)
            if "output_format" in inspect.signature(render).parameters:
                kwargs["output_format"] = output_format
            # What a migration prints, to stdout or stderr, goes to stderr with the logs, masked like
            # them (as log lines when they are JSON): stdout carries only the result.
            printed, printed_to_stderr = PrintedLines(json_logs), PrintedLines(json_logs)
            try:
                with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed_to_stderr):
                    output = render(settings, **kwargs)
            finally:
                printed.flush()
                printed_to_stderr.flush()
        except (DbmigrateError, Terminated) as exc:
            _fail(exc, output_format, debug, json_logs)
        except Exception as exc:  # noqa: BLE001 - the last net: a paragraph, not a traceback
            _fail(
                DbmigrateError(f"Unexpected error: {type(exc).__name__}: {exc}. Run with --debug for the traceback."),
                output_format,
                debug,
                json_logs,
            )
        else:
            data, text, code = output
            click.echo(redact(text if output_format == "text" else json.dumps(data, indent=2, default=str)))
            sys.exit(code)

    return wrapper


def _fail(exc: DbmigrateError | Terminated, output_format: str, debug: bool, json_logs: bool) -> None:
    message = redact(str(exc))
    trace = {"trace": redact(traceback.format_exc())} if debug else {}
    if output_format == "json":
        click.echo(json.dumps({"error": type(exc).__name__, "message": message, "exit_code": exc.exit_code}, indent=2))
    if json_logs:  # the last line of a pod's log is a JSON line like every other
        log.error("command failed", error=type(exc).__name__, message=message, exit_code=exc.exit_code, **trace)
    else:
        if trace:
            click.echo(trace["trace"], err=True)
        click.echo(f"error: {message}", err=True)
    sys.exit(exc.exit_code)


class _Group(click.Group):
    """Usage errors follow --format too: with --format json they are a JSON object on stdout, exit 2."""

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None, **_: Any) -> Any:  # type: ignore[override]
        argv = list(sys.argv[1:] if args is None else args)
        try:
            return super().main(argv, prog_name, standalone_mode=False)
        except click.ClickException as exc:
            if _wants_json(argv):
                error = {"error": "UsageError", "message": exc.format_message(), "exit_code": exc.exit_code}
                click.echo(json.dumps(error, indent=2))
            exc.show()
            sys.exit(exc.exit_code)
        except click.exceptions.Abort:
            click.echo("Aborted!", err=True)
            sys.exit(1)


def _wants_json(argv: list[str]) -> bool:
    return any(
        a == "--format=json" or (a == "--format" and argv[i + 1 : i + 2] == ["json"]) for i, a in enumerate(argv)
    )


@click.group(
    cls=_Group, epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100}
)
@click.version_option(__version__, prog_name="dbmigrate")
@_global_options
@click.pass_context
def main(context: click.Context, /, **options_given_first: Any) -> None:
    """Safe Alembic migrations: one run at a time, online-friendly locking, history, clear exits.

    The shared options may come before the command (`dbmigrate -c app/alembic.ini upgrade`) or after
    it; given in both places, the one after the command wins.
    """
    termination.install()
    deadline.count_from_process_start()
    _collect_only_what_the_command_makes()
    context.obj = options_given_first


def _collect_only_what_the_command_makes() -> None:
    """Keep the garbage collector off the objects the imports made, now and when the process exits.

    They live as long as the process. Without this, the collections while the command runs and the
    interpreter's repeated ones at exit walk every object SQLAlchemy and Alembic made, only to free
    memory the exit gives back anyway: about 0.15 s of a one-second deploy. At exit, what the command
    left unreachable is still collected once (an env.py object in a reference cycle is finalized),
    every atexit handler runs, and connections end as before.
    """
    gc.freeze()
    atexit.register(_freeze_after_a_last_collection)  # runs after the command, before the interpreter's own


def _freeze_after_a_last_collection() -> None:
    gc.collect()
    gc.freeze()


@main.command(epilog=EPILOG)
@click.argument("target", default="head")
@click.option("--dry-run", is_flag=True, help="Print the plan and its SQL; change nothing")
@_data_loss_options
@click.option("--refuse-findings", default=None, help="Categories the gate refuses, comma separated [data-loss]")
@click.option(
    "--refuse-unanalysed",
    is_flag=True,
    default=None,
    help="Refuse revisions the gate cannot analyse offline, instead of watching their statements as they run "
    "[DBMIGRATE_REFUSE_UNANALYSED]",
)
@click.option(
    "--defer-backfills",
    is_flag=True,
    default=None,
    help="Apply the schema and queue the revisions' backfills for `dbmigrate backfill run` instead of running "
    "them now [DBMIGRATE_DEFER_BACKFILLS]",
)
@click.option(
    "--when-ahead",
    type=click.Choice(WHEN_AHEAD),
    default=None,
    help="A database ahead of these scripts (an older image deployed): refuse (exit 2), keep its schema, or "
    "rollback as `dbmigrate rollback --schema auto` does [refuse; DBMIGRATE_WHEN_AHEAD]",
)
@_fleet_options
@common_options
@run_command
def upgrade(settings: Settings, target: str, dry_run: bool, **rollout: Any) -> tuple[Any, str, int]:
    """Upgrade the database to TARGET (default: head), refusing unintended data loss.

    With --fleet, every target of the fleet file, skipping those already at TARGET.
    """
    if rollout["fleet_file"] is not None:
        if dry_run:
            raise ConfigurationError("--dry-run runs on one database: drop --fleet, or --dry-run.")
        return _run_fleet("upgrade", settings, rollout, target=target)
    result = api.upgrade(target, dry_run=dry_run, settings=settings)
    return result.as_dict(), _render_run(result), 0


@main.command(epilog=EPILOG, context_settings={"ignore_unknown_options": True})  # so "-1" is a target
@click.argument("target")
@click.option("--dry-run", is_flag=True, help="Print the plan and its SQL; change nothing")
@_data_loss_options
@common_options
@run_command
def downgrade(settings: Settings, target: str, dry_run: bool) -> tuple[Any, str, int]:
    """Downgrade the database to TARGET (a revision, -1, or base)."""
    result = api.downgrade(target, dry_run=dry_run, settings=settings)
    return result.as_dict(), _render_run(result), 0


@main.command(epilog=EPILOG)
@click.option("--to", "to", default="code-head", show_default=True, help="Revision to roll back to")
@click.option(
    "--schema",
    "policy",
    type=click.Choice(["auto", "always", "never"]),
    default="auto",
    show_default=True,
    help="auto: keep the newer schema unless a newer revision breaks the older code; always: downgrade; never: keep",
)
@_data_loss_options
@common_options
@run_command
def rollback(settings: Settings, to: str, policy: str) -> tuple[Any, str, int]:
    """Roll the database back to this image's scripts, through archived newer revisions, losing nothing."""
    result = api.rollback(to, schema=policy, settings=settings)
    return result.as_dict(), result.summary(), 0


@main.group(cls=_Group, epilog=EPILOG)
def backups() -> None:
    """Copies of data taken before steps that would lose it: list, restore, drop."""


@backups.command("list", epilog=EPILOG)
@common_options
@run_command
def backups_list(settings: Settings) -> tuple[Any, str, int]:
    """List every backup, newest first."""
    found = api.backups(settings=settings)
    lines = [f"{'id':>4} {'status':<9} {'revision':<20} {'direction':<9} what"]
    lines += [f"{b.id:>4} {b.status:<9} {b.revision:<20} {b.direction:<9} {b.describe()}" for b in found]
    return [b.as_dict() for b in found], "\n".join(lines) if found else "No backups.", 0


@backups.command("restore", epilog=EPILOG)
@click.argument("backup_id", type=int)
@common_options
@run_command
def backups_restore(settings: Settings, backup_id: int) -> tuple[Any, str, int]:
    """Put backup BACKUP_ID's values back into its table now, by primary key."""
    backup = api.restore_backup(backup_id, settings=settings)
    return backup.as_dict(), f"Restored {backup.restored_rows} row(s) from {backup.backup_table}.", 0


@backups.command("drop", epilog=EPILOG)
@click.argument("backup_id", type=int)
@common_options
@run_command
def backups_drop(settings: Settings, backup_id: int) -> tuple[Any, str, int]:
    """Delete backup BACKUP_ID's copy of the data for good."""
    backup = api.drop_backup(backup_id, settings=settings)
    return backup.as_dict(), f"Dropped {backup.backup_table}.", 0


@main.group("backfill", cls=_Group, epilog=EPILOG)
def backfill_group() -> None:
    """Backfills that revisions queued: run them in a time budget, show their progress."""


@backfill_group.command("run", epilog=EPILOG)
@click.option(
    "--max-duration", help="Stop at the first batch boundary after this long: seconds, or 30m, 1h30m [no limit]"
)
@click.option(
    "--window",
    help="Work only inside this daily window, HH:MM-HH:MM in UTC (22:00-04:00 crosses midnight); outside it do "
    "nothing and exit 0",
)
@common_options
@run_command
def backfill_run(settings: Settings, max_duration: str | None, window: str | None) -> tuple[Any, str, int]:
    """Work through the queued backfills under the run lock; paused when the time is up, resumed next run."""
    result = api.backfill_run(max_duration, window, settings=settings)
    return result.as_dict(), result.summary(), 0


@backfill_group.command("status", epilog=EPILOG)
@common_options
@run_command
def backfill_status(settings: Settings) -> tuple[Any, str, int]:
    """Show every backfill: revision, table, rows done and left, rate, ETA, last run, state."""
    items = api.backfill_status(settings=settings)
    if not items:
        return [], "No backfills: no revision has queued one.", 0
    lines = [
        f"{'id':>4} {'state':<11} {'revision':<20} {'table':<24} {'done':>10} {'left':>10} {'rows/s':>8} "
        f"{'ETA':>7}  last run"
    ]
    for item in items:
        left, rate, eta = item.rows_left, item.rate, item.eta_s
        last = f"{item.last_run_id} at {item.updated_at:%Y-%m-%d %H:%M:%S}" if item.updated_at else "never"
        lines.append(
            f"{item.id:>4} {item.state:<11} {item.revision:<20} {item.spec.describe():<24} {item.rows_done:>10} "
            f"{'?' if left is None else left:>10} {'?' if rate is None else f'{rate:.0f}':>8} "
            f"{'?' if eta is None else format_seconds(eta):>7}  {last}"
        )
        if item.error:
            lines.append(f"     error: {item.error}")
    return [item.as_dict() for item in items], "\n".join(lines), 0


@main.command("check", epilog=EPILOG)
@click.option("--all", "all_revisions", is_flag=True, help="Check every revision, not only the pending ones")
@click.option("--range", "revision_range", help="LOWER:UPPER: the revisions an upgrade from LOWER to UPPER runs")
@click.option("--dialect", type=click.Choice(["postgresql", "mysql", "sqlite"]), help="Check for this database kind")
@_fleet_options
@functools.partial(common_options, formats=("text", "json", "sarif"))
@run_command
def check_command(
    settings: Settings,
    all_revisions: bool,
    revision_range: str | None,
    dialect: str | None,
    output_format: str,
    **rollout: Any,
) -> tuple[Any, str, int]:
    """Report what revisions would do to a live database: data-loss, blocking and breaking findings.

    Exit 4 for an undeclared error finding, or when a step could not be analysed offline to its end.
    With --fleet, the revisions pending on each target of the fleet file.
    """
    if rollout["fleet_file"] is not None:
        if all_revisions or revision_range or dialect or output_format == "sarif":
            raise ConfigurationError(
                "check --fleet checks what is pending on each target: drop --all, --range, --dialect and "
                "--format sarif (they need no database: run them once, without --fleet)."
            )
        return _run_fleet("check", settings, rollout)
    report = api.check(revision_range, all_revisions=all_revisions, dialect=dialect, settings=settings)
    refused = any(f.severity == "error" and not f.allowed for f in report.findings)
    code = ChecksFailed.exit_code if refused or report.blind else 0
    data = report.to_sarif() if output_format == "sarif" else report.as_dict()
    return data, report.render_text(), code


@main.command("verify", epilog=EPILOG)
@click.option("--range", "revision_range", help="LOWER:UPPER: the revisions an upgrade from LOWER to UPPER runs [all]")
@click.option(
    "--url",
    envvar="DBMIGRATE_VERIFY_URL",
    help="Verify on this throwaway database, from the state it is in, instead of a scratch database "
    "created and dropped beside the configured one; never dropped [DBMIGRATE_VERIFY_URL]",
)
@click.option("--with-data", is_flag=True, help="Seed a row per table before each downgrade; it must come back")
@click.option(
    "--no-backup",
    "backup",
    flag_value=False,
    default=None,
    help="Run the steps without dbmigrate's backups, to see what a downgrade loses on its own",
)
@common_options
@run_command
def verify_command(
    settings: Settings, revision_range: str | None, url: str | None, with_data: bool
) -> tuple[Any, str, int]:
    """Upgrade, downgrade and upgrade each revision on a scratch database; report every trace left."""
    result = api.verify(revision_range, url=url, with_data=with_data, settings=settings)
    return result.as_dict(), result.render_text(), 0 if result.ok else VerificationFailed.exit_code


@main.command(epilog=EPILOG)
@click.option(
    "--check", is_flag=True, help="Exit 4 unless the database is at the scripts' heads (or kept ahead by a rollback)"
)
@_fleet_options
@common_options
@run_command
def status(settings: Settings, check: bool, **rollout: Any) -> tuple[Any, str, int]:
    """Show the current revision, the heads, pending revisions and the last run.

    With --fleet, one line per target of the fleet file, read from the targets themselves.
    """
    if rollout["fleet_file"] is not None:
        return _run_fleet("status", settings, rollout, check=check)
    state = api.status(settings=settings)
    code = 0
    if state.needs_repair:
        code = RepairNeeded.exit_code
    elif check and not state.at_head and not state.kept_ahead:
        code = NotAtHead.exit_code
    return state.as_dict(), _render_status(state), code


@main.command(epilog=EPILOG)
@click.option("--revision", help="Wait for this revision instead of the scripts' heads")
@click.option("--exact", is_flag=True, help="Only the expected revision itself counts, not a newer one")
@click.option("--timeout", type=float, default=300.0, show_default=True, help="Seconds to wait in all")
@_fleet_options
@common_options
@run_command
def wait(settings: Settings, revision: str | None, exact: bool, timeout: float, **rollout: Any) -> tuple[Any, str, int]:
    """Wait until the database is reachable and its schema ready for this code (for init containers).

    With --fleet, until every target of the fleet file is (--timeout applies to each).
    """
    if rollout["fleet_file"] is not None:
        return _run_fleet("wait", settings, rollout, revision=revision, exact=exact, timeout=timeout)
    state = api.wait_until_ready(revision, exact=exact, timeout=timeout, settings=settings)
    return state.as_dict(), state.describe(), 0


@main.command(epilog=EPILOG)
@click.option("--limit", type=int, default=50, show_default=True, help="How many rows, newest first")
@common_options
@run_command
def history(settings: Settings, limit: int) -> tuple[Any, str, int]:
    """Show dbmigrate's history: one row per revision step of every run."""
    entries = api.history(limit, settings=settings)
    width = max([14, *(len(e.revision) for e in entries)])
    lines = [
        f"{'started (UTC)':<20} {'run':<12} {'direction':<9} {'revision':<{width}} {'status':<8} "
        f"{'ms':>7} {'tries':>5} {'waits':>5}  runner"
    ]
    for e in entries:
        lines.append(
            f"{e.started_at:%Y-%m-%d %H:%M:%S} {e.run_id:<12} {e.direction:<9} {e.revision:<{width}} {e.status:<8} "
            f"{e.duration_ms if e.duration_ms is not None else '':>7} {e.attempts:>5} {e.lock_waits:>5}  {e.runner}"
        )
        if e.error:
            lines.append(f"    {e.error}")
        if e.note:
            lines.append(f"    {e.note}")
    if not entries:
        lines = ["No history yet: dbmigrate has not run against this database."]
    return [e.as_dict() for e in entries], "\n".join(lines), 0


@main.command(epilog=EPILOG)
@click.option(
    "--reverted", "resolution", flag_value="reverted", help="Its statements were undone by hand; run it again later"
)
@click.option("--applied", "resolution", flag_value="applied", help="The rest was finished by hand; stamp the revision")
@common_options
@run_command
def repair(settings: Settings, resolution: str | None) -> tuple[Any, str, int]:
    """Mark a partially applied step as repaired by hand."""
    entry = api.repair(resolution or "", settings=settings)
    return entry.as_dict(), f"Revision {entry.revision}: {entry.error}.", 0


def _render_run(result: RunResult) -> str:
    if result.dry_run:
        parts = [result.summary()]
        for item in result.sql:
            parts.append(f"\n-- revision {item['revision']} (from {item['from'] or 'base'})\n{item['sql'].strip()}")
        return "\n".join(parts)
    return result.summary()


def _render_status(state: api.Status) -> str:
    lines = [
        f"database:  {state.database}",
        f"current:   {', '.join(state.current) or 'base (empty)'}",
        f"heads:     {', '.join(state.heads) or 'none'}",
        f"pending:   {len(state.pending)}" + (f" ({', '.join(state.pending)})" if state.pending else ""),
    ]
    if state.ahead:
        lines.append(f"ahead:     the database is at {', '.join(state.ahead)}, which these scripts do not contain")
        if state.kept_ahead:
            lines.append(f"on purpose: {state.kept_ahead}")
    lines.append(f"at head:   {'yes' if state.at_head else 'no'}")
    if state.run_in_progress:
        lines.append("running:   another dbmigrate run holds the lock right now")
    if state.last_run:
        first, last = state.last_run[0], state.last_run[-1]
        lines.append(
            f"last run:  {first['run_id']} by {first['runner']} at {first['started_at']}: "
            f"{len(state.last_run)} step(s), last {last['revision']} {last['status']}"
        )
    for item in state.backfills:
        lines.append(f"backfill:  {item['description']}")
    if state.needs_repair:
        lines.append(f"REPAIR:    {state.needs_repair}")
    return "\n".join(lines)
