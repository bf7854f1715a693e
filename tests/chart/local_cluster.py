"""Render charts with the real Helm engine, and run rendered pods' containers as local processes.

There is no cluster here, so a small stand-in for the kubelet does what a node would do with a rendered
pod spec: it resolves each container's environment (plain values, ``secretKeyRef`` from Secrets,
``fieldRef`` from the pod's metadata, ``$(VAR)`` references), materialises its volumes in a temporary
directory (``emptyDir``, ``secret`` items, the termination-message file), rewrites container paths in
the environment and arguments to those directories, and starts ``command + args`` in the image's
working directory. An image is a directory holding what the image holds in its working directory (a
copy of the example project, alembic.ini and alembic/), looked up by the container's image reference.
``dbmigrate`` resolves to this virtualenv's CLI through ``PATH`` (running this checkout's package), as it
resolves to the image's on a node.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "dbmigrate"
UMBRELLA = REPO / "examples" / "umbrella-chart"
VENV_BIN = Path(sys.executable).parent
# The Kubernetes versions every manifest is validated against: the oldest the chart supports and the
# newest the installed schemas know.
KUBE_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
# The environment the example application's image sets (docker/example-app/Dockerfile).
IMAGE_ENV = {
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYTHONUNBUFFERED": "1",
    "HOME": "/tmp",
    "TMPDIR": "/tmp",
}

helm.disable_logging()


# --- rendering -------------------------------------------------------------------------------------


@dataclass
class Manifest:
    source: str
    body: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.body["kind"])

    @property
    def name(self) -> str:
        return str(self.body["metadata"]["name"])

    @property
    def annotations(self) -> dict[str, str]:
        return dict(self.body["metadata"].get("annotations") or {})

    @property
    def hook_events(self) -> list[str]:
        hook = self.annotations.get("helm.sh/hook", "")
        return [event.strip() for event in hook.split(",") if event.strip()]

    @property
    def hook_weight(self) -> int:
        return int(self.annotations.get("helm.sh/hook-weight", "0"))


@dataclass
class Rendered:
    manifests: list[Manifest]
    notes: str
    raw: dict[str, str]

    def of_kind(self, kind: str) -> list[Manifest]:
        return [m for m in self.manifests if m.kind == kind]

    def one(self, kind: str, name_suffix: str = "") -> Manifest:
        found = [m for m in self.of_kind(kind) if m.name.endswith(name_suffix)]
        assert len(found) == 1, f"expected one {kind} named *{name_suffix}, found {[m.name for m in found]}"
        return found[0]

    def hooks(self, event: str) -> list[Manifest]:
        """The hooks Helm runs for ``event``, in its order: by weight, then by name."""
        hooks = [m for m in self.manifests if event in m.hook_events]
        return sorted(hooks, key=lambda m: (m.hook_weight, m.name))

    def without_hooks(self) -> list[Manifest]:
        return [m for m in self.manifests if not m.hook_events]


def render(
    chart_dir: Path,
    values: Mapping[str, Any] | None = None,
    *,
    release: str = "shop",
    namespace: str = "prod",
    upgrade: bool = False,
) -> Rendered:
    """Render a chart with Helm's engine (schema validation included), as install or upgrade."""
    with helm.Chart.load(chart_dir) as chart:
        raw = chart.render(
            dict(values or {}),
            name=release,
            namespace=namespace,
            is_install=not upgrade,
            is_upgrade=upgrade,
            revision=2 if upgrade else 1,
        )
    manifests: list[Manifest] = []
    notes = ""
    for source, text in sorted(raw.items()):
        if source.endswith("NOTES.txt"):
            if source.count("/charts/") == 0:
                notes = text
            continue
        for body in yaml.safe_load_all(text):
            if body:
                manifests.append(Manifest(source, body))
    return Rendered(manifests, notes, raw)


