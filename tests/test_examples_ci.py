"""examples/ci/dbmigrate-check.yml: the workflow's own shell steps, run as GitHub would run them.

The steps that find the revisions a pull request adds and check them are taken from the parsed
workflow and run with bash (the job's default shell) in a scratch git repository built like
GitHub's pull request checkout: a merge commit whose first parent is the base branch. The example
app's revisions (alembic.ini and alembic/ of this repository) are split between the base branch and
the pull request. No database is involved.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import EXAMPLE_HEAD, EXAMPLE_REVISIONS, REPO

WORKFLOW = REPO / "examples" / "ci" / "dbmigrate-check.yml"
BASH = ["bash", "--noprofile", "--norc", "-eo", "pipefail"]  # GitHub's `shell: bash`
GIT = ["git", "-c", "user.name=ci", "-c", "user.email=ci@example.invalid", "-c", "commit.gpgsign=false"]

DROP_EMAIL_DOMAIN = '''\
"""drop customers.email_domain, without declaring the loss"""

from alembic import op

revision = "0007_drop_email_domain"
down_revision = "0006_name_contract"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_column("customers", "email_domain")


def downgrade() -> None:
    pass
'''


def load_workflow() -> dict[Any, Any]:
    workflow = yaml.safe_load(WORKFLOW.read_text())
    assert isinstance(workflow, dict)
    return workflow


def job() -> dict[str, Any]:
    jobs = load_workflow()["jobs"]
    assert len(jobs) == 1, "one job: find the revisions, check them, upload"
    return next(iter(jobs.values()))


def step(predicate: Any) -> tuple[int, dict[str, Any]]:
    found = [(i, s) for i, s in enumerate(job()["steps"]) if predicate(s)]
    assert len(found) == 1, found
    return found[0]


def check_step() -> tuple[int, dict[str, Any]]:
    return step(lambda s: "dbmigrate check" in s.get("run", "") and "--format sarif" in s["run"])


def upload_step() -> tuple[int, dict[str, Any]]:
    return step(lambda s: s.get("uses", "").startswith("github/codeql-action/upload-sarif@"))


def sarif_written_by(run: str) -> str:
    """The file the check command's stdout (the SARIF log) is redirected to."""
    found = re.search(r"--format sarif\s*>\s*(\S+)", run)
    assert found, run
    return found.group(1).strip("\"'")


def unexpression(condition: str) -> str:
    condition = condition.strip()
    if condition.startswith("${{") and condition.endswith("}}"):
        condition = condition[3:-2].strip()
    return condition


def test_runs_on_every_pull_request_with_the_permission_to_upload() -> None:
    workflow = load_workflow()
    triggers = workflow.get("on", workflow.get(True))  # YAML 1.1 reads a bare `on` as True
    assert "pull_request" in triggers
    pull_request = (triggers["pull_request"] if isinstance(triggers, dict) else None) or {}
    assert not {"paths", "branches", "types"} & set(pull_request), "every pull request, every update"
    permissions = {**workflow.get("permissions", {}), **job().get("permissions", {})}
    assert permissions["security-events"] == "write"
    assert permissions["contents"] == "read"
    assert job()["defaults"]["run"]["shell"] == "bash"


def test_upload_step_uploads_the_file_the_check_step_writes_even_when_the_check_fails() -> None:
    check_index, check = check_step()
    upload_index, upload = upload_step()
    assert upload_index > check_index
    assert upload["with"]["sarif_file"] == sarif_written_by(check["run"])
    assert unexpression(upload["if"]) == "always()"
    assert "continue-on-error" not in check, "exit 4 must fail the job"
    checkout = next(s for s in job()["steps"] if s.get("uses", "").startswith("actions/checkout@"))
    assert checkout["with"]["fetch-depth"] >= 2, "the revisions step reads the merge commit's first parent"


