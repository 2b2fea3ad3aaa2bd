"""Alembic environment: migrate the connection handed over by ``sync_server.db.migrate``."""

from __future__ import annotations

from alembic import context

from sync_server.db import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through sync_server.db.migrate (it passes the connection)")
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
