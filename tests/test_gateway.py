"""The gateway core against a real PostgreSQL: protocol edges, robustness,
TLS, shutdown. Client-library coverage lives in tests/clients/."""

from __future__ import annotations

import shutil
import signal
import socket
import struct
import threading
import time
import uuid

import psycopg
import pytest

from pgjit.protocol import messages as m
from tests.clients._helpers import wait_for
from tests.rawclient import RawClient, errors

pytestmark = pytest.mark.pg


def backends(pg, app_name: str) -> int:
    out = pg.psql(f"select count(*) from pg_stat_activity where application_name = '{app_name}'", dbname="appdb")
    return int(out.strip())


# --------------------------------------------------------------- protocol


def test_simple_and_extended_pipeline(gateway):
    with RawClient(gateway.port) as c:
        assert isinstance(c.login()[-1], m.ReadyForQuery)
        # Several extended-protocol statements before one Sync, in one write.
        c.send(
            m.Parse("s1", "select $1::int + 1", (23,)),
            m.Bind("", "s1", (0,), (b"41",), (0,)),
            m.Execute(""),
            m.Parse("", "select 'two'"),
            m.Bind("", ""),
            m.Describe(b"P", ""),
            m.Execute(""),
            m.Sync(),
        )
        msgs = c.read_until_ready()
        rows = [x.values for x in msgs if isinstance(x, m.DataRow)]
        assert rows == [(b"42",), (b"two",)]
        assert isinstance(msgs[-1], m.ReadyForQuery) and msgs[-1].status == b"I"


def test_copy_inside_extended_protocol(gateway, pg):
    table = f"copy_ext_{uuid.uuid4().hex[:8]}"
    pg.psql(f"create table {table}(a int, b text); alter table {table} owner to app", dbname="appdb")
    with RawClient(gateway.port) as c:
        c.login()
        c.send(m.Parse("", f"copy {table} from stdin"), m.Bind("", ""), m.Execute(""))
        first = c.read_message()
        assert isinstance(first, m.ParseComplete)
        assert isinstance(c.read_message(), m.BindComplete)
        assert isinstance(c.read_message(), m.CopyInResponse)
        c.send(m.CopyData(b"1\tone\n2\ttwo\n"), m.CopyDone(), m.Sync())
        msgs = c.read_until_ready()
        assert any(isinstance(x, m.CommandComplete) and x.command_tag == "COPY 2" for x in msgs)
        c.send(m.Parse("", f"copy (select * from {table} order by a) to stdout"), m.Bind("", ""), m.Execute(""), m.Sync())
        msgs = c.read_until_ready()
        data = b"".join(x.data for x in msgs if isinstance(x, m.CopyData))
        assert data == b"1\tone\n2\ttwo\n"
    assert pg.psql(f"select count(*) from {table}", dbname="appdb").strip() == "2"


def test_function_call_is_refused_and_session_stays_usable(gateway):
    with RawClient(gateway.port) as c:
        c.login()
        c.send(m.FunctionCall(1, (), (), 0))  # any oid: it must never reach the server
        msgs = c.read_until_ready()
        errs = errors(msgs)
        assert [e.sqlstate for e in errs] == ["0A000"]
        assert "FunctionCall" in errs[0].message
        assert msgs[-1].status == b"I"
        # Inside a transaction block the transaction is aborted, as for any error.
        c.send(m.Query("begin"))
        c.read_until_ready()
        c.send(m.FunctionCall(1, (), (), 0))
        msgs = c.read_until_ready()
        assert errors(msgs)[0].sqlstate == "0A000" and msgs[-1].status == b"E"
        c.send(m.Query("rollback"))
        assert c.read_until_ready()[-1].status == b"I"
        c.send(m.Query("select 1"))
        assert [x.values for x in c.read_until_ready() if isinstance(x, m.DataRow)] == [(b"1",)]


def test_replication_connections_are_refused(gateway):
    with RawClient(gateway.port) as c:
        msgs = c.login(replication="database")
        err = errors(msgs)[0]
        assert err.sqlstate == "0A000" and err.severity == "FATAL"
        assert "replication" in err.message


def test_protocol_3_2_is_downgraded(gateway):
    with RawClient(gateway.port) as c:
        msgs = c.login(protocol=(3 << 16) | 2, **{"_pq_.made_up": "1"})
        npv = [x for x in msgs if isinstance(x, m.NegotiateProtocolVersion)]
        assert npv == [m.NegotiateProtocolVersion(0, ("_pq_.made_up",))]
        assert isinstance(msgs[-1], m.ReadyForQuery)
        key = [x for x in msgs if isinstance(x, m.BackendKeyData)][0]
        assert len(key.secret_key) == 4  # a 3.0 key


