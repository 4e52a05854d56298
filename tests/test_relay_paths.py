"""The reactor's C path (pgjit.gateway._relaycore) against its Python reference.

The same random conversation, cut into random chunks, with random stalls of
the receivers (so that writes come up short and backlogs form), is relayed
once with the C core and once without, over real sockets. Every byte each
side receives, the ReadyForQuery accounting, and how the relay ends must be
the same. The session is the real one; only the gateway around it is reduced
to the two things a Session asks of it (its config and a cancel key).
"""

from __future__ import annotations

import itertools
import os
import re
import socket
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pgjit.gateway import reactor as reactor_mod
from pgjit.config import parse_config
from pgjit.policy.gate import Gate
from pgjit.policy.model import Policy
from pgjit.protocol import messages as m
from pgjit.gateway.reactor import Reactor
from pgjit.gateway.relay import Relay
from pgjit.gateway.session import Phase, Session
from pgjit.gateway.transport import SocketTransport

REPO = Path(__file__).resolve().parents[1]
CONFIG = parse_config("targets:\n  appdb: {host: 127.0.0.1, port: 5432, database: appdb, user: app, password: x}\n")
POLICY = Policy.load(REPO / "policies" / "default.yaml")

needs_core = pytest.mark.skipif(reactor_mod._relaycore is None, reason="the C relay core is not built")


def test_core_is_built_in_ci():
    # setup.py marks it optional so that installs without a compiler work;
    # in CI (gcc present) it must have been built, or the benchmarks lie.
    if os.environ.get("CI") == "true":
        assert reactor_mod._relaycore is not None
        assert reactor_mod.c_core_enabled()


class _Gateway:
    config = CONFIG
    buffered = 0

    def new_cancel_key(self, session: Session) -> m.BackendKeyData:
        return m.BackendKeyData(1, 2)


def frame(tag: bytes, body: bytes) -> bytes:
    return tag + struct.pack("!I", len(body) + 4) + body


# Shape-mates (only their literals differ) on both sides of the gate: the C
# core remembers a shape the gate allowed every statement of (gate_shapes),
# and must not let a literal-sensitive shape-mate of an allowed one through.
ALLOWED = [b"select 1", b"select 2", b"select abalance from pgbench_accounts where aid = 7",
           b"select abalance from pgbench_accounts where aid = 123456", b"show search_path", b"begin", b"commit",
           b"select set_config('application_name', 'x', false)"]
DENIED = [b"drop table pgbench_accounts", b"copy t from program 'id'", b"select set_config('role', 'postgres', false)"]

