"""The container images, as far as a machine without a container engine can check them.

The Dockerfiles are parsed and held to what the chart assumes of the images: a base image pinned by
digest, two stages, a build stage that installs wheels into a virtualenv without pip, a final stage
that copies that virtualenv alone (no compiler, no pip, setuptools or wheel, not even the base
image's), the OCI labels, the numeric user 10001, ``WORKDIR /app``, ``ENTRYPOINT ["dbmigrate"]``, and
the postgres and mysql drivers.

Then the runtime image's own build steps run here: its build stage's ``COPY`` lines fill a build
directory, its ``pip wheel`` command builds the wheelhouse, its ``python -m venv`` makes the
virtualenv and its ``pip --python ... install`` installs from that wheelhouse alone into it (one per
session). That virtualenv, what the final stage copies, holds dbmigrate and its drivers and nothing
that installs packages; its ``dbmigrate`` then migrates a copy of the example project on SQLite,
PostgreSQL and MariaDB the way a pod runs it: as uid/gid 10001 with no supplementary groups, with
the image's ``ENV`` (HOME and TMPDIR in a scratch directory, no bytecode written), from a project
directory it cannot write to.

Running as uid 10001 needs root (the test switches users through ``subprocess``'s ``user=``/
``group=``); a test session that is not root already runs as a non-root user, and runs as itself.
The virtualenv's interpreter must be one uid 10001 can execute: the session's own, else the
system's ``python3``. Only when no such interpreter exists are these tests skipped, saying so.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import (
    BACKENDS,
    EXAMPLE_HEAD,
    EXAMPLE_REVISIONS,
    REPO,
    create_database,
    current_revisions,
    drop_database,
    history_rows,
)

DOCKERFILE = REPO / "docker" / "Dockerfile"
EXAMPLE_APP_DOCKERFILE = REPO / "docker" / "example-app" / "Dockerfile"
DOCKERFILES = [DOCKERFILE, EXAMPLE_APP_DOCKERFILE]
IMAGE_UID = IMAGE_GID = 10001
BUILD_TOOLS = {"gcc", "g++", "cc", "clang", "make", "build-essential"}  # and any *-dev headers package
INSTALLERS = {"pip", "setuptools", "wheel"}
PINNED_PYTHON = re.compile(r"python:3\.\d+\.\d+-slim-bookworm@sha256:[0-9a-f]{64}")
OCI_LABELS = ("source", "title", "description", "licenses", "version")


# --- a small Dockerfile reader ---------------------------------------------------------------------


@dataclasses.dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = dataclasses.field(default_factory=list)

    def args(self, keyword: str) -> list[str]:
        """The arguments of every ``keyword`` instruction of this stage, in order."""
        return [args for key, args in self.instructions if key == keyword]

    def env(self) -> dict[str, str]:
        """The stage's ``ENV`` settings (``KEY=value`` form)."""
        values: dict[str, str] = {}
        for args in self.args("ENV"):
            for item in shlex.split(args):
                key, _, value = item.partition("=")
                values[key] = value
        return values

    def runs(self) -> list[list[str]]:
        """Every shell command of every ``RUN`` (split at ``&&``), as argument lists, mount flags removed."""
        commands: list[list[str]] = []
        for args in self.args("RUN"):
            words = [word for word in shlex.split(args) if not word.startswith("--mount=")]
            command: list[str] = []
            for word in [*words, "&&"]:
                if word == "&&":
                    if command:
                        commands.append(command)
                    command = []
                else:
                    command.append(word)
        return commands

    def pip(self, verb: str) -> list[list[str]]:
        """The ``pip [--python PATH] <verb> ...`` commands of this stage."""
        found = []
        for command in self.runs():
            words = command[2:] if command[:2] == ["python", "-m"] else command
            if words[:1] == ["pip"]:
                words = words[3:] if words[1:2] == ["--python"] else words[1:]
                if words[:1] == [verb]:
                    found.append(command)
        return found

    def labels(self) -> dict[str, str]:
        """The stage's ``LABEL`` settings, as written (``${ARG}`` not expanded)."""
        return dict(item.partition("=")[::2] for args in self.args("LABEL") for item in shlex.split(args))

    def declared_args(self) -> set[str]:
        """The names of the stage's ``ARG`` instructions."""
        return {args.partition("=")[0] for args in self.args("ARG")}


