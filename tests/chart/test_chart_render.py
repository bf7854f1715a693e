"""The Helm chart, rendered and linted by the real Helm engine, and every manifest validated against the
Kubernetes schemas: hooks, credentials, the "restricted" Pod Security Standard, metrics, Argo CD, the
umbrella example and the schema that keeps passwords out of plain values.
"""

from __future__ import annotations

import base64
import re
import shutil
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest

from tests.chart.local_cluster import (
    CHART,
    Manifest,
    Rendered,
    build_umbrella,
    containers,
    pod_spec,
    render,
    validate,
    walk_strings,
)

PASSWORD = "S3cr3t-pw_71"
SECRET_URL = f"postgresql://app:{PASSWORD}@db.prod:5432/shop"
# A URL with a password in it: user:password@ (what must never be a plain value).
PASSWORD_URL = re.compile(r"://[^/@\s]*:[^/@\s]*@")

VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "existing-secret": {"database": {"existingSecret": {"name": "shop-db", "key": "uri"}}},
    "chart-secret": {"database": {"source": "secret", "secret": {"url": SECRET_URL}}},
    "url-file": {"database": {"source": "urlFile", "urlFile": {"secretName": "shop-db", "key": "uri"}}},
    "password-file": {
        "database": {
            "source": "passwordFile",
            "passwordFile": {"url": "postgresql://app@db.prod:5432/shop", "secretName": "postgres", "key": "pw"},
        }
    },
    "argocd": {"argocd": {"enabled": True}, "database": {"source": "secret", "secret": {"url": SECRET_URL}}},
    "metrics": {
        "metrics": {
            "pushgateway": {"url": "http://pushgateway.monitoring:9091"},
            "textfile": {"path": "/var/lib/node-exporter/textfile/dbmigrate.prom"},
        }
    },
    "custom-image": {
        "image": {"repository": "registry.example.com/shop/api", "tag": "2.4.1", "pullPolicy": "Always"},
        "imagePullSecrets": [{"name": "regcred"}],
        "command": ["/opt/venv/bin/dbmigrate"],
        "workingDir": "/srv/shop",
        "config": "migrations/alembic.ini",
        "migration": {
            "args": ["upgrade", "--lock-timeout", "5"],
            "backoffLimit": 0,
            "activeDeadlineSeconds": 1700,
            "ttlSecondsAfterFinished": 86400,
            "hook": {"weight": -5, "deletePolicy": "before-hook-creation,hook-succeeded"},
        },
        "test": {"args": ["status", "--check", "--format", "json"]},
        "settings": {"lockTimeout": 5, "statementTimeout": 0, "waitTimeout": "30", "appVersion": "2.4.1-rc1"},
        "serviceAccountName": "shop-migrations",
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "db", "effect": "NoSchedule"}],
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {"matchExpressions": [{"key": "pool", "operator": "In", "values": ["general"]}]}
                    ]
                }
            }
        },
        "podAnnotations": {"sidecar.istio.io/inject": "false"},
        "podLabels": {"team": "payments"},
        "labels": {"cost-center": "cc-42"},
        "priorityClassName": "high",
        "extraEnv": [
            {"name": "SHOP_MODE", "value": "migrate"},
            {"name": "SHOP_API_KEY", "valueFrom": {"secretKeyRef": {"name": "shop-api", "key": "key"}}},
        ],
        "extraEnvFrom": [{"configMapRef": {"name": "shop-config"}}],
        "extraVolumes": [{"name": "ca", "configMap": {"name": "shop-ca"}}],
        "extraVolumeMounts": [{"name": "ca", "mountPath": "/etc/ssl/shop", "readOnly": True}],
        "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}},
    },
}


