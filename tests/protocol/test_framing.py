"""Feeding a recorded session in any chunking gives the same frames."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from pgjit.protocol import messages as m
from pgjit.protocol.framing import FrameBuffer, scan, scan_watched
from pgjit.protocol.messages import decode_backend, decode_frontend, decode_startup_packet

CHUNKS = settings(max_examples=120, deadline=None)

MAX = 1 << 20


def _frontend_session() -> list[m.Message]:
    out: list[m.Message] = [
        m.SASLInitialResponse("SCRAM-SHA-256", b"n,,n=,r=rOprNGfwEbeRWgbNEkqO"),
        m.SASLResponse(b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=AAAA"),
        m.Query("SELECT n.nspname, c.relname FROM pg_catalog.pg_class c LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace;"),
        m.Query("select 'naïve', '日本語'"),
        m.Query(""),
    ]
    for i in range(20):
        out += [
            m.Parse(f"s{i}" if i % 2 else "", "select * from t where id = $1 and name = $2", (23, 25)),
            m.Bind("", f"s{i}" if i % 2 else "", (0, 1), (str(i).encode(), None), (1,)),
            m.Describe(b"P", ""),
            m.Execute("", 0 if i % 3 else 100),
            m.Sync(),
        ]
    out += [
        m.Close(b"S", "s1"),
        m.Flush(),
        m.Sync(),
        m.Query("COPY t FROM STDIN"),
        *[m.CopyData(f"{i}\tname {i}\n".encode()) for i in range(50)],
        m.CopyData(b"x" * 70000),  # larger than the compaction threshold
        m.CopyDone(),
        m.Query("COPY t FROM STDIN"),
        m.CopyFail("aborted by user"),
        m.FunctionCall(1234, (1,), (b"\x00\x00\x00\x01", None), 1),
        m.PasswordMessage(b"secret\x00"),
        m.Terminate(),
    ]
    return out


def _backend_session() -> list[m.Message]:
    out: list[m.Message] = [
        m.AuthenticationSASL(("SCRAM-SHA-256-PLUS", "SCRAM-SHA-256")),
        m.AuthenticationSASLContinue(b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"),
        m.AuthenticationSASLFinal(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="),
        m.AuthenticationOk(),
        *[m.ParameterStatus(k, v) for k, v in [
            ("application_name", "psql"), ("client_encoding", "UTF8"), ("DateStyle", "ISO, MDY"),
            ("integer_datetimes", "on"), ("server_version", "17.2"), ("TimeZone", "UTC"),
        ]],
        m.BackendKeyData(4242, bytes(range(32))),
        m.ReadyForQuery(b"I"),
        m.RowDescription((
            m.FieldDescription("nspname", 2615, 2, 19, 64, -1, 0),
            m.FieldDescription("relname", 1259, 2, 19, 64, -1, 0),
        )),
        *[m.DataRow((f"schema{i}".encode(), None if i % 7 == 0 else f"rel{i}".encode())) for i in range(200)],
        m.DataRow((b"y" * 100000, b"")),  # one big row
        m.CommandComplete("SELECT 201"),
        m.ReadyForQuery(b"I"),
        m.EmptyQueryResponse(),
        m.ReadyForQuery(b"I"),
        m.ParseComplete(),
        m.BindComplete(),
        m.ParameterDescription((23, 25)),
        m.RowDescription((m.FieldDescription("id", 16384, 1, 23, 4, -1, 1),)),
        m.DataRow((b"\x00\x00\x00\x01",)),
        m.PortalSuspended(),
        m.ReadyForQuery(b"T"),
        m.NoData(),
        m.CloseComplete(),
        m.CopyInResponse(0, (0, 0)),
        m.CopyOutResponse(0, (0, 0)),
        *[m.CopyData(f"{i}\tname {i}\n".encode()) for i in range(50)],
        m.CopyDone(),
        m.CommandComplete("COPY 50"),
        m.CopyBothResponse(1, ()),
        m.NoticeResponse.build("NOTICE", "00000", "relation exists, skipping"),
        m.ErrorResponse.build("ERROR", "42P01", 'relation "nope" does not exist', hint="check the name"),
        m.ReadyForQuery(b"E"),
        m.NotificationResponse(4242, "jobs", "{\"id\": 1}"),
        m.FunctionCallResponse(None),
        m.FunctionCallResponse(b"\x00\x00\x00\x02"),
        m.NegotiateProtocolVersion(0, ("_pq_.unknown",)),
        m.CommandComplete("INSERT 0 1"),
        m.ReadyForQuery(b"I"),
    ]
    return out


FRONTEND_MSGS = _frontend_session()
BACKEND_MSGS = _backend_session()
FRONTEND_STREAM = b"".join(x.encode() for x in FRONTEND_MSGS)
BACKEND_STREAM = b"".join(x.encode() for x in BACKEND_MSGS)
STARTUP_MSG = m.StartupMessage(
    {"user": "alice@example.com", "database": "app", "application_name": "psql", "_pq_.protocol_managed": "on"},
    protocol=196610,
)
# A client's first flight: startup packet, then (once startup ended) tagged frames.
CLIENT_STREAM = STARTUP_MSG.encode() + FRONTEND_STREAM


def _drain(fb: FrameBuffer) -> list[tuple[bytes, bytes]]:
    return list(fb.frames())


def _feed_in_chunks(stream: bytes, cuts: list[int]) -> tuple[list[tuple[bytes, bytes]], FrameBuffer]:
    fb = FrameBuffer(max_size=MAX)
    out = []
    prev = 0
    for cut in [*sorted(set(cuts)), len(stream)]:
        fb.feed(stream[prev:cut])
        prev = cut
        out += _drain(fb)
    return out, fb


def _byte_at_a_time(stream: bytes) -> list[tuple[bytes, bytes]]:
    fb = FrameBuffer(max_size=MAX)
    out = []
    for i in range(len(stream)):
        fb.feed(stream[i : i + 1])
        out += _drain(fb)
    assert fb.buffered == 0
    return out


def _expected(msgs: list[m.Message]) -> list[tuple[bytes, bytes]]:
    return [(w[:1], w[5:]) for w in (x.encode() for x in msgs)]


def _whole(stream: bytes) -> list[tuple[bytes, bytes]]:
    fb = FrameBuffer(max_size=MAX)
    fb.feed(stream)
    frames = _drain(fb)
    assert fb.buffered == 0
    return frames


def test_whole_buffer_gives_every_frame():
    assert _whole(FRONTEND_STREAM) == _expected(FRONTEND_MSGS)
    assert _whole(BACKEND_STREAM) == _expected(BACKEND_MSGS)


def test_frames_decode_back_to_the_session():
    # 'p' is decoded as PasswordMessage; compare its raw body with the typed view's encoding
    for msg, (tag, body) in zip(FRONTEND_MSGS, _whole(FRONTEND_STREAM)):
        decoded = decode_frontend(tag, body)
        if isinstance(msg, (m.SASLInitialResponse, m.SASLResponse)):
            assert type(msg).decode(decoded.data) == msg
        else:
            assert decoded == msg
    assert [decode_backend(t, b) for t, b in _whole(BACKEND_STREAM)] == BACKEND_MSGS


def test_byte_at_a_time_equals_whole():
    assert _byte_at_a_time(FRONTEND_STREAM) == _whole(FRONTEND_STREAM)
    assert _byte_at_a_time(BACKEND_STREAM) == _whole(BACKEND_STREAM)


def _cuts(stream: bytes):
    return st.lists(st.integers(0, len(stream)), max_size=60)


@CHUNKS
@given(_cuts(FRONTEND_STREAM))
def test_random_chunks_frontend(cuts):
    frames, fb = _feed_in_chunks(FRONTEND_STREAM, cuts)
    assert frames == _expected(FRONTEND_MSGS)
    assert fb.buffered == 0


@CHUNKS
@given(_cuts(BACKEND_STREAM))
def test_random_chunks_backend(cuts):
    frames, fb = _feed_in_chunks(BACKEND_STREAM, cuts)
    assert frames == _expected(BACKEND_MSGS)
    assert fb.buffered == 0


@CHUNKS
@given(st.lists(st.integers(1, 4096), min_size=1, max_size=40))
def test_many_small_chunks_backend(sizes):
    """Chunk sizes like a socket's receive_some, cycling through the list."""
    cuts, pos, i = [], 0, 0
    while pos < len(BACKEND_STREAM):
        pos += sizes[i % len(sizes)]
        i += 1
        cuts.append(min(pos, len(BACKEND_STREAM)))
    frames, _ = _feed_in_chunks(BACKEND_STREAM, cuts)
    assert frames == _expected(BACKEND_MSGS)