# What every release of the chart of its own must set (the chart has no default for either): the
# application's image and the Secret holding the database URL.
REQUIRED_VALUES: dict[str, Any] = {
    "image": {"repository": "example-app", "tag": "0.1.0"},
    "database": {"existingSecret": {"name": "{{ .Release.Name }}-database"}},
}


def merged(*value_sets: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge value dicts, later ones winning (as Helm merges -f files and --set)."""
    result: dict[str, Any] = {}
    for values in value_sets:
        for key, value in values.items():
            if isinstance(value, Mapping) and isinstance(result.get(key), dict):
                result[key] = merged(result[key], value)
            else:
                result[key] = value
    return result


def render_chart(values: Mapping[str, Any] | None = None, **options: Any) -> Rendered:
    """Render the dbmigrate chart as a release of its own: REQUIRED_VALUES, then ``values``."""
    return render(CHART, merged(REQUIRED_VALUES, values or {}), **options)


def build_umbrella(tmp_path: Path) -> Path:
    """A copy of the umbrella example beside a copy of the chart, with its dependency built by Helm."""
    root = tmp_path / "charts-workspace"
    shutil.copytree(CHART, root / "charts" / "dbmigrate")
    shutil.copytree(UMBRELLA, root / "examples" / "umbrella-chart", ignore=shutil.ignore_patterns("charts", "*.lock"))
    umbrella = root / "examples" / "umbrella-chart"
    helm.dependency_update(umbrella, skip_refresh=True)
    return umbrella


def validate(manifest: Manifest) -> None:
    """Validate against the official Kubernetes schemas (strict: unknown fields fail), offline."""
    for version in KUBE_VERSIONS:
        kubernetes_validate.validate(manifest.body, version, strict=True)


def pod_spec(manifest: Manifest) -> dict[str, Any]:
    """The pod spec of a Pod, Job, Deployment, StatefulSet, DaemonSet or CronJob."""
    body = manifest.body
    if manifest.kind == "Pod":
        return dict(body["spec"])
    if manifest.kind == "CronJob":
        return dict(body["spec"]["jobTemplate"]["spec"]["template"]["spec"])
    return dict(body["spec"]["template"]["spec"])


def containers(spec: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [*spec.get("initContainers", []), *spec.get("containers", [])]


def walk_strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from walk_strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from walk_strings(item)


# --- the stand-in kubelet ----------------------------------------------------------------------------


class ContainerConfigError(Exception):
    """What Kubernetes reports as CreateContainerConfigError: a missing Secret, key or field."""


def secret_data(manifest: Manifest) -> dict[str, str]:
    body = manifest.body
    data = {key: base64.b64decode(value).decode() for key, value in (body.get("data") or {}).items()}
    data.update(body.get("stringData") or {})
    return data


@dataclass
class Process:
    """A container running (or finished) as a local process."""

    pod: str
    container: str
    popen: subprocess.Popen[str]
    stdout: Path
    stderr: Path
    termination_log: Path
    volumes: dict[str, Path]

    def wait(self, timeout: float) -> int:
        return self.popen.wait(timeout=timeout)

    def running(self) -> bool:
        return self.popen.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.popen.returncode

    def logs(self) -> str:
        return self.stderr.read_text() if self.stderr.exists() else ""

    def output(self) -> str:
        return self.stdout.read_text() if self.stdout.exists() else ""

    def events(self) -> list[dict[str, Any]]:
        """The JSON log lines on stderr."""
        found = []
        for line in self.logs().splitlines():
            if line.startswith("{"):
                try:
                    found.append(json.loads(line))
                except ValueError:
                    continue
        return found

    def termination_message(self) -> str:
        return self.termination_log.read_text() if self.termination_log.exists() else ""

    def wait_for_event(self, event: str, timeout: float) -> dict[str, Any]:
        """Poll the logs until a line with this event appears (bounded); fails if the process ended first."""
        deadline = time.monotonic() + timeout
        while True:
            for line in self.events():
                if line.get("event") == event:
                    return line
            if not self.running():
                raise AssertionError(
                    f"{self.container} exited {self.returncode} before logging {event!r}:\n{self.logs()}"
                )
            if time.monotonic() >= deadline:
                raise AssertionError(f"{self.container} did not log {event!r} within {timeout}s:\n{self.logs()}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.running():
            self.popen.kill()
            self.popen.wait(timeout=30)

    def describe(self) -> str:
        return (
            f"{self.pod}/{self.container} exited {self.returncode}\n--- stdout\n{self.output()}\n--- stderr\n"
            f"{self.logs()}\n--- termination message\n{self.termination_message()}"
        )


class ImagePullError(Exception):
    """The container's image is not one the node has (ErrImagePull)."""


@dataclass
class Node:
    """Runs rendered pods' containers as local processes.

    ``images`` maps image references to directories that stand in for the image's working directory.
    ``secrets`` holds the namespace's Secrets: those a test creates beforehand and the hook Secrets a
    release creates (``apply``).
    """

    root: Path
    images: dict[str, Path] = field(default_factory=dict)
    namespace: str = "prod"
    secrets: dict[str, dict[str, str]] = field(default_factory=dict)
    config_maps: dict[str, dict[str, str]] = field(default_factory=dict)
    started: list[Process] = field(default_factory=list)

    def apply(self, manifest: Manifest) -> None:
        if manifest.kind == "Secret":
            self.secrets[manifest.name] = secret_data(manifest)
        elif manifest.kind == "ConfigMap":
            self.config_maps[manifest.name] = dict(manifest.body.get("data") or {})
        else:
            raise AssertionError(f"the local node only stores Secrets and ConfigMaps, not {manifest.kind}")

    def start(
        self,
        pod_name: str,
        spec: Mapping[str, Any],
        container: Mapping[str, Any],
        injected_env: Mapping[str, str] | None = None,
    ) -> Process:
        """Start one container of a pod; the pod's volumes are shared between its containers.
        ``injected_env`` is what Kubernetes itself adds (JOB_COMPLETION_INDEX in an Indexed Job's pod)."""
        if container["image"] not in self.images:
            raise ImagePullError(f"{container['image']} is not one of {sorted(self.images)}")
        image = self.images[container["image"]]
        pod_dir = self.root / pod_name
        mounts: dict[str, Path] = {}
        volumes = self._volumes(pod_dir, spec)
        for mount in container.get("volumeMounts", []):
            mounts[mount["mountPath"].rstrip("/") or "/"] = volumes[mount["name"]]
        if container.get("workingDir"):
            mounts[container["workingDir"].rstrip("/")] = image
        run_dir = pod_dir / "containers" / container["name"]
        run_dir.mkdir(parents=True, exist_ok=True)
        termination_log = run_dir / "termination-log"
        termination_log.touch()  # the kubelet creates it; dbmigrate writes to it only when it exists
        mounts[container.get("terminationMessagePath", "/dev/termination-log")] = termination_log

        def local(value: str) -> str:
            for path in sorted(mounts, key=len, reverse=True):
                if value == path or value.startswith(path + "/"):
                    return str(mounts[path]) + value[len(path) :]
            return value

        env = self._environment(pod_name, container, local, injected_env or {})
        # dbmigrate's default termination log path is the kubelet's mount point; point it at the file.
        env.setdefault("DBMIGRATE_TERMINATION_LOG", local("/dev/termination-log"))
        argv = [*container.get("command", ["dbmigrate"]), *container.get("args", [])]
        argv = [local(expand(arg, env)) for arg in argv]
        stdout, stderr = run_dir / "stdout", run_dir / "stderr"
        with open(stdout, "w") as out, open(stderr, "w") as err:
            popen = subprocess.Popen(argv, cwd=image, env=env, stdout=out, stderr=err, text=True)
        process = Process(pod_name, container["name"], popen, stdout, stderr, termination_log, volumes)
        self.started.append(process)
        return process

    def run_pod(self, pod_name: str, spec: Mapping[str, Any], timeout: float = 120) -> list[Process]:
        """Run a pod to completion: init containers one by one (stopping at a failure), then the containers."""
        finished = []
        for container in spec.get("initContainers", []):
            process = self.start(pod_name, spec, container)
            process.wait(timeout)
            finished.append(process)
            if process.returncode != 0:
                return finished
        running = [self.start(pod_name, spec, container) for container in spec["containers"]]
        for process in running:
            process.wait(timeout)
        return finished + running

    def run_job(self, job: Manifest, timeout: float = 120) -> Process:
        """One pod of a Job (no retries); returns its last container's process."""
        assert job.kind == "Job", job.kind
        processes = self.run_pod(pod_name_for(job.name), pod_spec(job), timeout)
        return processes[-1]

    def run_indexed_job(self, job: Manifest, timeout: float = 120) -> dict[int, Process]:
        """An Indexed Job: one pod per completion index, ``parallelism`` at a time, each with
        JOB_COMPLETION_INDEX set (no retries); returns each index's container process."""
        assert job.kind == "Job" and job.body["spec"]["completionMode"] == "Indexed", job.body["spec"]
        spec = pod_spec(job)
        assert len(spec["containers"]) == 1 and not spec.get("initContainers"), "one container per pod"
        completions = int(job.body["spec"]["completions"])
        parallelism = int(job.body["spec"].get("parallelism", completions))
        done: dict[int, Process] = {}
        pending = list(range(completions))
        while pending:
            batch, pending = pending[:parallelism], pending[parallelism:]
            running = {
                index: self.start(
                    f"{pod_name_for(job.name)}-{index}",
                    spec,
                    spec["containers"][0],
                    {"JOB_COMPLETION_INDEX": str(index)},
                )
                for index in batch
            }
            for index, process in running.items():
                process.wait(timeout)
                done[index] = process
        return done

    def run_hooks(self, rendered: Rendered, event: str, timeout: float = 120) -> list[tuple[Manifest, Process]]:
        """Run a release's hooks for ``event`` as Helm does: in order, each to completion, stopping at a
        failed Job. Returns the Jobs with their pods' processes."""
        jobs = []
        for hook in rendered.hooks(event):
            if hook.kind == "Job":
                process = self.run_job(hook, timeout)
                jobs.append((hook, process))
                if process.returncode != 0:
                    break
            else:
                self.apply(hook)
        return jobs

    def stop_all(self) -> None:
        for process in self.started:
            process.stop()

    def _volumes(self, pod_dir: Path, spec: Mapping[str, Any]) -> dict[str, Path]:
        volumes: dict[str, Path] = {}
        for volume in spec.get("volumes", []):
            path = pod_dir / "volumes" / volume["name"]
            volumes[volume["name"]] = path
            if path.exists():
                continue
            path.mkdir(parents=True)
            if "secret" in volume:
                source = volume["secret"]
                data = self._secret(source["secretName"])
                items = source.get("items") or [{"key": key, "path": key} for key in data]
                for item in items:
                    if item["key"] not in data:
                        raise ContainerConfigError(f"key {item['key']} not in Secret {source['secretName']}")
                    target = path / item["path"]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_text(data[item["key"]])
                    target.chmod(item.get("mode", source.get("defaultMode", 0o644)))
            elif "configMap" in volume:
                source = volume["configMap"]
                if source["name"] not in self.config_maps:
                    raise ContainerConfigError(f'configmap "{source["name"]}" not found')
                data = self.config_maps[source["name"]]
                for item in source.get("items") or [{"key": key, "path": key} for key in data]:
                    if item["key"] not in data:
                        raise ContainerConfigError(f"key {item['key']} not in ConfigMap {source['name']}")
                    target = path / item["path"]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_text(data[item["key"]])
            elif "emptyDir" not in volume:
                raise AssertionError(f"the local node cannot provide volume {volume}")
        return volumes

    def _secret(self, name: str) -> dict[str, str]:
        if name not in self.secrets:
            raise ContainerConfigError(f'secret "{name}" not found')
        return self.secrets[name]

    def _environment(
        self, pod_name: str, container: Mapping[str, Any], local: Any, injected: Mapping[str, str]
    ) -> dict[str, str]:
        env = {
            "PATH": f"{VENV_BIN}{os.pathsep}/usr/local/bin{os.pathsep}/usr/bin{os.pathsep}/bin",
            "HOSTNAME": pod_name,
            # The image's dbmigrate is this checkout's, whichever checkout the virtualenv installed.
            "PYTHONPATH": str(REPO),
            **{key: local(value) for key, value in IMAGE_ENV.items()},
            **injected,
        }
        for source in container.get("envFrom", []):
            if "secretRef" in source:
                prefix = source.get("prefix", "")
                env.update({prefix + k: v for k, v in self._secret(source["secretRef"]["name"]).items()})
            else:
                raise AssertionError(f"the local node cannot provide envFrom {source}")
        for variable in container.get("env", []):
            env[variable["name"]] = local(self._value(pod_name, variable, env))
        return env

    def _value(self, pod_name: str, variable: Mapping[str, Any], env: Mapping[str, str]) -> str:
        if "valueFrom" not in variable:
            return expand(str(variable.get("value", "")), env)
        source = variable["valueFrom"]
        if "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            data = self._secret(ref["name"])
            if ref["key"] not in data:
                raise ContainerConfigError(f"couldn't find key {ref['key']} in Secret {self.namespace}/{ref['name']}")
            return data[ref["key"]]
        if "fieldRef" in source:
            fields = {"metadata.name": pod_name, "metadata.namespace": self.namespace}
            return fields[source["fieldRef"]["fieldPath"]]
        raise AssertionError(f"the local node cannot provide {source}")


class FieldImmutable(Exception):
    """What the API server answers when an apply would change an immutable field."""


@dataclass
class AppliedObjects:
    """What `kubectl apply` does with rendered manifests, as far as these tests need: it creates the
    objects that do not exist, updates the others, and refuses to change a Job's pod template, which
    is immutable."""

    stored: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)

    def apply(self, manifest: Manifest) -> bool:
        """Apply one manifest; True when it created the object."""
        key = (manifest.kind, manifest.name)
        current = self.stored.get(key)
        is_job = manifest.kind == "Job" and current is not None
        if is_job and current["spec"]["template"] != manifest.body["spec"]["template"]:
            raise FieldImmutable(f'Job.batch "{manifest.name}" is invalid: spec.template: field is immutable')
        self.stored[key] = manifest.body
        return current is None


