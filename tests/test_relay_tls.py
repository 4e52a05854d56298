"""TLS sessions through the reactor (pgjit.gateway.transport.TLSTransport)
against plain TCP through the reactor.

The same random conversation as tests/test_relay_paths.py — frames cut at
any byte, receivers stalled so that writes come up short and backlogs form
— is relayed once over plain sockets and once with TLS on both sides of the
gateway, the TLS records themselves cut into random pieces on the wire.
What each side decrypts, the ReadyForQuery accounting and how the relay ends
must be the same.
"""

from __future__ import annotations

import os
import socket
import ssl

import pytest
import trustme
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pgjit.gateway.reactor import Reactor
from pgjit.gateway.relay import Relay
from pgjit.gateway.session import Phase, Session
from pgjit.gateway.transport import SocketTransport, TLSTransport
from pgjit.policy.gate import Gate
from tests.test_relay_paths import POLICY, _Gateway, conversation, relay_once, relay_outcome

CA = trustme.CA()
CERT = CA.issue_cert("127.0.0.1", "localhost")


def _server_ctx() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    CERT.configure_cert(ctx)
    return ctx


def _client_ctx() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    CA.configure_trust(ctx)
    return ctx


class _App:
    """The test's end of one TLS connection: an SSLObject over a socket,
    whose ciphertext goes out in the given cut sizes."""

    def __init__(self, sock: socket.socket, ctx: ssl.SSLContext, server_side: bool, cuts: list[int]) -> None:
        self.sock = sock
        self.inc, self.out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.ssl = ctx.wrap_bio(self.inc, self.out, server_side=server_side,
                                server_hostname=None if server_side else "127.0.0.1")
        self.raw = bytearray()  # ciphertext not sent yet
        self.cuts = cuts or [1 << 20]
        self.i = 0
        self.plain = bytearray()  # what it decrypted
        self.closed = False

    def write(self, data: bytes) -> None:
        self.ssl.write(data)
        self.raw += self.out.read()

    def push(self) -> bool:
        self.raw += self.out.read()
        moved = False
        while self.raw and not self.closed:
            n = self.cuts[self.i % len(self.cuts)]
            self.i += 1
            try:
                sent = self.sock.send(self.raw[:n])
            except BlockingIOError:
                break
            except OSError:
                self.raw.clear()
                self.closed = True
                break
            del self.raw[:sent]
            moved = moved or sent > 0
            if sent < n:
                break
        return moved

    def pull(self) -> bool:
        moved = False
        for _ in range(1000):
            try:
                data = self.sock.recv(1 << 20)
            except (BlockingIOError, ConnectionResetError):
                break
            if not data:
                self.inc.write_eof()
                break
            self.inc.write(data)
            moved = True
        while True:
            try:
                chunk = self.ssl.read(1 << 20)
            except (ssl.SSLWantReadError, ssl.SSLZeroReturnError, ssl.SSLEOFError):
                break
            except ssl.SSLError:  # the gateway's alert, after bad records (test_bad_tls_records_end_the_session)
                break
            if not chunk:
                break
            self.plain += chunk
        return moved


def _handshake(pairs: list[tuple[TLSTransport, _App]]) -> None:
    for _ in range(200):
        done = True
        for gw, app in pairs:
            for end in (gw.ssl, app.ssl):
                try:
                    end.do_handshake()
                except ssl.SSLWantReadError:
                    done = False
            app.push()
            gw.flush()
            # the gateway's side reads what the app sent
            try:
                data = gw.sock.recv(1 << 20)
                if data:
                    gw._in.write(data)
            except BlockingIOError:
                pass
            app.pull()
        if done:
            for gw, app in pairs:
                gw.flush()
                app.push()
                app.pull()
            return
    raise AssertionError("TLS handshake did not finish")