@CHUNKS
@given(_cuts(CLIENT_STREAM))
def test_random_chunks_with_startup_phase(cuts):
    fb = FrameBuffer(max_size=MAX, startup=True)
    startup, frames = [], []
    prev = 0
    for cut in [*sorted(set(cuts)), len(CLIENT_STREAM)]:
        fb.feed(CLIENT_STREAM[prev:cut])
        prev = cut
        if fb.startup:
            body = fb.next_startup_packet()
            if body is None:
                continue
            startup.append(decode_startup_packet(body))
            fb.end_startup()
        frames += _drain(fb)
    assert startup == [STARTUP_MSG]
    assert frames == _expected(FRONTEND_MSGS)


def test_take_raw_after_ssl_request():
    """Bytes the client sent right after SSLRequest are handed back raw (they
    belong to the TLS handshake, or are an injection attempt)."""
    fb = FrameBuffer(startup=True)
    fb.feed(m.SSLRequest().encode() + b"\x16\x03\x01early")
    assert decode_startup_packet(fb.next_startup_packet()) == m.SSLRequest()
    assert fb.buffered == len(b"\x16\x03\x01early")
    assert fb.take_raw() == b"\x16\x03\x01early"
    assert fb.buffered == 0
    assert fb.next_startup_packet() is None


