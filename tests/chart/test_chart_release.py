"""Releases simulated against real PostgreSQL: the rendered hook Jobs, the application's wait init
container and the helm test pod run as local processes with exactly the command, arguments,
environment and files the rendered manifests give them (see local_cluster.py).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tests.chart.local_cluster import (
    REPO,
    AppliedObjects,
    ContainerConfigError,
    FieldImmutable,
    Node,
    build_image,
    build_umbrella,
    pod_failure_action,
    pod_name_for,
    pod_spec,
    render,
    render_chart,
)
from tests.conftest import EXAMPLE_HEAD, add_revision, create_database, current_revisions, drop_database, history_rows

NEW_REVISIONS = ["0007_customer_nickname", "0008_customer_notes"]


@pytest.fixture
def postgres_url(tmp_path: Path) -> Iterator[str]:
    url = create_database("postgresql", tmp_path)
    yield url
    drop_database(url)


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    """The stand-in node, holding two images of the example application: 0.1.0 (the example project) and
    0.2.0 (the same with two more revisions)."""
    images = tmp_path / "images"
    v1 = build_image([REPO / "alembic.ini", REPO / "alembic"], images / "0.1.0")
    v2 = build_image([REPO / "alembic.ini", REPO / "alembic"], images / "0.2.0")
    add_revision(
        v2,
        NEW_REVISIONS[0],
        EXAMPLE_HEAD,
        'op.add_column("customers", sa.Column("nickname", sa.String(50)))',
        'op.drop_column("customers", "nickname")',
    )
    add_revision(
        v2,
        NEW_REVISIONS[1],
        NEW_REVISIONS[0],
        'op.create_table("customer_notes", sa.Column("id", sa.Integer, primary_key=True), sa.Column("note", sa.Text))',
        'op.drop_table("customer_notes")',
    )
    cluster = Node(tmp_path / "node", images={"example-app:0.1.0": v1, "example-app:0.2.0": v2})
    yield cluster
    cluster.stop_all()


def version(tag: str) -> dict[str, Any]:
    """Umbrella values for an application release at ``tag``: the application's tag, the one value set
    (as `--set global.image.tag=<tag>`); dbmigrate's Job, test and wait container follow it."""
    return {"global": {"image": {"tag": tag}}}


def events(process_events: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in process_events if e.get("event") == name]


