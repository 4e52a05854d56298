"""Alembic's environment for the audit store: the engine is handed in by
pgjit.audit.store (no alembic.ini, no URL in a file)."""

from alembic import context

from pgjit.audit.store import metadata

engine = context.config.attributes["engine"]
with engine.begin() as connection:
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
