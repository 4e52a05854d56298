"""Schema migrations (Alembic, Django) through the gateway in JIT mode, where
every session's objects belong to the policy's stable owning role."""
