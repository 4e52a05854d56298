"""The client matrix over TLS (sslmode=require / verify-full): psql, psycopg,
asyncpg, pg8000, node-postgres and pgJDBC through a gateway with client TLS,
whose sessions the reactor relays (TLS records made and read there), with
results checked against a direct connection."""

from __future__ import annotations

import asyncio
import os
import ssl
import subprocess

import psycopg
import pytest

from tests.clients.test_jdbc import jdbc_program, run_program  # noqa: F401 (fixture)
from tests.clients.test_node import node_env, run_check  # noqa: F401 (fixture)
from tests.gateway_fixtures import start_gateway, write_tls_files

pytestmark = [pytest.mark.pg, pytest.mark.clients]

QUERY = "select g, repeat('x', g % 50), g * 2 from generate_series(1, 3000) g"


@pytest.fixture(scope="module")
def tls_gw(pg, tmp_path_factory):
    base = tmp_path_factory.mktemp("tls-matrix")
    files = write_tls_files(base)
    gw = start_gateway(base / "gw", pg, tls={"cert": files["cert"], "key": files["key"]})
    gw.extra["ca"] = files["ca"]
    yield gw
    gw.stop()


def _direct(pg) -> list[tuple]:
    with psycopg.connect(pg.dsn("app", "apppass", "appdb")) as conn:
        return conn.execute(QUERY).fetchall()


def _reactor_sessions(gw) -> list[str]:
    """The relay each TLS session of the gateway used (its 'session closed' lines)."""
    return [(r.get("relay"), r.get("relay_core")) for r in gw.logs() if r.get("msg") == "session closed" and r.get("tls")]


def test_psql(tls_gw, pg, psql_bin):
    env = dict(os.environ, PGPASSWORD="x", PGSSLMODE="verify-full", PGSSLROOTCERT=tls_gw.extra["ca"])
    out = subprocess.run([psql_bin, "-X", "-A", "-t", "-F", ",", "-h", "127.0.0.1", "-p", str(tls_gw.port), "-U", "alice",
                          "-d", "appdb", "-c", "select ssl from pg_stat_ssl where pid = pg_backend_pid()",
                          "-c", QUERY, "-c", "\\copy (select g from generate_series(1, 20000) g) to stdout"],
                         env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    rows = [tuple(int(x) if i != 1 else x for i, x in enumerate(line.split(","))) for line in lines[1:3001]]
    assert rows == _direct(pg)
    assert lines[3001:] == [str(g) for g in range(1, 20001)]


def test_psycopg(tls_gw, pg, direct, new_table):
    table = new_table("id int primary key, name text")
    dsn = tls_gw.dsn(sslmode="verify-full", sslrootcert=tls_gw.extra["ca"])
    with psycopg.connect(dsn) as conn:
        assert conn.pgconn.ssl_in_use
        assert conn.execute(QUERY).fetchall() == _direct(pg)
        with conn.cursor(binary=True) as cur:
            assert cur.execute(QUERY).fetchall() == _direct(pg)
        cur = conn.cursor()
        cur.executemany(f"insert into {table} values (%s, %s)", [(i, f"n{i}") for i in range(500)])
        with cur.copy(f"copy {table} from stdin") as copy:
            for i in range(500, 5000):
                copy.write_row((i, f"c{i}"))
        conn.commit()
        with conn.pipeline():
            for i in range(50):
                conn.execute("select %s::int", (i,))
        assert conn.execute(f"select count(*) from {table}").fetchone() == (5000,)
    assert direct.execute(f"select count(*), max(id) from {table}").fetchone() == (5000, 4999)


def test_asyncpg(tls_gw, pg):
    asyncpg = pytest.importorskip("asyncpg") if os.environ.get("CI") != "true" else __import__("asyncpg")
    ctx = ssl.create_default_context(cafile=tls_gw.extra["ca"])

    async def run():
        conn = await asyncpg.connect(host="127.0.0.1", port=tls_gw.port, user="alice", password="x",
                                     database="appdb", ssl=ctx, timeout=10)
        try:
            rows = await conn.fetch(QUERY)
            stmt = await conn.prepare("select $1::int + 1")
            vals = [await stmt.fetchval(i) for i in range(100)]
            return [tuple(r) for r in rows], vals
        finally:
            await conn.close()

    rows, vals = asyncio.run(run())
    assert rows == _direct(pg) and vals == list(range(1, 101))


def test_pg8000(tls_gw, pg):
    import pg8000.native

    ctx = ssl.create_default_context(cafile=tls_gw.extra["ca"])
    conn = pg8000.native.Connection("alice", host="127.0.0.1", port=tls_gw.port, database="appdb", password="x",
                                    ssl_context=ctx, timeout=20)
    try:
        assert [tuple(r) for r in conn.run(QUERY)] == _direct(pg)
        assert conn.run("select :v::int * 3", v=7) == [[21]]
    finally:
        conn.close()


def test_node_postgres(tls_gw, node_env, direct, new_table):  # noqa: F811
    table = new_table("id int primary key, name text")
    url = tls_gw.url(user="node-user").replace("sslmode=disable", f"sslmode=verify-full&sslrootcert={tls_gw.extra['ca']}")
    r = run_check(node_env, url, table)
    assert r, r
    assert direct.execute(f"select count(*) from {table}").fetchone()[0] > 0


def test_pgjdbc(tls_gw, jdbc_program, direct, new_table):  # noqa: F811
    table = new_table("id int primary key, name text")
    url = f"jdbc:postgresql://127.0.0.1:{tls_gw.port}/appdb?sslmode=require"
    rc, out, err = run_program([*jdbc_program, url, "alice@example.com", "x", table])
    last = out.strip().splitlines()[-1] if out.strip() else ""
    assert rc == 0 and last.startswith("OK "), f"exit {rc}\nstdout:\n{out}\nstderr:\n{err[-5000:]}"
    assert direct.execute(f"select count(*) from {table}").fetchone()[0] == 1201


def test_every_tls_session_took_the_reactor(tls_gw):
    relays = _reactor_sessions(tls_gw)
    # ... and the C core made and read their TLS records (pgjit.gateway._relaycore,
    # which CI builds: tests/test_relay_paths.py::test_core_is_built_in_ci)
    from pgjit.gateway.reactor import c_core_enabled

    assert relays and set(relays) == {("reactor", c_core_enabled())}, relays
