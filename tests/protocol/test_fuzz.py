"""Bad bytes only ever raise ProtocolError (08P01), never anything else, and
never cost memory for a length field that exceeds the configured maximum."""

from __future__ import annotations

import struct
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgjit.protocol import messages as m
from pgjit.protocol.errors import ProtocolError
from pgjit.protocol.framing import DEFAULT_MAX_MESSAGE_SIZE, MAX_STARTUP_PACKET, FrameBuffer, scan, scan_watched
from pgjit.protocol.messages import decode_backend, decode_frontend, decode_startup_packet

from ._strategies import ANY_BACKEND, ANY_FRONTEND, ANY_STARTUP, P_VIEW_STRATEGIES

FUZZ = settings(max_examples=200, deadline=None)

ALL_TAGS = [bytes([i]) for i in range(256)]


def _only_protocol_error(fn, *args):
    """Call fn; ProtocolError is fine, any other exception fails the test."""
    try:
        return fn(*args)
    except ProtocolError:
        return None


# --------------------------------------------------------------------------
# mutation of valid messages
# --------------------------------------------------------------------------


@st.composite
def mutated(draw, wire_strategy):
    """A valid encoding, then truncated / bit-flipped / extended / with a
    count or length word overwritten by an extreme value."""
    data = bytearray(draw(wire_strategy))
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["truncate", "flip", "insert", "delete", "int16", "int32"]))
        if op == "truncate":
            del data[draw(st.integers(0, len(data))) :]
        elif op == "flip" and data:
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= draw(st.integers(1, 255))
        elif op == "insert":
            i = draw(st.integers(0, len(data)))
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete" and data:
            i = draw(st.integers(0, len(data) - 1))
            del data[i : i + draw(st.integers(1, 4))]
        elif op in ("int16", "int32"):
            size = 2 if op == "int16" else 4
            if len(data) >= size:
                i = draw(st.integers(0, len(data) - size))
                v = draw(st.sampled_from([0, 1, -1, -2, 0x7FFF, 0x8000, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF]))
                data[i : i + size] = (v & (0xFFFF if size == 2 else 0xFFFFFFFF)).to_bytes(size, "big")
    return bytes(data)


_FRONTEND_BODIES = ANY_FRONTEND.map(lambda msg: msg.encode()[5:])
_BACKEND_BODIES = ANY_BACKEND.map(lambda msg: msg.encode()[5:])
_STARTUP_BODIES = ANY_STARTUP.map(lambda msg: msg.encode()[4:])


# --------------------------------------------------------------------------
# decoders
# --------------------------------------------------------------------------


@FUZZ
@given(st.sampled_from(ALL_TAGS), st.binary(max_size=200))
def test_decode_frontend_random_bytes(tag, body):
    msg = _only_protocol_error(decode_frontend, tag, body)
    if msg is not None:
        assert msg.encode() == m.frame(tag, body)


@FUZZ
@given(st.sampled_from(ALL_TAGS), st.binary(max_size=200))
def test_decode_backend_random_bytes(tag, body):
    msg = _only_protocol_error(decode_backend, tag, body)
    if msg is not None:
        assert msg.encode() == m.frame(tag, body)


@FUZZ
@given(st.sampled_from(sorted(m.FRONTEND)), mutated(_FRONTEND_BODIES))
def test_decode_frontend_mutated(tag, body):
    msg = _only_protocol_error(decode_frontend, tag, body)
    if msg is not None:
        assert msg.encode() == m.frame(tag, body)


@FUZZ
@given(st.sampled_from(sorted(set(m.BACKEND) | {b"R"})), mutated(_BACKEND_BODIES))
def test_decode_backend_mutated(tag, body):
    msg = _only_protocol_error(decode_backend, tag, body)
    if msg is not None:
        assert msg.encode() == m.frame(tag, body)


@FUZZ
@given(st.sampled_from(sorted(P_VIEW_STRATEGIES, key=lambda c: c.__name__)), mutated(st.one_of(*P_VIEW_STRATEGIES.values()).map(lambda x: x.encode()[5:])))
def test_p_views_mutated(cls, body):
    msg = _only_protocol_error(cls.decode, body)
    if msg is not None:
        assert msg.encode() == m.frame(b"p", body)
    _only_protocol_error(lambda: m.PasswordMessage(body).password)


@FUZZ
@given(ANY_FRONTEND)
def test_truncated_frontend_messages(msg):
    wire = msg.encode()
    tag, body = wire[:1], wire[5:]
    for cut in range(len(body)):
        _only_protocol_error(decode_frontend, tag, body[:cut])