@pytest.fixture(scope="module")
def umbrella(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_umbrella(tmp_path_factory.mktemp("umbrella"))


@pytest.fixture(scope="module")
def renders(umbrella: Path) -> dict[str, Rendered]:
    rendered = {name: render(CHART, values) for name, values in VALUE_SETS.items()}
    rendered["umbrella"] = render(umbrella, upgrade=True)
    return rendered


def every_render(renders: dict[str, Rendered]) -> list[tuple[str, Manifest]]:
    return [(name, manifest) for name, rendered in renders.items() for manifest in rendered.manifests]


def lint_findings(report: dict[str, Any]) -> list[str]:
    """Warnings and errors (severity 2 and 3) of a lint report; info messages are fine."""
    return [f"{m['path']}: {m['error']}" for m in report["messages"] if m["severity"] >= 2] + report["errors"]


# --- lint ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value_set", sorted(VALUE_SETS))
def test_the_chart_lints_without_errors_or_warnings(value_set: str) -> None:
    report = helm.lint(CHART, VALUE_SETS[value_set], strict=True, kube_version="v1.30.0")
    assert report["total_charts_linted"] == 1
    assert lint_findings(report) == []


def test_the_umbrella_example_lints_without_errors_or_warnings(umbrella: Path) -> None:
    report = helm.lint(umbrella, strict=True, with_subcharts=True, kube_version="v1.30.0")
    assert lint_findings(report) == []
    assert [d["status"] for d in helm.dependency_list(umbrella)] == ["ok"]


def test_lint_reports_values_the_schema_rejects() -> None:
    report = helm.lint(CHART, {"database": {"url": SECRET_URL}}, strict=True)
    assert any("additional properties 'url' not allowed" in finding for finding in lint_findings(report))


# --- every manifest ----------------------------------------------------------------------------------


def test_every_manifest_is_valid_for_kubernetes_1_30_and_later(renders: dict[str, Rendered]) -> None:
    checked = 0
    for _name, manifest in every_render(renders):
        validate(manifest)
        checked += 1
    assert checked >= 2 * len(renders)


def test_a_manifest_with_an_unknown_field_fails_validation(renders: dict[str, Rendered]) -> None:
    # The validation above would catch a misspelt field: prove it on a copy of the rendered Job.
    job = renders["defaults"].one("Job")
    broken = Manifest(job.source, {**job.body, "spec": {**job.body["spec"], "backoffLimits": 1}})
    with pytest.raises(kubernetes_validate.ValidationError, match="backoffLimits"):
        validate(broken)


def dbmigrate_pods(renders: dict[str, Rendered]) -> list[tuple[str, Manifest]]:
    kinds = {"Pod", "Job", "Deployment"}
    return [(name, m) for name, m in every_render(renders) if m.kind in kinds]


def test_every_container_meets_the_restricted_pod_security_standard(renders: dict[str, Rendered]) -> None:
    pods = dbmigrate_pods(renders)
    assert {m.kind for _, m in pods} == {"Pod", "Job", "Deployment"}
    for name, manifest in pods:
        spec = pod_spec(manifest)
        where = f"{name}: {manifest.kind}/{manifest.name}"
        assert spec["automountServiceAccountToken"] is False, where
        pod_context = spec["securityContext"]
        assert pod_context["runAsNonRoot"] is True, where
        assert pod_context["seccompProfile"] == {"type": "RuntimeDefault"}, where
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        assert not any("hostPath" in v for v in volumes.values()), where
        for container in containers(spec):
            at = f"{where} container {container['name']}"
            context = container["securityContext"]
            assert context["runAsNonRoot"] is True, at
            assert context["runAsUser"] == 10001 and context["runAsGroup"] == 10001, at
            assert context["allowPrivilegeEscalation"] is False, at
            assert context["readOnlyRootFilesystem"] is True, at
            assert context["capabilities"] == {"drop": ["ALL"]}, at
            assert context["seccompProfile"] == {"type": "RuntimeDefault"}, at
            assert "privileged" not in context or context["privileged"] is False, at
            tmp = [m for m in container.get("volumeMounts", []) if m["mountPath"] == "/tmp"]
            assert len(tmp) == 1 and "emptyDir" in volumes[tmp[0]["name"]], f"{at}: /tmp must be an emptyDir"


def test_every_dbmigrate_container_names_its_pod_and_reports_failures(renders: dict[str, Rendered]) -> None:
    for name, manifest in dbmigrate_pods(renders):
        for container in containers(pod_spec(manifest)):
            if container["name"] == "app":
                continue  # the example application's own container
            at = f"{name}: {manifest.kind}/{manifest.name} container {container['name']}"
            env = {e["name"]: e for e in container["env"]}
            assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}, at
            assert container["terminationMessagePolicy"] == "FallbackToLogsOnError", at
            assert container["command"][-1].endswith("dbmigrate") or container["command"] == ["dbmigrate"], at


