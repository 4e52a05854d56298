"""The backend a client sees is the server's: BackendKeyData carries the
upstream's real process id (with pgjit's own secret), so pg_backend_pid(),
notification pids and pg_terminate_backend agree with what the client was
told, while cancel requests are still routed (and checked) by pgjit. And a
Terminate sent while a query runs reaches the server; the client's socket is
closed after the server's, once the query's reply is through — as PostgreSQL
itself behaves. Run over every relay: the C core, the Python reactor and the
task pair TLS sessions use."""

from __future__ import annotations

import socket
import ssl
import time

import psycopg
import pytest

from pgjit.protocol import messages as m
from tests.gateway_fixtures import start_gateway, write_tls_files
from tests.rawclient import RawClient, errors

pytestmark = pytest.mark.pg

RELAYS = ("c", "python", "tls")


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("tls")
    write_tls_files(d)
    return d


@pytest.fixture(scope="module", params=RELAYS)
def gw(request, pg, tmp_path_factory, tls_files):
    relay = request.param
    env = {"PGJIT_RELAY_CORE": "python"} if relay == "python" else {}
    sections = {}
    if relay == "tls":
        sections["tls"] = {"cert": str(tls_files / "cert.pem"), "key": str(tls_files / "key.pem")}
    g = start_gateway(tmp_path_factory.mktemp(f"gw-{relay}"), pg, env=env, **sections)
    g.extra["relay"] = relay
    g.extra["sslmode"] = "require" if relay == "tls" else "disable"
    yield g
    g.stop()


def connect(gw, **kw) -> psycopg.Connection:
    return psycopg.connect(gw.dsn(sslmode=gw.extra["sslmode"]), **kw)


def raw(gw) -> RawClient:
    """A RawClient, over TLS when the gateway under test is the TLS one."""
    c = RawClient(gw.port)
    if gw.extra["relay"] == "tls":
        c.sock.sendall(m.SSLRequest().encode())
        assert c.sock.recv(1) == b"S"
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        c.sock = ctx.wrap_socket(c.sock, server_hostname="127.0.0.1")
    return c


def test_backend_pid_is_the_servers(gw, pg):
    with connect(gw) as conn:
        told = conn.info.backend_pid
        assert conn.execute("select pg_backend_pid()").fetchone()[0] == told
        # The server knows that process as this session's backend.
        row = pg.execute(f"select usename, application_name from pg_stat_activity where pid = {int(told)}")
        assert row and row[0][0] == "app"


def test_notifications_carry_the_pid_the_client_was_told(gw):
    with connect(gw, autocommit=True) as conn:
        conn.execute("listen pgjit_peer")
        conn.execute("notify pgjit_peer, 'hello'")
        notes = list(conn.notifies(timeout=5, stop_after=1))
        assert [(n.channel, n.payload) for n in notes] == [("pgjit_peer", "hello")]
        # psycopg (like libpq's PQnotifies users) tells its own notifications
        # apart from other sessions' by this pid.
        assert notes[0].pid == conn.info.backend_pid


def test_pg_terminate_backend_of_the_told_pid_ends_the_session(gw, pg):
    with connect(gw) as victim, connect(gw, autocommit=True) as other:
        pid = victim.info.backend_pid
        assert other.execute("select pg_terminate_backend(%s)", (pid,)).fetchone() == (True,)
        with pytest.raises(psycopg.OperationalError) as ei:
            for _ in range(50):
                victim.execute("select 1")
                time.sleep(0.05)
        assert "terminat" in str(ei.value)