def test_gssenc_request_is_declined(gateway):
    with RawClient(gateway.port) as c:
        c.send(m.GSSENCRequest())
        assert c.sock.recv(1) == b"N"
        assert isinstance(c.login()[-1], m.ReadyForQuery)


def test_parameter_status_and_notices_are_relayed(gateway):
    with psycopg.connect(gateway.dsn(), autocommit=True) as conn:
        assert conn.info.parameter_status("server_version")
        conn.execute("set application_name = 'relayed-ps'")
        assert conn.info.parameter_status("application_name") == "relayed-ps"
        notices = []
        conn.add_notice_handler(lambda d: notices.append(d.message_primary))
        conn.execute("do $$ begin raise notice 'hello from upstream'; end $$")
        assert notices == ["hello from upstream"]


def test_large_row_streams_through(gateway):
    with psycopg.connect(gateway.dsn()) as conn:
        (v,) = conn.execute("select repeat('x', 20000000)").fetchone()
        assert len(v) == 20_000_000


# ------------------------------------------------------------- robustness


def test_oversized_length_is_a_protocol_error_and_others_survive(gateway):
    with psycopg.connect(gateway.dsn()) as other:
        with RawClient(gateway.port) as c:
            c.login()
            c.send(b"Q" + struct.pack("!I", 0x7FFFFFF0))
            err = c.read_message()
            assert isinstance(err, m.ErrorResponse)
            assert err.sqlstate == "08P01" and err.severity == "FATAL"
            assert c.closed_by_peer()
        assert other.execute("select 7").fetchone() == (7,)


def test_unknown_message_type_is_a_protocol_error(gateway):
    with RawClient(gateway.port) as c:
        c.login()
        c.send(b"?" + struct.pack("!I", 4))
        err = c.read_message()
        assert err.sqlstate == "08P01"
        assert c.closed_by_peer()


def test_garbage_startup_packet(gateway):
    with RawClient(gateway.port) as c:
        c.send(struct.pack("!I", 1_000_000) + b"x" * 100)
        err = c.read_message()
        assert isinstance(err, m.ErrorResponse) and err.sqlstate == "08P01"
    with RawClient(gateway.port) as c:
        c.send(struct.pack("!II", 8, 12345678))  # unknown request code
        assert c.read_message().sqlstate == "08P01"
    # The gateway is still there.
    with psycopg.connect(gateway.dsn()) as conn:
        assert conn.execute("select 1").fetchone() == (1,)


def test_startup_timeout(make_gateway):
    gw = make_gateway(timeouts={"startup": 0.5})
    with RawClient(gw.port) as c:
        t0 = time.monotonic()
        assert c.closed_by_peer(timeout=5)
        assert time.monotonic() - t0 < 4


def test_max_clients(make_gateway):
    gw = make_gateway(listen={"max_clients": 2})
    a = psycopg.connect(gw.dsn())
    b = psycopg.connect(gw.dsn())
    try:
        with pytest.raises(psycopg.OperationalError) as exc:
            psycopg.connect(gw.dsn())
        assert "too many clients" in str(exc.value)
        a.close()
        assert wait_for(lambda: _can_connect(gw))
    finally:
        a.close()
        b.close()


def _can_connect(gw) -> bool:
    try:
        with psycopg.connect(gw.dsn()) as c:
            return c.execute("select 1").fetchone() == (1,)
    except psycopg.OperationalError:
        return False


def test_upstream_unreachable(make_gateway, pg):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    gw = make_gateway(targets={"appdb": {"host": "127.0.0.1", "port": dead_port, "user": "app", "password": "apppass"}})
    with RawClient(gw.port) as c:
        err = errors(c.login())[0]
        assert err.sqlstate == "08006" and err.severity == "FATAL"
        assert "cannot connect" in err.message


def test_unknown_database(gateway):
    with RawClient(gateway.port) as c:
        err = errors(c.login(database="nosuchdb"))[0]
        assert err.sqlstate == "3D000"


def test_terminate_and_abrupt_close_release_upstream(gateway, pg):
    name = f"term-{uuid.uuid4().hex[:6]}"
    conn = psycopg.connect(gateway.dsn(application_name=name))
    assert backends(pg, name) == 1
    conn.close()  # sends Terminate
    assert wait_for(lambda: backends(pg, name) == 0, 2)

    name2 = f"abrupt-{uuid.uuid4().hex[:6]}"
    c = RawClient(gateway.port)
    c.login(application_name=name2)
    assert backends(pg, name2) == 1
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()  # RST, no Terminate
    assert wait_for(lambda: backends(pg, name2) == 0, 2)


def test_upstream_termination_reaches_client(gateway, pg):
    name = f"killed-{uuid.uuid4().hex[:6]}"
    with RawClient(gateway.port) as c:
        c.login(application_name=name)
        pg.psql(f"select pg_terminate_backend(pid) from pg_stat_activity where application_name = '{name}'", dbname="appdb")
        err = c.read_message()
        assert isinstance(err, m.ErrorResponse) and err.sqlstate == "57P01"
        assert c.closed_by_peer()


