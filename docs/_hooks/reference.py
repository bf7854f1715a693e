"""Reference pages generated at build time from the code itself, so they cannot drift from it.

An MkDocs hook (``hooks:`` in mkdocs.yml): a page that holds a marker line gets it replaced by
Markdown generated from the code:

- ``<!-- generated: cli -->``: every command, its arguments and options, by click introspection of
  ``dbmigrate.cli.main``;
- ``<!-- generated: settings -->``: every field of ``dbmigrate.settings.Settings`` with its flag,
  environment variable, default and the flag's help text;
- ``<!-- generated: exit-codes -->``: ``dbmigrate.errors.EXIT_CODES``, as ``dbmigrate --help`` shows it;
- ``<!-- generated: check-rules -->``: the rules of ``dbmigrate check`` (``dbmigrate.checks.rules.RULES``);
- ``<!-- include: PATH -->``: a Markdown file of the repository (the chart's README), without its title.

``tests/test_docs.py`` imports this module too, to check that nothing is left out.
"""

from __future__ import annotations

import dataclasses
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # document this checkout's dbmigrate, whatever is installed
    sys.path.insert(0, str(ROOT))

MARKER = re.compile(r"^<!-- generated: ([a-z-]+) -->$", re.MULTILINE)

# Settings without a command-line flag: what they are, in the words of the flags' help texts.
UNFLAGGED = {
    "archive_key": (
        "Key that signs archive entries and the archive's manifest (HMAC-SHA256); with it set, `rollback` runs "
        "only entries it signed that the signed manifest lists. Environment only (keep it in a Secret), masked "
        "in every output"
    ),
    "runner": (
        "Who runs: recorded in history and shown to waiting runs [`POD_NAME`, else `HOSTNAME`, else the host name]"
    ),
}


def _main() -> click.Group:
    from dbmigrate.cli import main

    return main


