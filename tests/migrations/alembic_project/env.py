"""Alembic environment: online migrations through pgjit, with SQLAlchemy and
psycopg 3. The URL is built from the environment:

    PGJIT_MIG_USER    the person (the token's subject), e.g. deployer@example.com
    PGJIT_MIG_TOKEN   the OIDC token, sent as the password
    PGJIT_MIG_HOST    the gateway's address (default 127.0.0.1)
    PGJIT_MIG_PORT    the gateway's port
    PGJIT_MIG_PREFIX  prefix of every table, index and sequence the revisions make
"""

from __future__ import annotations

import os
from logging.config import fileConfig
from urllib.parse import quote

from alembic import context
from sqlalchemy import create_engine, pool

config = context.config
if config.config_file_name is not None:
    fileConfig(config.config_file_name)

PREFIX = os.environ["PGJIT_MIG_PREFIX"]


def database_url() -> str:
    user = quote(os.environ["PGJIT_MIG_USER"], safe="")
    token = quote(os.environ["PGJIT_MIG_TOKEN"], safe="")
    host = os.environ.get("PGJIT_MIG_HOST", "127.0.0.1")
    port = os.environ["PGJIT_MIG_PORT"]
    return f"postgresql+psycopg://{user}:{token}@{host}:{port}/appdb?sslmode=disable"


def run_migrations_online() -> None:
    # NullPool: one connection for the whole run, closed at the end (one
    # pgjit session, one JIT role).
    engine = create_engine(database_url(), poolclass=pool.NullPool)
    with engine.connect() as connection:
        who = connection.exec_driver_sql("SELECT session_user, current_user").one()
        connection.commit()
        print(f"pgjit-test: session_user={who[0]} current_user={who[1]}", flush=True)
        context.configure(connection=connection, target_metadata=None, version_table=f"{PREFIX}_alembic_version")
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    raise SystemExit("this project only runs online, through the gateway")
run_migrations_online()