def relay_tls(steps, cuts: list[int], *, gated: bool, core: bool = True, seen: list | None = None):
    # core: the C core makes and reads the TLS records of the reads it relays
    # (on the transports' own TLS objects); else every byte goes through Python.
    reactor = Reactor(use_core=core)
    c_app, c_gw = socket.socketpair()
    u_gw, u_app = socket.socketpair()
    for s in (c_gw, u_gw):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)  # so that writes come up short
    for s in (c_app, u_app, c_gw, u_gw):
        s.setblocking(False)
    client_t = TLSTransport(c_gw, _server_ctx(), server_side=True)
    up_t = TLSTransport(u_gw, _client_ctx(), server_side=False, server_hostname="127.0.0.1")
    capp, uapp = _App(c_app, _client_ctx(), False, cuts), _App(u_app, _server_ctx(), True, cuts)
    _handshake([(client_t, capp), (up_t, uapp)])
    capp.plain.clear()
    uapp.plain.clear()
    session = Session(_Gateway(), SocketTransport(socket.socket()), None)
    session.phase = Phase.RELAY
    session.client = client_t
    if gated:
        session.relay = Relay(session.config.limits, session.gateway, session_id=session.id, gate=Gate(POLICY))
    relay = reactor.attach(session, client_t, up_t)
    assert (relay.core is not None) == core and relay.tls
    if seen is not None:  # every read the Python relay handles
        for name in ("from_client", "from_server"):
            real = getattr(session.relay, name)

            def spy(data, _real=real, _name=name):
                seen.append((_name, bytes(data)))
                return _real(data)

            setattr(session.relay, name, spy)
    apps = {"c": capp, "s": uapp, "up": uapp, "cl": capp}

    def settle() -> None:
        for _ in range(500):
            moved = capp.push() | uapp.push()
            if not reactor.poll() and not moved:
                break

    try:
        for kind, arg in steps:
            if kind == "drain":
                apps[arg].pull()
            elif kind == "raw":  # (side, bytes): on the wire as they are, not through TLS
                side, data = arg
                apps[side].raw += data
            elif kind == "close_notify":
                try:
                    apps[arg].ssl.unwrap()
                except ssl.SSLWantReadError:
                    pass
            else:
                apps[kind].write(arg)
            settle()
        for _ in range(500):
            settle()
            if not (capp.pull() | uapp.pull()) and not reactor.poll():
                break
    finally:
        closed = relay.closed
        relay.close()
        for s in (c_app, c_gw, u_gw, u_app):
            s.close()
    return relay_outcome(session, relay, closed, uapp.plain, capp.plain)


def _plain(steps, gated: bool) -> dict:
    r = relay_once(steps, use_core=False, gated=gated)
    return {k: r[k] for k in ("to upstream", "to client", "counters", "error", "end", "closed")}


