"""A FastAPI app whose readiness probe reports ready only once its schema is migrated.

    uvicorn fastapi_app:app --host 0.0.0.0 --port 8000

dbmigrate finds the scripts and the database as the CLI does: ``alembic.ini`` in the working
directory (or ``DBMIGRATE_CONFIG``) and ``DATABASE_URL``.
"""

from __future__ import annotations

from fastapi import FastAPI, Response

import dbmigrate


def create_app(
    *, config_file: str | None = None, database_url: str | None = None, cache_seconds: float = 5.0
) -> FastAPI:
    app = FastAPI()

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        # Liveness: the process answers. It never touches the database, so an outage does not restart pods.
        return {"status": "ok"}

    @app.get("/readyz")
    def readyz(response: Response) -> dict[str, bool]:
        # A plain `def`: FastAPI runs it in its thread pool, so the (cached) query never blocks the event loop.
        ready = dbmigrate.is_ready(config_file=config_file, database_url=database_url, cache_seconds=cache_seconds)
        response.status_code = 200 if ready else 503
        return {"ready": ready}

    return app


app = create_app()
