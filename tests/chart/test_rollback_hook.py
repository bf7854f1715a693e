"""The chart's optional pre-rollback hook: a Job running `dbmigrate rollback` with the image of the
revision `helm rollback` returns to, wired like the migration Job (rendered by the real Helm engine,
linted, and validated against the Kubernetes schemas), and the archive's signing key in both Jobs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import helm_python as helm
import pytest

from tests.chart.local_cluster import (
    CHART,
    REQUIRED_VALUES,
    Manifest,
    Rendered,
    build_umbrella,
    containers,
    merged,
    pod_spec,
    render,
    render_chart,
    validate,
)

ENABLED: dict[str, Any] = {"rollback": {"enabled": True}}
ARCHIVE_KEY = {"archive": {"keySecret": {"name": "{{ .Release.Name }}-archive", "key": "hmac"}}}
ARCHIVE_KEY_ENV = {
    "name": "DBMIGRATE_ARCHIVE_KEY",
    "valueFrom": {"secretKeyRef": {"name": "shop-archive", "key": "hmac"}},
}
CHART_SECRET = {"database": {"source": "secret", "secret": {"url": "postgresql://app:pw@db:5432/shop"}}}


def the_container(job: Manifest) -> dict[str, Any]:
    (container,) = pod_spec(job)["containers"]
    return dict(container)


def without_when_ahead(env: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A migration container's environment without what only an upgrade reads."""
    return [variable for variable in env if variable["name"] != "DBMIGRATE_WHEN_AHEAD"]


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {variable["name"]: variable for variable in container.get("env", [])}


def lint_findings(report: dict[str, Any]) -> list[str]:
    """Warnings and errors (severity 2 and 3) of a lint report; info messages are fine."""
    return [f"{m['path']}: {m['error']}" for m in report["messages"] if m["severity"] >= 2] + list(report["errors"])


@pytest.fixture(scope="module")
def enabled() -> Rendered:
    return render_chart(ENABLED)