@FUZZ
@given(ANY_BACKEND)
def test_truncated_backend_messages(msg):
    wire = msg.encode()
    tag, body = wire[:1], wire[5:]
    for cut in range(len(body)):
        _only_protocol_error(decode_backend, tag, body[:cut])


@FUZZ
@given(ANY_STARTUP)
def test_truncated_startup_packets(msg):
    body = msg.encode()[4:]
    for cut in range(len(body)):
        _only_protocol_error(decode_startup_packet, body[:cut])


@FUZZ
@given(
    st.one_of(
        st.binary(max_size=200),
        # a known request code followed by garbage
        st.tuples(
            st.sampled_from([m.SSL_REQUEST_CODE, m.GSSENC_REQUEST_CODE, m.CANCEL_REQUEST_CODE, 196608, 196610, 0x0003FFFF]),
            st.binary(max_size=100),
        ).map(lambda t: struct.pack("!i", t[0]) + t[1]),
        mutated(_STARTUP_BODIES),
    )
)
def test_decode_startup_packet_random_bytes(body):
    msg = _only_protocol_error(decode_startup_packet, body)
    if msg is not None and not isinstance(msg, m.StartupMessage):
        # (a StartupMessage with a repeated key keeps the last value, so its
        # re-encoding may be shorter; its decoding is still well-formed)
        assert msg.encode()[4:] == body
    if isinstance(msg, m.StartupMessage):
        assert decode_startup_packet(msg.encode()[4:]) == msg


@pytest.mark.parametrize("tag", sorted(m.FRONTEND))
def test_every_frontend_decoder_rejects_or_accepts_empty_and_garbage(tag):
    for body in (b"", b"\x00", b"\xff" * 7, b"\x80\x00\x80\x00", b"\x7f\xff\xff\xff\x00"):
        _only_protocol_error(decode_frontend, tag, body)


@pytest.mark.parametrize("tag", sorted(set(m.BACKEND) | {b"R"}))
def test_every_backend_decoder_rejects_or_accepts_empty_and_garbage(tag):
    for body in (b"", b"\x00", b"\xff" * 7, b"\x80\x00\x80\x00", b"\x7f\xff\xff\xff\x00", b"\x00\x00\x00\x0a\xff"):
        _only_protocol_error(decode_backend, tag, body)


@pytest.mark.parametrize("tag", [b"\x00", b"a", b"z", b"R", b"\xff"])
def test_unknown_frontend_tag(tag):
    with pytest.raises(ProtocolError):
        decode_frontend(tag, b"")


@pytest.mark.parametrize("tag", [b"\x00", b"Q", b"P", b"B", b"\xff"])
def test_unknown_backend_tag(tag):
    with pytest.raises(ProtocolError):
        decode_backend(tag, b"")


def test_specific_malformed_bodies():
    cases = [
        (decode_frontend, b"Q", b"select 1"),  # no NUL
        (decode_frontend, b"Q", b"select 1\x00x"),  # trailing bytes
        (decode_frontend, b"D", b"X\x00"),  # bad describe kind
        (decode_frontend, b"C", b""),
        (decode_frontend, b"S", b"\x00"),  # Sync with a body
        (decode_frontend, b"P", b"\x00select\x00\x00\x02\x00\x00\x00\x17"),  # 2 types announced, 1 sent
        (decode_frontend, b"B", b"\x00\x00\x00\x00\x00\x01\x80\x00\x00\x00\x00\x00"),  # length < -1
        (decode_frontend, b"B", b"\x00\x00\x00\x00\x00\x01\x00\x00\x00\x10ab\x00\x00"),  # value longer than body
        (decode_frontend, b"E", b"\x00\x00\x00"),
        (decode_backend, b"Z", b"X"),
        (decode_backend, b"Z", b"II"),
        (decode_backend, b"D", b"\xff\xff"),  # 65535 columns announced, none sent
        (decode_backend, b"T", b"\x00\x01name\x00\x00"),
        (decode_backend, b"E", b"Sfoo\x00"),  # missing final terminator
        (decode_backend, b"E", b"Sfoo"),
        (decode_backend, b"v", b"\x00\x00\x00\x00\xff\xff\xff\xff"),  # negative count
        (decode_backend, b"v", b"\x00\x00\x00\x00\x7f\xff\xff\xff\x00\x00"),
        (decode_backend, b"R", b"\x00\x00\x00\x05\x01\x02\x03"),  # short MD5 salt
        (decode_backend, b"R", b"\x00\x00\x00\x05\x01\x02\x03\x04\x05"),
        (decode_backend, b"R", b"\x00\x00\x00\x0aSCRAM-SHA-256\x00"),  # mechanism list unterminated
        (decode_backend, b"R", b"\x00\x00\x00\x00\x00"),
        (decode_backend, b"R", b"\x00\x00"),
        (decode_backend, b"K", b"\x00\x00\x00\x01"),
        (decode_backend, b"V", b"\x00\x00\x00\x05ab"),
        (decode_startup_packet, None, b"\x00\x03\x00\x00user\x00x\x00"),  # no terminator
        (decode_startup_packet, None, b"\x00\x03\x00\x00user\x00x"),
        (decode_startup_packet, None, b"\x00\x03\x00\x00\x00\x00"),  # trailing bytes
        (decode_startup_packet, None, b"\x00\x03"),
        (decode_startup_packet, None, b""),
    ]
    for fn, tag, body in cases:
        with pytest.raises(ProtocolError):
            fn(body) if tag is None else fn(tag, body)