def test_startup_packets_in_sequence():
    stream = m.GSSENCRequest().encode() + m.SSLRequest().encode() + STARTUP_MSG.encode()
    fb = FrameBuffer(startup=True)
    for i in range(len(stream)):
        fb.feed(stream[i : i + 1])
    got = []
    while (body := fb.next_startup_packet()) is not None:
        got.append(decode_startup_packet(body))
    assert got == [m.GSSENCRequest(), m.SSLRequest(), STARTUP_MSG]


# --------------------------------------------------------------------------
# scan() agrees with FrameBuffer
# --------------------------------------------------------------------------


def _scan_frames(buf, found):
    return [(bytes([tag]), bytes(buf[start + 5 : stop])) for tag, start, stop in found]


def test_scan_whole_stream():
    for stream in (FRONTEND_STREAM, BACKEND_STREAM):
        for buf in (stream, bytearray(stream), memoryview(stream)):
            found, pos = scan(buf, 0, len(buf), MAX)
            assert pos == len(stream)
            assert _scan_frames(buf, found) == _whole(stream)
            # frames tile the stream
            assert found[0][1] == 0
            assert all(a[2] == b[1] for a, b in zip(found, found[1:]))


def test_scan_respects_pos_and_end():
    stream = BACKEND_STREAM
    found, _ = scan(stream, 0, len(stream), MAX)
    rng = random.Random(7)
    for _ in range(200):
        i = rng.randrange(len(found))
        start = found[i][1]
        end = rng.randrange(start, len(stream) + 1)
        sub, pos = scan(stream, start, end, MAX)
        expected = [f for f in found[i:] if f[2] <= end]
        assert sub == expected
        assert pos == (expected[-1][2] if expected else start)


@CHUNKS
@given(_cuts(BACKEND_STREAM))
def test_scan_incremental_like_the_relay(cuts):
    """The relay appends what it receives to one bytearray and scans from the
    first incomplete frame; the frames equal FrameBuffer's."""
    buf = bytearray()
    pos = 0
    frames = []
    prev = 0
    for cut in [*sorted(set(cuts)), len(BACKEND_STREAM)]:
        buf += BACKEND_STREAM[prev:cut]
        prev = cut
        found, pos = scan(buf, pos, len(buf), MAX)
        frames += _scan_frames(buf, found)
        if pos == len(buf):  # relay forwards complete frames and reuses the buffer
            del buf[:]
            pos = 0
    assert pos == len(buf) == 0
    assert frames == _expected(BACKEND_MSGS)


@CHUNKS
@given(_cuts(FRONTEND_STREAM))
def test_scan_and_frame_buffer_agree_on_every_prefix_chunking(cuts):
    fb = FrameBuffer(max_size=MAX)
    buf = bytearray()
    pos = 0
    prev = 0
    for cut in [*sorted(set(cuts)), len(FRONTEND_STREAM)]:
        chunk = FRONTEND_STREAM[prev:cut]
        prev = cut
        fb.feed(chunk)
        buf += chunk
        found, pos = scan(buf, pos, len(buf), MAX)
        assert _scan_frames(buf, found) == _drain(fb)
        assert len(buf) - pos == fb.buffered


# --------------------------------------------------------------------------
# scan_watched() (the relay's hot path) agrees with scan()
# --------------------------------------------------------------------------

_WATCH_SETS = st.sets(st.sampled_from(sorted({w[0] for w in (x.encode() for x in FRONTEND_MSGS + BACKEND_MSGS)})))


@CHUNKS
@given(_cuts(FRONTEND_STREAM), _WATCH_SETS)
def test_scan_watched_incremental_equals_filtered_scan(cuts, watch):
    """Every watched frame is reported, exactly once, whatever the chunking;
    frame boundaries (next_pos) are the same as scan()'s."""
    buf = bytearray()
    pos = 0
    watched = []
    prev = 0
    for cut in [*sorted(set(cuts)), len(FRONTEND_STREAM)]:
        buf += FRONTEND_STREAM[prev:cut]
        prev = cut
        all_found, all_pos = scan(buf, pos, len(buf), MAX)
        found, pos = scan_watched(buf, pos, len(buf), MAX, frozenset(watch))
        assert pos == all_pos
        assert found == [f for f in all_found if f[0] in watch]
        watched += _scan_frames(buf, found)
    assert pos == len(buf)
    assert watched == [f for f in _expected(FRONTEND_MSGS) if f[0][0] in watch]


def test_scan_watched_sees_every_query_in_the_session():
    watch = frozenset(b"QPBFXd")
    found, pos = scan_watched(FRONTEND_STREAM, 0, len(FRONTEND_STREAM), MAX, watch)
    assert pos == len(FRONTEND_STREAM)
    expected = [x for x in FRONTEND_MSGS if type(x).tag[0] in watch]
    assert [decode_frontend(t, b) for t, b in _scan_frames(FRONTEND_STREAM, found)] == expected
