"""The Helm chart, rendered and linted by the real Helm engine, and every manifest validated against the
Kubernetes schemas: hooks, credentials, the "restricted" Pod Security Standard, metrics, Argo CD, the
umbrella example and the schema that keeps passwords out of plain values.
"""

from __future__ import annotations

import base64
import importlib.util
import re
import shutil
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml
from sqlalchemy.engine import make_url

from tests.chart.local_cluster import (
    CHART,
    REPO,
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
    walk_strings,
)

# charts/generate_readme.py, the script that writes the chart README's values table (not a package).
_spec = importlib.util.spec_from_file_location("generate_readme", REPO / "charts" / "generate_readme.py")
assert _spec and _spec.loader
generate_readme = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(generate_readme)

PASSWORD = "S3cr3t-pw_71"
SECRET_URL = f"postgresql://app:{PASSWORD}@db.prod:5432/shop"
# Passwords SQLAlchemy finds and a naive user:password@ pattern misses: a "/" in the password (SQLAlchemy
# splits user and password at the first ":" and ends the password at the next "@"), a query parameter.
SLASH_URL = "postgresql://app:pa/ss@db/shop"
QUERY_URL = "postgresql://app@db/shop?sslmode=require&password=qpw"
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
    "cloud": {
        "global": {"imageRegistry": "mirror.example.com", "imagePullSecrets": ["mirror-pull", {"name": "regcred"}]},
        "imagePullSecrets": [{"name": "regcred"}],
        "serviceAccount": {
            "create": True,
            "annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/shop-migrations"},
        },
        "networkPolicy": {
            "enabled": True,
            "databasePeers": [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "postgresql"}}}],
            "extraEgress": [{"to": [{"namespaceSelector": {}}], "ports": [{"protocol": "TCP", "port": 9091}]}],
        },
        "rollback": {"enabled": True},
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
            "hook": {"weight": -5, "deletePolicy": "before-hook-creation,hook-succeeded"},
        },
        "test": {"args": ["status", "--check", "--format", "json"]},
        "settings": {
            "lockTimeout": 5,
            "statementTimeout": 1500,
            "waitTimeout": "45",
            "lockWaitTimeout": "",
            "lockConflictWait": 10,
            "maxLockRetries": 4,
            "historyTable": "shop_migrations",
            "tableSchema": "ops",
            "logFormat": "text",
            "appVersion": "2.4.1-rc1",
        },
        "serviceAccount": {"name": "shop-migrations"},
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
        "podAnnotations": {"prometheus.io/scrape": "false"},
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
    rendered = {name: render_chart(values) for name, values in VALUE_SETS.items()}
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
    report = helm.lint(CHART, merged(REQUIRED_VALUES, VALUE_SETS[value_set]), strict=True, kube_version="v1.30.0")
    assert report["total_charts_linted"] == 1
    assert lint_findings(report) == []


def test_the_umbrella_example_lints_without_errors_or_warnings(umbrella: Path) -> None:
    report = helm.lint(umbrella, strict=True, with_subcharts=True, kube_version="v1.30.0")
    assert lint_findings(report) == []
    assert [d["status"] for d in helm.dependency_list(umbrella)] == ["ok"]


def test_lint_reports_values_the_schema_rejects() -> None:
    report = helm.lint(CHART, merged(REQUIRED_VALUES, {"database": {"url": SECRET_URL}}), strict=True)
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
        ({"database": {"source": "vault"}}, "at '/database/source': value must be one of"),
        ({"migration": {"hook": {"events": ["pre-install", "pre-rollback"]}}}, "at '/migration/hook/events/1'"),
        ({"migration": {"hook": {"events": ["post-upgrade"]}}}, "value must be one of 'pre-install', 'pre-upgrade'"),
        ({"migration": {"hook": {"deletePolicy": "always"}}}, "/migration/hook/deletePolicy"),
        ({"migration": {"activeDeadlineSeconds": 0}}, "at '/migration/activeDeadlineSeconds': minimum"),
        ({"migration": {"ttlSecondsAfterFinished": "1d"}}, "at '/migration/ttlSecondsAfterFinished'"),
        ({"metrics": {"pushgateway": {"grouping": "release shop"}}}, "/metrics/pushgateway/grouping"),
        ({"serviceAccountName": "shop"}, "additional properties 'serviceAccountName' not allowed"),
        ({"databse": {}}, "additional properties 'databse' not allowed"),
    ],
)
def test_the_schema_rejects_structural_mistakes_with_messages_that_name_the_value(
    values: dict[str, Any], complaint: str
) -> None:
    """What the schema refuses, its validator says readably: the path, and what is allowed instead."""
    with pytest.raises(helm.HelmValuesError) as failure:
        render_chart(values)
    assert complaint in str(failure.value)
    assert "' failed" not in str(failure.value)  # never the unreadable "'not' failed" or "'anyOf' failed"
    assert PASSWORD not in str(failure.value)  # the error is safe to show in CI logs