def test_cancel_with_wrong_key_does_nothing(gateway):
    with RawClient(gateway.port) as c:
        msgs = c.login()
        key = [x for x in msgs if isinstance(x, m.BackendKeyData)][0]
        c.send(m.Query("select pg_sleep(1.5), 'done'"))
        with RawClient(gateway.port) as cancel:
            bad = bytes(b ^ 0xFF for b in key.secret_key)
            cancel.send(m.CancelRequest(key.process_id, bad))
            assert cancel.closed_by_peer()
        msgs = c.read_until_ready()
        assert not errors(msgs)
        with RawClient(gateway.port) as cancel:
            c.send(m.Query("select pg_sleep(30)"))
            time.sleep(0.3)
            cancel.send(m.CancelRequest(key.process_id, key.secret_key))
            msgs = c.read_until_ready(timeout=3)
            assert errors(msgs)[0].sqlstate == "57014"


def test_logs_are_json_lines_with_session_ids(gateway):
    with psycopg.connect(gateway.dsn()) as conn:
        conn.execute("select 1")
    recs = gateway.logs()
    assert all("raw" not in r for r in recs), [r for r in recs if "raw" in r][:3]
    closed = [r for r in recs if r.get("msg") == "session closed"]
    assert closed and all(len(r["session"]) == 16 for r in closed)
    assert not any("password" in str(r).lower() and "x'" in str(r) for r in recs)


# ---------------------------------------------------------------- TLS


def test_client_tls(make_gateway, tmp_path):
    from tests.gateway_fixtures import write_tls_files

    files = write_tls_files(tmp_path)
    gw = make_gateway(tls={"cert": files["cert"], "key": files["key"]})
    with psycopg.connect(gw.dsn(sslmode="verify-full", sslrootcert=files["ca"])) as conn:
        assert conn.pgconn.ssl_in_use
        assert conn.execute("select 1").fetchone() == (1,)
        # Large results over TLS too.
        assert conn.execute("select count(*) from (select repeat('y', 1000) from generate_series(1, 20000)) s").fetchone() == (20000,)
    with psycopg.connect(gw.dsn(sslmode="disable")) as conn:
        assert not conn.pgconn.ssl_in_use


@pytest.fixture
def ssl_cluster():
    """A cluster of its own with ssl = on (its CA: cluster.ca_path)."""
    from pgjit.devtools.pgcluster import PgCluster, make_temp_base

    base = make_temp_base("pgjit-ssl-")
    cluster = PgCluster(base / "data", ssl=True)
    cluster.init()
    cluster.start()
    try:
        cluster.bootstrap_test_roles()
        yield cluster
    finally:
        cluster.stop()
        cluster.destroy()
        shutil.rmtree(base, ignore_errors=True)


def test_upstream_tls_verify_full(tmp_path, make_gateway, ssl_cluster):
    cluster = ssl_cluster
    # verify-full: the CA must match and the name must be the certificate's.
    from tests.gateway_fixtures import start_gateway

    gw = start_gateway(
        tmp_path / "gw-tls",
        cluster,
        **{"targets": {"appdb": {"host": "127.0.0.1", "port": cluster.port, "database": "appdb", "user": "app", "password": "apppass", "tls": {"mode": "verify-full", "ca": str(cluster.ca_path)}}}},
    )
    try:
        with psycopg.connect(gw.dsn()) as conn:
            assert conn.execute("select ssl from pg_stat_ssl where pid = pg_backend_pid()").fetchone() == (True,)
    finally:
        gw.stop()
    # A CA that did not sign the server's certificate: refused.
    import trustme

    other = trustme.CA()
    other_ca = tmp_path / "other-ca.pem"
    other.cert_pem.write_to_path(str(other_ca))
    gw = start_gateway(
        tmp_path / "gw-badca",
        cluster,
        **{"targets": {"appdb": {"host": "127.0.0.1", "port": cluster.port, "database": "appdb", "user": "app", "password": "apppass", "tls": {"mode": "verify-full", "ca": str(other_ca)}}}},
    )
    try:
        with RawClient(gw.port) as c:
            err = errors(c.login())[0]
            assert err.sqlstate == "08006" and "TLS" in err.message
    finally:
        gw.stop()


