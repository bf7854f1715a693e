"""The backfill CronJob and migration.deferBackfills: rendered by the real Helm engine, validated against the
Kubernetes schemas, and run on the stand-in node against a real PostgreSQL database.

The CronJob runs `dbmigrate backfill run` with the migration Job's image, database Secret handling,
settings and security context, never two at once (concurrencyPolicy Forbid); deferBackfills reaches the
migration Job (only it) as DBMIGRATE_DEFER_BACKFILLS.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest

from tests.chart.local_cluster import REPO, Node, build_image, containers, pod_spec, render_chart, validate
from tests.conftest import add_backfill_revisions, backfill_rows, create_database, current_revisions, drop_database

CRON = {"backfill": {"cronJob": {"enabled": True, "window": "01:00-05:00"}}}


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {variable["name"]: variable.get("value", variable.get("valueFrom")) for variable in container["env"]}


def test_no_cronjob_and_no_deferral_by_default() -> None:
    release = render_chart()

    assert release.of_kind("CronJob") == []
    (migrate,) = pod_spec(release.one("Job", "-migrate"))["containers"]
    assert "DBMIGRATE_DEFER_BACKFILLS" not in env_of(migrate)


@pytest.mark.parametrize("source", ["existingSecret", "urlFile"])
def test_the_cronjob_runs_backfill_run_like_the_migration_job_never_two_at_once(source: str) -> None:
    database: dict[str, Any] = {"source": source}
    if source == "urlFile":
        database["urlFile"] = {"secretName": "shop-db"}
    release = render_chart({**CRON, "database": database, "serviceAccount": {"create": True}})

    cron = release.one("CronJob", "-backfill")
    job = release.one("Job", "-migrate")
    validate(cron)
    spec = cron.body["spec"]
    assert spec["concurrencyPolicy"] == "Forbid"
    assert spec["schedule"] == "0 1 * * *"
    assert not cron.hook_events, "the CronJob is a plain resource of the release, not a hook"
    (backfill,) = containers(pod_spec(cron))
    (migrate,) = containers(pod_spec(job))
    assert backfill["args"] == ["backfill", "run", "--max-duration", "3h", "--window", "01:00-05:00"]
    for field in ("image", "command", "workingDir", "securityContext", "volumeMounts"):
        assert backfill[field] == migrate[field], field
    job_only = {"DBMIGRATE_ARCHIVE_KEY", "DBMIGRATE_WHEN_AHEAD", "DBMIGRATE_DEADLINE"}
    shared = {name: value for name, value in env_of(migrate).items() if name not in job_only}
    assert env_of(backfill) == {**shared, "DBMIGRATE_DEADLINE": str(12600 - 15)}, "its own deadline, with a margin"
    for field in ("securityContext", "serviceAccountName", "volumes", "automountServiceAccountToken"):
        assert pod_spec(cron)[field] == pod_spec(job)[field], field
    failure = spec["jobTemplate"]["spec"]["podFailurePolicy"]["rules"][0]["onExitCodes"]
    assert (failure["containerName"], failure["values"]) == ("backfill", [1, 2])


def test_defer_backfills_reaches_the_migration_job_only() -> None:
    release = render_chart({**CRON, "migration": {"deferBackfills": True}})

    (migrate,) = containers(pod_spec(release.one("Job", "-migrate")))
    (backfill,) = containers(pod_spec(release.one("CronJob", "-backfill")))
    assert env_of(migrate)["DBMIGRATE_DEFER_BACKFILLS"] == "true"
    assert "DBMIGRATE_DEFER_BACKFILLS" not in env_of(backfill)


def test_the_network_policy_covers_the_backfill_pods() -> None:
    peers = [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "postgresql"}}}]
    release = render_chart({**CRON, "networkPolicy": {"enabled": True, "databasePeers": peers}})

    policy = release.one("NetworkPolicy").body["spec"]["podSelector"]["matchExpressions"][0]
    labels = release.one("CronJob").body["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]
    assert labels["app.kubernetes.io/component"] in policy["values"]


@pytest.mark.parametrize(
    "cron", [{"window": "1-5"}, {"maxDuration": "soon"}, {"schedule": ""}, {"concurrencyPolicy": "Allow"}]
)
def test_the_schema_refuses_a_malformed_cronjob_value(cron: dict[str, Any]) -> None:
    with pytest.raises(helm.HelmValuesError):
        render_chart({"backfill": {"cronJob": {"enabled": True, **cron}}})


@pytest.fixture
def postgres_url(tmp_path: Path) -> Iterator[str]:
    url = create_database("postgresql", tmp_path)
    yield url
    drop_database(url)


def test_a_deferred_release_migrates_the_schema_and_the_cronjob_fills_the_data(
    postgres_url: str, tmp_path: Path
) -> None:
    image = build_image([REPO / "alembic.ini", REPO / "alembic"], tmp_path / "images" / "0.1.0")
    add_backfill_revisions(image, 300, '{"domain": DOMAIN}')
    node = Node(tmp_path / "node", images={"example-app:0.1.0": image})
    node.secrets["shop-database"] = {"DATABASE_URL": postgres_url}
    release = render_chart({"backfill": {"cronJob": {"enabled": True}}, "migration": {"deferBackfills": True}})
    try:
        ((_, migrated),) = node.run_hooks(release, "pre-install")
        assert migrated.returncode == 0, migrated.describe()
        assert current_revisions(postgres_url) == {"0002_backfill"}
        assert [(row["state"], row["rows_done"]) for row in backfill_rows(postgres_url)] == [("queued", 0)]

        cron = release.one("CronJob", "-backfill")
        (filled,) = node.run_pod("shop-dbmigrate-backfill-1", pod_spec(cron))

        assert filled.returncode == 0, filled.describe()
        assert [(row["state"], row["rows_done"]) for row in backfill_rows(postgres_url)] == [("done", 300)]
    finally:
        node.stop_all()