def test_no_password_in_any_plain_value_argument_or_annotation(renders: dict[str, Rendered]) -> None:
    for name, manifest in every_render(renders):
        where = f"{name}: {manifest.kind}/{manifest.name}"
        if manifest.kind == "Secret":
            # The one place a password may be: base64 data of a Secret (here the chart-created one).
            assert set(manifest.body) >= {"data"} and "stringData" not in manifest.body, where
            body = {k: v for k, v in manifest.body.items() if k != "data"}
            assert PASSWORD not in str(body), where
            continue
        for text in walk_strings(manifest.body):
            assert PASSWORD not in text, where
            assert not PASSWORD_URL.search(text), f"{where}: {text}"
        if manifest.kind in {"Pod", "Job", "Deployment"}:
            for container in containers(pod_spec(manifest)):
                env = {variable["name"]: variable for variable in container.get("env", [])}
                if "DATABASE_URL" in env:
                    assert set(env["DATABASE_URL"]) == {"name", "valueFrom"}, where
                assert not any(str(arg).startswith("--database-url") for arg in container.get("args", [])), where
    for name, rendered in renders.items():
        assert PASSWORD not in rendered.notes, name


def test_the_chart_created_secret_holds_the_url_and_is_the_only_place_it_is(renders: dict[str, Rendered]) -> None:
    secret = renders["chart-secret"].one("Secret")
    assert base64.b64decode(secret.body["data"]["DATABASE_URL"]).decode() == SECRET_URL
    for manifest in renders["chart-secret"].manifests:
        if manifest.kind == "Secret":
            continue
        assert SECRET_URL not in str(manifest.body)
        assert base64.b64encode(SECRET_URL.encode()).decode() not in str(manifest.body)


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"database": {"url": SECRET_URL}}, "additional properties 'url' not allowed"),
        ({"database": {"existingSecret": {"url": SECRET_URL}}}, "additional properties 'url' not allowed"),
        (
            {"database": {"source": "passwordFile", "passwordFile": {"url": SECRET_URL, "secretName": "pg"}}},
            "/database/passwordFile/url",
        ),
        ({"database": {"source": "secret"}}, "/database/secret/url"),
        ({"database": {"source": "urlFile"}}, "/database/urlFile/secretName"),
        ({"database": {"source": "vault"}}, "/database/source"),
        ({"extraEnv": [{"name": "DATABASE_URL", "value": "postgresql://app@db/shop"}]}, "/extraEnv/0"),
        ({"extraEnv": [{"name": "DBMIGRATE_DATABASE_URL", "value": "sqlite:///x.db"}]}, "/extraEnv/0"),
        ({"extraEnv": [{"name": "SHOP_DB", "value": SECRET_URL}]}, "/extraEnv/0/value"),
        ({"migration": {"args": ["upgrade", "--database-url", "postgresql://app@db/shop"]}}, "/migration/args/1"),
        ({"migration": {"args": ["upgrade", f"--database-url={SECRET_URL}"]}}, "/migration/args/1"),
        ({"test": {"args": ["status", SECRET_URL]}}, "/test/args/1"),
        ({"command": ["sh", "-c", f"DATABASE_URL={SECRET_URL} dbmigrate upgrade"]}, "/command/2"),
        ({"image": {"repository": ""}}, "/image/repository"),
        ({"migration": {"hook": {"deletePolicy": "always"}}}, "/migration/hook/deletePolicy"),
        ({"migration": {"activeDeadlineSeconds": "5m"}}, "/migration/activeDeadlineSeconds"),
        ({"metrics": {"pushgateway": {"grouping": "release shop"}}}, "/metrics/pushgateway/grouping"),
        ({"databse": {}}, "additional properties 'databse' not allowed"),
    ],
)
def test_the_schema_rejects_plain_urls_and_mistakes(values: dict[str, Any], complaint: str) -> None:
    with pytest.raises(helm.HelmValuesError) as failure:
        render(CHART, values)
    assert complaint in str(failure.value)
    assert PASSWORD not in str(failure.value)  # the error is safe to show in CI logs


