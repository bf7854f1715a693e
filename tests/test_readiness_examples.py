"""The readiness examples (examples/readiness/): a Flask and a FastAPI app whose /readyz uses dbmigrate.is_ready.

Each app is driven through its framework's own test client against a real database: /readyz says
503 until the schema is migrated and 200 after; /healthz says 200 whatever the database does.
"""

from __future__ import annotations

import importlib.util
import shutil
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from fastapi.testclient import TestClient

import dbmigrate
from tests.conftest import EXAMPLE_HEAD, REPO, create_database, drop_database

EXAMPLES = REPO / "examples" / "readiness"
APPS = ["flask_app", "fastapi_app"]
Get = Callable[[str], tuple[int, Any]]


def load_example(name: str) -> ModuleType:
    """Import examples/readiness/<name>.py (the folder is not a package)."""
    spec = importlib.util.spec_from_file_location(f"readiness_example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def client(name: str, **options: Any) -> Get:
    """GET through the framework's test client: returns (status code, JSON body)."""
    app = load_example(name).create_app(**options)
    if name == "flask_app":
        flask_client = app.test_client()

        def get(path: str) -> tuple[int, Any]:
            response = flask_client.get(path)
            return response.status_code, response.get_json()

        return get
    starlette_client = TestClient(app)

    def get_fastapi(path: str) -> tuple[int, Any]:
        response = starlette_client.get(path)
        return response.status_code, response.json()

    return get_fastapi


@pytest.fixture(params=APPS)
def app_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_readyz_answers_200_only_once_the_schema_is_migrated(app_name: str, project: Path, database_url: str) -> None:
    config = str(project / "alembic.ini")
    get = client(app_name, config_file=config, database_url=database_url, cache_seconds=0)

    assert get("/readyz") == (503, {"ready": False})
    assert get("/healthz") == (200, {"status": "ok"})

    dbmigrate.upgrade("0005_full_name_expand", config_file=config, database_url=database_url)
    assert get("/readyz") == (503, {"ready": False}), "one revision still pending"

    dbmigrate.upgrade(config_file=config, database_url=database_url)
    assert get("/readyz") == (200, {"ready": True})
    assert get("/healthz") == (200, {"status": "ok"})


def test_an_older_release_stays_ready_after_a_newer_one_migrated(
    app_name: str, project: Path, database_url: str, tmp_path: Path
) -> None:
    """During a rolling update the old pods keep serving: a database ahead of their scripts is ready."""
    older = tmp_path / "older"
    shutil.copytree(project, older)
    (older / "alembic" / "versions" / f"{EXAMPLE_HEAD}.py").unlink()
    get_old = client(app_name, config_file=str(older / "alembic.ini"), database_url=database_url, cache_seconds=0)

    dbmigrate.upgrade(config_file=str(project / "alembic.ini"), database_url=database_url)

    assert get_old("/readyz") == (200, {"ready": True})


def test_readyz_is_503_and_healthz_200_while_the_database_is_unreachable(app_name: str, project: Path) -> None:
    nowhere = "postgresql://postgres@127.0.0.1:1/nowhere"  # port 1: connection refused at once
    get = client(app_name, config_file=str(project / "alembic.ini"), database_url=nowhere, cache_seconds=0)

    assert get("/readyz") == (503, {"ready": False})
    assert get("/healthz") == (200, {"status": "ok"})


def test_readyz_answers_from_its_cache_within_cache_seconds(app_name: str, project: Path, database_url: str) -> None:
    """A probe every few seconds costs one query per cache period, not one per request."""
    config = str(project / "alembic.ini")
    get = client(app_name, config_file=config, database_url=database_url, cache_seconds=3600)
    fresh = client(app_name, config_file=config, database_url=database_url, cache_seconds=0)

    assert get("/readyz") == (503, {"ready": False})
    dbmigrate.upgrade(config_file=config, database_url=database_url)

    assert get("/readyz") == (503, {"ready": False}), "the cached answer, within the hour"
    assert fresh("/readyz") == (200, {"ready": True})


def test_the_module_level_app_is_configured_like_the_cli(
    app_name: str, project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`gunicorn flask_app:app` / `uvicorn fastapi_app:app` in a pod: DBMIGRATE_CONFIG and DATABASE_URL."""
    migrated, empty = create_database("postgresql", tmp_path), create_database("postgresql", tmp_path)
    try:
        dbmigrate.upgrade(config_file=str(project / "alembic.ini"), database_url=migrated)
        monkeypatch.setenv("DBMIGRATE_CONFIG", str(project / "alembic.ini"))
        statuses = {}
        for url in (migrated, empty):
            monkeypatch.setenv("DATABASE_URL", url)
            app = load_example(app_name).app
            response = app.test_client().get("/readyz") if app_name == "flask_app" else TestClient(app).get("/readyz")
            statuses[url] = response.status_code

        assert statuses == {migrated: 200, empty: 503}
    finally:
        drop_database(migrated)
        drop_database(empty)
