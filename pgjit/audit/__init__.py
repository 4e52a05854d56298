"""Records: who ran what, when, with what outcome (DESIGN.md, records layer).

    chain    the hash chain and signed checkpoints; verify (store or export)
    store    SQLAlchemy Core tables, SQLite (WAL) or PostgreSQL; Alembic migrations
    writer   the bounded queue and the background thread that seals and writes
    tool     the ``pgjit store`` and ``pgjit audit`` commands
    sessions reading sessions back (``pgjit sessions``, ``policy replay``)
    records  one function per record kind
    errors   one-line names for failures

Nothing here imports the wire codec or trio.
"""