def test_an_application_release_installs_upgrades_while_pods_wait_rolls_back_and_reverts(
    tmp_path: Path, postgres_url: str, node: Node
) -> None:
    umbrella = build_umbrella(tmp_path)
    # The Secret the example's README creates before the first install.
    node.secrets["shop-database"] = {"DATABASE_URL": postgres_url}
    # And the application's (here the same user; tests/test_least_privilege.py runs a read-only one).
    node.secrets["shop-app-database"] = {"DATABASE_URL": postgres_url}

    # --- helm install shop examples/umbrella-chart -------------------------------------------------------
    install = render(umbrella, version("0.1.0"))
    test_pod = install.one("Pod", "-test")
    (early,) = node.run_pod(test_pod.name, pod_spec(test_pod))
    assert early.returncode == 4, early.describe()  # helm test on the empty database: not at head

    ((job, run),) = node.run_hooks(install, "pre-install")
    assert run.returncode == 0, run.describe()
    assert current_revisions(postgres_url) == {EXAMPLE_HEAD}
    rows = history_rows(postgres_url)
    assert [row["status"] for row in rows] == ["applied"] * 6
    assert {row["runner"] for row in rows} == {run.pod}  # POD_NAME from the downward API
    assert run.pod.startswith("shop-dbmigrate-migrate-")
    assert {row["app_version"] for row in rows} == {"0.1.0"}
    assert run.termination_message().strip()  # the outcome, for `kubectl describe pod`
    assert all(e.get("level") for e in run.events())  # JSON log lines

    # The Deployment is created after the hooks: its pods' init container finds the schema ready.
    deployment = install.one("Deployment")
    spec = pod_spec(deployment)
    (wait_container,) = spec["initContainers"]
    first_pod = node.start(pod_name_for(deployment.name), spec, wait_container)
    assert first_pod.wait(timeout=60) == 0, first_pod.describe()
    assert events(first_pod.events(), "schema ready")
    assert not events(first_pod.events(), "waiting for the schema")

    (tested,) = node.run_pod(test_pod.name, pod_spec(test_pod))
    assert tested.returncode == 0, tested.describe()

    # --- helm upgrade shop ... --set image.tag=0.2.0: two more revisions -----------------------------------
    upgrade = render(umbrella, version("0.2.0"), upgrade=True)
    deployment = upgrade.one("Deployment")
    spec = pod_spec(deployment)
    (wait_container,) = spec["initContainers"]
    assert wait_container["image"] == "example-app:0.2.0"
    # A pod of the new version starts before the migration has run: it must wait, not start the app.
    new_pod = node.start(pod_name_for(deployment.name), spec, wait_container)
    waiting = new_pod.wait_for_event("waiting for the schema", timeout=60)
    assert "2 revision(s) pending" in waiting["detail"], waiting
    assert new_pod.running()
    assert current_revisions(postgres_url) == {EXAMPLE_HEAD}

    ((job, run),) = node.run_hooks(upgrade, "pre-upgrade")
    assert run.returncode == 0, run.describe()
    assert job.body["spec"]["template"]["spec"]["containers"][0]["image"] == "example-app:0.2.0"
    assert new_pod.wait(timeout=60) == 0, new_pod.describe()
    assert events(new_pod.events(), "schema ready")
    assert current_revisions(postgres_url) == {NEW_REVISIONS[1]}
    new_rows = [row for row in history_rows(postgres_url) if row["revision"] in NEW_REVISIONS]
    assert [(row["revision"], row["status"], row["app_version"]) for row in new_rows] == [
        (NEW_REVISIONS[0], "applied", "0.2.0"),
        (NEW_REVISIONS[1], "applied", "0.2.0"),
    ]
    assert {row["runner"] for row in new_rows} == {run.pod}

    test_pod = upgrade.one("Pod", "-test")
    (tested,) = node.run_pod(test_pod.name, pod_spec(test_pod))
    assert tested.returncode == 0, tested.describe()
    written = write_as_the_newer_application(postgres_url)

    # --- helm rollback shop 1: no hook runs; pods of 0.1.0 run on the newer, compatible schema ----------------
    rollback = render(umbrella, version("0.1.0"), upgrade=True)
    assert rollback.hooks("pre-rollback") == [] and rollback.hooks("post-rollback") == []
    deployment = rollback.one("Deployment")
    spec = pod_spec(deployment)
    old_pod = node.start(pod_name_for(deployment.name), spec, spec["initContainers"][0])
    assert old_pod.wait(timeout=60) == 0, old_pod.describe()
    assert current_revisions(postgres_url) == {NEW_REVISIONS[1]}

    # --- a revert: Argo CD or Flux syncs the older tag (or `helm upgrade --set global.image.tag=0.1.0`), which runs
    # the hook with the older image. It finds the database ahead on its own chain and, as `dbmigrate rollback
    # --schema auto` would, keeps the newer schema that the older code can run on.
    rows_before = history_rows(postgres_url)
    revert = render(umbrella, version("0.1.0"), upgrade=True)
    ((job, run),) = node.run_hooks(revert, "pre-upgrade")
    assert run.returncode == 0, run.describe()
    assert job.body["spec"]["template"]["spec"]["containers"][0]["image"] == "example-app:0.1.0"
    assert f"kept the schema at {NEW_REVISIONS[1]}" in run.termination_message()
    assert current_revisions(postgres_url) == {NEW_REVISIONS[1]}
    rows = history_rows(postgres_url)
    assert rows[: len(rows_before)] == rows_before
    (decision,) = rows[len(rows_before) :]
    assert (decision["direction"], decision["status"], decision["app_version"]) == ("rollback", "kept", "0.1.0")
    assert f"the database was at {NEW_REVISIONS[1]}, ahead of these scripts' head {EXAMPLE_HEAD}" in str(
        decision["note"]
    )
    assert customers_and_notes(postgres_url) == written
    deployment = revert.one("Deployment")
    spec = pod_spec(deployment)
    reverted_pod = node.start(pod_name_for(deployment.name), spec, spec["initContainers"][0])
    assert reverted_pod.wait(timeout=60) == 0, reverted_pod.describe()
    assert events(reverted_pod.events(), "schema ready")

    # --- and forward again to 0.2.0: nothing to do, nothing lost.
    forward = render(umbrella, version("0.2.0"), upgrade=True)
    ((job, run),) = node.run_hooks(forward, "pre-upgrade")
    assert run.returncode == 0, run.describe()
    assert "nothing to do" in run.termination_message()
    assert history_rows(postgres_url) == rows
    assert customers_and_notes(postgres_url) == written
    deployment = forward.one("Deployment")
    spec = pod_spec(deployment)
    forward_pod = node.start(pod_name_for(deployment.name), spec, spec["initContainers"][0])
    assert forward_pod.wait(timeout=60) == 0, forward_pod.describe()
    assert events(forward_pod.events(), "schema ready")


def write_as_the_newer_application(url: str) -> list[tuple[object, ...]]:
    """Rows the 0.2.0 application writes into its new column and table; returns what :func:`customers_and_notes`
    reads back."""
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        connection.execute(sa.text("UPDATE customers SET nickname = 'n' || id WHERE id <= 10"))
        connection.execute(sa.text("INSERT INTO customer_notes (id, note) VALUES (1, 'prefers email')"))
    engine.dispose()
    return customers_and_notes(url)


def customers_and_notes(url: str) -> list[tuple[object, ...]]:
    engine = sa.create_engine(url)
    with engine.connect() as connection:
        customers = connection.execute(sa.text("SELECT id, nickname FROM customers ORDER BY id")).all()
        notes = connection.execute(sa.text("SELECT id, note FROM customer_notes ORDER BY id")).all()
    engine.dispose()
    return [tuple(row) for row in [*customers, *notes]]