def run_step(found: dict[str, Any], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run a step's `run` script like the runner does: the job's env, then the step's, then bash."""
    step_env = {**env, **{k: str(v) for k, v in found.get("env", {}).items()}}
    for name, value in step_env.items():
        step_env[name] = re.sub(
            r"\$\{\{\s*steps\.revisions\.outputs\.(\w+)\s*\}\}", lambda m: env.get(f"OUTPUT_{m.group(1)}", ""), value
        )
    assert "${{" not in "".join(step_env.values()), step_env
    return subprocess.run(
        [*BASH, "-c", found["run"]], cwd=cwd, env=step_env, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.fixture
def runner_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a runner: this virtualenv's dbmigrate and alembic first on PATH, no database URL."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DBMIGRATE_", "DATABASE_URL", "GIT_", "ALEMBIC"))}
    (tmp_path / "runner").mkdir()
    output = tmp_path / "runner" / "output"
    output.touch()
    env.update(
        PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
        RUNNER_TEMP=str(tmp_path / "runner"),
        GITHUB_OUTPUT=str(output),
        GITHUB_STEP_SUMMARY=str(tmp_path / "runner" / "summary"),
        GIT_CONFIG_NOSYSTEM="1",
        GIT_CONFIG_GLOBAL=os.devnull,
        **{k: str(v) for k, v in job().get("env", {}).items()},
    )
    return env


def git(cwd: Path, *args: str) -> None:
    subprocess.run([*GIT, *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def add_revisions(project: Path, names: list[str]) -> None:
    for name in names:
        shutil.copy(REPO / "alembic" / "versions" / f"{name}.py", project / "alembic" / "versions")


def pull_request_checkout(
    tmp_path: Path, base: list[str], added: list[str], extra: dict[str, str] | None = None, base_later: bool = False
) -> Path:
    """A git repository checked out at a merge commit: the base branch with ``base`` revisions, merged
    with a pull request branch that adds ``added`` (and ``extra`` files); ``base_later``: the base
    branch also got revision 0005 after the pull request branched off."""
    project = tmp_path / "checkout"
    (project / "alembic" / "versions").mkdir(parents=True)
    shutil.copy(REPO / "alembic.ini", project)
    for name in ("env.py", "script.py.mako"):
        shutil.copy(REPO / "alembic" / name, project / "alembic")
    add_revisions(project, base)
    (project / "README").write_text("the application\n")
    git(project, "init", "-q", "-b", "main")
    git(project, "add", "-A")
    git(project, "commit", "-q", "-m", "base")
    git(project, "checkout", "-q", "-b", "pull-request")
    add_revisions(project, added)
    for name, source in (extra or {}).items():
        (project / "alembic" / "versions" / name).write_text(source)
    git(project, "add", "-A")
    git(project, "commit", "-q", "-m", "new revisions")
    git(project, "checkout", "-q", "main")
    if base_later:
        add_revisions(project, ["0005_full_name_expand"])
        git(project, "add", "-A")
        git(project, "commit", "-q", "-m", "merged meanwhile")
    git(project, "merge", "-q", "--no-ff", "-m", "Merge pull-request into main", "pull-request")
    return project


def find_and_check(project: Path, env: dict[str, str]) -> tuple[subprocess.CompletedProcess[str], Path]:
    """Run the workflow's revisions step, then its check step with the revisions step's output."""
    _, revisions = step(lambda s: s.get("id") == "revisions")
    found = run_step(revisions, project, env)
    assert found.returncode == 0, found.stdout + found.stderr
    outputs = dict(line.split("=", 1) for line in Path(env["GITHUB_OUTPUT"]).read_text().splitlines())
    _, check = check_step()
    checked = run_step(check, project, {**env, **{f"OUTPUT_{k}": v for k, v in outputs.items()}})
    return checked, project / sarif_written_by(check["run"])


def sarif_results(path: Path) -> list[dict[str, Any]]:
    log = json.loads(path.read_text())
    assert log["version"] == "2.1.0"
    assert log["runs"][0]["tool"]["driver"]["name"] == "dbmigrate"
    results: list[dict[str, Any]] = log["runs"][0]["results"]
    return results


def test_check_command_succeeds_on_the_example_app(runner_env: dict[str, str], tmp_path: Path) -> None:
    """The check step, verbatim, on this repository's alembic.ini, as if every revision were new."""
    _, check = check_step()
    env = {**runner_env, "DBMIGRATE_CONFIG": str(REPO / "alembic.ini"), "OUTPUT_lower": "base"}
    done = run_step(check, tmp_path, env)
    assert done.returncode == 0, done.stderr
    results = sarif_results(tmp_path / sarif_written_by(check["run"]))
    assert {r["properties"]["revision"] for r in results} >= {"0001_customers", EXAMPLE_HEAD}
    assert all(r.get("suppressions") for r in results if r["level"] == "error"), "declared data loss only"
    for result in results:
        uri = result["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]
        assert (REPO / uri).is_file(), f"{uri} is not a path from the repository root"


def test_checks_only_the_revisions_the_pull_request_adds(runner_env: dict[str, str], tmp_path: Path) -> None:
    project = pull_request_checkout(tmp_path, EXAMPLE_REVISIONS[:4], EXAMPLE_REVISIONS[4:])
    done, sarif = find_and_check(project, runner_env)
    assert done.returncode == 0, done.stderr
    assert Path(runner_env["GITHUB_OUTPUT"]).read_text() == "lower=0004_email_domain\n"
    checked = {r["properties"]["revision"] for r in sarif_results(sarif)}
    assert checked == {"0005_full_name_expand", EXAMPLE_HEAD}


def test_first_revisions_are_checked_from_base(runner_env: dict[str, str], tmp_path: Path) -> None:
    project = pull_request_checkout(tmp_path, [], EXAMPLE_REVISIONS)
    done, sarif = find_and_check(project, runner_env)
    assert done.returncode == 0, done.stderr
    assert Path(runner_env["GITHUB_OUTPUT"]).read_text() == "lower=base\n"
    assert {r["properties"]["revision"] for r in sarif_results(sarif)} >= {"0001_customers", EXAMPLE_HEAD}


def test_undeclared_data_loss_fails_with_exit_4_and_still_writes_the_sarif(
    runner_env: dict[str, str], tmp_path: Path
) -> None:
    extra = {"0007_drop_email_domain.py": DROP_EMAIL_DOMAIN}
    project = pull_request_checkout(tmp_path, EXAMPLE_REVISIONS, [], extra=extra)
    done, sarif = find_and_check(project, runner_env)
    assert done.returncode == 4, done.stderr
    results = sarif_results(sarif)
    assert {r["properties"]["revision"] for r in results} == {"0007_drop_email_domain"}
    refused = [r for r in results if r["level"] == "error" and not r.get("suppressions")]
    assert [r["ruleId"] for r in refused] == ["DL002"]
    assert refused[0]["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == (
        "alembic/versions/0007_drop_email_domain.py"
    )


def test_two_heads_after_the_merge_fail_before_checking(runner_env: dict[str, str], tmp_path: Path) -> None:
    """The base branch got 0005 meanwhile and the pull request adds 0006 on 0004 too: two heads.

    A range from the base head would not see 0006 at all, so the revisions step must stop.
    """
    renamed = (REPO / "alembic" / "versions" / f"{EXAMPLE_HEAD}.py").read_text()
    on_0004 = renamed.replace('down_revision = "0005_full_name_expand"', 'down_revision = "0004_email_domain"')
    assert on_0004 != renamed
    project = pull_request_checkout(
        tmp_path, EXAMPLE_REVISIONS[:4], [], extra={f"{EXAMPLE_HEAD}.py": on_0004}, base_later=True
    )
    _, revisions = step(lambda s: s.get("id") == "revisions")
    done = run_step(revisions, project, runner_env)
    assert done.returncode == 2
    assert "::error::" in done.stdout and "several heads" in done.stdout
    assert "0005_full_name_expand" in done.stdout and EXAMPLE_HEAD in done.stdout