def parse_dockerfile(path: Path) -> list[Stage]:
    """The stages of a Dockerfile: continuation lines joined, comments dropped, the global ARGs' defaults
    put into the ``FROM`` lines that use them."""
    logical: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line.startswith("#") or not line:
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    assert not pending, f"{path}: a continuation line runs off the end of the file"
    stages: list[Stage] = []
    global_args: dict[str, str] = {}
    for line in logical:
        keyword, _, args = line.partition(" ")
        keyword, args = keyword.upper(), args.strip()
        if keyword == "ARG" and not stages:
            name, _, default = args.partition("=")
            global_args[name] = default
        elif keyword == "FROM":
            for name, default in global_args.items():
                args = args.replace("${" + name + "}", default)
            words = args.split()
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=words[0], name=name))
        elif stages:
            stages[-1].instructions.append((keyword, args))
    return stages


def extras(command: list[str], project: str) -> set[str]:
    """The extras ``command`` installs for ``project`` (``'.[postgres,mysql]'`` -> {postgres, mysql})."""
    for word in command:
        match = re.fullmatch(re.escape(project) + r"\[([^\]]*)\]", word)
        if match:
            return {extra.strip() for extra in match.group(1).split(",")}
    return set()


# --- the Dockerfiles, read -------------------------------------------------------------------------


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_the_images_are_multi_stage_and_run_as_10001_in_app(dockerfile: Path) -> None:
    stages = parse_dockerfile(dockerfile)
    build, final = stages[0], stages[-1]

    assert len(stages) >= 2, "a build stage and a runtime stage"
    assert build.name, "the build stage is named, so the runtime stage can take its virtualenv"
    assert final.base != build.name and "slim" in final.base, "the runtime stage starts from a slim Python"
    assert final.args("USER")[-1] == str(IMAGE_UID), "numeric, so runAsNonRoot can be verified by the kubelet"
    assert final.args("WORKDIR")[-1] == "/app"
    env = final.env()
    assert env["PYTHONDONTWRITEBYTECODE"] == "1" and env["PYTHONUNBUFFERED"] == "1"
    assert env["HOME"] == "/tmp" and env["TMPDIR"] == "/tmp", "writes go to /tmp on a read-only root filesystem"
    users = " ".join(" ".join(c) for c in final.runs() if c[0] in ("useradd", "groupadd"))
    assert f"--uid {IMAGE_UID}" in users and f"--gid {IMAGE_GID}" in users


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_the_base_image_is_pinned_by_digest_and_the_same_in_both_stages(dockerfile: Path) -> None:
    bases = {stage.base for stage in parse_dockerfile(dockerfile)}

    (base,) = bases
    assert PINNED_PYTHON.fullmatch(base), f"{base}: a readable tag and the digest that is pulled"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_the_final_stage_copies_only_the_build_stages_virtualenv(dockerfile: Path) -> None:
    stages = parse_dockerfile(dockerfile)
    build, final = stages[0], stages[-1]
    final_words = {word for command in final.runs() for word in command}

    # The build stage: wheels, a virtualenv without pip, the wheels installed into it from the wheelhouse alone.
    (wheel,) = build.pip("wheel")
    assert wheel[wheel.index("--wheel-dir") + 1] == "/wheels"
    assert {"postgres", "mysql"} <= extras(wheel, "."), wheel
    (venv,) = [c for c in build.runs() if c[:3] == ["python", "-m", "venv"]]
    assert "--without-pip" in venv, "nothing that installs packages goes into the virtualenv"
    prefix = venv[-1]
    (install,) = build.pip("install")
    assert install[install.index("--python") + 1] == f"{prefix}/bin/python"
    assert {"--no-cache-dir", "--no-index"} <= set(install), install
    assert install[install.index("--find-links") + 1] == "/wheels"
    assert {"postgres", "mysql"} <= extras(install, "dbmigrate"), install

    # The final stage: that virtualenv, on PATH, and the base image's own installers removed.
    assert f"--from={build.name} {prefix} {prefix}" in final.args("COPY")
    assert final.env()["PATH"].startswith(f"{prefix}/bin:")
    assert not final.pip("install") and not final.pip("wheel"), "nothing is installed in the final stage"
    (uninstall,) = final.pip("uninstall")
    assert "--yes" in uninstall and set(uninstall) >= INSTALLERS, uninstall
    assert not final_words & BUILD_TOOLS, "compilers and build tools stay in the build stage"
    assert not [word for word in final_words if word.endswith("-dev")], "no headers in the final stage"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_the_images_carry_the_oci_labels_with_the_version_from_a_build_argument(dockerfile: Path) -> None:
    final = parse_dockerfile(dockerfile)[-1]
    labels = final.labels()

    for name in OCI_LABELS:
        assert f"org.opencontainers.image.{name}" in labels, name
    assert labels["org.opencontainers.image.version"] == "${VERSION}" and "VERSION" in final.declared_args()
    assert labels["org.opencontainers.image.source"] == "${SOURCE}" and "SOURCE" in final.declared_args()
    assert labels["org.opencontainers.image.licenses"] == "MIT"
    assert labels["org.opencontainers.image.base.name"] == "${PYTHON_IMAGE}"