def test_md5_and_trust_upstream_auth(make_gateway, pg):
    gw = make_gateway(targets={
        "md5db": {"host": "127.0.0.1", "port": pg.port, "database": "appdb", "user": "pgjit_md5", "password": "md5pass"},
        "trustdb": {"host": "127.0.0.1", "port": pg.port, "database": "appdb", "user": "pgjit_trust"},
    })
    with psycopg.connect(gw.dsn(dbname="md5db")) as conn:
        assert conn.execute("select current_user").fetchone() == ("pgjit_md5",)
    with psycopg.connect(gw.dsn(dbname="trustdb")) as conn:
        assert conn.execute("select current_user").fetchone() == ("pgjit_trust",)


# ------------------------------------------------------------- shutdown


def test_sigterm_drains_then_terminates(make_gateway):
    gw = make_gateway(timeouts={"shutdown_grace": 8})
    idle = psycopg.connect(gw.dsn(), autocommit=True)
    busy = psycopg.connect(gw.dsn(), autocommit=True)
    result: dict[str, object] = {}

    def run_query():
        try:
            result["row"] = busy.execute("select pg_sleep(2), 'finished'").fetchone()
        except Exception as e:  # pragma: no cover - reported by the assert below
            result["error"] = e

    t = threading.Thread(target=run_query)
    t.start()
    time.sleep(0.5)
    gw.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(gw.dsn(), connect_timeout=2)
    t.join(10)
    assert result.get("row") == ("", "finished"), result
    # Both sessions are now idle: the gateway ends them and exits well
    # before the grace period is over.
    t0 = time.monotonic()
    assert gw.proc.wait(10) == 0
    assert time.monotonic() - t0 < 5
    for conn in (idle, busy):
        with pytest.raises(psycopg.errors.AdminShutdown):
            conn.execute("select 1")


def test_sigterm_grace_expires_for_long_query(make_gateway, pg):
    gw = make_gateway(timeouts={"shutdown_grace": 1})
    name = f"long-{uuid.uuid4().hex[:6]}"
    conn = psycopg.connect(gw.dsn(application_name=name), autocommit=True)
    errs: list[BaseException] = []

    def run():
        try:
            conn.execute("select pg_sleep(30)")
        except BaseException as e:
            errs.append(e)

    t = threading.Thread(target=run)
    t.start()
    time.sleep(0.5)
    gw.proc.send_signal(signal.SIGTERM)
    t.join(10)
    assert not t.is_alive()
    assert errs and isinstance(errs[0], psycopg.errors.AdminShutdown), errs
    assert gw.proc.wait(10) == 0
    # The upstream query was cancelled, not left running for nobody.
    assert wait_for(lambda: backends(pg, name) == 0, 3)


def test_tls_on_both_sides_relays_through_the_c_core_with_channel_binding(tmp_path, ssl_cluster):
    """Client TLS and upstream TLS (verify-full) at once: the session is
    relayed by the reactor's C core on both TLS objects (issue 14: the same
    path as plain TCP), the results are the server's, and pgjit's SCRAM login
    upstream is bound to the TLS channel (SCRAM-SHA-256-PLUS,
    tls-server-end-point), as the session's closing log line says."""
    from pgjit.gateway.reactor import c_core_enabled
    from tests.gateway_fixtures import start_gateway, write_tls_files

    cluster = ssl_cluster
    (tmp_path / "client-tls").mkdir()
    files = write_tls_files(tmp_path / "client-tls")
    gw = start_gateway(
        tmp_path / "gw-tls2", cluster, tls={"cert": files["cert"], "key": files["key"]},
        **{"targets": {"appdb": {"host": "127.0.0.1", "port": cluster.port, "database": "appdb", "user": "app",
                                 "password": "apppass", "tls": {"mode": "verify-full", "ca": str(cluster.ca_path)}}}},
    )
    try:
        query = "select g, repeat('x', g % 300) from generate_series(1, 20000) g"
        with psycopg.connect(cluster.dsn("app", "apppass", "appdb")) as direct:
            want = direct.execute(query).fetchall()
        with psycopg.connect(gw.dsn(sslmode="verify-full", sslrootcert=files["ca"], host="localhost", hostaddr="127.0.0.1")) as conn:
            assert conn.pgconn.ssl_in_use
            assert conn.execute("select ssl from pg_stat_ssl where pid = pg_backend_pid()").fetchone() == (True,)
            for i in range(50):  # simple-protocol round trips, the C core's own kind
                assert conn.pgconn.exec_(b"select %d" % i).get_value(0, 0) == b"%d" % i
            assert conn.execute(query).fetchall() == want
        deadline = time.monotonic() + 10
        while not (closed := [r for r in gw.logs() if r.get("msg") == "session closed"]):
            assert time.monotonic() < deadline, "no session closed line"
            time.sleep(0.05)
        line = closed[-1]
        assert (line["tls"], line["upstream_tls"], line["upstream_auth"]) == (True, True, "SCRAM-SHA-256-PLUS"), line
        assert (line["relay"], line["relay_core"]) == ("reactor", c_core_enabled()), line
    finally:
        gw.stop()