NO_IMAGE: dict[str, Any] = {"image": {"repository": "", "tag": ""}}


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        # Fail fast: no unpullable default image, no guessed Secret.
        (NO_IMAGE, "image.repository is not set: dbmigrate runs your application's image"),
        ({"image": {"tag": ""}}, "image.tag is not set for example-app"),
        ({"image": {"tag": 1.1}}, 'image.tag must be a string, not the number 1.1: quote it (tag: "1.10")'),
        ({"global": {"image": {"tag": 2}}, **NO_IMAGE}, "image.repository is not set"),
        ({"database": {"existingSecret": {"name": ""}}}, "no database configured: set database.existingSecret.name"),
        ({"database": {"source": "secret"}}, "database.source=secret needs database.secret.url"),
        ({"database": {"source": "urlFile"}}, "database.source=urlFile needs database.urlFile.secretName"),
        # Passwords, wherever they would be plain text.
        (
            {"database": {"source": "passwordFile", "passwordFile": {"url": SECRET_URL, "secretName": "pg"}}},
            "database.passwordFile.url must not contain a password",
        ),
        (
            {"database": {"source": "passwordFile", "passwordFile": {"url": SLASH_URL, "secretName": "pg"}}},
            "database.passwordFile.url must not contain a password",
        ),
        ({"extraEnv": [{"name": "DATABASE_URL", "value": "postgresql://app@db/shop"}]}, "extraEnv[0] (DATABASE_URL)"),
        ({"extraEnv": [{"name": "DBMIGRATE_DATABASE_URL", "value": "sqlite:///x.db"}]}, "never is a plain value"),
        ({"extraEnv": [{"name": "SHOP_DB", "value": SECRET_URL}]}, "extraEnv[0] (SHOP_DB): the value holds a URL"),
        ({"extraEnv": [{"name": "SHOP_DB", "value": SLASH_URL}]}, "extraEnv[0] (SHOP_DB): the value holds a URL"),
        ({"extraEnv": [{"name": "X", "value": QUERY_URL}]}, "extraEnv[0] (X): the value holds a URL with a password"),
        (
            {"extraEnv": [{"name": "A", "value": "1"}, {"name": "PGPASSWORD", "value": PASSWORD}]},
            "extraEnv[1] (PGPASSWORD): a password never is a plain value",
        ),
        ({"extraEnv": [{"name": "MYSQL_PWD", "value": PASSWORD}]}, "a password never is a plain value"),
        ({"podAnnotations": {"shop/db": SLASH_URL}}, "podAnnotations[shop/db] holds a URL with a password"),
        ({"migration": {"annotations": {"db": SECRET_URL}}}, "migration.annotations[db] holds a URL"),
        ({"migration": {"args": ["upgrade", "--database-url", "postgresql://app@db/shop"]}}, "migration.args[1]"),
        ({"migration": {"args": ["upgrade", f"--database-url={SECRET_URL}"]}}, "migration.args[1] holds a URL"),
        ({"rollback": {"extraArgs": ["--database-url", "postgresql://app@db/shop"]}}, "rollback.extraArgs[0]"),
        ({"test": {"args": ["status", SECRET_URL]}}, "test.args[1] holds a URL with a password"),
        ({"wait": {"args": ["wait", SLASH_URL]}}, "wait.args[1] holds a URL with a password"),
        ({"command": ["sh", "-c", f"DATABASE_URL={SECRET_URL} dbmigrate upgrade"]}, "command[2] holds a URL"),
        ({"metrics": {"pushgateway": {"url": "http://job:pw@pushgateway:9091"}}}, "metrics.pushgateway.url holds"),
        # Quantities.
        ({"tmpSizeLimit": "64 megs"}, 'tmpSizeLimit is "64 megs", not a Kubernetes quantity'),
        ({"resources": {"limits": {"memory": "1 GB"}}}, 'resources.limits.memory is "1 GB", not a Kubernetes quantity'),
        ({"migration": {"resources": {"requests": {"cpu": "half"}}}}, "migration.resources.requests.cpu"),
        # Waits that do not fit inside the deadline, which would end in DeadlineExceeded.
        (
            {"settings": {"lockWaitTimeout": 300}},
            "settings.lockWaitTimeout (300) does not fit in migration.activeDeadlineSeconds (270)",
        ),
        (
            {"settings": {"lockWaitTimeout": ""}},
            "settings.lockWaitTimeout (empty: dbmigrate's default 300) does not fit in migration.activeDeadlineSeconds",
        ),
        ({"settings": {"statementTimeout": ""}}, "settings.statementTimeout (empty: dbmigrate's default 3600)"),
        ({"settings": {"statementTimeout": 0}}, "settings.statementTimeout (0: no limit) does not fit in"),
        ({"settings": {"waitTimeout": "270"}}, "settings.waitTimeout (270) does not fit"),
        ({"settings": {"lockConflictWait": 600}}, "settings.lockConflictWait (600) does not fit"),
        ({"migration": {"activeDeadlineSeconds": 150}}, "settings.statementTimeout (180) does not fit in migration"),
        ({"migration": {"activeDeadlineSeconds": "5m"}}, "migration.activeDeadlineSeconds must be whole seconds"),
        (
            {"settings": {"waitTimeout": 150, "lockWaitTimeout": 150}},
            "settings.waitTimeout + settings.lockWaitTimeout (150 + 150) do not fit in migration.activeDeadlineSeconds",
        ),
        (
            {"rollback": {"enabled": True, "activeDeadlineSeconds": 100}},
            "does not fit in rollback.activeDeadlineSeconds (100)",
        ),
        # dbmigrate's own deadline is activeDeadlineSeconds minus deadlineMargin: the waits must fit in that.
        (
            {"settings": {"lockWaitTimeout": 260}},
            "settings.lockWaitTimeout (260) does not fit in migration.activeDeadlineSeconds (270) minus "
            "migration.deadlineMargin (15), 255 s: dbmigrate would stop at its deadline before that wait is over",
        ),
        (
            {"settings": {"waitTimeout": 100, "lockWaitTimeout": 150}, "migration": {"deadlineMargin": 20}},
            "settings.waitTimeout + settings.lockWaitTimeout (100 + 150) do not fit in "
            "migration.activeDeadlineSeconds (270) minus migration.deadlineMargin (20), 250 s",
        ),
        (
            {"migration": {"activeDeadlineSeconds": 10, "deadlineMargin": 10}},
            "migration.deadlineMargin (10) leaves no time in migration.activeDeadlineSeconds (10)",
        ),
        # Helm 4 fails a release whose hook Job the TTL controller deleted first.
        (
            {"migration": {"ttlSecondsAfterFinished": 600}},
            "migration.ttlSecondsAfterFinished cannot be used with Helm 4",
        ),
        (
            {"rollback": {"enabled": True, "ttlSecondsAfterFinished": 0}},
            "rollback.ttlSecondsAfterFinished cannot be used with Helm 4",
        ),
        ({"networkPolicy": {"enabled": True}}, "networkPolicy.enabled needs networkPolicy.databasePeers"),
    ],
)
def test_the_templates_refuse_what_the_schema_cannot_say_clearly(values: dict[str, Any], complaint: str) -> None:
    """Mistakes the schema lets through (or cannot explain) fail the render with a message that says
    what to do, also with --skip-schema-validation; never with the password in it."""
    with pytest.raises(helm.HelmRenderError) as failure:
        render_chart(values)
    message = str(failure.value)
    assert complaint in message
    for secret in (PASSWORD, "pa/ss", "qpw"):
        assert secret not in message  # the error is safe to show in CI logs