def test_the_runtime_image_runs_dbmigrate_and_shows_its_help_by_default() -> None:
    final = parse_dockerfile(DOCKERFILE)[-1]

    assert json.loads(final.args("ENTRYPOINT")[-1]) == ["dbmigrate"]
    assert json.loads(final.args("CMD")[-1]) == ["--help"]
    users = " ".join(" ".join(c) for c in final.runs() if c[0] == "useradd")
    assert users.split()[-1] == "dbmigrate", "the user 10001 is named dbmigrate"


def test_the_example_app_image_carries_its_alembic_project_in_app() -> None:
    final = parse_dockerfile(EXAMPLE_APP_DOCKERFILE)[-1]
    copies = {tuple(args.split()) for args in final.args("COPY")}

    assert ("alembic.ini", "./") in copies and ("alembic", "./alembic") in copies
    assert ("examples/readiness/flask_app.py", "./app.py") in copies
    assert "app:app" in json.loads(final.args("CMD")[-1]), "the app it serves is the module it copies"
    assert not final.args("ENTRYPOINT"), "`docker run IMAGE dbmigrate upgrade` runs as the chart's Job does"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_everything_the_images_copy_exists_and_is_let_into_the_build_context(dockerfile: Path) -> None:
    rules = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()]
    allowed = {rule[1:] for rule in rules if rule.startswith("!")}

    assert "*" in rules, ".dockerignore is an allow-list: nothing else (.git, .venv, databases) is sent"
    for stage in parse_dockerfile(dockerfile):
        for args in stage.args("COPY"):
            if args.startswith("--from"):
                continue
            *sources, _ = args.split()
            for source in sources:
                assert (REPO / source).exists(), f"COPY {source}: not in the repository"
                assert source in allowed, f"COPY {source}: .dockerignore keeps it out of the build context"


# --- the runtime image's build steps, run here -----------------------------------------------------


def _runs_as(user: int | None, python: str) -> bool:
    """Whether ``user`` (None: this process's user) can run ``python`` (3.10 or newer) with its stdlib."""
    ids = {} if user is None else {"user": user, "group": user, "extra_groups": []}
    probe = "import sys, json, sqlite3, venv; sys.exit(sys.version_info < (3, 10))"
    try:
        done = subprocess.run([python, "-c", probe], capture_output=True, timeout=60, check=False, cwd="/", **ids)
    except OSError:
        return False
    return done.returncode == 0


def _interpreter(user: int | None) -> str | None:
    """An interpreter with venv and ensurepip that ``user`` can also run: this session's, else the system's."""
    candidates = [getattr(sys, "_base_executable", sys.executable), sys.executable, "/usr/local/bin/python3"]
    candidates += [shutil.which("python3") or "", "/usr/bin/python3"]
    for candidate in dict.fromkeys(c for c in candidates if c and os.path.exists(c)):
        ensurepip = subprocess.run([candidate, "-c", "import ensurepip"], capture_output=True, check=False)
        if ensurepip.returncode == 0 and _runs_as(user, candidate):
            return candidate
    return None


def _copy_readable(source: Path, target: Path) -> None:
    """Copy a file or a tree (no bytecode), readable by anyone, writable by its owner only."""
    if source.is_dir():
        shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, target)
    for path in [target, *target.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)