# Frontend frames: everything that moves the count, things the C path passes,
# and things only Python may handle (Terminate, FunctionCall, an unknown type).
frontend_frame = st.one_of(
    st.sampled_from(ALLOWED + DENIED).map(lambda q: frame(b"Q", q + b"\0")),
    st.just(frame(b"S", b"")),
    st.just(frame(b"E", b"\0\0\0\0\0")),
    st.just(frame(b"H", b"")),
    st.sampled_from(ALLOWED + DENIED).map(lambda q: frame(b"P", b"s1\0" + q + b"\0\0\0")),
    st.sampled_from(ALLOWED + DENIED).map(lambda q: frame(b"P", b"\0" + q + b"\0\0\0")),
    st.sampled_from([b"\0select 1", b"", b"\0prepare p as select 1\0\0\0"]).map(lambda body: frame(b"P", body)),
    st.just(frame(b"B", b"\0s1\0" + b"\0" * 6)),
    st.just(frame(b"D", b"Ss1\0")),
    st.just(frame(b"C", b"Ss1\0")),
    st.just(frame(b"B", b"p\0\0" + b"\0" * 6)),
    st.just(frame(b"E", b"p\0\0\0\0\0")),
    st.binary(max_size=40).map(lambda b: frame(b"d", b)),
    st.just(frame(b"c", b"")),
    st.just(frame(b"f", b"oops\0")),
    st.just(frame(b"F", b"\0\0\0\1" + b"\0" * 6)),
    st.just(frame(b"X", b"")),
    st.just(frame(b"z", b"junk")),
    st.just(b"Q\0\0\0\1"),  # a length below 4
)
backend_frame = st.one_of(
    st.sampled_from(b"ITE").map(lambda s: frame(b"Z", bytes([s]))),
    st.just(frame(b"E", b"SERROR\0C26000\0Mprepared statement \"x\" does not exist\0\0")),
    st.just(frame(b"E", b"SERROR\0C42P01\0Mno\0\0")),
    st.binary(max_size=60).map(lambda b: frame(b"D", b"\0\1" + struct.pack("!i", len(b)) + b)),
    st.just(frame(b"C", b"SELECT 1\0")),
    st.just(frame(b"C", b"INSERT 0 3\0")),
    st.sampled_from([b"1", b"2", b"3", b"n", b"s", b"I"]).map(lambda t: frame(t, b"")),
    st.just(frame(b"T", b"\0\0")),
    st.just(frame(b"N", b"SNOTICE\0Mhi\0\0")),
    st.integers(70_000, 120_000).map(lambda n: frame(b"D", b"\0\1" + struct.pack("!i", n) + b"r" * n)),
    st.just(frame(b"Z", b"")),  # malformed: no status byte
)


@st.composite
def conversation(draw, front=frontend_frame, back=backend_frame):
    """Steps: ("c", bytes) client writes, ("s", bytes) server writes,
    ("drain", side) a receiver reads what it has. A write is either a few
    whole frames (what the C path takes) or a cut at any byte."""
    frames = {"c": draw(st.lists(front, max_size=25)), "s": draw(st.lists(back, max_size=25))}
    streams = {side: b"".join(f) for side, f in frames.items()}
    bounds = {side: set(itertools.accumulate(len(x) for x in f)) for side, f in frames.items()}
    steps = []
    pos = {"c": 0, "s": 0}
    while pos["c"] < len(streams["c"]) or pos["s"] < len(streams["s"]):
        kind = draw(st.sampled_from(["c", "s", "drain"]))
        if kind == "drain":
            steps.append(("drain", draw(st.sampled_from(["up", "cl"]))))
            continue
        data, at = streams[kind], pos[kind]
        if at >= len(data):
            continue
        if draw(st.booleans()):  # up to the k-th frame boundary from here
            ahead = sorted(b for b in bounds[kind] if b > at)
            end = ahead[min(draw(st.integers(0, 3)), len(ahead) - 1)]
        else:
            end = at + draw(st.sampled_from([1, 3, 5, 6, 17, 64, 1000, 40_000]))
        steps.append((kind, data[at:end]))
        pos[kind] = end
    return steps


class _Recorder:
    """The audit trail's view of a relay: every record it would write."""

    degraded = False
    bind_parameters = True
    tracks = False  # the C core logs every frame for this recorder (its tracker: tests/test_audit_tracker.py)

    def __init__(self) -> None:
        self.log: list[tuple] = []

    def statement(self, st, *, force: bool = False) -> None:
        self.log.append(("statement", st.seq, st.protocol, st.text, st.decision, st.sqlstate, st.parameters))

    def result(self, st) -> None:
        self.log.append(("result", st.seq, st.outcome, st.rows, st.sqlstate))