# --------------------------------------------------------------------------
# framing on random input
# --------------------------------------------------------------------------


def _drain_frames(fb: FrameBuffer) -> list[tuple[bytes, bytes]]:
    out = []
    while (f := fb.next_frame()) is not None:
        out.append(f)
    return out


@FUZZ
@given(st.binary(max_size=300), st.integers(4, 400))
def test_frame_buffer_random_bytes(data, max_size):
    fb = FrameBuffer(max_size=max_size)
    fb.feed(data)
    try:
        frames = _drain_frames(fb)
    except ProtocolError:
        return
    # No error: the frames plus what is left buffered are exactly the input.
    rebuilt = b"".join(tag + struct.pack("!I", len(body) + 4) + body for tag, body in frames)
    assert rebuilt + fb.take_raw() == data
    for tag, body in frames:
        assert len(body) + 4 <= max_size


@FUZZ
@given(st.binary(max_size=300), st.integers(4, 400))
def test_scan_random_bytes(data, max_size):
    try:
        found, pos = scan(data, 0, len(data), max_size)
    except ProtocolError:
        with pytest.raises(ProtocolError):
            fb = FrameBuffer(max_size=max_size)
            fb.feed(data)
            _drain_frames(fb)
        return
    fb = FrameBuffer(max_size=max_size)
    fb.feed(data)
    assert [(bytes([t]), data[s + 5 : e]) for t, s, e in found] == _drain_frames(fb)
    assert pos == (found[-1][2] if found else 0)
    assert len(data) - pos == fb.buffered


@FUZZ
@given(st.binary(max_size=300))
def test_next_startup_packet_random_bytes(data):
    fb = FrameBuffer(startup=True)
    fb.feed(data)
    try:
        while (body := fb.next_startup_packet()) is not None:
            assert 4 <= len(body) <= MAX_STARTUP_PACKET - 4
            _only_protocol_error(decode_startup_packet, body)
    except ProtocolError:
        return


@FUZZ
@given(mutated(ANY_FRONTEND.map(lambda x: x.encode())), mutated(ANY_BACKEND.map(lambda x: x.encode())))
def test_frame_then_decode_mutated_streams(front, back):
    """The full client path: frame, then decode — only ProtocolError."""
    for data, decode in ((front, decode_frontend), (back, decode_backend)):
        fb = FrameBuffer(max_size=1 << 16)
        fb.feed(data)
        try:
            for tag, body in _drain_frames(fb):
                _only_protocol_error(decode, tag, body)
        except ProtocolError:
            pass


# --------------------------------------------------------------------------
# length fields
# --------------------------------------------------------------------------

OVERSIZED = [0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, DEFAULT_MAX_MESSAGE_SIZE + 1]


@pytest.mark.parametrize("length", OVERSIZED)
def test_oversized_length_fails_on_the_header(length):
    tracemalloc.start()
    try:
        fb = FrameBuffer()
        header = b"Q" + struct.pack("!I", length)
        for b in header[:-1]:
            fb.feed(bytes([b]))
            assert fb.next_frame() is None
        fb.feed(header[-1:])
        with pytest.raises(ProtocolError):
            fb.next_frame()
        assert fb.buffered == 5
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20  # nothing close to the claimed length was allocated
    with pytest.raises(ProtocolError):
        scan(header, 0, 5, DEFAULT_MAX_MESSAGE_SIZE)


