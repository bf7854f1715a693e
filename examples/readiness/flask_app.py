"""A Flask app whose readiness probe reports ready only once its schema is migrated.

    gunicorn --bind 0.0.0.0:8000 flask_app:app

dbmigrate finds the scripts and the database as the CLI does: ``alembic.ini`` in the working
directory (or ``DBMIGRATE_CONFIG``) and ``DATABASE_URL``.
"""

from __future__ import annotations

from flask import Flask

import dbmigrate


def create_app(*, config_file: str | None = None, database_url: str | None = None, cache_seconds: float = 5.0) -> Flask:
    app = Flask(__name__)

    @app.get("/healthz")
    def healthz() -> tuple[dict[str, str], int]:
        # Liveness: the process answers. It never touches the database, so an outage does not restart pods.
        return {"status": "ok"}, 200

    @app.get("/readyz")
    def readyz() -> tuple[dict[str, bool], int]:
        # Readiness: the database is reachable and at (or past) the revision this image's scripts expect.
        ready = dbmigrate.is_ready(config_file=config_file, database_url=database_url, cache_seconds=cache_seconds)
        return {"ready": ready}, 200 if ready else 503

    return app


app = create_app()