def pod_name_for(owner: str) -> str:
    """A pod name as a controller makes it: the owner's name and a random suffix."""
    return f"{owner}-{uuid.uuid4().hex[:5]}"


def expand(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes' $(VAR) expansion in env values, command and args ($$ escapes)."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0).startswith("$$"):
            return match.group(0)[1:]
        name = match.group(1)
        return env.get(name, match.group(0))

    return re.sub(r"\$\$\([A-Za-z_][A-Za-z0-9_]*\)|\$\(([A-Za-z_][A-Za-z0-9_]*)\)", replace, value)


def pod_failure_action(job: Manifest, container: str, exit_code: int) -> str:
    """What the Job controller does with a pod that failed with ``exit_code``: its podFailurePolicy's
    first matching rule (FailJob, Ignore, Count), or Count when none matches."""
    policy = job.body["spec"].get("podFailurePolicy") or {}
    for rule in policy.get("rules", []):
        codes = rule.get("onExitCodes")
        if not codes or codes.get("containerName", container) != container:
            continue
        matches = exit_code in codes["values"]
        if (codes["operator"] == "In") == matches:
            return str(rule["action"])
    return "Count"


def build_image(source_files: Iterable[Path], target: Path) -> Path:
    """A stand-in for an image's working directory: alembic.ini and alembic/ copied into ``target``."""
    target.mkdir(parents=True)
    for path in source_files:
        if path.is_dir():
            shutil.copytree(path, target / path.name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(path, target / path.name)
    return target