def walk(command: click.Command, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    """Every command under ``command`` (itself included), with its words after ``dbmigrate``."""
    yield path, command
    if isinstance(command, click.Group):
        for name in command.commands:  # in the order the CLI defines them: upgrade first
            yield from walk(command.commands[name], (*path, name))


def shared_option_names() -> set[str]:
    """The options every command takes, which may also come before the command (the group's own)."""
    options = [p for p in _main().params if isinstance(p, click.Option)]
    return {p.name for p in options if p.name and p.name not in ("version", "help")}


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _names(param: click.Parameter) -> str:
    names = [*param.opts, *param.secondary_opts]
    if (isinstance(param, click.Option) and param.is_flag) or isinstance(param.type, click.Choice):
        return ", ".join(f"`{n}`" for n in names)  # a choice's values are in the type column
    metavar = {"float": "SECONDS", "integer": "N"}.get(param.type.name, "TEXT")
    if param.name and param.name.endswith(("_file", "_log", "textfile")):
        metavar = "PATH"
    return ", ".join(f"`{n} {metavar}`" for n in names)


def _unset(value: Any) -> bool:
    """No default: None, or click's own marker for "not given" (click 8.3 and later)."""
    return value is None or value is getattr(click.core, "UNSET", None) or callable(value) or value == ()


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _type(param: click.Parameter) -> str:
    if isinstance(param.type, click.Choice):
        return " \\| ".join(f"`{c}`" for c in param.type.choices)
    if isinstance(param, click.Option) and param.is_flag:
        return "flag"
    if param.name and param.name.endswith(("_file", "_log", "textfile")):
        return "path"
    return {"float": "number", "integer": "integer"}.get(param.type.name, "text")


def _default(param: click.Parameter) -> str:
    if isinstance(param, click.Option) and param.is_flag:
        return ""
    return "" if _unset(param.default) else f"`{_show(param.default)}`"


def _params_table(params: list[click.Parameter]) -> list[str]:
    lines = ["| option | type | default | what |", "|---|---|---|---|"]
    for param in params:
        help_text = getattr(param, "help", None) or ""
        if isinstance(param, click.Option) and param.envvar:
            help_text += f" (environment: `{param.envvar}`)" if param.envvar not in help_text else ""
        lines.append(f"| {_names(param)} | {_type(param)} | {_default(param)} | {_escape(help_text)} |")
    return lines


def _usage(path: tuple[str, ...], command: click.Command) -> str:
    context = click.Context(command, info_name=" ".join(("dbmigrate", *path)))
    return " ".join([context.command_path, *command.collect_usage_pieces(context)])


def cli_markdown() -> str:
    """The command reference: the shared options once, then each command with its own."""
    main = _main()
    shared = shared_option_names()
    out = ["| command | what it does |", "|---|---|"]
    for path, command in walk(main):
        if path and not isinstance(command, click.Group):
            name = " ".join(("dbmigrate", *path))
            out.append(f"| [`{name}`](#{_anchor(path)}) | {_escape(command.get_short_help_str(limit=200))} |")
    out += [
        "",
        "## Shared options",
        "",
        "Every command takes these options, after the command or before it (as Alembic users type "
        "them: `dbmigrate -c app/alembic.ini upgrade`). Given in both places, the one after the command "
        "wins. Each can also be set as an environment variable or in a config file: see "
        "[Settings](settings.md).",
        "",
        *_params_table([p for p in main.params if isinstance(p, click.Option) and p.name in shared]),
        "",
        "`--format sarif` is offered by `check` only. `--version` and `-h`/`--help` come before the command.",
        "",
    ]
    for path, command in walk(main):
        if not path:
            continue
        name = " ".join(("dbmigrate", *path))
        out += [f"## `{name}`", "", f"```text\n{_usage(path, command)}\n```", ""]
        out += [(command.help or "").strip(), ""]
        if isinstance(command, click.Group):
            subs = ", ".join(f"[`{name} {sub}`](#{_anchor((*path, sub))})" for sub in command.commands)
            out += [f"Commands: {subs}.", ""]
            continue
        arguments = [p for p in command.params if isinstance(p, click.Argument)]
        if arguments:
            out.append(
                "Arguments: "
                + ", ".join(
                    f"`{(a.name or '').upper()}`"
                    + (" (required)" if a.required or _unset(a.default) else f" (default `{_show(a.default)}`)")
                    for a in arguments
                )
                + "."
            )
            out.append("")
        own = [
            p
            for p in command.params
            if isinstance(p, click.Option) and p.name not in shared and p.name != "help" and p.name != "output_format"
        ]
        if own:
            out += _params_table(own)
            out.append("")
        formats = getattr(command.callback, "output_formats", ("text", "json"))
        out += [
            f"And the [shared options](#shared-options); `--format` is {' or '.join(f'`{f}`' for f in formats)}.",
            "",
        ]
    return "\n".join(out)


def _anchor(path: tuple[str, ...]) -> str:
    # MkDocs' toc slugifies "`dbmigrate backups list`" to "dbmigrate-backups-list".
    return "-".join(("dbmigrate", *path))


def _flag_of(field: str) -> click.Option | None:
    for _path, command in walk(_main()):
        for param in command.params:
            if isinstance(param, click.Option) and param.name == field:
                return param
    return None


def settings_markdown() -> str:
    """Every field of Settings: flag, environment variable, default, what (from the flag's help)."""
    from dbmigrate.settings import ENV_PREFIX, Settings

    lines = ["| setting | flag | environment | default | what |", "|---|---|---|---|---|"]
    for field in dataclasses.fields(Settings):
        option = _flag_of(field.name)
        flag = ", ".join(f"`{n}`" for n in option.opts) if option else ""
        env = f"`{ENV_PREFIX}{field.name.upper()}`"
        if field.name == "config_file":
            env = f"`{ENV_PREFIX}CONFIG`"
        if field.name == "database_url":
            env += ", `DATABASE_URL`"
        if field.name == "backup":
            env = f"`{ENV_PREFIX}BACKUP=false`"
        default: Any = field.default
        if field.default_factory is not dataclasses.MISSING:  # the runner, found at run time
            default = None
        shown = "" if default is None else f"`{'on' if field.name == 'backup' else _show(default)}`"
        if field.name == "database_url":
            shown = "the ini's `sqlalchemy.url`"
        what = (option.help if option else UNFLAGGED.get(field.name)) or ""
        lines.append(f"| `{field.name}` | {flag} | {env} | {shown} | {_escape(what)} |")
    return "\n".join(lines)


def exit_codes_markdown() -> str:
    from dbmigrate.errors import EXIT_CODES

    lines = ["| code | meaning |", "|---|---|"]
    lines += [f"| {code} | {_escape(meaning)} |" for code, meaning in EXIT_CODES.items()]
    return "\n".join(lines)


def rules_markdown() -> str:
    """Every rule of ``dbmigrate check``: what it finds and what to do instead, as its findings say."""
    from dbmigrate.checks.rules import RULES

    out = []
    for rule in RULES.values():
        out += [
            f"### {rule.id} {rule.name}",
            "",
            f"**{rule.category}**, {rule.severity}. {rule.summary}",
            "",
            f"- *Finding:* {_escape(rule.message)}",
            f"- *Instead:* {_escape(rule.advice)}",
            "",
        ]
    return "\n".join(out)


GENERATORS = {
    "cli": cli_markdown,
    "settings": settings_markdown,
    "exit-codes": exit_codes_markdown,
    "check-rules": rules_markdown,
}


INCLUDE = re.compile(r"^<!-- include: ([\w./-]+) -->$", re.MULTILINE)


def include(path: str) -> str:
    """A Markdown file of the repository, without its title; links out of its folder become paths."""
    text = (ROOT / path).read_text().split("\n", 1)[1]
    return re.sub(r"\[([^]]+)\]\((\.\./[^)#]+)\)", lambda m: f"`{m.group(1)}`", text)


def expand(markdown: str) -> str:
    """Replace every marker line by what its generator makes; an unknown marker is an error."""
    markdown = INCLUDE.sub(lambda match: include(match.group(1)), markdown)

    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in GENERATORS:
            raise ValueError(f"unknown generated section {name!r}; known: {', '.join(GENERATORS)}")
        return GENERATORS[name]()

    return MARKER.sub(replace, markdown)


def on_page_markdown(markdown: str, **_: Any) -> str:
    """MkDocs hook: expand the markers of every page."""
    return expand(markdown)