@pytest.fixture(scope="module")
def umbrella(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_umbrella(tmp_path_factory.mktemp("umbrella"))


# --- off by default --------------------------------------------------------------------------------


@pytest.mark.parametrize("upgrade", [False, True])
def test_no_rollback_hook_by_default(upgrade: bool) -> None:
    for values in ({}, CHART_SECRET):
        rendered = render_chart(values, upgrade=upgrade)
        assert rendered.hooks("pre-rollback") == []
        assert not [m for m in rendered.manifests if m.name.endswith("-rollback")]
        assert "rollback" not in rendered.notes
        for manifest in rendered.of_kind("Job") + rendered.of_kind("Pod"):
            for container in containers(pod_spec(manifest)):
                assert "DBMIGRATE_ARCHIVE_KEY" not in env_of(container)


def test_no_rollback_hook_in_the_umbrella_example_by_default(umbrella: Path) -> None:
    assert render(umbrella, upgrade=True).hooks("pre-rollback") == []


# --- enabled ---------------------------------------------------------------------------------------------


def test_enabled_renders_a_pre_rollback_job_with_the_migration_jobs_hook_settings(enabled: Rendered) -> None:
    job = enabled.one("Job", "-rollback")
    migrate = enabled.one("Job", "-migrate")
    assert job.name == "shop-dbmigrate-rollback"
    assert enabled.hooks("pre-rollback") == [job]  # the only hook of `helm rollback`
    assert migrate not in enabled.hooks("pre-rollback") and job not in enabled.hooks("pre-upgrade")
    assert job.annotations["helm.sh/hook"] == "pre-rollback"
    assert job.annotations["helm.sh/hook-weight"] == migrate.annotations["helm.sh/hook-weight"] == "0"
    assert job.annotations["helm.sh/hook-delete-policy"] == "before-hook-creation"
    assert job.annotations["helm.sh/hook-delete-policy"] == migrate.annotations["helm.sh/hook-delete-policy"]
    assert job.body["metadata"]["labels"]["app.kubernetes.io/component"] == "rollback"
    spec = job.body["spec"]
    assert spec["backoffLimit"] == 2
    assert spec["activeDeadlineSeconds"] == 270  # below the default `helm rollback --timeout` of 300 s
    assert "ttlSecondsAfterFinished" not in spec
    assert spec["podFailurePolicy"]["rules"] == [
        {"action": "FailJob", "onExitCodes": {"containerName": "rollback", "operator": "In", "values": [1, 2, 4, 5]}},
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
    ]
    container = the_container(job)
    assert container["name"] == "rollback"
    assert container["command"] == ["dbmigrate"]
    assert container["args"] == ["rollback", "--schema", "auto"]  # no --to: code-head, the image's heads
    for manifest in enabled.manifests:
        validate(manifest)


def test_the_rollback_job_has_the_migration_jobs_pod_env_secrets_and_security(enabled: Rendered) -> None:
    job, migrate = enabled.one("Job", "-rollback"), enabled.one("Job", "-migrate")
    rollback_pod, migrate_pod = pod_spec(job), pod_spec(migrate)
    rollback_container, migrate_container = the_container(job), the_container(migrate)
    # The pod spec is the migration Job's but for its container.
    assert {k: v for k, v in rollback_pod.items() if k != "containers"} == {
        k: v for k, v in migrate_pod.items() if k != "containers"
    }
    assert rollback_pod["restartPolicy"] == "Never"
    assert rollback_pod["automountServiceAccountToken"] is False
    assert rollback_pod["securityContext"]["runAsNonRoot"] is True
    different = {"name", "args", "env"}
    assert {k: v for k, v in rollback_container.items() if k not in different} == {
        k: v for k, v in migrate_container.items() if k not in different
    }
    assert rollback_container["env"] == without_when_ahead(migrate_container["env"])
    env = env_of(rollback_container)
    assert env["DATABASE_URL"]["valueFrom"] == {"secretKeyRef": {"name": "shop-database", "key": "DATABASE_URL"}}
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    context = rollback_container["securityContext"]
    assert context["readOnlyRootFilesystem"] is True and context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert rollback_container["terminationMessagePolicy"] == "FallbackToLogsOnError"


@pytest.mark.parametrize(
    ("rollback", "args"),
    [
        ({"schema": "auto"}, ["rollback", "--schema", "auto"]),
        ({"schema": "always"}, ["rollback", "--schema", "always"]),
        ({"schema": "never", "to": ""}, ["rollback", "--schema", "never"]),
        ({"to": "code-head"}, ["rollback", "--schema", "auto", "--to", "code-head"]),
        ({"schema": "always", "to": "0042"}, ["rollback", "--schema", "always", "--to", "0042"]),
        (
            {"to": "ae1027a6acf", "extraArgs": ["--format", "json"]},
            ["rollback", "--schema", "auto", "--to", "ae1027a6acf", "--format", "json"],
        ),
    ],
)
def test_the_rollback_args_follow_the_values(rollback: dict[str, Any], args: list[str]) -> None:
    rendered = render_chart({"rollback": {"enabled": True, **rollback}})
    assert the_container(rendered.one("Job", "-rollback"))["args"] == args
    assert "dbmigrate " + " ".join(args) in rendered.notes


@pytest.mark.parametrize("source", ["existingSecret", "urlFile", "passwordFile"])
def test_every_database_source_is_wired_as_in_the_migration_job(source: str) -> None:
    database = {
        "existingSecret": {"existingSecret": {"name": "shop-db", "key": "uri"}},
        "urlFile": {"source": "urlFile", "urlFile": {"secretName": "shop-db", "key": "uri"}},
        "passwordFile": {
            "source": "passwordFile",
            "passwordFile": {"url": "postgresql://app@db:5432/shop", "secretName": "postgres", "key": "pw"},
        },
    }[source]
    rendered = render_chart(merged(ENABLED, {"database": database}))
    job, migrate = rendered.one("Job", "-rollback"), rendered.one("Job", "-migrate")
    rollback_container, migrate_container = the_container(job), the_container(migrate)
    assert rollback_container["env"] == without_when_ahead(migrate_container["env"])
    assert rollback_container["volumeMounts"] == migrate_container["volumeMounts"]
    assert pod_spec(job)["volumes"] == pod_spec(migrate)["volumes"]
    validate(job)


def test_the_chart_created_secret_is_also_a_pre_rollback_hook_before_the_job() -> None:
    rendered = render_chart(merged(ENABLED, CHART_SECRET))
    secret, job = rendered.hooks("pre-rollback")
    assert (secret.kind, secret.name, job.name) == ("Secret", "shop-dbmigrate-database", "shop-dbmigrate-rollback")
    assert secret.annotations["helm.sh/hook"] == "pre-install,pre-upgrade,pre-rollback"
    assert secret.hook_weight < job.hook_weight
    assert [m.kind for m in rendered.hooks("pre-install")] == ["Secret", "Job"]
    env = env_of(the_container(job))
    assert env["DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {"name": secret.name, "key": "DATABASE_URL"}
    # A lower rollback weight moves the Secret below it too, for every event.
    lower = render_chart(merged(ENABLED, CHART_SECRET, {"rollback": {"hook": {"weight": -5}}}))
    secret, job = lower.hooks("pre-rollback")
    assert (secret.hook_weight, job.hook_weight) == (-6, -5)
    assert [m.hook_weight for m in lower.hooks("pre-upgrade")] == [-6, 0]


def test_argo_cd_never_gets_the_rollback_job_as_a_sync_hook() -> None:
    # As an Argo CD PreSync hook it would roll the database back on every sync; Argo CD ignores
    # pre-rollback hooks, so the Job keeps only Helm's annotation.
    rendered = render_chart(merged(ENABLED, CHART_SECRET, {"argocd": {"enabled": True}}))
    job = rendered.one("Job", "-rollback")
    assert not any(key.startswith("argocd.argoproj.io/") for key in job.annotations)
    assert rendered.one("Job", "-migrate").annotations["argocd.argoproj.io/hook"] == "PreSync"
    assert rendered.one("Secret").annotations["argocd.argoproj.io/hook"] == "PreSync"


def test_the_rollback_jobs_own_settings_and_the_shared_pod_settings_apply() -> None:
    values = merged(
        ENABLED,
        {
            "rollback": {
                "hook": {"weight": 3, "deletePolicy": "before-hook-creation,hook-succeeded"},
                "backoffLimit": 0,
                "activeDeadlineSeconds": 1700,
                "podFailurePolicy": {"enabled": False},
                "annotations": {"team": "payments"},
                "resources": {"requests": {"cpu": "200m", "memory": "256Mi"}},
            },
            "image": {"repository": "registry.example.com/shop/api", "tag": "2.4.1"},
            "command": ["/opt/venv/bin/dbmigrate"],
            "workingDir": "/srv/shop",
            "settings": {"lockTimeout": 5},
            "extraEnv": [{"name": "SHOP_MODE", "value": "rollback"}],
            "serviceAccount": {"name": "shop-migrations"},
            "podLabels": {"team": "payments"},
        },
    )
    rendered = render_chart(values)
    job = rendered.one("Job", "-rollback")
    assert job.hook_weight == 3
    assert job.annotations["helm.sh/hook-delete-policy"] == "before-hook-creation,hook-succeeded"
    assert job.annotations["team"] == "payments"
    spec = job.body["spec"]
    assert (spec["backoffLimit"], spec["activeDeadlineSeconds"]) == (0, 1700)
    assert "podFailurePolicy" not in spec
    assert spec["template"]["metadata"]["labels"]["team"] == "payments"
    assert pod_spec(job)["serviceAccountName"] == "shop-migrations"
    container = the_container(job)
    assert container["image"] == "registry.example.com/shop/api:2.4.1"
    assert container["command"] == ["/opt/venv/bin/dbmigrate"] and container["workingDir"] == "/srv/shop"
    assert container["resources"] == {"requests": {"cpu": "200m", "memory": "256Mi"}}
    env = {name: variable.get("value") for name, variable in env_of(container).items()}
    assert env["DBMIGRATE_LOCK_TIMEOUT"] == "5" and env["SHOP_MODE"] == "rollback"
    assert env["DBMIGRATE_APP_VERSION"] == "2.4.1"
    migrate = rendered.one("Job", "-migrate")
    assert migrate.hook_weight == 0 and the_container(migrate)["resources"] != container["resources"]
    validate(job)


def test_metrics_stay_with_the_migration_job() -> None:
    rendered = render_chart(merged(ENABLED, {"metrics": {"pushgateway": {"url": "http://pushgateway:9091"}}}))
    assert "DBMIGRATE_PUSHGATEWAY" in env_of(the_container(rendered.one("Job", "-migrate")))
    assert not any(
        name.startswith(("DBMIGRATE_METRICS", "DBMIGRATE_PUSH"))
        for name in env_of(the_container(rendered.one("Job", "-rollback")))
    )


def test_long_release_names_stay_within_kubernetes_name_limits() -> None:
    rendered = render_chart(merged(ENABLED, CHART_SECRET), release="r" * 53)
    for manifest in rendered.manifests:
        assert len(manifest.name) <= 63, manifest.name
        validate(manifest)
    assert {m.name.rsplit("-", 1)[-1] for m in rendered.manifests} == {"database", "migrate", "rollback", "test"}


def test_the_chart_lints_with_the_rollback_hook_and_an_archive_key() -> None:
    for values in (ENABLED, merged(ENABLED, ARCHIVE_KEY, CHART_SECRET, {"rollback": {"to": "code-head"}})):
        report = helm.lint(CHART, merged(REQUIRED_VALUES, values), strict=True, kube_version="v1.30.0")
        assert lint_findings(report) == []


# --- the NOTES ---------------------------------------------------------------------------------------------


def test_the_notes_explain_the_rollback_hook_when_enabled(enabled: Rendered) -> None:
    notes = enabled.notes
    assert "shop-dbmigrate-rollback" in notes and "helm rollback shop" in notes
    assert "dbmigrate rollback --schema auto" in notes
    assert "keeps the newer schema" in notes
    assert "archive.keySecret is not set" in notes  # unsigned archive: say so
    signed = render_chart(merged(ENABLED, ARCHIVE_KEY, {"rollback": {"schema": "never"}})).notes
    assert "archive.keySecret is not set" not in signed
    assert "never downgrades" in signed


# --- the archive key -----------------------------------------------------------------------------------------


def test_the_archive_key_goes_to_both_jobs_from_its_secret() -> None:
    rendered = render_chart(merged(ENABLED, ARCHIVE_KEY))
    for suffix in ("-migrate", "-rollback"):
        env = env_of(the_container(rendered.one("Job", suffix)))
        assert env["DBMIGRATE_ARCHIVE_KEY"] == ARCHIVE_KEY_ENV, suffix
    # Only the Jobs need it: not the helm test pod.
    assert "DBMIGRATE_ARCHIVE_KEY" not in env_of(the_container(rendered.one("Pod", "-test")))
    # The migration Job signs even when the rollback hook is off (a later revision may enable it).
    migrate_only = render_chart({"archive": {"keySecret": {"name": "shop-archive"}}})
    assert migrate_only.hooks("pre-rollback") == []
    env = env_of(the_container(migrate_only.one("Job", "-migrate")))
    assert env["DBMIGRATE_ARCHIVE_KEY"]["valueFrom"] == {
        "secretKeyRef": {"name": "shop-archive", "key": "DBMIGRATE_ARCHIVE_KEY"}
    }


def test_the_umbrella_example_can_enable_the_hook_and_the_key(umbrella: Path) -> None:
    rendered = render(umbrella, {"dbmigrate": merged(ENABLED, ARCHIVE_KEY)}, upgrade=True)
    (job,) = rendered.hooks("pre-rollback")
    migrate = rendered.one("Job", "-migrate")
    assert job.name == "shop-dbmigrate-rollback"
    assert the_container(job)["image"] == the_container(migrate)["image"] == "example-app:0.1.0"
    assert the_container(job)["env"] == without_when_ahead(the_container(migrate)["env"])
    assert ARCHIVE_KEY_ENV in the_container(job)["env"]
    (wait,) = pod_spec(rendered.one("Deployment"))["initContainers"]
    assert "DBMIGRATE_ARCHIVE_KEY" not in env_of(wait)  # `dbmigrate wait` does not read the archive
    for manifest in rendered.manifests:
        validate(manifest)


# --- the schema ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"rollback": {"enabled": True, "schema": "sometimes"}}, "/rollback/schema"),
        ({"rollback": {"schema": "AUTO"}}, "/rollback/schema"),
        ({"rollback": {"schema": ""}}, "/rollback/schema"),
        ({"rollback": {"to": 42}}, "/rollback/to"),  # a number: quote revision ids ("0042")
        ({"rollback": {"to": "--schema=always"}}, "/rollback/to"),
        ({"rollback": {"to": "abc def"}}, "/rollback/to"),
        ({"rollback": {"enabled": "yes"}}, "/rollback/enabled"),
        ({"rollback": {"hook": {"deletePolicy": "always"}}}, "/rollback/hook/deletePolicy"),
        ({"rollback": {"hook": {"events": ["pre-upgrade"]}}}, "additional properties 'events' not allowed"),
        ({"rollback": {"activeDeadlineSeconds": 0}}, "/rollback/activeDeadlineSeconds"),
        ({"rollback": {"downgrade": True}}, "additional properties 'downgrade' not allowed"),
        ({"archive": {"keySecret": {"name": "shop-archive", "key": ""}}}, "/archive/keySecret/key"),
        ({"archive": {"key": "s3cr3t"}}, "additional properties 'key' not allowed"),
    ],
)
def test_the_schema_rejects_invalid_rollback_and_archive_values(values: dict[str, Any], complaint: str) -> None:
    with pytest.raises(helm.HelmValuesError) as failure:
        render_chart(values)
    assert complaint in str(failure.value)
