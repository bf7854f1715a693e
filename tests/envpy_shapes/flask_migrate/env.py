"""Flask-Migrate's env.py shape: everything comes from the Flask application in ``current_app``.

Its alembic.ini names no database: the URL is the application's, written into the Alembic config
here, and the engine is the application's own.
"""

import logging
from logging.config import fileConfig

from flask import current_app

from alembic import context

config = context.config
fileConfig(config.config_file_name)
logger = logging.getLogger("alembic.env")


def get_engine():
    migrate = current_app.extensions["migrate"]
    try:
        return migrate.db.get_engine()  # older Flask-SQLAlchemy
    except (TypeError, AttributeError):
        return migrate.db.engine  # Flask-SQLAlchemy 3


def get_engine_url():
    url = get_engine().url
    try:
        return url.render_as_string(hide_password=False).replace("%", "%%")
    except AttributeError:
        return str(url).replace("%", "%%")


config.set_main_option("sqlalchemy.url", get_engine_url())
target_db = current_app.extensions["migrate"].db


def get_metadata():
    if hasattr(target_db, "metadatas"):
        return target_db.metadatas[None]
    return target_db.metadata


def run_migrations_offline():
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=get_metadata(), literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online():
    def skip_empty_autogenerate(context, revision, directives):
        if getattr(config.cmd_opts, "autogenerate", False) and directives[0].upgrade_ops.is_empty():
            directives[:] = []
            logger.info("No changes in schema detected.")

    configure_args = current_app.extensions["migrate"].configure_args
    configure_args.setdefault("process_revision_directives", skip_empty_autogenerate)

    with get_engine().connect() as connection:
        context.configure(connection=connection, target_metadata=get_metadata(), **configure_args)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
