"""Faults around the gateway (issue 10, point 3): each ends with a clear error
for the affected client, no harm to the others, nothing left behind."""

from __future__ import annotations

import socket
import time

import psycopg
import pytest

from pgjit.protocol import messages as m
from tests.clients._helpers import wait_for
from tests.gateway_fixtures import start_gateway
from tests.rawclient import RawClient, errors

pytestmark = pytest.mark.pg


def _backends(pg, app: str = "app") -> int:
    return pg.execute("select count(*) from pg_stat_activity where usename = %s", (app,))[0][0]


def _errors_until_closed(c: RawClient, timeout: float) -> list[m.ErrorResponse]:
    """The ErrorResponses a client gets until the gateway closes its socket."""
    got = []
    try:
        while True:
            got.append(c.read_message(timeout=timeout))
    except EOFError:
        pass
    return [x for x in got if isinstance(x, m.ErrorResponse)]


def test_upstream_backend_killed_mid_query(gateway, pg):
    with psycopg.connect(gateway.dsn(), autocommit=True) as other:
        with RawClient(gateway.port) as c:
            msgs = c.login()
            pid = next(x for x in msgs if isinstance(x, m.BackendKeyData)).process_id
            c.send(m.Query("select pg_sleep(30)"))
            time.sleep(0.3)
            pg.execute("select pg_terminate_backend(%s)", (pid,))
            errs = _errors_until_closed(c, 5)
            # The server's own FATAL reaches the client, then the close.
            assert errs and errs[0].severity == "FATAL" and errs[0].sqlstate == "57P01", [e.fields for e in errs]
        # Others are not harmed.
        assert other.execute("select 1").fetchone() == (1,)


def test_upstream_restarted(pg_factory, tmp_path):
    cluster = pg_factory()
    gw = start_gateway(tmp_path / "gw", cluster)
    try:
        idle = psycopg.connect(gw.dsn(), autocommit=True)
        busy = RawClient(gw.port)
        busy.login()
        busy.send(m.Query("select pg_sleep(30)"))
        time.sleep(0.3)
        cluster.stop()
        # The running query's client is told (the server's own 57P01, or
        # pgjit's 08006 when the server vanished without a word), then closed.
        errs = _errors_until_closed(busy, 10)
        assert errs and errs[-1].severity == "FATAL" and errs[-1].sqlstate in ("57P01", "08006"), [e.fields for e in errs]
        busy.close()
        with pytest.raises(psycopg.OperationalError):
            idle.execute("select 1")
        idle.close()
        # While it is down, a new client gets 08006 naming the upstream.
        with RawClient(gw.port) as c:
            errs = errors(c.login())
        assert errs and errs[0].sqlstate == "08006"
        # Once it is back, the gateway serves again, without a restart.
        cluster.start()
        assert wait_for(lambda: _can_query(gw), timeout=15)
        assert gw.proc.poll() is None
    finally:
        gw.stop()


def _can_query(gw) -> bool:
    try:
        with psycopg.connect(gw.dsn(), connect_timeout=3) as conn:
            return conn.execute("select 1").fetchone() == (1,)
    except psycopg.OperationalError:
        return False


def test_client_vanishing_mid_copy_leaves_nothing(gateway, pg):
    pg.execute("create table if not exists pgjit_vanish (a int); grant insert, select on pgjit_vanish to app", dbname="appdb")
    try:
        before = _backends(pg)
        c = RawClient(gateway.port)
        c.login()
        c.send(m.Query("copy pgjit_vanish from stdin"))
        assert type(c.read_message()).__name__ == "CopyInResponse"
        c.send(m.CopyData(b"1\n2\n3\n"))
        time.sleep(0.1)
        # Gone without CopyDone, CopyFail or Terminate.
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        c.sock.close()
        # Its upstream backend goes too, and nothing of the COPY was committed.
        assert wait_for(lambda: _backends(pg) <= before, timeout=10)
        assert pg.execute("select count(*) from pgjit_vanish", dbname="appdb") == [(0,)]
        with psycopg.connect(gateway.dsn()) as conn:
            assert conn.execute("select 1").fetchone() == (1,)
    finally:
        pg.execute("drop table if exists pgjit_vanish", dbname="appdb")


class _StallRelay:
    """A TCP relay on 127.0.0.1 between the gateway and PostgreSQL whose
    traffic can be frozen (a network stall) and thawed."""

    def __init__(self, target_port: int) -> None:
        import threading

        self.target = target_port
        self.frozen = threading.Event()
        self.lsock = socket.create_server(("127.0.0.1", 0))
        self.port = self.lsock.getsockname()[1]
        self.alive = True
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import threading

        while self.alive:
            try:
                a, _ = self.lsock.accept()
            except OSError:
                return
            b = socket.create_connection(("127.0.0.1", self.target))
            for src, dst in ((a, b), (b, a)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                while self.frozen.is_set():
                    time.sleep(0.01)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self.alive = False
        self.lsock.close()


def test_network_stall_to_the_upstream_harms_only_the_stalled_session(pg, tmp_path, gateway):
    relay = _StallRelay(pg.port)
    gw = start_gateway(tmp_path / "gw", pg, targets={"appdb": {"host": "127.0.0.1", "port": relay.port,
                                                               "database": "appdb", "user": "app", "password": "apppass"}})
    try:
        with RawClient(gw.port) as c:
            msgs = c.login()
            key = next(x for x in msgs if isinstance(x, m.BackendKeyData))
            relay.frozen.set()
            c.send(m.Query("select 'through the stall'"))
            # Sessions elsewhere (another gateway, the same server) are not held up.
            with psycopg.connect(gateway.dsn()) as conn:
                assert conn.execute("select 1").fetchone() == (1,)
            relay.frozen.clear()
            rows = [x for x in c.read_until_ready(timeout=10) if isinstance(x, m.DataRow)]
            assert rows, "the stalled statement's reply never came"
            # And a cancel for it is still routed after the stall.
            c.send(m.Query("select pg_sleep(30)"))
            time.sleep(0.3)
            with RawClient(gw.port) as cancel:
                cancel.send(m.CancelRequest(key.process_id, key.secret_key))
            assert errors(c.read_until_ready(timeout=10))[0].sqlstate == "57014"
    finally:
        relay.frozen.clear()
        gw.stop()
        relay.close()
