"""The application's settings object, the one its web process reads too (not alembic.ini)."""

import os


class AppSettings:
    """Settings from the environment, read when the object is made."""

    def __init__(self) -> None:
        self.database_url = os.environ.get("DATABASE_URL", "sqlite:///app.db")
        self.engine_options = {"pool_pre_ping": True}