@pytest.mark.parametrize(
    "url",
    [
        SECRET_URL,
        SLASH_URL,
        QUERY_URL,
        "postgresql+psycopg://app:p%40ss@db:5432/shop",
        "postgresql://ops@corp:pw@db/shop",  # the user name "ops@corp" runs to the first ":"
        "mysql+pymysql://root:@db/shop",  # an empty password is no secret
        "postgresql://app@db/shop",
        "postgresql://db:5432/shop",
        "sqlite:///var/lib/shop.db",
    ],
)
def test_a_url_is_refused_exactly_when_sqlalchemy_finds_a_password_in_it(url: str) -> None:
    parsed = make_url(url)
    has_password = bool(parsed.password) or "password" in parsed.query
    values = {"extraEnv": [{"name": "SHOP_DB", "value": url}]}
    if has_password:
        with pytest.raises(helm.HelmRenderError, match=re.escape("extraEnv[0] (SHOP_DB): the value holds a URL")):
            render_chart(values)
    else:
        (container,) = pod_spec(render_chart(values).one("Job"))["containers"]
        assert {"name": "SHOP_DB", "value": url} in container["env"]


def test_the_template_checks_hold_without_the_schema(tmp_path: Path) -> None:
    """--skip-schema-validation (or a copy of the chart without its schema) skips none of the checks."""
    unchecked = tmp_path / "dbmigrate"
    shutil.copytree(CHART, unchecked)
    (unchecked / "values.schema.json").unlink()
    for values, complaint in [
        ({"image": {"tag": 1.1}}, "image.tag must be a string"),
        ({"extraEnv": [{"name": "PGPASSWORD", "value": PASSWORD}]}, "extraEnv[0] (PGPASSWORD)"),
        ({"tmpSizeLimit": "64 megs"}, "not a Kubernetes quantity"),
        ({"database": {"existingSecret": {"name": ""}}}, "no database configured"),
    ]:
        with pytest.raises(helm.HelmRenderError, match=re.escape(complaint)):
            render(unchecked, merged(REQUIRED_VALUES, values))


