"""The audit store: SQLAlchemy 2 Core over SQLite (default, WAL mode) or
PostgreSQL (production, several replicas). The same code runs on both.

The schema is Alembic's (pgjit/audit/migrations); ``pgjit store upgrade``
brings a store to the current revision, and opening one that is behind (or
ahead: a newer pgjit wrote it) fails with a message saying so.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from pgjit.audit.chain import body_json
from pgjit.audit.errors import short_error

metadata = sa.MetaData()

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # SQLite's rowid alias must be INTEGER

records = sa.Table(
    "audit_records",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("chain", sa.String(32), nullable=False),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("at", sa.String(32), nullable=False),  # ISO 8601 UTC, microseconds
    sa.Column("session_id", sa.String(32)),
    sa.Column("person", sa.Text),
    sa.Column("target", sa.Text),
    sa.Column("decision", sa.String(16)),
    sa.Column("body", sa.Text, nullable=False),  # canonical JSON
    sa.Column("prev", sa.String(64), nullable=False),
    sa.Column("hash", sa.String(64), nullable=False),
    sa.Index("audit_records_session", "session_id", "seq"),
    sa.Index("audit_records_at", "at"),
)

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
#: Seconds a PostgreSQL store's connect may take (libpq's connect_timeout).
CONNECT_TIMEOUT = 10


class StoreError(Exception):
    """The store cannot be used (unreachable, wrong schema revision)."""


def sqlite_url(path: str | Path) -> str:
    return f"sqlite:///{Path(path)}"


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"timeout": 30})

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record):  # type: ignore[no-untyped-def]
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    # A store host that does not answer (a dropped route, a firewall that
    # drops SYNs) fails a connect after this long instead of the kernel's two
    # minutes: the writer retries, and the gateway's readiness says why.
    # A connect_timeout in the URL wins.
    connect_args = {} if "connect_timeout=" in url else {"connect_timeout": CONNECT_TIMEOUT}
    return sa.create_engine(url, pool_pre_ping=True, pool_size=2, max_overflow=2, connect_args=connect_args)


def _alembic_config(engine: Engine):  # type: ignore[no-untyped-def]
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["engine"] = engine
    return cfg


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    cfg = _alembic_config(None)  # type: ignore[arg-type]
    head = ScriptDirectory.from_config(cfg).get_current_head()
    assert head is not None
    return head


def current_revision(engine: Engine) -> str | None:
    from alembic.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(url: str) -> tuple[str | None, str]:
    """Bring the store at ``url`` to the current schema; returns (from, to)."""
    from alembic import command

    engine = make_engine(url)
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    try:
        before = current_revision(engine)
        command.upgrade(_alembic_config(engine), "head")
        return before, head_revision()
    finally:
        engine.dispose()


class Store:
    def __init__(self, url: str, *, check_schema: bool = True) -> None:
        self.url = url
        self.engine = make_engine(url)
        self._insert = _insert_sql(self.engine)
        self._writer_conn: Any = None  # the writer's DBAPI connection, kept between batches (append)
        if check_schema:
            self.check_schema()

    def close(self) -> None:
        if self._writer_conn is not None:
            try:
                self._writer_conn.close()
            except Exception:
                pass
            self._writer_conn = None
        self.engine.dispose()

    def check_schema(self) -> None:
        try:
            have = current_revision(self.engine)
        except sa.exc.SQLAlchemyError as e:
            raise StoreError(f"cannot reach the audit store: {short_error(e)}") from None
        want = head_revision()
        if have != want:
            raise StoreError(
                f"the audit store's schema is at revision {have or '(none)'}, this pgjit needs {want}: "
                "run `pgjit store upgrade`"
            )

    def append(self, rows: list[dict[str, Any]]) -> None:
        """Write sealed records in one transaction (all or none).

        The writer's one thread calls this for each batch, on a DBAPI
        connection it keeps from batch to batch, straight to the driver's
        executemany and commit (the statement is the one SQLAlchemy compiles
        for this dialect): SQLAlchemy's connection and transaction objects
        cost about 450 us a batch, as much as SQLite's own work for a batch
        of 600 statements (BENCHMARKS.md). A failed write drops the
        connection; the next batch takes a fresh one from the pool (which
        pings it first)."""
        if not rows:
            return
        values = [_to_row(r) for r in rows]
        conn = self._writer_conn
        if conn is None:
            try:
                conn = self._writer_conn = self.engine.raw_connection()
            except sa.exc.SQLAlchemyError as e:
                raise StoreError(f"cannot reach the audit store: {short_error(e)}") from e
        try:
            cur = conn.cursor()
            try:
                cur.executemany(self._insert, values)
            finally:
                cur.close()
            conn.commit()
        except BaseException:
            self._writer_conn = None
            try:
                conn.rollback()
            except Exception:
                pass
            try:
                conn.invalidate()  # not back to the pool: it may be the broken one
            except Exception:
                pass
            raise

    def records(self, *, chain: str | None = None, session_id: str | None = None, since: str | None = None,
                kinds: tuple[str, ...] | None = None) -> Iterator[dict[str, Any]]:
        # In the order they were written (one chain's records in sequence;
        # several gateways' chains interleaved as they wrote them).
        q = sa.select(records).order_by(records.c.id)
        if chain is not None:
            q = q.where(records.c.chain == chain)
        if session_id is not None:
            q = q.where(records.c.session_id == session_id)
        if since is not None:
            q = q.where(records.c.at >= since)
        if kinds:
            q = q.where(records.c.kind.in_(kinds))
        with self.engine.connect() as conn:
            for row in conn.execution_options(stream_results=True, yield_per=1000).execute(q):
                yield _from_row(row._mapping)


_COLUMNS = ("chain", "seq", "kind", "at", "session_id", "person", "target", "decision", "body", "prev", "hash")


def _to_row(r: dict[str, Any]) -> tuple[Any, ...]:
    """A sealed record as _COLUMNS' values; the body as the JSON its hash
    covers (Chainer.seal leaves it in body_json)."""
    body = r.get("body_json")
    if body is None:
        body = body_json(r.get("body"))
    return tuple(body if c == "body" else r.get(c) for c in _COLUMNS)


def _insert_sql(engine: Engine) -> str:
    """INSERT of _COLUMNS with positional parameters in the driver's style."""
    style = engine.dialect.paramstyle
    marks = {"qmark": "?", "format": "%s", "pyformat": "%s"}.get(style)
    if marks is None:  # pragma: no cover - neither sqlite3 nor psycopg
        raise StoreError(f"unsupported driver parameter style {style!r}")
    cols = ", ".join(_COLUMNS)
    return f"INSERT INTO audit_records ({cols}) VALUES ({', '.join([marks] * len(_COLUMNS))})"


def _from_row(m: Any) -> dict[str, Any]:
    r = {c: m[c] for c in ("id", "chain", "seq", "kind", "at", "session_id", "person", "target", "decision", "prev", "hash")}
    try:
        r["body"] = json.loads(m["body"])
    except (TypeError, ValueError):
        r["body"] = m["body"]  # not JSON any more: verify names it as edited
    return r
