"""A tiny Flask application factory laid out the way Flask-Migrate projects are.

``Database`` stands in for Flask-SQLAlchemy's ``db`` (an ``engine`` and a ``metadata``) and
``MigrateState`` for what ``Migrate(app, db)`` registers in ``app.extensions["migrate"]``: the
two things Flask-Migrate's env.py reads from ``current_app``.
"""

import os

import sqlalchemy as sa
from flask import Flask


class Database:
    """The application's database handle, made from the app's config when the app is created."""

    def __init__(self, url: str) -> None:
        self.engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
        self.metadata = sa.MetaData()


class MigrateState:
    """What env.py finds in ``current_app.extensions["migrate"]``."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.configure_args: dict[str, object] = {"compare_type": True}


def create_app() -> Flask:
    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = os.environ.get("DATABASE_URL", "sqlite:///app.db")
    app.extensions["migrate"] = MigrateState(Database(app.config["SQLALCHEMY_DATABASE_URI"]))
    return app
