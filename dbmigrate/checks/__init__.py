"""What revisions do to a live database, before anyone deploys them: ``check(...) -> Report``.

collect (the statements each step executes, with their lines) -> rules (findings per statement,
dialect-aware) -> directives (intended data loss) -> report (JSON, SARIF, text).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from pathlib import Path

from alembic.config import Config
from alembic.script import ScriptDirectory

from dbmigrate.checks.collect import DIALECT_URLS, Direction, StepStatements, collect_all, collect_pass
from dbmigrate.checks.directives import read_directives
from dbmigrate.checks.report import Finding, NotAnalysed, Report
from dbmigrate.checks.rules import RULES, evaluate, outside_transaction_only

__all__ = ["DIALECT_URLS", "RULES", "Finding", "NotAnalysed", "Report", "check", "check_steps"]


def check(
    config: Config,
    script: ScriptDirectory,
    revisions: Sequence[str],
    dialect: str,
    non_transactional: Collection[str] = (),
) -> Report:
    """Check the upgrade and the downgrade of each of ``revisions`` (ids, in the order given) for ``dialect``.

    ``non_transactional`` names revisions that run outside a transaction by configuration (their
    files may also say so with a directive): statements that cannot run in a transaction are
    expected there.

    ``dialect`` is postgresql, mysql (or mariadb) or sqlite. Findings come in revision order, upgrade
    before downgrade, then statement order. File paths are relative to the working directory when
    the config file is inside it (a repository's root, in CI), else to the config file's directory.
    Raises :class:`dbmigrate.errors.ConfigurationError` for an unknown dialect or revision; a step
    that cannot be rendered offline is listed in ``not_analysed``, with the revision's file and line,
    unless the revision's own code is wrong there: that is a DM003 finding (an error) at that line.
    """
    steps = collect_all(config, script, revisions, dialect)
    return _report(config, steps, len(revisions), dialect, non_transactional)


def check_steps(
    config: Config,
    script: ScriptDirectory,
    revisions: Sequence[str],
    direction: Direction,
    dialect: str,
    non_transactional: Collection[str] = (),
) -> Report:
    """One direction of ``revisions`` (ids in upgrade order), collected in one offline pass: for a run's plan."""
    steps = collect_pass(config, script, revisions, direction, dialect)
    return _report(config, steps, len(revisions), dialect, non_transactional)


def _report(
    config: Config, steps: Iterable[StepStatements], count: int, dialect: str, non_transactional: Collection[str]
) -> Report:
    # Relative to where check runs (a repository's root in CI, which code scanning expects),
    # else to the config file's directory.
    config_dir = Path(config.config_file_name or ".").resolve().parent
    root = Path.cwd() if config_dir.is_relative_to(Path.cwd()) else config_dir
    findings: list[Finding] = []
    not_analysed: list[NotAnalysed] = []
    steps_checked = 0
    for step in steps:
        steps_checked += 1
        findings.extend(_findings(step, dialect, root, step.revision in non_transactional))
        if step.error is None:
            continue
        file = _relative(step.path, root)
        if step.error.in_revision:
            # Not a limit of the offline check: the revision is wrong, and says so where it is.
            raises = RULES["DM003"]
            findings.append(
                Finding(
                    step.revision,
                    step.direction,
                    raises.id,
                    raises.category,
                    raises.severity,
                    raises.message.format_map({"direction": step.direction, "error": step.error.reason}),
                    raises.advice,
                    file,
                    step.error.line or 1,
                )
            )
        else:
            not_analysed.append(NotAnalysed(step.revision, step.direction, step.error.reason, file, step.error.line))
    return Report(count, tuple(findings), tuple(not_analysed), steps_checked)


def _findings(step: StepStatements, dialect: str, root: Path, configured_non_transactional: bool) -> list[Finding]:
    file = _relative(step.path, root)
    directives = read_directives(step.path)
    findings: list[Finding] = []
    if step.direction == "upgrade":
        # A directive belongs to the file, not to a direction: report it once.
        invalid = RULES["DM001"]
        for line, written in directives.invalid:
            names = {"directive": written}
            findings.append(
                Finding(
                    step.revision,
                    step.direction,
                    invalid.id,
                    invalid.category,
                    invalid.severity,
                    invalid.message.format_map(names),
                    invalid.advice,
                    file,
                    line,
                )
            )
    transactional = not (configured_non_transactional or directives.non_transactional_reason)
    if transactional:
        findings.extend(_needing_no_transaction(step, dialect, file))
    for match in evaluate(step.statements, dialect, transactional=transactional):
        allowed = directives.allow_data_loss_reason if match.rule.category == "data-loss" else None
        findings.append(
            Finding(
                step.revision,
                step.direction,
                match.rule.id,
                match.rule.category,
                match.rule.severity,
                match.message,
                match.suggestion,
                file,
                match.line,
                allowed,
                table=match.names.get("table"),
                column=match.names.get("column"),
            )
        )
    return findings


def _needing_no_transaction(step: StepStatements, dialect: str, file: str) -> Iterable[Finding]:
    """DM004 for each statement the database refuses in a transaction, run in the revision's transaction."""
    rule = RULES["DM004"]
    for statement in step.statements:
        what = None if statement.autocommit else outside_transaction_only(statement.sql, dialect)
        if what is not None:
            names = {"statement": what, "revision": step.revision}
            yield Finding(
                step.revision,
                step.direction,
                rule.id,
                rule.category,
                rule.severity,
                rule.message.format_map(names),
                rule.advice.format_map(names),
                file,
                statement.line,
            )


def _relative(path: Path, root: Path) -> str:
    resolved = path.resolve()
    return resolved.relative_to(root).as_posix() if resolved.is_relative_to(root) else resolved.as_posix()