def test_cancel_is_routed_by_pgjit_and_needs_both_halves_of_the_key(gw):
    with raw(gw) as c:
        msgs = c.login()
        key = next(x for x in msgs if isinstance(x, m.BackendKeyData))
        c.send(m.Query("select pg_backend_pid()"))
        rows = [x for x in c.read_until_ready() if isinstance(x, m.DataRow)]
        assert int(rows[0].values[0]) == key.process_id
        # The right pid with a wrong secret, and the right secret with a
        # wrong pid: neither cancels.
        c.send(m.Query("select pg_sleep(0.8), 'done'"))
        for bad in (m.CancelRequest(key.process_id, bytes(b ^ 0x5A for b in key.secret_key)),
                    m.CancelRequest(key.process_id ^ 1, key.secret_key)):
            with RawClient(gw.port) as cancel:
                cancel.send(bad)
                assert cancel.closed_by_peer()
        assert not errors(c.read_until_ready())
        # The whole key cancels (cancel requests come over plain TCP here).
        c.send(m.Query("select pg_sleep(30)"))
        time.sleep(0.3)
        with RawClient(gw.port) as cancel:
            cancel.send(m.CancelRequest(key.process_id, key.secret_key))
        assert errors(c.read_until_ready(timeout=5))[0].sqlstate == "57014"


def test_terminate_while_a_query_runs_is_forwarded_and_the_reply_delivered(gw, pg):
    pg.execute("create table if not exists pgjit_terminate_probe (tag text); grant insert on pgjit_terminate_probe to app", dbname="appdb")
    tag = f"t{time.monotonic_ns()}"
    try:
        with raw(gw) as c:
            c.login()
            # The query is still running when Terminate arrives right behind it.
            c.send(m.Query(f"select pg_sleep(0.5); insert into pgjit_terminate_probe values ('{tag}')"), m.Terminate())
            started = time.monotonic()
            got = []
            while True:
                try:
                    got.append(c.read_message(timeout=10))
                except EOFError:
                    break
            closed_after = time.monotonic() - started
        kinds = [type(x).__name__ for x in got]
        # The server finished the query and answered it before it closed,
        # and only then did pgjit close the client's socket.
        assert kinds[-2:] == ["CommandComplete", "ReadyForQuery"], kinds
        assert not [x for x in got if isinstance(x, m.ErrorResponse)], kinds
        assert closed_after >= 0.4
        assert pg.execute(f"select count(*) from pgjit_terminate_probe where tag = '{tag}'", dbname="appdb") == [(1,)]
    finally:
        pg.execute("drop table if exists pgjit_terminate_probe", dbname="appdb")


def test_terminate_at_rest_closes_promptly(gw):
    with raw(gw) as c:
        c.login()
        c.send(m.Terminate())
        started = time.monotonic()
        assert c.closed_by_peer(timeout=5)
        assert time.monotonic() - started < 5


def test_client_gone_after_terminate_ends_the_session(gw, pg):
    """A client that sends Terminate and closes at once (libpq does) must not
    leave a session behind once the server is done."""
    with raw(gw) as c:
        msgs = c.login()
        pid = next(x for x in msgs if isinstance(x, m.BackendKeyData)).process_id
        c.send(m.Query("select pg_sleep(0.3)"), m.Terminate())
        try:
            c.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if not pg.execute(f"select 1 from pg_stat_activity where pid = {int(pid)}"):
            break
        time.sleep(0.05)
    else:
        raise AssertionError("the upstream backend outlived its client's Terminate")


def test_terminate_in_copy_from_stdin_does_not_hang(gw, pg):
    """In COPY FROM STDIN the server takes a Terminate for stray bytes, fails
    the COPY and waits for more: pgjit closes once nothing more is due, rather
    than wait with it for a client that has said goodbye."""
    pg.execute("create table if not exists pgjit_copy_probe (a int); grant insert on pgjit_copy_probe to app", dbname="appdb")
    try:
        with raw(gw) as c:
            c.login()
            c.send(m.Query("copy pgjit_copy_probe from stdin"))
            assert type(c.read_message()).__name__ == "CopyInResponse"
            c.send(m.CopyData(b"1\n"), m.Terminate())
            started = time.monotonic()
            assert c.closed_by_peer(timeout=10)
            assert time.monotonic() - started < 5
        # Nothing was committed, and the server's backend is gone.
        assert pg.execute("select count(*) from pgjit_copy_probe", dbname="appdb") == [(0,)]
    finally:
        pg.execute("drop table if exists pgjit_copy_probe", dbname="appdb")
