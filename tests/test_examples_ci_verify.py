"""examples/ci: the `dbmigrate verify` jobs (GitHub Actions and GitLab CI) run here as the CI would.

Their shell steps are taken from the parsed files and run with bash in a scratch git repository:
for GitHub, a pull request's merge commit (as in tests/test_examples_ci.py); for GitLab, a merge
request's branch with ``CI_MERGE_REQUEST_DIFF_BASE_SHA`` pointing at its merge base. The service
container's database is a fresh database on this machine's server of the same kind.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import EXAMPLE_REVISIONS, REPO, create_database, drop_database
from tests.test_examples_ci import BASH, DROP_EMAIL_DOMAIN, add_revisions, git, pull_request_checkout

GITHUB = REPO / "examples" / "ci" / "dbmigrate-verify.yml"
GITLAB = REPO / "examples" / "ci" / "gitlab-ci.yml"
VERIFY = 'dbmigrate verify --with-data --range "$LOWER:heads"'
BACKENDS = {"postgresql": "postgresql", "mariadb": "mariadb"}  # job name -> tests.conftest backend


def github_jobs() -> dict[str, dict[str, Any]]:
    jobs: dict[str, dict[str, Any]] = yaml.safe_load(GITHUB.read_text())["jobs"]
    return jobs


def gitlab_jobs() -> dict[str, dict[str, Any]]:
    return {name: job for name, job in yaml.safe_load(GITLAB.read_text()).items() if not name.startswith(".")}


def clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DBMIGRATE_", "DATABASE_URL", "GIT_", "ALEMBIC"))}
    runner = tmp_path / "runner"
    runner.mkdir(exist_ok=True)
    (runner / "output").touch()
    env.update(
        PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
        PYTHONPATH=str(REPO),
        RUNNER_TEMP=str(runner),
        GITHUB_OUTPUT=str(runner / "output"),
        GIT_CONFIG_NOSYSTEM="1",
        GIT_CONFIG_GLOBAL=os.devnull,
        DBMIGRATE_TERMINATION_LOG=os.devnull,
        DBMIGRATE_LOG_FORMAT="text",
    )
    env.update(extra)
    return env


def bash(script: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*BASH, "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False
    )


def run_github_job(job: dict[str, Any], project: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The job's revisions step, then its verify step with the revisions step's output."""
    steps = job["steps"]
    revisions = next(s for s in steps if s.get("id") == "revisions")
    found = bash(revisions["run"], project, env)
    assert found.returncode == 0, found.stdout + found.stderr
    outputs = dict(line.split("=", 1) for line in Path(env["GITHUB_OUTPUT"]).read_text().splitlines())
    verify = next(s for s in steps if "dbmigrate verify" in s.get("run", ""))
    assert verify["env"]["LOWER"] == "${{ steps.revisions.outputs.lower }}"
    return bash(verify["run"], project, {**env, "LOWER": outputs["lower"]})


def test_every_job_verifies_the_same_way_against_its_own_kind_of_database() -> None:
    jobs = github_jobs()
    assert set(jobs) == set(BACKENDS)
    for name, job in jobs.items():
        verify = [s["run"] for s in job["steps"] if "dbmigrate verify" in s.get("run", "")]
        assert verify == [VERIFY], name
        (service,) = job["services"].values()
        scheme = job["env"]["DATABASE_URL"].split(":", 1)[0]
        assert {"postgresql": ("postgres:", "postgresql"), "mariadb": ("mariadb:", "mysql+pymysql")}[name] == (
            service["image"].split(":")[0] + ":",
            scheme,
        )
        assert job["defaults"]["run"]["shell"] == "bash"
    revisions = {name: next(s["run"] for s in job["steps"] if s.get("id") == "revisions") for name, job in jobs.items()}
    assert len(set(revisions.values())) == 1, "both jobs find the pull request's revisions the same way"
    gitlab = yaml.safe_load(GITLAB.read_text())
    assert VERIFY in gitlab[".dbmigrate-verify"]["script"]
    assert set(gitlab_jobs()) == {"dbmigrate-verify-postgresql", "dbmigrate-verify-mariadb"}
    assert gitlab[".dbmigrate-verify"]["rules"] == [{"if": '$CI_PIPELINE_SOURCE == "merge_request_event"'}]