@dataclasses.dataclass
class Image:
    """The runtime image's filesystem, as far as dbmigrate sees it: a virtualenv built the image's way."""

    root: Path
    venv: Path
    wheels: Path
    user: int | None
    stage: Stage

    def builder_python(self) -> Path:
        """The interpreter of the build stage's pip (the base image's), to inspect the virtualenv from outside."""
        return self.root / "builder" / "bin" / "python"

    def environment(self, scratch: Path, **extra: str) -> dict[str, str]:
        """The image's ENV, with HOME and TMPDIR in ``scratch``; nothing inherited from this process."""
        env = dict(self.stage.env())
        env.update({k: str(scratch) for k, v in env.items() if v == "/tmp"})
        env["PATH"] = f"{self.venv / 'bin'}:/usr/local/bin:/usr/bin:/bin"
        env["LANG"] = "C.UTF-8"
        env.update(extra)
        return env

    def run(self, args: list[str], *, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        """``args`` as the container's process: the image's user, the given directory and environment."""
        ids = {} if self.user is None else {"user": self.user, "group": self.user, "extra_groups": []}
        return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=180, check=False, **ids)

    def command(self, *args: str) -> list[str]:
        """ENTRYPOINT plus ``args`` (without args: plus CMD), resolved on the image's PATH."""
        entrypoint = json.loads(self.stage.args("ENTRYPOINT")[-1])
        rest = list(args) if args else json.loads(self.stage.args("CMD")[-1])
        executable = self.venv / "bin" / entrypoint[0]
        return [str(executable), *entrypoint[1:], *rest]


@dataclasses.dataclass
class BuildStage:
    """The build stage's commands replayed here: its paths mapped to local ones, ``pip`` run by a builder
    virtualenv's pip (the base image's), ``python`` by the interpreter the image's virtualenv is made with."""

    python: str
    builder: Path
    paths: dict[str, Path]

    def local(self, word: str) -> str:
        for path, here in self.paths.items():
            if word == path or word.startswith(path + "/"):
                return str(here) + word[len(path) :]
        return word

    def command(self, words: list[str]) -> list[str]:
        if words[0] == "pip":
            return [str(self.builder / "bin" / "python"), "-m", "pip", *map(self.local, words[1:])]
        if words[0] == "python":
            return [self.python, *map(self.local, words[1:])]
        return list(map(self.local, words))


@pytest.fixture(scope="session")
def image() -> Iterator[Image]:
    """The runtime image's build steps, replayed from docker/Dockerfile into a fresh virtualenv."""
    user = IMAGE_UID if os.geteuid() == 0 else None
    python = _interpreter(user)
    if python is None:
        pytest.skip(f"no Python interpreter with venv that uid {user or os.geteuid()} can run")
    stages = parse_dockerfile(DOCKERFILE)
    build, final = stages[0], stages[-1]
    root = Path(tempfile.mkdtemp(prefix="dbmigrate-image-"))
    try:
        root.chmod(0o755)
        venv, wheels, src, builder = root / "venv", root / "wheels", root / "src", root / "builder"
        subprocess.run([python, "-m", "venv", str(builder)], check=True, capture_output=True)
        workdir = build.args("WORKDIR")[-1]
        for args in build.args("COPY"):
            *sources, destination = args.split()
            for source in sources:
                target = src / Path(workdir, destination).relative_to(workdir)
                _copy_readable(REPO / source, target / source if destination.endswith("/") else target)
        (made,) = [c for c in build.runs() if c[:3] == ["python", "-m", "venv"]]
        replay = BuildStage(python, builder, {"/wheels": wheels, made[-1]: venv})
        # The wheels may come from an index; what follows takes the wheelhouse alone, without this
        # machine's pip configuration (it may add indexes or wheel directories).
        only_wheels = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
        only_wheels["PIP_CONFIG_FILE"] = os.devnull
        for words in build.runs():
            env = None if build.pip("wheel") == [words] else only_wheels
            done = subprocess.run(replay.command(words), cwd=src, env=env, capture_output=True, text=True, check=False)
            assert done.returncode == 0, f"{shlex.join(words)}: {done.stdout}{done.stderr}"
        yield Image(root=root, venv=venv, wheels=wheels, user=user, stage=final)
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def pod(image: Image) -> Iterator[tuple[Path, Path]]:
    """(app, scratch): the example project in a directory the image's user cannot write to, and a
    scratch directory the user owns (the pod's emptyDir at /tmp, and where SQLite files go)."""
    base = Path(tempfile.mkdtemp(dir=image.root))
    try:
        base.chmod(0o755)
        app, scratch = base / "app", base / "scratch"
        _copy_readable(REPO / "alembic.ini", app / "alembic.ini")
        _copy_readable(REPO / "alembic", app / "alembic")
        app.chmod(0o755)
        scratch.mkdir(mode=0o700)
        if image.user is not None:
            os.chown(scratch, image.user, image.user)
        yield app, scratch
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _snapshot(directory: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(directory)): (p.stat().st_size, p.stat().st_mtime_ns) for p in directory.rglob("*")}


