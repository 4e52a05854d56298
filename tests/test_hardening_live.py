"""Regression tests for defects found by trying the gateway from outside
(issue 10): each failed on the code before its fix."""

from __future__ import annotations

import json
import struct

import pytest

from pgjit.protocol import messages as m
from tests.rawclient import RawClient, errors

pytestmark = pytest.mark.pg

POLICY = """
version: 1
rules:
  - name: no-drop
    match: {kind: [drop_table]}
    action: deny
default: allow
"""


def startup_bytes(pairs: list[tuple[bytes, bytes]]) -> bytes:
    body = struct.pack("!I", m.PROTOCOL_3_0) + b"".join(k + b"\0" + v + b"\0" for k, v in pairs) + b"\0"
    return struct.pack("!I", len(body) + 4) + body


@pytest.fixture
def gated(make_gateway, pg, tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    return make_gateway(targets={"appdb": {"host": "127.0.0.1", "port": pg.port, "database": "appdb", "user": "app",
                                           "password": "apppass", "policy": str(policy)}})


@pytest.mark.parametrize("pairs", [
    [(b"user", b"alice"), (b"database", b"appdb"), (b"application_name", b"caf\xe9")],
    [(b"user", b"alice"), (b"database", b"appdb"), (b"search_pat\xff", b"public")],
    [(b"user", b"alice"), (b"database", b"appdb"), (b"options", b"-c work_mem=\xc3\x28")],
    [(b"user", b"al\xffice"), (b"database", b"appdb")],
], ids=["value", "name", "options", "user"])
def test_invalid_utf8_in_startup_is_08P01_not_an_internal_error(gated, pairs):
    with RawClient(gated.port) as c:
        c.send(startup_bytes(pairs))
        msgs = []
        while True:
            msg = c.read_message()
            msgs.append(msg)
            if isinstance(msg, m.AuthenticationCleartextPassword):
                c.send(m.PasswordMessage(b"x\x00"))
            elif isinstance(msg, (m.ReadyForQuery, m.ErrorResponse)):
                break
        errs = errors(msgs)
        assert errs and errs[0].severity == "FATAL" and errs[0].sqlstate == "08P01", msgs
        assert "invalid UTF-8" in errs[0].message
        assert c.closed_by_peer()
    lines = gated.logs()
    assert not [r for r in lines if "raw" in r], lines  # every line is JSON
    assert not [r for r in lines if r.get("level") == "error" or "exc" in r], lines
    refused = [r for r in lines if r.get("msg") == "session refused"]
    assert refused and refused[-1]["sqlstate"] == "08P01"


def test_log_file_keeps_lines_with_bytes_that_are_not_utf8(tmp_path):
    """A log line carrying client text that is not UTF-8 (kept as surrogates)
    is written escaped, not dropped."""
    import logging

    from pgjit import logs

    path = tmp_path / "x.log"
    logs.configure("info", str(path))
    try:
        logging.getLogger("pgjit.test").info("client authenticated", extra={"user": b"al\xffice".decode("utf-8", "surrogateescape")})
    finally:
        for h in logging.getLogger("pgjit").handlers:
            h.flush()
            h.close()
        logging.getLogger("pgjit").handlers[:] = []
    line = json.loads(path.read_text(encoding="utf-8"))
    assert line["msg"] == "client authenticated" and "al" in line["user"]


# ---------------------------------------------------------------- TLS handshakes that fail


@pytest.fixture
def tls_gateway(make_gateway, tmp_path):
    from tests.gateway_fixtures import write_tls_files

    files = write_tls_files(tmp_path, ("127.0.0.1",))
    return make_gateway(tls={"cert": files["cert"], "key": files["key"]},
                        timeouts={"startup": 1, "auth": 5, "upstream_connect": 5, "shutdown_grace": 5})


def _fds(pid: int) -> int:
    import os

    return len(os.listdir(f"/proc/{pid}/fd"))


def _after_ssl_request(gw, then: bytes | None) -> tuple[bytes, float]:
    """SSLRequest, expect "S", send ``then`` (None: silence); return every byte
    the gateway sent after "S" until it closed, and how long that took."""
    import socket
    import time

    s = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
    try:
        s.sendall(m.SSLRequest().encode())
        assert s.recv(1) == b"S"
        if then is not None:
            s.sendall(then)
        started, got = time.monotonic(), b""
        while True:
            try:
                chunk = s.recv(65536)
            except (ConnectionResetError, socket.timeout):
                break
            if not chunk:
                break
            got += chunk
        return got, time.monotonic() - started
    finally:
        s.close()


@pytest.mark.parametrize("then", [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"\x16\x03\x01\x00\x05garbage", None],
                         ids=["http", "bad-clienthello", "silence"])
def test_failed_tls_handshake_closes_the_socket_without_plaintext(tls_gateway, then):
    import time

    pid = tls_gateway.proc.pid
    base = _fds(pid)
    for _ in range(5):
        got, took = _after_ssl_request(tls_gateway, then)
        # Whatever came after "S" is TLS (an alert record, type 0x15) or
        # nothing — never a plaintext ErrorResponse ('E').
        assert not got.startswith(b"E"), got[:40]
        assert took < 5
    # The gateway holds no socket of those sessions (no CLOSE-WAIT until GC).
    deadline = time.monotonic() + 5
    while _fds(pid) > base and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _fds(pid) <= base
    # ... and still serves a real client.
    import psycopg

    with psycopg.connect(tls_gateway.dsn(sslmode="require")) as conn:
        assert conn.execute("select 1").fetchone() == (1,)


# ---------------------------------------------------------------- connections still in startup


def test_sockets_stuck_in_startup_have_their_own_budget_and_the_excess_gets_53300(make_gateway):
    import socket
    import time

    import psycopg

    gw = make_gateway(listen={"max_clients": 50, "max_startup": 4},
                      timeouts={"startup": 3, "auth": 3, "upstream_connect": 5, "shutdown_grace": 5})
    # An authenticated session, before the flood.
    with psycopg.connect(gw.dsn()) as established:
        # Sockets that connect and send a byte of a startup packet, then nothing.
        stuck = []
        try:
            for _ in range(4):
                s = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
                s.sendall(b"\x00")
                stuck.append(s)
            time.sleep(0.3)
            # The next connection is told why at once (53300), not left hanging.
            with RawClient(gw.port) as c:
                started = time.monotonic()
                msg = c.read_message(timeout=5)
                assert isinstance(msg, m.ErrorResponse) and msg.sqlstate == "53300", msg
                assert "max_startup" in " ".join(v for k, v in msg.fields if k == "H")
                assert c.closed_by_peer() and time.monotonic() - started < 3
            # The session that had authenticated is not affected.
            assert established.execute("select 1").fetchone() == (1,)
        finally:
            for s in stuck:
                s.close()
        # Their places free again once they are gone.
        deadline = time.monotonic() + 5
        while True:
            try:
                with psycopg.connect(gw.dsn(), connect_timeout=3) as conn:
                    assert conn.execute("select 2").fetchone() == (2,)
                break
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)