def test_deadlines_without_a_limit_check_nothing_and_a_database_url_without_password_passes() -> None:
    rendered = render_chart(
        {
            "migration": {"activeDeadlineSeconds": ""},
            "settings": {"statementTimeout": 0, "lockWaitTimeout": ""},
            "extraEnv": [
                {"name": "REPLICA_URL", "value": "postgresql://app@replica:5432/shop"},
                {"name": "PGPASSWORD", "valueFrom": {"secretKeyRef": {"name": "pg", "key": "password"}}},
                {"name": "DOCS", "value": "see https://example.com/a:b and ask ops@example.com"},
            ],
            "podAnnotations": {"example.com/db": "postgresql://app@db/shop"},
        }
    )
    spec = rendered.one("Job").body["spec"]
    assert "activeDeadlineSeconds" not in spec
    env = {e["name"]: e for e in spec["template"]["spec"]["containers"][0]["env"]}
    assert env["DBMIGRATE_STATEMENT_TIMEOUT"]["value"] == "0"
    assert "DBMIGRATE_DEADLINE" not in env
    assert env["REPLICA_URL"]["value"] == "postgresql://app@replica:5432/shop"


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
    assert container["image"] == "example-app:0.1.0"  # image.repository and image.tag, both required
    assert container["command"] == ["dbmigrate"] and container["args"] == ["upgrade"]
    assert container["workingDir"] == "/app"
    env = {e["name"]: e for e in container["env"]}
    assert env["DATABASE_URL"]["valueFrom"] == {"secretKeyRef": {"name": "shop-database", "key": "DATABASE_URL"}}
    # The default waits, each below dbmigrate's own deadline: 15 s before the Job's 270 s (dbmigrate's own
    # defaults would not fit); a revert to an older image rolls back instead of failing the Job.
    assert {name: e.get("value") for name, e in env.items() if name.startswith("DBMIGRATE_")} == {
        "DBMIGRATE_APP_VERSION": "0.1.0",
        "DBMIGRATE_LOG_FORMAT": "json",
        "DBMIGRATE_WAIT_TIMEOUT": "30",
        "DBMIGRATE_LOCK_WAIT_TIMEOUT": "120",
        "DBMIGRATE_STATEMENT_TIMEOUT": "180",
        "DBMIGRATE_LOCK_CONFLICT_WAIT": "30",
        "DBMIGRATE_DEADLINE": "255",
        "DBMIGRATE_WHEN_AHEAD": "rollback",
    }
    # Service-mesh sidecars would outlive dbmigrate and keep the Job from completing.
    annotations = spec["template"]["metadata"]["annotations"]
    assert annotations == {"sidecar.istio.io/inject": "false", "linkerd.io/inject": "disabled"}
    assert rendered.one("Pod", "-test").annotations["sidecar.istio.io/inject"] == "false"
    assert "shop-dbmigrate-migrate" in rendered.notes and "helm test shop" in rendered.notes
    assert "before the Job's deadline of 270 s" in rendered.notes
    assert "after 255 s, its own deadline (exit 3)" in rendered.notes


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


def test_the_service_account_network_policy_and_global_registry(renders: dict[str, Rendered]) -> None:
    rendered = renders["cloud"]
    account, policy = rendered.one("ServiceAccount"), rendered.one("NetworkPolicy")
    migrate, rollback, test_pod = rendered.one("Job", "-migrate"), rendered.one("Job", "-rollback"), rendered.one("Pod")
    # Both exist before the first Job runs (hooks one weight below), for helm rollback too.
    assert rendered.hooks("pre-install")[:2] == sorted([account, policy], key=lambda m: m.name)
    assert rendered.hooks("pre-rollback")[-1] == rollback and account in rendered.hooks("pre-rollback")
    assert account.name == "shop-dbmigrate"
    assert account.annotations["eks.amazonaws.com/role-arn"].endswith(":role/shop-migrations")
    assert account.body["automountServiceAccountToken"] is False
    for manifest in (migrate, rollback, test_pod):
        spec = pod_spec(manifest)
        assert spec["serviceAccountName"] == "shop-dbmigrate", manifest.name
        assert spec["imagePullSecrets"] == [{"name": "mirror-pull"}, {"name": "regcred"}], manifest.name
        assert spec["containers"][0]["image"] == "mirror.example.com/example-app:0.1.0", manifest.name
    # The policy selects the Jobs' pods (by the labels they carry) and allows DNS and the database only.
    selector = policy.body["spec"]["podSelector"]
    for job in (migrate, rollback):
        labels = job.body["spec"]["template"]["metadata"]["labels"]
        assert all(labels[key] == value for key, value in selector["matchLabels"].items())
        (expression,) = selector["matchExpressions"]
        assert labels[expression["key"]] in expression["values"]
    assert test_pod.body["metadata"]["labels"]["app.kubernetes.io/component"] not in expression["values"]
    spec = policy.body["spec"]
    assert spec["policyTypes"] == ["Ingress", "Egress"] and "ingress" not in spec
    dns, database, pushgateway = spec["egress"]
    assert dns["to"] == [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}]
    assert sorted(p["protocol"] for p in dns["ports"]) == ["TCP", "UDP"] and {p["port"] for p in dns["ports"]} == {53}
    assert database == {
        "to": [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "postgresql"}}}],
        "ports": [{"protocol": "TCP", "port": 5432}],
    }
    assert pushgateway["ports"] == [{"protocol": "TCP", "port": 9091}]
    # Off by default; an existing service account is only referenced.
    assert renders["defaults"].of_kind("ServiceAccount") == renders["defaults"].of_kind("NetworkPolicy") == []
    assert "serviceAccountName" not in pod_spec(renders["defaults"].one("Job"))
    assert pod_spec(renders["custom-image"].one("Job"))["serviceAccountName"] == "shop-migrations"
    assert renders["custom-image"].of_kind("ServiceAccount") == []