def relay_once(steps, *, use_core: bool, gated: bool, audited: bool = False, recorder=None):
    """``recorder``: a real pgjit.gateway.recording.SessionRecorder instead
    of the _Recorder (audited); the session's end is then recorded too.
    A ("call", fn) step calls fn(session, channel) there."""
    reactor = Reactor(use_core=use_core)
    c_app, c_gw = socket.socketpair()
    u_gw, u_app = socket.socketpair()
    for s in (c_gw, u_gw):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)  # so that writes come up short
    for s in (c_app, u_app):
        s.setblocking(False)
    client_t, up_t = SocketTransport(c_gw), SocketTransport(u_gw)
    session = Session(_Gateway(), client_t, None)
    session.phase = Phase.RELAY
    if gated:
        session.relay = Relay(session.config.limits, session.gateway, session_id=session.id, gate=Gate(POLICY))
    if recorder is None and audited:
        recorder = _Recorder()
    if recorder is not None:
        session.relay = Relay(session.config.limits, session.gateway, session_id=session.id,
                              gate=Gate(POLICY) if gated else None, recorder=recorder)
    relay = reactor.attach(session, client_t, up_t)
    unsent = {"c": bytearray(), "s": bytearray()}
    got = {"up": bytearray(), "cl": bytearray()}
    apps = {"c": c_app, "s": u_app, "up": u_app, "cl": c_app}

    def push() -> bool:
        moved = False
        for side in ("c", "s"):
            if unsent[side]:
                try:
                    n = apps[side].send(unsent[side])
                except BlockingIOError:
                    n = 0
                except OSError:  # the relay closed that socket's peer
                    unsent[side].clear()
                    continue
                del unsent[side][:n]
                moved = moved or n > 0
        return moved

    def drain(side: str) -> bool:
        moved = False
        for _ in range(1000):
            try:
                data = apps[side].recv(1 << 20)
            except (BlockingIOError, ConnectionResetError):
                break
            if not data:
                break
            got[side] += data
            moved = True
        return moved

    def settle() -> None:
        for _ in range(500):
            moved = push()
            if not reactor.poll() and not moved:
                break

    try:
        for kind, arg in steps:
            if kind == "drain":
                drain(arg)
            elif kind == "call":  # tests: arg(session, channel) between two steps
                arg(session, relay)
            else:
                unsent[kind] += arg
            settle()
        for _ in range(500):  # everything delivered, or the relay is over
            settle()
            if not (drain("up") | drain("cl")) and not reactor.poll():
                break
    finally:
        closed = relay.closed
        relay.close()
        if recorder is not None and not isinstance(recorder, _Recorder):
            session.relay.finish_audit()
        for s in (c_app, c_gw, u_gw, u_app):
            s.close()
    return relay_outcome(session, relay, closed, got["up"], got["cl"]) | {
        "pending": (session.relay._c_pending, session.relay._s_pending, session.relay._s_skip, len(session.relay._rewrites)),
        "prepared": sorted(session.relay.prepared),
        "error text": str(relay.error) if relay.error is not None else None,
        "records": recorder.log if isinstance(recorder, _Recorder) else None,
    }


_MARKERS = re.compile(rb"pgjit_refused_[0-9a-f]{16}")


def relay_outcome(session, channel, closed: bool, to_upstream, to_client) -> dict:
    """What a relayed conversation came to, as the differential tests
    compare it: the bytes each side got (refusal markers made equal), the
    ReadyForQuery accounting, and how the relay ended."""
    ctr = session.relay.ctr
    return {
        "to upstream": _MARKERS.sub(b"<marker>", bytes(to_upstream)),
        "to client": bytes(to_client),
        "counters": (ctr.rfq_sent, ctr.rfq_received, ctr.syncs_since_execute, ctr.txn_status, bool(ctr.last_was_error)),
        "error": type(channel.error).__name__ if channel.error is not None else None,
        "end": session.end_reason,
        "closed": closed,
    }


