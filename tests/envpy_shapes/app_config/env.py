"""run_migrations_online builds its own engine from the application's settings, ignoring alembic.ini's URL."""

from logging.config import fileConfig

from appsettings import AppSettings
from sqlalchemy import create_engine

from alembic import context

config = context.config
if config.config_file_name is not None:
    fileConfig(config.config_file_name)

target_metadata = None
app_settings = AppSettings()


def run_migrations_offline() -> None:
    context.configure(url=app_settings.database_url, target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = create_engine(app_settings.database_url, **app_settings.engine_options)
    try:
        with engine.connect() as connection:
            context.configure(connection=connection, target_metadata=target_metadata, compare_type=True)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