@pytest.mark.parametrize("max_size", [4, 5, 100, 8192])
def test_length_just_over_a_small_max_size(max_size):
    fb = FrameBuffer(max_size=max_size)
    fb.feed(b"d" + struct.pack("!I", max_size + 1))
    with pytest.raises(ProtocolError):
        fb.next_frame()
    assert fb.buffered == 5
    with pytest.raises(ProtocolError):
        scan(b"d" + struct.pack("!I", max_size + 1), 0, 5, max_size)
    # exactly max_size is allowed
    frame = b"d" + struct.pack("!I", max_size) + b"x" * (max_size - 4)
    fb = FrameBuffer(max_size=max_size)
    fb.feed(frame)
    assert fb.next_frame() == (b"d", b"x" * (max_size - 4))
    assert scan(frame, 0, len(frame), max_size) == ([(ord("d"), 0, len(frame))], len(frame))


def test_oversized_frame_after_valid_frames():
    """The valid frames before the bad header come out; then the error."""
    fb = FrameBuffer(max_size=64)
    fb.feed(m.Sync().encode() + m.Query("select 1").encode() + b"Q" + struct.pack("!I", 65))
    assert fb.next_frame() == (b"S", b"")
    assert fb.next_frame() == (b"Q", b"select 1\x00")
    with pytest.raises(ProtocolError):
        fb.next_frame()


@pytest.mark.parametrize("length", [0, 1, 2, 3])
def test_too_small_length(length):
    header = b"Q" + struct.pack("!I", length)
    fb = FrameBuffer()
    fb.feed(header)
    with pytest.raises(ProtocolError):
        fb.next_frame()
    with pytest.raises(ProtocolError):
        scan(header, 0, 5, DEFAULT_MAX_MESSAGE_SIZE)


@pytest.mark.parametrize("length", [-1, -4, -(2**31)])
def test_negative_length(length):
    header = b"Q" + struct.pack("!i", length)
    fb = FrameBuffer()
    fb.feed(header)
    with pytest.raises(ProtocolError):
        fb.next_frame()
    with pytest.raises(ProtocolError):
        scan(header, 0, 5, DEFAULT_MAX_MESSAGE_SIZE)


def test_minimal_length_is_fine():
    fb = FrameBuffer()
    fb.feed(b"S\x00\x00\x00\x04")
    assert fb.next_frame() == (b"S", b"")
    assert fb.buffered == 0
    assert fb.next_frame() is None


@pytest.mark.parametrize("length", [MAX_STARTUP_PACKET + 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0, 1, 4, 7])
def test_bad_startup_packet_length(length):
    fb = FrameBuffer(startup=True)
    word = struct.pack("!I", length)
    for b in word[:-1]:
        fb.feed(bytes([b]))
        assert fb.next_startup_packet() is None
    fb.feed(word[-1:])
    with pytest.raises(ProtocolError):
        fb.next_startup_packet()
    assert fb.buffered == 4


def test_startup_packet_length_bounds_are_inclusive():
    fb = FrameBuffer(startup=True)
    fb.feed(struct.pack("!I", 8) + struct.pack("!I", m.SSL_REQUEST_CODE))
    assert fb.next_startup_packet() == struct.pack("!I", m.SSL_REQUEST_CODE)
    fb = FrameBuffer(startup=True)
    body = struct.pack("!i", 196608) + b"options\x00" + b"x" * (MAX_STARTUP_PACKET - 4 - 4 - 8 - 2) + b"\x00\x00"
    packet = struct.pack("!I", len(body) + 4) + body
    assert len(packet) == MAX_STARTUP_PACKET
    fb.feed(packet[:-1])
    assert fb.next_startup_packet() is None
    fb.feed(packet[-1:])
    got = fb.next_startup_packet()
    assert got == body
    assert decode_startup_packet(got).parameters["options"] == "x" * (MAX_STARTUP_PACKET - 18)


@FUZZ
@given(st.binary(max_size=300), st.integers(4, 400), st.sets(st.integers(0, 255), max_size=6))
def test_scan_watched_random_bytes(data, max_size, watch):
    """scan_watched raises exactly when scan does, else reports the watched
    subset of scan's frames and the same next position."""
    try:
        found, pos = scan(data, 0, len(data), max_size)
    except ProtocolError:
        with pytest.raises(ProtocolError):
            scan_watched(data, 0, len(data), max_size, frozenset(watch))
        return
    w_found, w_pos = scan_watched(bytearray(data), 0, len(data), max_size, frozenset(watch))
    assert w_pos == pos
    assert w_found == [f for f in found if f[0] in watch]


@pytest.mark.parametrize("length", [0, 3, 0x7FFFFFFF, 0xFFFFFFFF, 65])
def test_scan_watched_bad_length_even_for_unwatched_tags(length):
    header = b"d" + struct.pack("!I", length)
    with pytest.raises(ProtocolError):
        scan_watched(header, 0, 5, 64, frozenset(b"Q"))