@needs_core
@settings(max_examples=int(os.environ.get("PGJIT_RELAY_EXAMPLES", "300")), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(steps=conversation(), gated=st.booleans())
def test_c_path_relays_exactly_as_python(steps, gated):
    python = relay_once(steps, use_core=False, gated=gated)
    c = relay_once(steps, use_core=True, gated=gated)
    assert c == python


@needs_core
@settings(max_examples=int(os.environ.get("PGJIT_RELAY_EXAMPLES", "300")), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(steps=conversation(), gated=st.booleans())
def test_audited_c_path_records_exactly_as_python(steps, gated):
    """With an audit trail the C core logs what it relays and Python
    records it: the same bytes either way, and the same records in the same
    order, as the Python relay that looks at every frame itself."""
    python = relay_once(steps, use_core=False, gated=gated, audited=True)
    c = relay_once(steps, use_core=True, gated=gated, audited=True)
    assert c == python


def _q(sql: bytes) -> bytes:
    return frame(b"Q", sql + b"\0")


@pytest.mark.parametrize("use_core", [pytest.param(True, marks=needs_core), False], ids=["c", "python"])
def test_request_response_accounting(use_core):
    """A plain pgbench-like exchange: each Query is answered by one
    ReadyForQuery; the session is idle after each reply, mid-query before."""
    reply = frame(b"T", b"\0\0") + frame(b"C", b"SELECT 1\0") + frame(b"Z", b"I")
    steps = []
    for _ in range(50):
        steps += [("c", _q(b"select 1")), ("s", reply), ("drain", "cl"), ("drain", "up")]
    steps += [("c", _q(b"begin")), ("s", frame(b"C", b"BEGIN\0") + frame(b"Z", b"T"))]
    out = relay_once(steps, use_core=use_core, gated=False)
    assert out["counters"] == (51, 51, 0, b"T", False)
    assert out["to upstream"] == _q(b"select 1") * 50 + _q(b"begin")
    assert out["error"] is None and not out["closed"]


@pytest.mark.parametrize("use_core", [pytest.param(True, marks=needs_core), False], ids=["c", "python"])
def test_refused_query_reply_is_rewritten(use_core):
    """A denied Query takes the Python path and leaves a rewrite pending;
    the server's reply to the marker must be rewritten, not relayed raw."""
    out = relay_once([("c", _q(b"drop table pgbench_accounts"))], use_core=use_core, gated=True)
    marker_bind = out["to upstream"]
    assert b"<marker>" in marker_bind and b"drop table" not in marker_bind
    assert out["pending"][3] == 1  # one reply to rewrite


_SELECT_REPLY = frame(b"T", b"\0\0") + frame(b"C", b"SELECT 1\0") + frame(b"Z", b"I")


def _round_trips(queries):
    steps = []
    for q in queries:
        steps += [("c", _q(q)), ("s", _SELECT_REPLY), ("drain", "cl"), ("drain", "up")]
    return steps


class _GateSpy:
    """Counts the C core's calls into the gate (attached as a step)."""

    def __init__(self) -> None:
        self.calls: list[bytes] = []
        self.core = None

    def __call__(self, session, channel) -> None:
        core = self.core = channel.core
        allows = core.gate

        def counted(raw):
            self.calls.append(raw)
            return allows(raw)

        core.gate = counted


@needs_core
def test_the_core_asks_the_gate_once_per_shape():
    """pgbench -S inlines a new literal in every Query: the first of the
    shape goes to the gate, the rest pass on the core's memory of it."""
    spy = _GateSpy()
    queries = [b"select abalance from pgbench_accounts where aid = %d" % i for i in range(1, 41)]
    out = relay_once([("call", spy)] + _round_trips(queries), use_core=True, gated=True)
    assert out["to upstream"] == b"".join(_q(q) for q in queries)
    assert out["counters"][:2] == (40, 40)
    assert spy.calls == [queries[0]]
    assert spy.core.gate_reused == 39


@needs_core
def test_a_literal_sensitive_shape_mate_of_an_allowed_statement_is_still_refused():
    """set_config('application_name', …) is allowed, set_config('role', …)
    is not, and the two have one shape key: the core must not remember the
    first's verdict for its shape."""
    spy = _GateSpy()
    allowed = b"select set_config('application_name', 'x', false)"
    denied = b"select set_config('role', 'postgres', false)"
    out = relay_once([("call", spy)] + _round_trips([allowed, allowed, denied]), use_core=True, gated=True)
    assert out["to upstream"].startswith(_q(allowed) * 2)
    assert b"'role'" not in out["to upstream"] and b"<marker>" in out["to upstream"]
    assert spy.core.gate_reused == 0 and spy.calls[:2] == [allowed, allowed]


@needs_core
@pytest.mark.parametrize("change", ["catalog", "ddl", "approvals"])
def test_what_the_core_remembers_of_the_gate_is_forgotten_when_answers_may_change(change):
    """A new catalog snapshot, DDL the session ran, or approvals switched
    on: the next statement of a remembered shape goes to the gate again."""
    spy = _GateSpy()
    before = b"select abalance from pgbench_accounts where aid = 1"
    after = b"select abalance from pgbench_accounts where aid = 2"

    def forget(session, channel) -> None:
        relay = session.relay
        assert len(relay.shape_verdicts) == 1
        if change == "catalog":
            relay.gate.set_catalog(None)
        elif change == "ddl":
            relay._note_ddl(relay.gate.check("create view v as select 1", frozenset())[0])
        else:
            relay.enable_approvals()
        assert len(relay.shape_verdicts) == 0

    steps = [("call", spy)] + _round_trips([before]) + [("call", forget)] + _round_trips([after])
    out = relay_once(steps, use_core=True, gated=True)
    assert out["to upstream"] == _q(before) + _q(after)
    assert spy.calls == [before, after] and spy.core.gate_reused == 0


@needs_core
def test_the_core_remembers_a_bounded_number_of_shapes():
    spy = _GateSpy()
    queries = [b"select 1 as c%d" % i for i in range(300)]
    out = relay_once([("call", spy)] + _round_trips(queries + queries[:5]), use_core=True, gated=True)
    assert out["counters"][:2] == (305, 305)
    assert len(spy.core.gate_shapes) == 128  # the first 128: the last 5 Queries are theirs
    assert spy.calls == queries and spy.core.gate_reused == 5


@pytest.mark.parametrize("use_core", [pytest.param(True, marks=needs_core), False], ids=["c", "python"])
@settings(max_examples=int(os.environ.get("PGJIT_RELAY_EXAMPLES", "300")) // 10, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])
@given(sizes=st.lists(st.lists(st.sampled_from([1, 60, 9_000, 20_000, 70_000, 300_000]), min_size=1, max_size=6),
                      min_size=2, max_size=8),
       # where the server's writes are cut; a large one last, so that every stream gets through in a few rounds
       cuts=st.lists(st.sampled_from([1, 5, 3000, 16_385, 65_536, 262_145]), max_size=7).map(lambda c: c + [400_000]))
def test_reads_of_many_relays_in_one_batch_stay_apart(use_core, sizes, cuts):
    """Every relay reads into the reactor's one receive buffer. Several
    sessions' reads land in one batch of the C pump, and those it hands to
    Python (a frame cut by the read, a row larger than the buffer) are
    handled only after the batch: each must still hold its own bytes (a
    small one copied out, a large one taking the buffer with it). Each
    relay's server sends rows of its own byte, cut at random places, all
    written before one poll; every client must receive exactly its stream."""
    reactor = Reactor(use_core=use_core)
    pairs = []
    try:
        for i, row_sizes in enumerate(sizes):
            relay, (c_app, c_gw, u_gw, u_app) = _pair(reactor)
            fill = bytes([65 + i])
            stream = b"".join(frame(b"D", b"\0\1" + struct.pack("!i", n) + fill * n) for n in row_sizes)
            stream += frame(b"C", b"SELECT %d\0" % len(row_sizes)) + frame(b"Z", b"I")
            pairs.append((relay, c_app, u_app, c_gw, u_gw, stream, bytearray(), 0))
        sent = [0] * len(pairs)
        got = [bytearray() for _ in pairs]
        for rnd in range(2000):
            progress = False
            for k, (relay, c_app, u_app, _, _, stream, _, _) in enumerate(pairs):
                if sent[k] < len(stream):
                    step = cuts[(rnd + k) % len(cuts)]
                    try:
                        n = u_app.send(stream[sent[k] : sent[k] + step])
                    except BlockingIOError:
                        n = 0
                    sent[k] += n
                    progress = progress or n > 0
            progress = reactor.poll() or progress  # one batch over every relay's reads
            for k, (_, c_app, *_rest) in enumerate(pairs):
                for _ in range(100):
                    try:
                        data = c_app.recv(1 << 20)
                    except BlockingIOError:
                        break
                    if not data:
                        break
                    got[k] += data
                    progress = True
            if not progress and all(sent[k] == len(p[5]) for k, p in enumerate(pairs)):
                break
        for k, p in enumerate(pairs):
            relay, stream = p[0], p[5]
            assert relay.error is None and not relay.closed, (k, relay.error)
            assert bytes(got[k]) == stream, f"relay {k}: {len(got[k])} of {len(stream)} bytes, or others' bytes"
            assert relay.relay.ctr.rfq_received == 1
    finally:
        for relay, c_app, u_app, c_gw, u_gw, *_ in pairs:
            relay.close()
            for s in (c_app, u_app, c_gw, u_gw):
                s.close()


def _pair(reactor: Reactor):
    c_app, c_gw = socket.socketpair()
    u_gw, u_app = socket.socketpair()
    for s in (c_app, u_app):
        s.setblocking(False)
    client_t, up_t = SocketTransport(c_gw), SocketTransport(u_gw)
    session = Session(_Gateway(), client_t, None)
    session.phase = Phase.RELAY
    return reactor.attach(session, client_t, up_t), [c_app, c_gw, u_gw, u_app]


def _recv_all(sock: socket.socket) -> bytes:
    got = bytearray()
    for _ in range(1000):
        try:
            data = sock.recv(1 << 20)
        except BlockingIOError:
            break
        if not data:
            break
        got += data
    return bytes(got)


@pytest.mark.parametrize("use_core", [pytest.param(True, marks=needs_core), False], ids=["c", "python"])
def test_a_failed_session_keeps_no_view_of_the_shared_buffer(use_core):
    """A session that fails while Python handles its read (here a malformed
    frame after an incomplete message) keeps its error, and with it the
    error's traceback, until it reports. No frame of it may keep a view of
    the reactor's shared receive buffer: the C pump hands that buffer to the
    next session that makes a large read as that session's own, and Python
    trims it to the read (which fails on a buffer still viewed: the old code
    ended that innocent session with an internal BufferError)."""
    reactor = Reactor(use_core=use_core)
    bad, bad_socks = _pair(reactor)
    good, good_socks = _pair(reactor)
    try:
        big = _q(b"select '" + b"x" * 100_000 + b"'")
        bad_socks[0].send(big[:100])  # incomplete: its session carries it, and reads in Python from now on
        for _ in range(5):
            reactor.poll()
        bad_socks[0].send(big[100:] + b"Q\0\0\0\1")  # then a frame whose length is impossible
        for _ in range(20):
            reactor.poll()
            if bad.closed:
                break
        assert bad.closed and bad.error is not None  # it failed, and keeps its error
        # Now a large read, incomplete, on the other session, then the rest.
        sent = good_socks[0].send(big[:-1])
        assert sent > 20_000
        for _ in range(20):
            reactor.poll()
        good_socks[0].sendall(big[sent:])
        got = b""
        for _ in range(200):
            reactor.poll()
            got += _recv_all(good_socks[3])
            if len(got) >= len(big) or good.closed:
                break
        assert good.error is None and not good.closed, good.error
        assert got == big
    finally:
        for relay, socks in ((bad, bad_socks), (good, good_socks)):
            relay.close()
            for s in socks:
                s.close()