@settings(max_examples=int(os.environ.get("PGJIT_RELAY_EXAMPLES", "150")), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(steps=conversation(), cuts=st.lists(st.sampled_from([1, 2, 5, 13, 64, 300, 4096, 70_000]), min_size=1, max_size=6),
       gated=st.booleans(), core=st.booleans())
def test_tls_relays_exactly_as_plain(steps, cuts, gated, core):
    tls, plain = relay_tls(steps, cuts, gated=gated, core=core), _plain(steps, gated)
    if plain["error"] is not None or tls["error"] is not None:
        # The session ended on an error (bad client bytes) while a large row
        # was on its way: how much of the row went first depends on how the
        # reads were cut (TLS records are at most 16 KiB), not on TLS. What
        # each side got is the same stream, one a prefix of the other.
        # (The ReadyForQuery accounting is as far as each got.)
        for side in ("to client", "to upstream"):
            a, b = tls.pop(side), plain.pop(side)
            assert a.startswith(b) or b.startswith(a), side
        tls.pop("counters")
        plain.pop("counters")
        # Which error ends it may differ too, when both directions carry one
        # (a bad client frame, a malformed ReadyForQuery): whichever arrives
        # first, and TLS records arrive in other pieces. Both must end on one.
        assert tls.pop("error") is not None and plain.pop("error") is not None
    assert tls == plain


@pytest.mark.parametrize("core", [True, False], ids=["c-core", "python"])
def test_a_large_result_over_tls_with_a_slow_client(core):
    """70 KB rows, ciphertext cut one byte at a time for a while: nothing lost."""
    from tests.test_relay_paths import frame
    import struct

    rows = [frame(b"D", b"\0\1" + struct.pack("!i", 70_000) + bytes([65 + i]) * 70_000) for i in range(5)]
    steps = [("c", frame(b"Q", b"select 1\0")), ("s", b"".join(rows) + frame(b"Z", b"I")), ("drain", "cl"),
             ("drain", "cl"), ("drain", "up")]
    got = relay_tls(steps, [1, 7, 4096], gated=False, core=core)
    assert got["to client"] == b"".join(rows) + frame(b"Z", b"I")
    assert got["to upstream"] == frame(b"Q", b"select 1\0")


def test_the_c_core_relays_tls_reads_itself():
    """Queries and their replies over TLS on both sides, ciphertext cut at
    random-looking points: the C core decrypts, relays and encrypts every
    read (Python's relay sees none), and the bytes are exactly what was sent."""
    from tests.test_relay_paths import frame

    steps = []
    for i in range(20):
        steps += [("c", frame(b"Q", b"select %d\0" % i)),
                  ("s", frame(b"T", b"\0\0") + frame(b"C", b"SELECT 1\0") + frame(b"Z", b"I"))]
    seen: list = []
    got = relay_tls(steps, [5000], gated=True, seen=seen)
    assert got["to upstream"] == b"".join(frame(b"Q", b"select %d\0" % i) for i in range(20))
    assert got["to client"] == (frame(b"T", b"\0\0") + frame(b"C", b"SELECT 1\0") + frame(b"Z", b"I")) * 20
    assert got["counters"][:2] == (20, 20)
    assert seen == []


GARBAGE = [b"\x17\x03\x03\x00\x20" + b"\xaa" * 32,  # an application-data record that does not decrypt
           b"\x15\x03\x03\x00\x02\x02\x32",            # a cleartext alert
           b"\x16\x03\x01\x00\x05hello",                  # a handshake record, after the handshake
           b"\x17\x03\x03\xff\xff" + b"\x00" * 100,     # a record longer than TLS allows
           bytes(range(256)) * 4]


@pytest.mark.parametrize("core", [True, False], ids=["c-core", "python"])
@pytest.mark.parametrize("side", ["c", "s"], ids=["from-client", "from-server"])
@pytest.mark.parametrize("garbage", range(len(GARBAGE)))
def test_bad_tls_records_end_the_session(core, side, garbage):
    """Bytes that are not a valid TLS record, in the middle of a session, on
    either side: the session ends (as at a reset), nothing of them reaches
    the other side, and what came before is relayed. The C core reads them
    as the Python path does."""
    from tests.test_relay_paths import frame

    q = frame(b"Q", b"select 1\0")
    reply = frame(b"C", b"SELECT 1\0") + frame(b"Z", b"I")
    steps = [("c", q), ("s", reply), ("raw", (side, GARBAGE[garbage])), ("c", q), ("s", reply)]
    got = relay_tls(steps, [5000], gated=False, core=core)
    assert got["closed"]
    assert got["to upstream"].startswith(q) and got["to client"].startswith(reply)
    assert GARBAGE[garbage] not in got["to upstream"] + got["to client"]
    # the same end as a reset of that side: the client gone, or the upstream closed (the client is told)
    assert got["end"] == ("client_gone" if side == "c" else "upstream_closed"), got


@pytest.mark.parametrize("core", [True, False], ids=["c-core", "python"])
def test_a_close_notify_from_the_client_ends_the_session(core):
    from tests.test_relay_paths import frame

    q = frame(b"Q", b"select 1\0")
    reply = frame(b"C", b"SELECT 1\0") + frame(b"Z", b"I")
    got = relay_tls([("c", q), ("s", reply), ("close_notify", "c")], [5000], gated=False, core=core)
    assert got["closed"] and got["end"] == "client_gone"
    assert got["to upstream"] == q and got["to client"] == reply