# --- the migration Job and its hooks -------------------------------------------------------------------


def test_the_migration_job_is_a_pre_install_and_pre_upgrade_hook(renders: dict[str, Rendered]) -> None:
    rendered = renders["defaults"]
    job = rendered.one("Job", "-migrate")
    assert job.name == "shop-dbmigrate-migrate"
    assert job.annotations["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert job.annotations["helm.sh/hook-weight"] == "0"
    assert job.annotations["helm.sh/hook-delete-policy"] == "before-hook-creation"
    assert not any(key.startswith("argocd.argoproj.io/") for key in job.annotations)
    assert rendered.hooks("pre-install") == rendered.hooks("pre-upgrade") == [job]
    assert rendered.hooks("pre-rollback") == []  # an older image must not try to upgrade a newer schema
    assert rendered.without_hooks() == []  # a release of its own holds only hooks
    spec = job.body["spec"]
    assert spec["backoffLimit"] == 2
    assert spec["activeDeadlineSeconds"] == 270  # below Helm's default --timeout of 300 s
    assert "ttlSecondsAfterFinished" not in spec
    assert spec["template"]["spec"]["restartPolicy"] == "Never"
    fail_job = spec["podFailurePolicy"]["rules"][0]
    assert fail_job == {
        "action": "FailJob",
        "onExitCodes": {"containerName": "migrate", "operator": "In", "values": [1, 2, 5]},
    }
    (container,) = spec["template"]["spec"]["containers"]
    assert container["name"] == "migrate"
    assert container["image"] == "example-app:0.1.0"  # the example application's image, tag = appVersion
    assert container["command"] == ["dbmigrate"] and container["args"] == ["upgrade"]
    assert container["workingDir"] == "/app"
    env = {e["name"]: e for e in container["env"]}
    assert env["DATABASE_URL"]["valueFrom"] == {"secretKeyRef": {"name": "shop-database", "key": "DATABASE_URL"}}
    assert env["DBMIGRATE_LOG_FORMAT"]["value"] == "json"
    assert env["DBMIGRATE_APP_VERSION"]["value"] == "0.1.0"
    assert not any(name.startswith("DBMIGRATE_METRICS") or name == "DBMIGRATE_PUSHGATEWAY" for name in env)
    assert "shop-dbmigrate-migrate" in rendered.notes and "helm test shop" in rendered.notes


def test_the_chart_created_secret_is_a_hook_that_runs_before_the_job(renders: dict[str, Rendered]) -> None:
    rendered = renders["chart-secret"]
    secret, job = rendered.hooks("pre-install")
    assert (secret.kind, job.kind) == ("Secret", "Job")
    assert secret.name == "shop-dbmigrate-database"
    assert secret.annotations["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert secret.annotations["helm.sh/hook-delete-policy"] == "before-hook-creation"
    assert secret.hook_weight < job.hook_weight
    assert rendered.hooks("pre-upgrade") == [secret, job]
    env = {e["name"]: e for e in job.body["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {"name": secret.name, "key": "DATABASE_URL"}


def test_a_url_file_is_mounted_from_the_secret_and_never_an_environment_value(renders: dict[str, Rendered]) -> None:
    spec = pod_spec(renders["url-file"].one("Job"))
    (container,) = spec["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert "DATABASE_URL" not in env and "DBMIGRATE_DATABASE_URL" not in env
    assert env["DBMIGRATE_DATABASE_URL_FILE"]["value"] == "/var/run/secrets/dbmigrate/database/uri"
    volumes = {v["name"]: v for v in spec["volumes"]}
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == "/var/run/secrets/dbmigrate/database")
    assert mount["readOnly"] is True
    assert volumes[mount["name"]]["secret"] == {
        "secretName": "shop-db",
        "defaultMode": 0o444,
        "items": [{"key": "uri", "path": "uri"}],
    }


def test_a_password_file_comes_with_a_url_without_password(renders: dict[str, Rendered]) -> None:
    (container,) = pod_spec(renders["password-file"].one("Job"))["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["DBMIGRATE_DATABASE_URL"] == "postgresql://app@db.prod:5432/shop"
    assert env["DBMIGRATE_DATABASE_PASSWORD_FILE"] == "/var/run/secrets/dbmigrate/database/pw"
    assert "DATABASE_URL" not in env


def test_argo_cd_annotations_only_when_enabled(renders: dict[str, Rendered]) -> None:
    secret, job = renders["argocd"].hooks("pre-install")
    for manifest in (secret, job):
        assert manifest.annotations["argocd.argoproj.io/hook"] == "PreSync"
        assert manifest.annotations["argocd.argoproj.io/hook-delete-policy"] == "BeforeHookCreation"
        assert manifest.annotations["helm.sh/hook"] == "pre-install,pre-upgrade"  # Helm keeps working too
    assert int(secret.annotations["argocd.argoproj.io/sync-wave"]) < int(
        job.annotations["argocd.argoproj.io/sync-wave"]
    )
    for name in ("defaults", "chart-secret", "metrics", "umbrella"):
        for manifest in renders[name].manifests:
            assert not any(key.startswith("argocd.argoproj.io/") for key in manifest.annotations), name


def test_metrics_are_wired_to_the_job_only(renders: dict[str, Rendered]) -> None:
    rendered = renders["metrics"]
    spec = pod_spec(rendered.one("Job"))
    (container,) = spec["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["DBMIGRATE_PUSHGATEWAY"] == "http://pushgateway.monitoring:9091"
    assert env["DBMIGRATE_METRICS_GROUPING"] == "release=shop,namespace=prod"
    assert env["DBMIGRATE_METRICS_TEXTFILE"] == "/var/lib/node-exporter/textfile/dbmigrate.prom"
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == "/var/lib/node-exporter/textfile")
    assert {v["name"]: v for v in spec["volumes"]}[mount["name"]] == {"name": mount["name"], "emptyDir": {}}
    (test_container,) = pod_spec(rendered.one("Pod"))["containers"]
    assert not any(e["name"].startswith(("DBMIGRATE_METRICS", "DBMIGRATE_PUSH")) for e in test_container["env"])
    grouping = render(CHART, {"metrics": {"pushgateway": {"url": "http://pg:9091", "grouping": "app=shop,env=prod"}}})
    (container,) = pod_spec(grouping.one("Job"))["containers"]
    assert {e["name"]: e.get("value") for e in container["env"]}["DBMIGRATE_METRICS_GROUPING"] == "app=shop,env=prod"


def test_image_command_args_and_pod_settings_are_overridable(renders: dict[str, Rendered]) -> None:
    rendered = renders["custom-image"]
    job = rendered.one("Job")
    assert job.hook_weight == -5
    assert job.annotations["helm.sh/hook-delete-policy"] == "before-hook-creation,hook-succeeded"
    assert job.body["metadata"]["labels"]["cost-center"] == "cc-42"
    spec = job.body["spec"]
    assert (spec["backoffLimit"], spec["activeDeadlineSeconds"], spec["ttlSecondsAfterFinished"]) == (0, 1700, 86400)
    template = spec["template"]
    assert template["metadata"]["labels"]["team"] == "payments"
    assert template["metadata"]["annotations"] == {"sidecar.istio.io/inject": "false"}
    pod = template["spec"]
    assert pod["serviceAccountName"] == "shop-migrations"
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert pod["tolerations"][0]["key"] == "dedicated"
    assert pod["affinity"]["nodeAffinity"]
    assert pod["priorityClassName"] == "high"
    assert {v["name"] for v in pod["volumes"]} == {"dbmigrate-tmp", "ca"}
    (container,) = pod["containers"]
    assert container["image"] == "registry.example.com/shop/api:2.4.1"
    assert container["imagePullPolicy"] == "Always"
    assert container["command"] == ["/opt/venv/bin/dbmigrate"]
    assert container["args"] == ["upgrade", "--lock-timeout", "5"]
    assert container["workingDir"] == "/srv/shop"
    assert container["resources"] == {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}}
    assert container["envFrom"] == [{"configMapRef": {"name": "shop-config"}}]
    assert {"name": "ca", "mountPath": "/etc/ssl/shop", "readOnly": True} in container["volumeMounts"]
    env = {e["name"]: e for e in container["env"]}
    assert env["DBMIGRATE_CONFIG"]["value"] == "migrations/alembic.ini"
    assert env["DBMIGRATE_APP_VERSION"]["value"] == "2.4.1-rc1"
    assert env["DBMIGRATE_LOCK_TIMEOUT"]["value"] == "5"
    assert env["DBMIGRATE_STATEMENT_TIMEOUT"]["value"] == "0"  # 0 means "no limit", so it is passed on
    assert env["DBMIGRATE_WAIT_TIMEOUT"]["value"] == "30"
    assert "DBMIGRATE_LOCK_WAIT_TIMEOUT" not in env  # empty: dbmigrate's default
    assert env["SHOP_MODE"]["value"] == "migrate"
    assert env["SHOP_API_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "shop-api"
    (status,) = pod_spec(rendered.one("Pod"))["containers"]
    assert status["args"] == ["status", "--check", "--format", "json"]
    assert status["image"] == container["image"] and status["command"] == container["command"]


def test_a_digest_pins_the_image_and_the_app_version_stays_the_tag() -> None:
    digest = "sha256:" + "ab" * 32
    rendered = render(CHART, {"image": {"repository": "ghcr.io/acme/shop", "tag": "3.0.0", "digest": digest}})
    (container,) = pod_spec(rendered.one("Job"))["containers"]
    assert container["image"] == f"ghcr.io/acme/shop:3.0.0@{digest}"
    assert {e["name"]: e.get("value") for e in container["env"]}["DBMIGRATE_APP_VERSION"] == "3.0.0"


def test_the_helm_test_pod_checks_the_database_is_at_head(renders: dict[str, Rendered]) -> None:
    pod = renders["defaults"].one("Pod", "-test")
    assert pod.annotations["helm.sh/hook"] == "test"
    assert pod.annotations["helm.sh/hook-delete-policy"] == "before-hook-creation"
    spec = pod_spec(pod)
    assert spec["restartPolicy"] == "Never"
    (container,) = spec["containers"]
    assert container["command"] + container["args"] == ["dbmigrate", "status", "--check"]
    disabled = render(CHART, {"test": {"enabled": False}, "migration": {"enabled": False}})
    assert disabled.manifests == []


def test_long_release_names_stay_within_kubernetes_name_limits() -> None:
    rendered = render(CHART, {"database": {"source": "secret", "secret": {"url": SECRET_URL}}}, release="r" * 53)
    for manifest in rendered.manifests:
        assert len(manifest.name) <= 63, manifest.name
        validate(manifest)
    assert {m.name.rsplit("-", 1)[-1] for m in rendered.manifests} == {"database", "migrate", "test"}


# --- as a dependency: the umbrella example and the wait init container --------------------------------------


def test_the_umbrella_release_migrates_before_the_deployment_and_its_pods_wait(renders: dict[str, Rendered]) -> None:
    rendered = renders["umbrella"]
    (job,) = rendered.hooks("pre-upgrade")
    assert job.name == "shop-dbmigrate-migrate"
    deployment = rendered.one("Deployment")
    assert {m.kind for m in rendered.without_hooks()} == {"Deployment", "Service"}
    spec = pod_spec(deployment)
    (wait,) = spec["initContainers"]
    (app,) = spec["containers"]
    assert wait["name"] == "dbmigrate-wait"
    assert wait["image"] == app["image"] == "example-app:0.1.0"
    assert wait["command"] + wait["args"] == ["dbmigrate", "wait", "--timeout", "300"]
    assert wait["workingDir"] == "/app"
    job_container = pod_spec(job)["containers"][0]
    assert wait["env"] == job_container["env"]  # the same database URL source and settings as the Job
    volumes = {v["name"] for v in spec["volumes"]}
    assert {m["name"] for m in wait["volumeMounts"]} <= volumes
    # The application reads its URL from the same Secret as dbmigrate.
    app_env = {e["name"]: e for e in app["env"]}
    assert app_env["DATABASE_URL"]["valueFrom"] == job_container["env"][1]["valueFrom"]


def test_the_umbrella_can_turn_dbmigrate_off(umbrella: Path) -> None:
    rendered = render(umbrella, {"dbmigrate": {"enabled": False}})
    assert [m.kind for m in rendered.manifests if m.hook_events] == []
    assert "initContainers" not in pod_spec(rendered.one("Deployment"))


def test_the_wait_template_takes_the_root_context_too(tmp_path: Path) -> None:
    """An application chart can include the templates with `$` alone: dbmigrate's values and defaults."""
    parent = tmp_path / "charts-workspace" / "examples" / "rooted"
    shutil.copytree(CHART, tmp_path / "charts-workspace" / "charts" / "dbmigrate")
    (parent / "templates").mkdir(parents=True)
    (parent / "Chart.yaml").write_text(
        "apiVersion: v2\nname: rooted\nversion: 1.0.0\nappVersion: '9.9.9'\n"
        "dependencies:\n  - name: dbmigrate\n    version: 0.1.0\n    repository: file://../../charts/dbmigrate\n"
    )
    (parent / "values.yaml").write_text(
        "dbmigrate:\n  database:\n    source: urlFile\n    urlFile:\n      secretName: db\n"
    )
    (parent / "templates" / "pod.yaml").write_text(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: probe\nspec:\n"
        "  securityContext: {runAsNonRoot: true, seccompProfile: {type: RuntimeDefault}}\n"
        '  initContainers:\n    {{- include "dbmigrate.waitInitContainer" $ | nindent 4 }}\n'
        "  containers:\n    - {name: app, image: app}\n"
        '  volumes:\n    {{- include "dbmigrate.waitVolumes" $ | nindent 4 }}\n'
    )
    helm.dependency_update(parent, skip_refresh=True)
    rendered = render(parent)
    pod = rendered.one("Pod", "probe")
    validate(pod)
    (wait,) = pod.body["spec"]["initContainers"]
    # The default tag is dbmigrate's appVersion (as in its Job), not the parent chart's.
    assert wait["image"] == "example-app:0.1.0" == pod_spec(rendered.one("Job"))["containers"][0]["image"]
    env = {e["name"]: e.get("value") for e in wait["env"]}
    assert env["DBMIGRATE_DATABASE_URL_FILE"] == "/var/run/secrets/dbmigrate/database/url"
    volumes = {v["name"]: v for v in pod.body["spec"]["volumes"]}
    assert volumes["dbmigrate-database"]["secret"]["secretName"] == "db"
    assert "dbmigrate-tmp" in volumes