def test_max_clients_counts_authenticated_sessions_only(make_gateway):
    import socket

    import psycopg

    gw = make_gateway(listen={"max_clients": 2, "max_startup": 10})
    stuck = [socket.create_connection(("127.0.0.1", gw.port), timeout=5) for _ in range(3)]
    try:
        with psycopg.connect(gw.dsn()) as a, psycopg.connect(gw.dsn()) as b:
            assert a.execute("select 1").fetchone() == b.execute("select 1").fetchone() == (1,)
            with pytest.raises(psycopg.OperationalError) as ei:
                psycopg.connect(gw.dsn())
            assert "too many clients" in str(ei.value)
    finally:
        for s in stuck:
            s.close()


# ---------------------------------------------------------------- out of file descriptors


def test_out_of_file_descriptors_is_named_not_blamed_on_the_upstream(make_gateway):
    import os
    import subprocess
    import time

    gw = make_gateway()
    pid = gw.proc.pid
    time.sleep(0.3)  # let startup settle (no fd opened behind our back)
    # Room for the client's socket and nothing more: the upstream socket fails.
    limit = _fds(pid) + 1
    soft = subprocess.run(["prlimit", f"--pid={pid}", "--nofile", "--output=SOFT", "--noheadings"],
                          check=True, capture_output=True, text=True).stdout.strip()
    subprocess.run(["prlimit", f"--pid={pid}", f"--nofile={limit}:"], check=True)
    try:
        with RawClient(gw.port) as c:
            msgs = c.login()
        errs = errors(msgs)
        assert errs and errs[0].sqlstate == "53000", msgs
        assert "file descriptors" in errs[0].message
    finally:
        subprocess.run(["prlimit", f"--pid={pid}", f"--nofile={soft}:"], check=True)
    # With room again, the gateway serves clients as before.
    import psycopg

    with psycopg.connect(gw.dsn()) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
    assert os.path.exists(f"/proc/{pid}")