def test_argo_cd_never_deletes_the_chart_created_secret_after_a_sync() -> None:
    """The application's pods read the chart-created Secret: whatever delete policy the Job gets, the
    Secret is only ever replaced by the next sync (BeforeHookCreation), never deleted after one."""
    values = {
        "argocd": {"enabled": True, "hookDeletePolicy": "HookSucceeded,HookFailed"},
        "migration": {"hook": {"deletePolicy": "before-hook-creation,hook-succeeded"}},
        "database": {"source": "secret", "secret": {"url": SECRET_URL}},
    }
    rendered = render_chart(values)
    secret, job = rendered.one("Secret"), rendered.one("Job")
    assert job.annotations["argocd.argoproj.io/hook-delete-policy"] == "HookSucceeded,HookFailed"
    assert secret.annotations["argocd.argoproj.io/hook-delete-policy"] == "BeforeHookCreation"
    assert secret.annotations["helm.sh/hook-delete-policy"] == "before-hook-creation"


def test_the_chart_carries_artifact_hub_annotations() -> None:
    with helm.Chart.load(CHART) as chart:
        annotations = chart.metadata["annotations"]
    assert annotations["artifacthub.io/license"] == "MIT"
    changes = yaml.safe_load(annotations["artifacthub.io/changes"])
    assert changes and all(set(change) == {"kind", "description"} for change in changes)


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
    grouping = render_chart({"metrics": {"pushgateway": {"url": "http://pg:9091", "grouping": "app=shop,env=prod"}}})
    (container,) = pod_spec(grouping.one("Job"))["containers"]
    assert {e["name"]: e.get("value") for e in container["env"]}["DBMIGRATE_METRICS_GROUPING"] == "app=shop,env=prod"