@pytest.mark.parametrize("source", ["existingSecret", "secret", "urlFile", "passwordFile"])
def test_a_release_of_its_own_migrates_with_each_credential_source(source: str, postgres_url: str, node: Node) -> None:
    metrics = {"textfile": {"path": "/var/lib/node-exporter/textfile/dbmigrate.prom"}}
    values: dict[str, Any] = {"database": {"source": source}, "metrics": metrics}
    if source == "existingSecret":
        node.secrets["shop-database"] = {"DATABASE_URL": postgres_url}
    elif source == "secret":
        values["database"]["secret"] = {"url": postgres_url}  # the chart creates the Secret, as a hook
    elif source == "urlFile":
        node.secrets["shop-db"] = {"url": postgres_url}
        values["database"]["urlFile"] = {"secretName": "shop-db"}
    else:
        # The URL without a password; trust authentication ignores the password, but dbmigrate reads it.
        node.secrets["postgres"] = {"password": "not-checked-by-trust-auth"}
        values["database"]["passwordFile"] = {"url": postgres_url, "secretName": "postgres"}
    release = render_chart(values)

    jobs = node.run_hooks(release, "pre-install")
    assert [job.name for job, _ in jobs] == ["shop-dbmigrate-migrate"]
    ((_, run),) = jobs
    assert run.returncode == 0, run.describe()
    assert current_revisions(postgres_url) == {EXAMPLE_HEAD}
    if source == "secret":
        assert node.secrets["shop-dbmigrate-database"] == {"DATABASE_URL": postgres_url}
    metrics_file = run.volumes["dbmigrate-metrics"] / "dbmigrate.prom"
    assert "dbmigrate" in metrics_file.read_text()

    # helm upgrade with nothing new: the Job finds nothing to do.
    ((_, again),) = node.run_hooks(render_chart(values, upgrade=True), "pre-upgrade")
    assert again.returncode == 0, again.describe()
    assert len(history_rows(postgres_url)) == 6

    test_pod = release.one("Pod", "-test")
    (tested,) = node.run_pod(test_pod.name, pod_spec(test_pod))
    assert tested.returncode == 0, tested.describe()


def test_an_unreachable_database_fails_the_pod_with_exit_3_and_the_job_retries(node: Node) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    node.secrets["shop-database"] = {"DATABASE_URL": f"postgresql://postgres@127.0.0.1:{port}/nowhere"}
    release = render_chart({"settings": {"waitTimeout": 1}})
    ((job, run),) = node.run_hooks(release, "pre-install")
    assert run.returncode == 3, run.describe()
    assert pod_failure_action(job, "migrate", 3) == "Count"  # retried, up to backoffLimit
    assert job.body["spec"]["backoffLimit"] >= 1
    assert run.termination_message().strip()


def test_a_missing_secret_stops_the_release_before_anything_runs(node: Node) -> None:
    release = render_chart()
    with pytest.raises(ContainerConfigError, match="shop-database"):
        node.run_hooks(release, "pre-install")
    assert node.started == []


def test_rendered_manifests_applied_in_order_migrate_each_version_once(postgres_url: str, node: Node) -> None:
    """`helm template ... | kubectl apply -f -` for 0.1.0, again for 0.1.0, then for 0.2.0: without hooks
    each render's Job is named after its pod template, so a new version creates a new Job (instead of
    failing on the immutable template of the previous one) and an unchanged render applies as a no-op."""
    node.secrets["shop-database"] = {"DATABASE_URL": postgres_url}
    cluster = AppliedObjects()

    def apply(tag: str) -> list[str]:
        rendered = render_chart({"migration": {"hook": {"enabled": False}}, "image": {"tag": tag}})
        assert not [m for m in rendered.manifests if m.hook_events]  # kubectl would ignore hook annotations
        assert not rendered.of_kind("Pod")  # no helm test pod that kubectl would run as an ordinary Pod
        created = [m for m in rendered.manifests if cluster.apply(m)]
        for job in created:
            run = node.run_job(job)
            assert run.returncode == 0, run.describe()
        return [m.name for m in created]

    (first,) = apply("0.1.0")
    assert first.startswith("shop-dbmigrate-migrate-") and first != "shop-dbmigrate-migrate"
    assert current_revisions(postgres_url) == {EXAMPLE_HEAD}
    assert apply("0.1.0") == []  # the same render again: nothing to create, nothing runs
    (second,) = apply("0.2.0")
    assert second != first
    assert current_revisions(postgres_url) == {NEW_REVISIONS[1]}
    rows = history_rows(postgres_url)
    assert [(row["revision"], row["app_version"]) for row in rows if row["revision"] in NEW_REVISIONS] == [
        (NEW_REVISIONS[0], "0.2.0"),
        (NEW_REVISIONS[1], "0.2.0"),
    ]
    assert {row["runner"].rsplit("-", 1)[0] for row in rows} == {first, second}

    # The hook Job's fixed name is what makes rendered manifests fail from the second version on.
    hooked = AppliedObjects()
    hooked.apply(render_chart({"image": {"tag": "0.1.0"}}).one("Job"))
    with pytest.raises(FieldImmutable, match="shop-dbmigrate-migrate"):
        hooked.apply(render_chart({"image": {"tag": "0.2.0"}}).one("Job"))
