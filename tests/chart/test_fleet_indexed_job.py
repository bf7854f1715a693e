"""The chart's fleet Job: an Indexed Job of fleet.shards pods, each running `dbmigrate upgrade --fleet`
on the targets of its JOB_COMPLETION_INDEX.

Rendered by the real Helm engine and validated against the Kubernetes schemas: completions,
completionMode, parallelism, backoffLimitPerIndex (only when set, refused before Kubernetes 1.29),
the command, the fleet file's ConfigMap and its mount, the same security context and environment as
the single-database Job, nothing of it by default. Then a simulated release runs every index's pod as
a local process with JOB_COMPLETION_INDEX set against real SQLite, PostgreSQL and MariaDB targets:
every target reaches head, each in exactly one shard.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml

from tests.chart.local_cluster import CHART, REPO, Node, build_image, pod_spec, render, render_chart, validate
from tests.conftest import EXAMPLE_HEAD
from tests.fleet_support import SECRET, SECRET_ENV, Fleet, forms

FLEET_FILE = (
    '[[targets]]\nurl = "postgresql://app@tenants-db:5432/tenant_{name}"\n'
    'names = ["acme", "globex", "initech"]\npassword_env = "TENANT_DB_PASSWORD"\n'
)
PASSWORD_ENV = [
    {"name": "TENANT_DB_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "tenants-db", "key": "password"}}}
]
# No database: every target's URL comes from the fleet file.
FLEET: dict[str, Any] = {
    "fleet": {"enabled": True, "file": FLEET_FILE, "shards": 4},
    "extraEnv": PASSWORD_ENV,
    "database": {"existingSecret": {"name": ""}},
}


def fleet_job(values: dict[str, Any], **options: Any) -> dict[str, Any]:
    rendered = render_chart(values, **options)
    jobs = rendered.of_kind("Job")
    assert [job.name for job in jobs] == ["shop-dbmigrate-fleet"], "the fleet Job replaces the single-database Job"
    for manifest in rendered.manifests:
        validate(manifest)
    return jobs[0].body


def test_nothing_of_the_fleet_is_rendered_by_default() -> None:
    rendered = render_chart()
    assert not rendered.of_kind("ConfigMap")
    (job,) = rendered.of_kind("Job")
    assert job.name == "shop-dbmigrate-migrate"
    assert "completionMode" not in job.body["spec"] and "completions" not in job.body["spec"]
    assert pod_spec(job)["containers"][0]["args"] == ["upgrade"]
    assert rendered.of_kind("Pod"), "the helm test pod stays for a single database"


def test_the_fleet_job_is_indexed_with_one_completion_per_shard() -> None:
    spec = fleet_job(FLEET)["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == 4
    assert spec["parallelism"] == 4, "all shards at once unless fleet.parallelism says otherwise"
    assert "backoffLimitPerIndex" not in spec
    assert spec["backoffLimit"] == 2
    assert spec["podFailurePolicy"]["rules"][0]["action"] == "FailJob"
    limited = fleet_job({**FLEET, "fleet": {**FLEET["fleet"], "parallelism": 2}})["spec"]
    assert (limited["completions"], limited["parallelism"]) == (4, 2)


def test_backoff_limit_per_index_fails_only_its_index() -> None:
    spec = fleet_job({**FLEET, "fleet": {**FLEET["fleet"], "backoffLimitPerIndex": 1}})["spec"]
    assert spec["backoffLimitPerIndex"] == 1
    assert "backoffLimit" not in spec, "a global backoffLimit would let one shard's failures end the others"
    assert spec["podFailurePolicy"]["rules"][0]["action"] == "FailIndex"


def test_backoff_limit_per_index_is_refused_before_kubernetes_1_29(capfd: pytest.CaptureFixture[str]) -> None:
    # Only lint takes a Kubernetes version; it reports a template's fail() in Helm's log, not as an error.
    values = {"image": {"repository": "example-app", "tag": "0.1.0"}, **FLEET}
    values["fleet"] = {**FLEET["fleet"], "backoffLimitPerIndex": 1}
    helm.lint(CHART, values, kube_version="v1.29.0")
    assert "needs Kubernetes 1.29" not in capfd.readouterr().err
    helm.lint(CHART, values, kube_version="v1.28.0")
    message = "fleet.backoffLimitPerIndex needs Kubernetes 1.29 or later, and this cluster is v1.28.0"
    assert message in capfd.readouterr().err


def test_each_pod_runs_the_fleet_command_on_its_shard() -> None:
    container = pod_spec_of(fleet_job(FLEET))["containers"][0]
    assert container["command"] == ["dbmigrate"]
    assert container["args"] == ["upgrade", "--fleet", "/etc/dbmigrate/fleet.toml", "--shards", "4", "--parallel", "2"]
    names = [variable["name"] for variable in container["env"]]
    assert "JOB_COMPLETION_INDEX" not in names, "Kubernetes sets it in an Indexed Job's pods"
    assert "DATABASE_URL" not in names, "every target's URL comes from the fleet file"
    assert PASSWORD_ENV[0] in container["env"], "password_env comes from a Secret through extraEnv"
    more = {**FLEET, "fleet": {**FLEET["fleet"], "parallel": 3, "extraArgs": ["--canary", "2"]}}
    assert pod_spec_of(fleet_job(more))["containers"][0]["args"][-4:] == ["--parallel", "3", "--canary", "2"]


def pod_spec_of(job: dict[str, Any]) -> dict[str, Any]:
    return dict(job["spec"]["template"]["spec"])


def test_the_fleet_file_is_a_config_map_mounted_read_only() -> None:
    rendered = render_chart(FLEET)
    (config_map,) = rendered.of_kind("ConfigMap")
    assert config_map.name == "shop-dbmigrate-fleet"
    assert config_map.body["data"] == {"fleet.toml": FLEET_FILE}
    job = rendered.one("Job")
    assert config_map.hook_events == job.hook_events
    assert config_map.hook_weight < job.hook_weight, "the ConfigMap exists before the Job starts"
    spec = pod_spec(job)
    volume = next(v for v in spec["volumes"] if v["name"] == "dbmigrate-fleet")
    items = [{"key": "fleet.toml", "path": "fleet.toml"}]
    assert volume["configMap"] == {"name": "shop-dbmigrate-fleet", "items": items}
    mount = next(m for m in spec["containers"][0]["volumeMounts"] if m["name"] == "dbmigrate-fleet")
    assert mount == {"name": "dbmigrate-fleet", "mountPath": "/etc/dbmigrate", "readOnly": True}

    existing = {"name": "{{ .Release.Name }}-tenants", "key": "t.toml"}
    own = {**FLEET, "fleet": {"enabled": True, "existingConfigMap": existing}}
    rendered = render_chart(own)
    assert not rendered.of_kind("ConfigMap")
    volume = next(v for v in pod_spec(rendered.one("Job"))["volumes"] if v["name"] == "dbmigrate-fleet")
    assert volume["configMap"] == {"name": "shop-tenants", "items": [{"key": "t.toml", "path": "fleet.toml"}]}


def test_the_pod_is_the_single_database_jobs_but_for_its_command_and_fleet_file() -> None:
    single = pod_spec(render_chart().one("Job"))
    fleet = pod_spec(render_chart(merge_fleet({"database": {"existingSecret": {"name": "shop-database"}}})).one("Job"))
    assert fleet["securityContext"] == single["securityContext"]
    single_container, fleet_container = single["containers"][0], fleet["containers"][0]
    for key in ("securityContext", "image", "imagePullPolicy", "workingDir", "resources", "env"):
        expected = single_container[key]
        if key == "env":
            expected = [*expected, *PASSWORD_ENV]
        assert fleet_container[key] == expected, key
    assert [v for v in fleet["volumes"] if v["name"] != "dbmigrate-fleet"] == single["volumes"]


def merge_fleet(values: dict[str, Any]) -> dict[str, Any]:
    return {**FLEET, **values}


@pytest.mark.parametrize(
    ("fleet", "message"),
    [
        ({"enabled": True}, "fleet.enabled needs the fleet file"),
        ({"enabled": True, "file": FLEET_FILE, "existingConfigMap": {"name": "x"}}, "both set"),
        ({"enabled": True, "file": 'url = "postgresql://app:pw@db/x"'}, "fleet.file holds a URL with a password"),
    ],
)
def test_fleet_values_that_cannot_work_fail_the_render(fleet: dict[str, Any], message: str) -> None:
    with pytest.raises(Exception, match=message):
        render_chart({"fleet": fleet})


def test_rollback_is_refused_with_a_fleet() -> None:
    with pytest.raises(Exception, match=r"rollback\.enabled rolls back one database"):
        render_chart({**FLEET, "rollback": {"enabled": True}})


# --- a simulated release ---------------------------------------------------------------------------


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    made = Fleet(tmp_path)
    yield made
    made.drop()


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    image = build_image([REPO / "alembic.ini", REPO / "alembic"], tmp_path / "images" / "0.1.0")
    cluster = Node(tmp_path / "node", images={"example-app:0.1.0": image})
    yield cluster
    cluster.stop_all()


def test_each_index_migrates_its_shard_and_together_they_cover_the_fleet_once(fleet: Fleet, node: Node) -> None:
    names = [*fleet.add_sqlite(8), *fleet.add_postgres_databases(3), *fleet.add_mariadb_databases(2)]
    values = {
        "database": {"existingSecret": {"name": ""}},
        "fleet": {
            "enabled": True,
            "file": "\n".join(fleet.entries),
            "shards": 3,
            "parallelism": 3,
            "extraArgs": ["--format", "json"],
        },
        "extraEnv": [{"name": SECRET_ENV, "valueFrom": {"secretKeyRef": {"name": "tenants-db", "key": "password"}}}],
        "settings": {"logFormat": "json"},
    }
    rendered = render_chart(values)
    node.secrets["tenants-db"] = {"password": SECRET}
    for hook in rendered.hooks("pre-install"):
        if hook.kind != "Job":
            node.apply(hook)
    pods = node.run_indexed_job(rendered.one("Job"), timeout=300)

    assert sorted(pods) == [0, 1, 2]
    seen: list[str] = []
    for index, process in pods.items():
        assert process.returncode == 0, f"index {index}: {process.describe()}"
        for forbidden in forms(SECRET):
            assert forbidden not in process.output()
        seen += [target["name"] for target in json.loads(process.output())["targets"]]
    assert sorted(seen) == sorted(names), "every target in exactly one shard"
    for name in names:
        assert fleet.current(name) == {EXAMPLE_HEAD}, name
        assert len(fleet.history_runs(name)) == 1, f"{name} was migrated by more than one pod"


def test_the_values_in_the_fleets_how_to_render() -> None:
    page = (REPO / "docs" / "how-to" / "fleets.md").read_text()
    block = re.search(r'```yaml title="values.yaml"\n(.*?)^```$', page, re.MULTILINE | re.DOTALL)
    assert block, "the how-to's values.yaml example"
    values = yaml.safe_load(block.group(1))
    values["fleet"]["file"] = FLEET_FILE
    job = render(CHART, values).one("Job")
    validate(job)
    assert job.body["spec"]["completions"] == values["fleet"]["shards"]
    assert pod_spec(job)["containers"][0]["args"][-4:] == ["--canary", "1", "--max-failures", "3"]