def test_image_command_args_and_pod_settings_are_overridable(renders: dict[str, Rendered]) -> None:
    rendered = renders["custom-image"]
    job = rendered.one("Job")
    assert job.hook_weight == -5
    assert job.annotations["helm.sh/hook-delete-policy"] == "before-hook-creation,hook-succeeded"
    assert job.body["metadata"]["labels"]["cost-center"] == "cc-42"
    spec = job.body["spec"]
    assert (spec["backoffLimit"], spec["activeDeadlineSeconds"]) == (0, 1700)
    assert "ttlSecondsAfterFinished" not in spec
    template = spec["template"]
    assert template["metadata"]["labels"]["team"] == "payments"
    assert template["metadata"]["annotations"] == {  # the chart's sidecar defaults stay, merged
        "prometheus.io/scrape": "false",
        "sidecar.istio.io/inject": "false",
        "linkerd.io/inject": "disabled",
    }
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
    # Every setting reaches dbmigrate under its own variable name, and only set ones do.
    assert {name: e.get("value") for name, e in env.items() if name.startswith("DBMIGRATE_")} == {
        "DBMIGRATE_CONFIG": "migrations/alembic.ini",
        "DBMIGRATE_APP_VERSION": "2.4.1-rc1",
        "DBMIGRATE_LOG_FORMAT": "text",
        "DBMIGRATE_WAIT_TIMEOUT": "45",
        "DBMIGRATE_LOCK_TIMEOUT": "5",
        "DBMIGRATE_STATEMENT_TIMEOUT": "1500",
        "DBMIGRATE_LOCK_CONFLICT_WAIT": "10",
        "DBMIGRATE_MAX_LOCK_RETRIES": "4",
        "DBMIGRATE_HISTORY_TABLE": "shop_migrations",
        "DBMIGRATE_TABLE_SCHEMA": "ops",
        "DBMIGRATE_DEADLINE": "1685",
        "DBMIGRATE_WHEN_AHEAD": "rollback",
    }  # lockWaitTimeout is empty: dbmigrate's default, no variable (it fits the deadline of 1700)
    assert env["SHOP_MODE"]["value"] == "migrate"
    assert env["SHOP_API_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "shop-api"
    (status,) = pod_spec(rendered.one("Pod"))["containers"]
    assert status["args"] == ["status", "--check", "--format", "json"]
    assert status["image"] == container["image"] and status["command"] == container["command"]


def test_a_digest_pins_the_image_and_the_app_version_stays_the_tag() -> None:
    digest = "sha256:" + "ab" * 32
    rendered = render_chart({"image": {"repository": "ghcr.io/acme/shop", "tag": "3.0.0", "digest": digest}})
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
    disabled = render_chart({"test": {"enabled": False}, "migration": {"enabled": False}})
    assert disabled.manifests == []


def test_long_release_names_stay_within_kubernetes_name_limits() -> None:
    rendered = render_chart({"database": {"source": "secret", "secret": {"url": SECRET_URL}}}, release="r" * 53)
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
    assert wait["image"] == app["image"] == pod_spec(job)["containers"][0]["image"] == "example-app:0.1.0"
    assert wait["command"] + wait["args"] == ["dbmigrate", "wait", "--timeout", "300"]
    assert wait["workingDir"] == "/app"
    job_container = pod_spec(job)["containers"][0]
    # The same settings as the Job, but the application's own credential: the Job's never reaches its pods.
    # What only a Job's run needs stays there.
    job_only = {"DBMIGRATE_DEADLINE", "DBMIGRATE_WHEN_AHEAD"}
    wait_env = {e["name"]: e for e in wait["env"]}
    assert wait_env["DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {"name": "shop-app-database", "key": "DATABASE_URL"}
    assert wait_env == {
        **{e["name"]: e for e in job_container["env"] if e["name"] not in job_only},
        "DATABASE_URL": wait_env["DATABASE_URL"],
    }
    assert {e["valueFrom"]["secretKeyRef"]["name"] for e in job_container["env"] if "secretKeyRef" in str(e)} == {
        "shop-database"
    }
    assert "shop-database" not in str(deployment.body)
    volumes = {v["name"] for v in spec["volumes"]}
    assert {m["name"] for m in wait["volumeMounts"]} <= volumes
    # The application reads its URL from the same Secret as its wait container.
    app_env = {e["name"]: e for e in app["env"]}
    assert app_env["DATABASE_URL"]["valueFrom"] == wait_env["DATABASE_URL"]["valueFrom"]


def test_the_wait_container_takes_the_applications_credential_in_any_of_its_forms(umbrella: Path) -> None:
    app_url = "postgresql://shop_app@db.prod:5432/shop"
    own = {"source": "passwordFile", "passwordFile": {"url": app_url, "secretName": "shop-app-pw", "key": "pw"}}
    rendered = render(umbrella, {"dbmigrate": {"wait": {"database": own}}}, upgrade=True)
    deployment = rendered.one("Deployment")
    validate(deployment)
    spec = pod_spec(deployment)
    (wait,) = spec["initContainers"]
    env = {e["name"]: e.get("value") for e in wait["env"]}
    assert env["DBMIGRATE_DATABASE_URL"] == app_url
    assert env["DBMIGRATE_DATABASE_PASSWORD_FILE"] == "/var/run/secrets/dbmigrate/database/pw"
    assert "DATABASE_URL" not in env
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["dbmigrate-database"]["secret"]["secretName"] == "shop-app-pw"
    assert "shop-database" not in str(deployment.body)
    (status,) = pod_spec(rendered.one("Pod", "-test"))["containers"]
    assert status["env"] == wait["env"], "helm test's status --check only reads too"
    (migrate,) = pod_spec(rendered.one("Job"))["containers"]
    migrate_url = {e["name"]: e for e in migrate["env"]}["DATABASE_URL"]
    assert migrate_url["valueFrom"]["secretKeyRef"]["name"] == "shop-database"

    # Without it, the migration's source, as before: the chart's notes warn about it.
    fallback = render(umbrella, {"dbmigrate": {"wait": {"database": {"source": ""}}}}, upgrade=True)
    (wait,) = pod_spec(fallback.one("Deployment"))["initContainers"]
    migrate_env = pod_spec(fallback.one("Job"))["containers"][0]["env"]
    assert wait["env"] == [e for e in migrate_env if e["name"] not in {"DBMIGRATE_DEADLINE", "DBMIGRATE_WHEN_AHEAD"}]
    assert "wait.database is not set" in render_chart().notes
    assert "wait.database is not set" not in render_chart({"wait": {"database": own}}).notes

    with pytest.raises(
        helm.HelmRenderError,
        match=re.escape("wait.database.source=existingSecret needs wait.database.existingSecret.name"),
    ):
        render(umbrella, {"dbmigrate": {"wait": {"database": {"existingSecret": {"name": ""}}}}})
    with pytest.raises(
        helm.HelmRenderError, match=re.escape("wait.database.passwordFile.url must not contain a password")
    ):
        render(
            umbrella,
            {"dbmigrate": {"wait": {"database": {**own, "passwordFile": {**own["passwordFile"], "url": SECRET_URL}}}}},
        )
    with pytest.raises(helm.HelmValuesError, match="/wait/database/source"):  # no chart-created Secret for it
        render(umbrella, {"dbmigrate": {"wait": {"database": {"source": "secret"}}}})


def test_the_umbrella_runs_one_image_everywhere_when_only_the_apps_tag_is_set(umbrella: Path) -> None:
    """`--set global.image.tag=0.2.0` alone moves the Job, the helm test, the wait init container and the
    application together, and the history records 0.2.0 as the application version."""
    rendered = render(umbrella, {"global": {"image": {"tag": "0.2.0"}}}, upgrade=True)
    job, test_pod = rendered.one("Job", "-migrate"), rendered.one("Pod", "-test")
    spec = pod_spec(rendered.one("Deployment"))
    (wait,), (app,) = spec["initContainers"], spec["containers"]
    (migrate,), (status,) = pod_spec(job)["containers"], pod_spec(test_pod)["containers"]
    assert {c["image"] for c in (wait, app, migrate, status)} == {"example-app:0.2.0"}
    for container in (wait, migrate, status):
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["DBMIGRATE_APP_VERSION"] == "0.2.0", container["name"]
    # A registry mirror applies to all of them alike.
    mirrored = render(umbrella, {"global": {"imageRegistry": "mirror.example.com/"}}, upgrade=True)
    spec = pod_spec(mirrored.one("Deployment"))
    images = {spec["initContainers"][0]["image"], spec["containers"][0]["image"]}
    images.add(pod_spec(mirrored.one("Job"))["containers"][0]["image"])
    assert images == {"mirror.example.com/example-app:0.1.0"}
    with pytest.raises(helm.HelmRenderError, match=re.escape("global.image.tag must be a string")):
        render(umbrella, {"global": {"image": {"tag": 1.1}}})


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
        "dependencies:\n  - name: dbmigrate\n    version: 0.2.0\n    repository: file://../../charts/dbmigrate\n"
    )
    (parent / "values.yaml").write_text(
        "dbmigrate:\n  image:\n    repository: example-app\n    tag: '0.1.0'\n"
        "  database:\n    source: urlFile\n    urlFile:\n      secretName: db\n"
    )
    (parent / "templates" / "pod.yaml").write_text(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: probe\nspec:\n"
        "  securityContext: {runAsNonRoot: true, seccompProfile: {type: RuntimeDefault}}\n"
        '  initContainers:\n    {{- include "dbmigrate.waitInitContainer" $ | nindent 4 }}\n'
        "  containers:\n    - {name: app, image: app}\n"
        '  volumes:\n    {{- include "dbmigrate.waitVolumes" $ | nindent 4 }}\n'
    )
    # A pod of another image: its wait container must wait for *its* image's revisions.
    (parent / "templates" / "other.yaml").write_text(
        '{{- $dbmigrate := dict "context" $ "values" .Values.dbmigrate "image" "registry.example.com/worker:7.0.1" }}\n'
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: worker\nspec:\n"
        '  initContainers:\n    {{- include "dbmigrate.waitInitContainer" $dbmigrate | nindent 4 }}\n'
        "  containers:\n    - {name: worker, image: registry.example.com/worker:7.0.1}\n"
        '  volumes:\n    {{- include "dbmigrate.waitVolumes" $dbmigrate | nindent 4 }}\n'
    )
    helm.dependency_update(parent, skip_refresh=True)
    rendered = render(parent)
    pod = rendered.one("Pod", "probe")
    validate(pod)
    (wait,) = pod.body["spec"]["initContainers"]
    assert wait["image"] == "example-app:0.1.0" == pod_spec(rendered.one("Job"))["containers"][0]["image"]
    env = {e["name"]: e.get("value") for e in wait["env"]}
    assert env["DBMIGRATE_DATABASE_URL_FILE"] == "/var/run/secrets/dbmigrate/database/url"
    volumes = {v["name"]: v for v in pod.body["spec"]["volumes"]}
    assert volumes["dbmigrate-database"]["secret"]["secretName"] == "db"
    assert "dbmigrate-tmp" in volumes
    worker = rendered.one("Pod", "worker")
    (wait,) = worker.body["spec"]["initContainers"]
    assert wait["image"] == worker.body["spec"]["containers"][0]["image"] == "registry.example.com/worker:7.0.1"
    assert {e["name"]: e.get("value") for e in wait["env"]}["DBMIGRATE_APP_VERSION"] == "7.0.1"


# --- rendered manifests: no Helm hooks ---------------------------------------------------------------------

NO_HOOKS: dict[str, Any] = {"migration": {"hook": {"enabled": False}}}


def test_without_hooks_the_job_is_named_after_what_it_runs() -> None:
    def job_name(values: dict[str, Any]) -> str:
        return render_chart(merged(NO_HOOKS, values)).one("Job").name

    base = job_name({})
    assert re.fullmatch(r"shop-dbmigrate-migrate-[0-9a-f]{10}", base)
    assert job_name({}) == base  # the same render, the same Job: applying it again is a no-op
    changed = {
        job_name({"image": {"tag": "0.2.0"}}),
        job_name({"image": {"digest": "sha256:" + "ab" * 32}}),
        job_name({"migration": {"args": ["upgrade", "--dry-run"]}}),
        job_name({"command": ["/opt/venv/bin/dbmigrate"]}),
        job_name({"settings": {"lockTimeout": 7}}),
        job_name({"extraEnv": [{"name": "SHOP_MODE", "value": "migrate"}]}),
        job_name({"migration": {"resources": {"limits": {"memory": "1Gi"}}}}),
    }
    assert base not in changed and len(changed) == 7
    # With hooks the name is fixed: Helm deletes the previous Job before creating the next.
    assert render_chart({"image": {"tag": "0.2.0"}}).one("Job").name == render_chart().one("Job").name


def test_without_hooks_every_resource_is_plain_and_valid() -> None:
    values = merged(
        NO_HOOKS,
        {
            "database": {"source": "secret", "secret": {"url": SECRET_URL}},
            "serviceAccount": {"create": True},
            "networkPolicy": {"enabled": True, "databasePeers": [{"ipBlock": {"cidr": "10.0.0.5/32"}}]},
            "argocd": {"enabled": True},
            "migration": {"ttlSecondsAfterFinished": 3600},  # no hook for Helm 4 to wait for
        },
    )
    rendered = render_chart(values)
    assert sorted(m.kind for m in rendered.manifests) == ["Job", "NetworkPolicy", "Secret", "ServiceAccount"]
    job = rendered.one("Job")
    for manifest in rendered.manifests:
        validate(manifest)
        assert not any(key.startswith("helm.sh/hook") for key in manifest.annotations), manifest.name
        assert "argocd.argoproj.io/hook" not in manifest.annotations, manifest.name
        if manifest is not job:  # applied in an earlier Argo CD sync wave than the Job
            assert int(manifest.annotations["argocd.argoproj.io/sync-wave"]) < 0
    assert job.annotations == {"argocd.argoproj.io/sync-wave": "0"}
    assert job.body["spec"]["ttlSecondsAfterFinished"] == 3600
    assert f"logs job/{job.name}" in rendered.notes
    with pytest.raises(helm.HelmRenderError, match=re.escape("rollback.enabled needs Helm hooks")):
        render_chart(merged(NO_HOOKS, {"rollback": {"enabled": True}}))


# --- the chart's README ----------------------------------------------------------------------------------


def test_the_chart_readme_lists_every_value_as_values_yaml_documents_it() -> None:
    readme = (CHART / "README.md").read_text()
    values_yaml = (CHART / "values.yaml").read_text()
    assert generate_readme.readme_with_table(readme, values_yaml) == readme, "run python charts/generate_readme.py"
    with helm.Chart.load(CHART) as chart:
        defaults = chart.values
    table = {line.split(" | ")[0].strip("| `"): line for line in readme.splitlines() if line.startswith("| `")}
    for key in ("image.tag", "settings.lockWaitTimeout", "networkPolicy.databasePeers", "global.imageRegistry"):
        assert key in table, key
    assert "`120`" in table["settings.lockWaitTimeout"] and defaults["settings"]["lockWaitTimeout"] == 120


def test_the_readme_generator_refuses_an_undocumented_value() -> None:
    values_yaml = (CHART / "values.yaml").read_text() + "\nsurprise: 1\n"
    with pytest.raises(generate_readme.UndocumentedValue, match="surprise"):
        generate_readme.documented_values(values_yaml)
    edited = (CHART / "values.yaml").read_text().replace("  lockWaitTimeout: 120", "  lockWaitTimeout: 100")
    readme = (CHART / "README.md").read_text()
    assert generate_readme.readme_with_table(readme, edited) != readme  # drift is visible


def test_each_hook_job_stops_by_its_own_deadline_and_only_the_migration_job_rolls_back_when_ahead() -> None:
    rendered = render_chart(
        {
            "migration": {"activeDeadlineSeconds": 1700, "deadlineMargin": 30, "whenAhead": "refuse"},
            "rollback": {"enabled": True, "activeDeadlineSeconds": 1600},
            "settings": {"statementTimeout": 1500},
        }
    )

    def environment(job: str) -> dict[str, str | None]:
        (container,) = pod_spec(rendered.one("Job", job))["containers"]
        return {e["name"]: e.get("value") for e in container["env"]}

    migrate, rollback = environment("-migrate"), environment("-rollback")
    assert (migrate["DBMIGRATE_DEADLINE"], migrate["DBMIGRATE_WHEN_AHEAD"]) == ("1670", "refuse")
    assert rollback["DBMIGRATE_DEADLINE"] == "1585" and "DBMIGRATE_WHEN_AHEAD" not in rollback
    (test_container,) = pod_spec(rendered.one("Pod", "-test"))["containers"]
    assert not {"DBMIGRATE_DEADLINE", "DBMIGRATE_WHEN_AHEAD"} & {e["name"] for e in test_container["env"]}