# ---------------------------------------------------------------- memory per idle session


def _rss_kib(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.parametrize("relay", ["c", "python"])
def test_an_idle_relayed_session_costs_little_memory(make_gateway, pg, relay):
    """No session owns a receive buffer: the transports share one, and so do
    the relays (the C pump copies a small read it hands to Python out of the
    shared buffer, and gives a large one the buffer itself). An idle relayed
    session costs a few KiB of gateway RSS (about 1 MiB before: four 256 KiB
    buffers); the issue's bound is 64 KiB."""
    import gc  # noqa: F401

    import psycopg

    gw = make_gateway(**({} if relay == "c" else {}))
    if relay == "python":
        gw.stop()
        from tests.gateway_fixtures import start_gateway

        gw = start_gateway(gw.config_path.parent.parent / "gw-python", pg, env={"PGJIT_RELAY_CORE": "python"})
    try:
        n = 120  # the test server allows 200 connections in all
        warm = [psycopg.connect(gw.dsn()) for _ in range(5)]
        for c in warm:
            c.execute("select 1")
        base = _rss_kib(gw.proc.pid)
        conns = []
        try:
            for _ in range(n):
                c = psycopg.connect(gw.dsn(), autocommit=True)
                c.execute("select 1")
                conns.append(c)
            per_session = (_rss_kib(gw.proc.pid) - base) / n
            print(f"gateway RSS per idle session ({relay} relay): {per_session:.1f} KiB")
            assert per_session <= 64, f"{per_session:.0f} KiB per idle session"
        finally:
            for c in conns + warm:
                c.close()
    finally:
        if relay == "python":
            gw.stop()


# ---------------------------------------------------------------- a gateway-wide budget for incomplete messages


def test_incomplete_messages_have_a_gateway_wide_budget(make_gateway):
    import socket
    import time

    import psycopg

    gw = make_gateway(limits={"max_message_size": 1 << 20, "max_buffered": 2 << 20})
    body = b"select '" + b"x" * 900_000 + b"'\0"
    head = b"Q" + struct.pack("!I", len(body) + 4)
    holders = [RawClient(gw.port) for _ in range(3)]
    try:
        for c in holders:
            assert not errors(c.login())
        # Each holds ~0.85 MiB of an unfinished Query: two fit in 2 MiB, three
        # do not. Whichever session's bytes pass the budget gets 53200 (which
        # one depends on when the gateway reads them), and only that one.
        for c in holders:
            c.send(head + body[:850_000])
        refused = []
        deadline = time.monotonic() + 15
        while not refused and time.monotonic() < deadline:
            for c in holders:
                c.sock.settimeout(0.1)
                try:
                    data = c.sock.recv(65536, socket.MSG_PEEK)
                except (socket.timeout, BlockingIOError):
                    continue
                if data:
                    msg = c.read_message(timeout=5)
                    assert isinstance(msg, m.ErrorResponse) and msg.sqlstate == "53200", msg
                    assert c.closed_by_peer()
                    refused.append(c)
        # Exactly one is refused: the refused session's bytes leave the budget
        # as it is refused (they used to count until its socket had closed, so
        # under load a second session growing meanwhile was refused too).
        assert len(refused) == 1, f"{len(refused)} sessions refused"
        # Those not refused finish their messages and get their answers.
        for c in holders:
            if c in refused:
                continue
            c.send(body[850_000:])
            msgs = c.read_until_ready()
            assert not errors(msgs) and any(isinstance(x, m.DataRow) for x in msgs)
    finally:
        for c in holders:
            c.close()
    # What they held is released: a new client may buffer as much again.
    with RawClient(gw.port) as c:
        c.login()
        c.send(head + body[:850_000])
        time.sleep(0.1)
        c.send(body[850_000:])
        assert not errors(c.read_until_ready())
    with psycopg.connect(gw.dsn()) as conn:
        assert conn.execute("select 1").fetchone() == (1,)


# ---------------------------------------------------------------- CopyDone / CopyFail outside COPY


def _read_ready(c: RawClient, n: int) -> list:
    out = []
    for _ in range(n):
        out += c.read_until_ready()
    return out


def _denied_is_42501_and_idle(c: RawClient) -> None:
    c.send(m.Query("drop table pgjit_nothing"))
    errs = errors(c.read_until_ready())
    assert errs and errs[0].sqlstate == "42501", [e.fields for e in errs]
    c.send(m.Query("select 1"))
    assert not errors(c.read_until_ready())


def _relay_gateway(pg, tmp_path, relay: str, **sections):
    """A gateway with this file's policy over the given relay ("c" or "python")."""
    from tests.gateway_fixtures import start_gateway

    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    return start_gateway(tmp_path / f"gw-{relay}", pg, env={"PGJIT_RELAY_CORE": relay},
                         targets={"appdb": {"host": "127.0.0.1", "port": pg.port, "database": "appdb", "user": "app",
                                            "password": "apppass", "policy": str(policy)}}, **sections)


@pytest.mark.parametrize("relay", ["c", "python"])
@pytest.mark.parametrize("stray", [m.CopyDone(), m.CopyFail("stray")], ids=["CopyDone", "CopyFail"])
def test_copy_end_outside_copy_does_not_skew_the_ready_count(make_gateway, pg, tmp_path, relay, stray):
    import time

    gw = _relay_gateway(pg, tmp_path, relay, timeouts={"startup": 5, "auth": 5, "upstream_connect": 5, "shutdown_grace": 20})
    try:
        with RawClient(gw.port) as c:
            c.login()
            # Execute, Sync, Sync, then a CopyDone/CopyFail with no COPY: the
            # server answers both Syncs and ignores the stray message.
            c.send(m.Parse("", "select 1"), m.Bind("", ""), m.Execute(""), m.Sync(), m.Sync(), stray)
            assert not errors(_read_ready(c, 2))
            _denied_is_42501_and_idle(c)
            # Also when the stray message comes in one write with what follows.
            c.send(m.Parse("", "select 2"), m.Bind("", ""), m.Execute(""), m.Sync(), m.Sync(), stray,
                   m.Query("drop table pgjit_nothing"))
            msgs = _read_ready(c, 3)
            assert [e.sqlstate for e in errors(msgs)] == ["42501"], [e.fields for e in errors(msgs)]
            _denied_is_42501_and_idle(c)
            # The session counts as idle: SIGTERM does not wait the whole grace.
            started = time.monotonic()
            gw.stop()
            assert time.monotonic() - started < 10
    finally:
        gw.stop()


@pytest.mark.parametrize("relay", ["c", "python"])
@pytest.mark.parametrize("pipelined", [False, True], ids=["waits-for-CopyInResponse", "pipelined"])
def test_extended_protocol_copy_still_counts_right(make_gateway, pg, tmp_path, relay, pipelined):
    pg.execute("create table if not exists pgjit_copy_count (a int); grant insert on pgjit_copy_count to app", dbname="appdb")
    gw = _relay_gateway(pg, tmp_path, relay)
    try:
        with RawClient(gw.port) as c:
            c.login()
            start = [m.Parse("", "copy pgjit_copy_count from stdin"), m.Bind("", ""), m.Execute(""), m.Sync()]
            rest = [m.CopyData(b"1\n2\n"), m.CopyDone(), m.Sync()]
            if pipelined:
                c.send(*start, *rest)
            else:
                c.send(*start)
                kinds = []
                while not kinds or kinds[-1] != "CopyInResponse":
                    kinds.append(type(c.read_message()).__name__)
                assert kinds == ["ParseComplete", "BindComplete", "CopyInResponse"], kinds
                c.send(*rest)
            msgs = c.read_until_ready()  # one ReadyForQuery for the two Syncs
            assert any(isinstance(x, m.CommandComplete) for x in msgs) and not errors(msgs)
            _denied_is_42501_and_idle(c)
    finally:
        gw.stop()
        pg.execute("drop table if exists pgjit_copy_count", dbname="appdb")


@pytest.mark.parametrize("relay", ["c", "python"])
@pytest.mark.parametrize("ended_by", [m.CopyDone(), m.CopyFail("stop")], ids=["CopyDone", "CopyFail"])
def test_stray_copy_end_after_a_copy_ended_early_does_not_skew_the_count(make_gateway, pg, tmp_path, relay, ended_by):
    """Found by `make fuzz`: a simple-query COPY FROM STDIN ended by the client
    before the server's CopyInResponse arrived used to count as still running
    (nothing recorded its end); a later stray CopyDone/CopyFail after a Sync
    then uncounted that Sync, and the next refused statement reached the
    client as 26000 "pgjit_refused_…" instead of 42501."""
    pg.execute("create table if not exists pgjit_copy_early (a int); grant insert on pgjit_copy_early to app", dbname="appdb")
    gw = _relay_gateway(pg, tmp_path, relay)
    try:
        with RawClient(gw.port) as c:
            c.login()
            for round_ in range(5):
                # The whole COPY in one write: its end is read before the server announces it.
                c.send(m.Query("copy pgjit_copy_early from stdin"), m.CopyData(b"1\n"), ended_by)
                _read_ready(c, 1)
                # Then Execute, Sync and a stray CopyFail (ignored by the server), then a denied Execute.
                c.send(m.Parse("", "select 1"), m.Bind("", ""), m.Execute(""), m.Sync(), m.CopyFail("stray"),
                       m.Parse("", "drop table pgjit_nothing"), m.Bind("", ""), m.Execute(""), m.Sync())
                msgs = _read_ready(c, 2)
                states = [e.sqlstate for e in errors(msgs)]
                assert states == ["42501"], (round_, [e.fields for e in errors(msgs)])
                _denied_is_42501_and_idle(c)
    finally:
        gw.stop()
        pg.execute("drop table if exists pgjit_copy_early", dbname="appdb")


# ---------------------------------------------------------------- prepared statements the server kept


def test_execute_after_a_deallocate_the_server_refused(gated):
    """Found by the differential state machine: a DEALLOCATE refused in a
    failed transaction leaves the statement on the server; pgjit used to
    forget it and deny its EXECUTE (pgjit:unknown-prepared)."""
    import psycopg

    with psycopg.connect(gated.dsn(), autocommit=True) as conn:
        conn.execute("prepare p2(int) as select g from generate_series(1, 3) g where g >= $1")
        conn.execute("begin")
        with pytest.raises(psycopg.errors.DivisionByZero):
            conn.execute("select 1/0")
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            conn.execute("deallocate p2")
        conn.execute("commit")
        assert conn.execute("execute p2(0)").fetchall() == [(1,), (2,), (3,)]
        # A DEALLOCATE the server accepted: EXECUTE fails as on the server.
        conn.execute("deallocate p2")
        with pytest.raises(psycopg.errors.InvalidSqlStatementName):
            conn.execute("execute p2(0)")
        # Re-prepared under the same name: decided as what it now runs.
        conn.execute("prepare p2 as select 42")
        assert conn.execute("execute p2").fetchone() == (42,)