@pytest.mark.slow
def test_github_job_verifies_the_revisions_the_pull_request_adds(tmp_path: Path) -> None:
    """The mariadb job; the postgresql job's steps are the same (checked above) and run in the next test."""
    job_name = "mariadb"
    job = github_jobs()[job_name]
    project = pull_request_checkout(tmp_path, EXAMPLE_REVISIONS[:4], EXAMPLE_REVISIONS[4:])
    url = create_database(BACKENDS[job_name], tmp_path)
    try:
        env = clean_env(tmp_path, **{**{k: str(v) for k, v in job["env"].items()}, "DATABASE_URL": url})
        done = run_github_job(job, project, env)
        assert done.returncode == 0, done.stdout + done.stderr
        assert Path(env["GITHUB_OUTPUT"]).read_text() == "lower=0004_email_domain\n"
        assert "2 revision(s) round-tripped" in done.stdout, done.stdout + done.stderr
    finally:
        drop_database(url)


@pytest.mark.slow
def test_github_job_fails_on_a_downgrade_that_does_not_undo_its_upgrade(tmp_path: Path) -> None:
    job = github_jobs()["postgresql"]
    extra = {"0007_drop_email_domain.py": DROP_EMAIL_DOMAIN}  # its downgrade() is `pass`
    project = pull_request_checkout(tmp_path, EXAMPLE_REVISIONS, [], extra=extra)
    url = create_database("postgresql", tmp_path)
    try:
        env = clean_env(tmp_path, **{**{k: str(v) for k, v in job["env"].items()}, "DATABASE_URL": url})
        done = run_github_job(job, project, env)
        assert done.returncode == 4, done.stdout + done.stderr
        assert re.search(r"0007_drop_email_domain\s+trace-left", done.stdout), done.stdout
    finally:
        drop_database(url)


def merge_request_checkout(tmp_path: Path) -> tuple[Path, str]:
    """A merge request's branch (GitLab checks out its head, not a merge): 0005 and 0006 on top of 0004."""
    project = tmp_path / "checkout"
    (project / "alembic" / "versions").mkdir(parents=True)
    (project / "alembic.ini").write_text((REPO / "alembic.ini").read_text())
    for name in ("env.py", "script.py.mako"):
        (project / "alembic" / name).write_text((REPO / "alembic" / name).read_text())
    add_revisions(project, EXAMPLE_REVISIONS[:4])
    git(project, "init", "-q", "-b", "main")
    git(project, "add", "-A")
    git(project, "commit", "-q", "-m", "base")
    base = subprocess.run(["git", "rev-parse", "HEAD"], cwd=project, capture_output=True, text=True, check=True)
    git(project, "checkout", "-q", "-b", "merge-request")
    add_revisions(project, EXAMPLE_REVISIONS[4:])
    git(project, "add", "-A")
    git(project, "commit", "-q", "-m", "new revisions")
    return project, base.stdout.strip()


@pytest.mark.slow
def test_gitlab_job_verifies_the_revisions_the_merge_request_adds(tmp_path: Path) -> None:
    config = yaml.safe_load(GITLAB.read_text())
    template, job = config[".dbmigrate-verify"], config["dbmigrate-verify-postgresql"]
    assert job["extends"] == ".dbmigrate-verify"
    variables = {**template["variables"], **job["variables"]}
    project, base = merge_request_checkout(tmp_path)
    url = create_database("postgresql", tmp_path)
    try:
        env = clean_env(tmp_path, **{**variables, "DATABASE_URL": url, "CI_MERGE_REQUEST_DIFF_BASE_SHA": base})
        # The script's lines run in one shell, as the runner runs them; pip install is done already.
        script = "\n".join(line for line in template["script"] if not line.startswith("pip install"))
        done = bash(script, project, env)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "Verifying the revisions after 0004_email_domain" in done.stdout
        assert "2 revision(s) round-tripped" in done.stdout, done.stdout + done.stderr
    finally:
        drop_database(url)