def _distributions(image: Image) -> set[str]:
    """The distributions installed in the image's virtualenv, as its own interpreter finds them."""
    listing = "import importlib.metadata as m; print('\\n'.join(d.metadata['Name'] for d in m.distributions()))"
    found = subprocess.run([str(image.venv / "bin" / "python"), "-c", listing], capture_output=True, text=True)
    assert found.returncode == 0, found.stderr
    return {name.lower().replace("_", "-") for name in found.stdout.split()}


def test_the_virtualenv_holds_dbmigrate_and_the_image_drivers_and_nothing_that_installs(image: Image) -> None:
    names = _distributions(image)
    check = subprocess.run(
        [str(image.builder_python()), "-m", "pip", "--python", str(image.venv / "bin" / "python"), "check"],
        capture_output=True,
        text=True,
    )

    assert {"dbmigrate", "psycopg", "psycopg-binary", "pymysql"} <= names
    assert "psycopg2-binary" not in names, "the image installs the drivers it needs, not every one"
    assert not names & INSTALLERS, f"no installers in the final virtualenv: {sorted(names & INSTALLERS)}"
    assert not list(image.venv.glob("bin/pip*")) and not list(image.venv.glob("bin/wheel*"))
    assert check.returncode == 0, check.stdout + check.stderr
    assert all(path.suffix == ".whl" for path in image.wheels.iterdir()), "the virtualenv is made of wheels only"


def test_dbmigrate_and_its_drivers_import_and_pip_does_not_as_the_image_user(
    image: Image, pod: tuple[Path, Path]
) -> None:
    app, scratch = pod
    python = str(image.venv / "bin" / "python")
    env = image.environment(scratch)

    imported = image.run(
        [python, "-c", "import dbmigrate, psycopg, pymysql; print(dbmigrate.__version__)"], cwd=app, env=env
    )
    pip = image.run([python, "-m", "pip", "--version"], cwd=app, env=env)

    assert imported.returncode == 0, imported.stderr
    assert pip.returncode != 0 and "No module named pip" in pip.stderr


def test_the_default_command_prints_help_as_the_image_user(image: Image, pod: tuple[Path, Path]) -> None:
    app, scratch = pod

    done = image.run(image.command(), cwd=app, env=image.environment(scratch))

    assert done.returncode == 0, done.stderr
    assert "upgrade" in done.stdout and "Exit codes" in done.stdout


@pytest.mark.parametrize("backend", BACKENDS)
def test_upgrade_runs_as_uid_10001_from_a_read_only_app_directory(
    image: Image, pod: tuple[Path, Path], backend: str
) -> None:
    app, scratch = pod
    url = create_database(backend, scratch)
    termination_log = scratch / "termination-log"
    termination_log.touch()
    if image.user is not None:
        os.chown(termination_log, image.user, image.user)
    env = image.environment(
        scratch, DATABASE_URL=url, DBMIGRATE_LOG_FORMAT="json", DBMIGRATE_TERMINATION_LOG=str(termination_log)
    )
    before = _snapshot(app)
    python = str(image.venv / "bin" / "python")
    try:
        whoami = image.run([python, "-c", "import os; print(os.getuid(), os.getgroups())"], cwd=app, env=env)
        assert whoami.stdout.split(maxsplit=1) == [str(os.geteuid() if image.user is None else IMAGE_UID), "[]\n"]
        assert image.user is not None or os.geteuid() != 0

        first = image.run(image.command("upgrade", "--format", "json"), cwd=app, env=env)

        assert first.returncode == 0, first.stderr
        assert json.loads(first.stdout)["after"] == [EXAMPLE_HEAD]
        assert current_revisions(url) == {EXAMPLE_HEAD}
        assert [row["revision"] for row in history_rows(url)] == EXAMPLE_REVISIONS
        assert "6 revision(s) applied, from base to 0006_name_contract" in termination_log.read_text()

        second = image.run(image.command("upgrade", "--format", "json"), cwd=app, env=env)
        state = image.run(image.command("status", "--check", "--format", "json"), cwd=app, env=env)

        assert second.returncode == 0, second.stderr
        assert json.loads(second.stdout)["steps"] == []
        assert "nothing to do" in termination_log.read_text()
        assert state.returncode == 0, state.stdout + state.stderr
        assert json.loads(state.stdout)["at_head"] is True
        assert _snapshot(app) == before, "nothing was written into the app directory (no bytecode, no files)"
    finally:
        drop_database(url)
