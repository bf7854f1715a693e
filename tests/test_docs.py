"""The documentation site: its tutorials run as written, and its reference leaves nothing out.

- The getting-started pages are run: every ``sh`` block, in order, in one bash process per page,
  with every block that has a ``title="path"`` written to that path first (the files a reader
  creates), against SQLite and PostgreSQL. A block preceded by ``<!-- test: skip (reason) -->`` is
  not run; only commands that need a network, a container engine or a cluster may be skipped.
- The command reference is generated from ``dbmigrate.cli.main`` when the site is built; these tests
  check that the generated text names every command and every option, and that the settings
  reference has every field of ``Settings``.
- The site itself is built in strict mode by ``make docs`` (part of ``make test``), which fails on
  a broken link or reference.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass, fields
from pathlib import Path
from types import ModuleType

import click
import pytest
import yaml

from dbmigrate.cli import main
from dbmigrate.errors import EXIT_CODES
from dbmigrate.settings import Settings
from tests.conftest import REPO, create_database, drop_database

DOCS = REPO / "docs"
FENCE = re.compile(
    r"^(?P<skip><!-- test: skip \((?P<reason>[^)]+)\) -->\n)?"
    r"```(?P<lang>[a-z]*)(?P<attrs>[^\n]*)\n(?P<body>.*?)^```$",
    re.MULTILINE | re.DOTALL,
)
TITLE = re.compile(r'title="([^"]+)"')
# What a tutorial may leave to the reader: commands that need a network, a container engine or a cluster.
SKIPPABLE = ("pip ", "make ", "docker ", "kubectl ", "helm ", "--from-literal")


@dataclass
class Block:
    lang: str
    title: str | None
    body: str
    skipped: str | None


def blocks(page: Path) -> list[Block]:
    found = []
    for match in FENCE.finditer(page.read_text()):
        title = TITLE.search(match["attrs"])
        found.append(Block(match["lang"], title.group(1) if title else None, match["body"], match["reason"]))
    return found


def tutorial_script(page: Path) -> str:
    """The page as one bash script: files written where the reader would create them, commands run."""
    lines = []
    for block in blocks(page):
        if block.skipped:
            continue
        if block.title:
            directory = os.path.dirname(block.title)
            if directory:
                lines.append(f"mkdir -p {directory}")
            lines.append(f"cat > {block.title} <<'END_OF_DOCS_FILE'\n{block.body}END_OF_DOCS_FILE")
        elif block.lang == "sh":
            lines.append(block.body)
    return "\n".join(lines)


def run_tutorial(script: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DBMIGRATE_") and k != "DATABASE_URL"}
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        PYTHONPATH=str(REPO),
        DBMIGRATE_TERMINATION_LOG=os.devnull,
    )
    return subprocess.run(
        ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_only_commands_that_need_the_outside_world_are_skipped() -> None:
    for page in (DOCS / "getting-started").glob("*.md"):
        for block in blocks(page):
            if not block.skipped:
                continue
            commands = [line for line in block.body.splitlines() if line.strip() and not line.startswith("#")]
            for command in commands:
                assert command.strip().startswith(SKIPPABLE), f"{page.name}: {command!r} is not run by the tests"


@pytest.mark.slow
def test_the_demo_runs_as_written(project: Path) -> None:
    result = run_tutorial(tutorial_script(DOCS / "getting-started" / "demo.md"), cwd=project)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "6 revision(s) applied, from base to 0006_name_contract" in result.stdout
    assert "restored  0006_name_contract" in result.stdout  # the backup went back on the downgrade
    assert "6 revision(s) round-tripped" in result.stdout
    assert '"at_head": true' in result.stdout


@pytest.mark.slow
def test_the_alembic_habits_run_as_written(project: Path) -> None:
    result = run_tutorial(tutorial_script(DOCS / "getting-started" / "from-alembic.md"), cwd=project)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 revision(s) reverted" in result.stdout and "would run" in result.stdout
    assert result.stdout.rstrip().endswith("0006_name_contract (head)")  # plain alembic current


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_adding_dbmigrate_to_an_app_runs_as_written(backend: str, tmp_path: Path) -> None:
    script = tutorial_script(DOCS / "getting-started" / "existing-app.md")
    assert "alembic init migrations" in script and "dbmigrate verify --with-data" in script
    url = create_database(backend, tmp_path)
    try:
        if backend != "sqlite":
            script, replaced = re.subn(r"^export DATABASE_URL=.*$", f"export DATABASE_URL='{url}'", script, flags=re.M)
            assert replaced == 1
        result = run_tutorial(script, cwd=tmp_path)
        output = result.stdout + result.stderr
        assert result.returncode == 0, output
        assert "refused: exit 4" in output  # the gate refused the undeclared drop
        assert "1 revision(s) applied, from 0001_items to 0002_drop_legacy_code" in result.stdout
        assert "items(legacy_code)" in result.stdout  # backups list: the column's values were copied aside
        assert "2 revision(s) round-tripped" in result.stdout
        shop = tmp_path / "shop"
        for path in ("chart/Chart.yaml", "chart/values.yaml"):
            yaml.safe_load((shop / path).read_text())  # the chart's files are at least valid YAML
        # The readiness endpoint answers 200 on the migrated database.
        probe = textwrap.dedent(
            """
            from fastapi.testclient import TestClient
            import shop_app
            response = TestClient(shop_app.app).get("/readyz")
            print(response.status_code, response.json())
            """
        )
        database = url if backend != "sqlite" else f"sqlite:///{shop / 'shop.db'}"
        env = {**os.environ, "DATABASE_URL": database, "PYTHONPATH": f"{shop}{os.pathsep}{REPO}"}
        answer = subprocess.run(
            [sys.executable, "-c", probe], cwd=shop, env=env, capture_output=True, text=True, check=False
        )
        assert answer.stdout.strip() == "200 {'ready': True}", answer.stdout + answer.stderr
    finally:
        drop_database(url)


def test_the_tutorials_helm_chart_renders_and_validates(tmp_path: Path) -> None:
    """The chart files the tutorial has the reader write, beside a copy of charts/dbmigrate, rendered by Helm."""
    import helm_python as helm

    from tests.chart.local_cluster import CHART, containers, pod_spec, render, validate

    shop = tmp_path / "shop"
    written = [b for b in blocks(DOCS / "getting-started" / "existing-app.md") if (b.title or "").startswith("chart/")]
    assert {b.title for b in written} == {"chart/Chart.yaml", "chart/values.yaml", "chart/templates/deployment.yaml"}
    for block in written:
        assert block.title
        (shop / block.title).parent.mkdir(parents=True, exist_ok=True)
        (shop / block.title).write_text(block.body)
    shutil.copytree(CHART, shop / "charts" / "dbmigrate")  # where the tutorial's Chart.yaml expects it
    helm.dependency_update(shop / "chart", skip_refresh=True)
    rendered = render(shop / "chart")
    by_kind = {m.kind: m for m in rendered.manifests if m.kind in ("Deployment", "Job")}
    for manifest in rendered.manifests:
        validate(manifest)
    job = pod_spec(by_kind["Job"])
    assert containers(job)[0]["image"] == "registry.example.com/shop:1.4.2"
    assert containers(job)[0]["args"] == ["upgrade"]
    deployment = pod_spec(by_kind["Deployment"])
    (wait,) = deployment["initContainers"]
    assert wait["image"] == "registry.example.com/shop:1.4.2" and "wait" in wait["args"]


def _reference() -> ModuleType:
    spec = importlib.util.spec_from_file_location("docs_reference", DOCS / "_hooks" / "reference.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _sections(markdown: str) -> dict[str, str]:
    parts = re.split(r"^## ", markdown, flags=re.M)
    return {part.splitlines()[0].strip("`"): part for part in parts[1:]}


def test_the_command_reference_names_every_command_and_option() -> None:
    reference = _reference()
    sections = _sections(reference.cli_markdown())
    shared = reference.shared_option_names()
    missing = []
    for path, command in reference.walk(main):
        name = " ".join(("dbmigrate", *path))
        section = sections["Shared options"] if not path else sections.get(name)
        if section is None:
            missing.append(name)
            continue
        for param in command.params:
            if param.name in ("help", "version"):
                continue
            where = sections["Shared options"] if param.name in shared else section
            for opt in param.opts if isinstance(param, click.Option) else [(param.name or "").upper()]:
                if f"`{opt}" not in where:
                    missing.append(f"{name} {opt}")
        if path and not isinstance(command, click.Group) and (command.help or "").strip() not in section:
            missing.append(f"{name}: its help text")
    assert not missing, f"not in the generated command reference: {missing}"


def test_the_settings_reference_has_every_setting() -> None:
    table = _reference().settings_markdown()
    assert [f"`{f.name}`" for f in fields(Settings) if f"| `{f.name}` |" not in table] == []
    assert "`DBMIGRATE_CONFIG`" in table and "`DATABASE_URL`" in table


def test_the_python_api_reference_has_every_exported_name() -> None:
    import dbmigrate

    page = (DOCS / "reference" / "python-api.md").read_text()
    documented = set(re.findall(r"^::: (\S+)$", page, flags=re.M))
    # Each by the module that defines it: `::: dbmigrate.history` would document the module
    # dbmigrate.history, not the function dbmigrate exports under that name.
    wanted = {
        name: f"{getattr(dbmigrate, name).__module__}.{getattr(dbmigrate, name).__qualname__}"
        for name in dbmigrate.__all__
        if name != "__version__"
    }
    assert {name: where for name, where in wanted.items() if where not in documented} == {}


def test_the_check_rules_reference_has_every_rule() -> None:
    from dbmigrate.checks.rules import RULES

    page = _reference().expand((DOCS / "reference" / "check-rules.md").read_text())
    assert [rule for rule in RULES if f"### {rule} " not in page] == []


def test_every_marker_on_every_page_expands_and_the_exit_codes_page_has_every_code() -> None:
    reference = _reference()
    for page in DOCS.rglob("*.md"):
        reference.expand(page.read_text())  # an unknown marker raises
    exit_codes = (DOCS / "concepts" / "exit-codes.md").read_text()
    for code in EXIT_CODES:
        assert re.search(rf"^\| {code} \|", exit_codes, flags=re.M), f"exit code {code} is not in the table"


def test_every_page_is_in_the_navigation() -> None:
    config = yaml.load((REPO / "mkdocs.yml").read_text(), Loader=yaml.BaseLoader)
    listed: set[str] = set()

    def collect(node: object) -> None:
        if isinstance(node, str):
            listed.add(node)
        elif isinstance(node, list):
            for item in node:
                collect(item)
        elif isinstance(node, dict):
            for value in node.values():
                collect(value)

    collect(config["nav"])
    pages = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md")}
    assert pages == listed
