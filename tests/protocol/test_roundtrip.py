"""decode(encode(m)) == m, and re-encoding gives the same bytes, for every message class."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgjit.errors import InsufficientPrivilege, PgjitError, ProtocolViolation
from pgjit.protocol import messages as m
from pgjit.protocol.errors import ProtocolError
from pgjit.protocol.messages import decode_backend, decode_frontend, decode_startup_packet

from ._strategies import (
    AUTHENTICATION_STRATEGIES,
    BACKEND_STRATEGIES,
    FIELDS,
    FRONTEND_STRATEGIES,
    INT32,
    P_VIEW_STRATEGIES,
    STARTUP_STRATEGIES,
    TEXT,
    split_frame,
    split_startup,
)

PER_CLASS = settings(max_examples=150, deadline=None)
MODERATE = settings(max_examples=200, deadline=None)


def _name(cls: type) -> str:
    return cls.__name__


# --------------------------------------------------------------------------
# every message class is covered
# --------------------------------------------------------------------------


def _concrete_message_classes() -> set[type]:
    """Every public message class defined in the module (abstract bases excluded)."""
    out = set()
    for name, obj in vars(m).items():
        if (
            isinstance(obj, type)
            and issubclass(obj, m.Message)
            and obj.__module__ == m.__name__
            and not name.startswith("_")
            and obj not in (m.Message, m.Authentication)
        ):
            out.add(obj)
    return out


def test_every_message_class_has_a_roundtrip_strategy():
    covered = set(FRONTEND_STRATEGIES) | set(BACKEND_STRATEGIES) | set(STARTUP_STRATEGIES) | set(P_VIEW_STRATEGIES)
    defined = _concrete_message_classes()
    # everything the decoder tables know ...
    defined |= set(m.FRONTEND.values()) | set(m.BACKEND.values())
    # ... and every Authentication subtype
    defined |= {c for c in vars(m).values() if isinstance(c, type) and issubclass(c, m.Authentication) and c is not m.Authentication}
    assert covered == defined, (
        f"untested: {sorted(map(_name, defined - covered))}; stale: {sorted(map(_name, covered - defined))}"
    )


def test_tables_and_strategies_agree_on_direction():
    assert set(FRONTEND_STRATEGIES) == set(m.FRONTEND.values())
    assert set(BACKEND_STRATEGIES) == set(m.BACKEND.values()) | set(AUTHENTICATION_STRATEGIES)
    # Every Authentication subtype has a distinct code and the 'R' tag.
    codes = [c.code for c in AUTHENTICATION_STRATEGIES]
    assert len(set(codes)) == len(codes)
    assert all(c.tag == b"R" for c in AUTHENTICATION_STRATEGIES)


def test_decoder_tables_are_keyed_by_tag():
    for table in (m.FRONTEND, m.BACKEND):
        for tag, cls in table.items():
            assert tag == cls.tag and len(tag) == 1


# --------------------------------------------------------------------------
# round trips, one test per class
# --------------------------------------------------------------------------


def _check_frontend(msg: m.Message) -> None:
    wire = msg.encode()
    tag, body = split_frame(wire)
    assert tag == type(msg).tag
    decoded = decode_frontend(tag, body)
    assert decoded == msg
    assert type(decoded) is type(msg)
    assert decoded.encode() == wire


def _check_backend(msg: m.Message) -> None:
    wire = msg.encode()
    tag, body = split_frame(wire)
    assert tag == type(msg).tag
    decoded = decode_backend(tag, body)
    assert decoded == msg
    assert type(decoded) is type(msg)
    assert decoded.encode() == wire


@pytest.mark.parametrize("cls", list(FRONTEND_STRATEGIES), ids=_name)
@PER_CLASS
@given(data=st.data())
def test_frontend_roundtrip(cls, data):
    _check_frontend(data.draw(FRONTEND_STRATEGIES[cls]))


@pytest.mark.parametrize("cls", list(BACKEND_STRATEGIES), ids=_name)
@PER_CLASS
@given(data=st.data())
def test_backend_roundtrip(cls, data):
    _check_backend(data.draw(BACKEND_STRATEGIES[cls]))


@pytest.mark.parametrize("cls", list(STARTUP_STRATEGIES), ids=_name)
@PER_CLASS
@given(data=st.data())
def test_startup_roundtrip(cls, data):
    msg = data.draw(STARTUP_STRATEGIES[cls])
    wire = msg.encode()
    body = split_startup(wire)
    decoded = decode_startup_packet(body)
    assert decoded == msg
    assert type(decoded) is type(msg)
    assert decoded.encode() == wire


@pytest.mark.parametrize("cls", list(P_VIEW_STRATEGIES), ids=_name)
@PER_CLASS
@given(data=st.data())
def test_p_views_roundtrip(cls, data):
    """SASLInitialResponse / SASLResponse travel as 'p'; decode_frontend gives a
    PasswordMessage whose raw body the typed view then decodes."""
    msg = data.draw(P_VIEW_STRATEGIES[cls])
    wire = msg.encode()
    tag, body = split_frame(wire)
    assert tag == b"p"
    raw = decode_frontend(tag, body)
    assert type(raw) is m.PasswordMessage
    assert raw.data == body
    assert raw.encode() == wire
    view = cls.decode(raw.data)
    assert view == msg
    assert view.encode() == wire


# --------------------------------------------------------------------------
# specific shapes the brief calls out
# --------------------------------------------------------------------------


@MODERATE
@given(TEXT)
def test_password_message_password_view(password):
    pm = m.PasswordMessage(password.encode("utf-8", "surrogateescape") + b"\x00")
    decoded = decode_frontend(*split_frame(pm.encode()))
    assert decoded.password == password


@pytest.mark.parametrize("data", [b"", b"abc", b"no terminator", b"a\x00b\x00"])
def test_password_view_rejects_bad_body(data):
    with pytest.raises(ProtocolError):
        m.PasswordMessage(data).password


def test_sasl_initial_response_null_data():
    msg = m.SASLInitialResponse("SCRAM-SHA-256", None)
    wire = msg.encode()
    assert wire == b"p" + struct.pack("!I", 4 + 14 + 4) + b"SCRAM-SHA-256\x00" + b"\xff\xff\xff\xff"
    assert m.SASLInitialResponse.decode(split_frame(wire)[1]) == msg


@pytest.mark.parametrize(
    "code, cls",
    [(0, m.AuthenticationOk), (2, m.AuthenticationKerberosV5), (3, m.AuthenticationCleartextPassword),
     (7, m.AuthenticationGSS), (9, m.AuthenticationSSPI)],
)
def test_authentication_codes_on_the_wire(code, cls):
    wire = cls().encode()
    assert wire == b"R\x00\x00\x00\x08" + struct.pack("!i", code)
    assert decode_backend(b"R", wire[5:]) == cls()


def test_authentication_with_payload_on_the_wire():
    assert m.AuthenticationMD5Password(b"\x01\x02\x03\x04").encode() == b"R\x00\x00\x00\x0c\x00\x00\x00\x05\x01\x02\x03\x04"
    assert m.AuthenticationSASL(("SCRAM-SHA-256-PLUS", "SCRAM-SHA-256")).encode()[5:] == (
        b"\x00\x00\x00\x0aSCRAM-SHA-256-PLUS\x00SCRAM-SHA-256\x00\x00"
    )
    assert m.AuthenticationSASL(()).encode()[5:] == b"\x00\x00\x00\x0a\x00"
    assert decode_backend(b"R", b"\x00\x00\x00\x0bserver-first") == m.AuthenticationSASLContinue(b"server-first")
    assert decode_backend(b"R", b"\x00\x00\x00\x0cv=abc") == m.AuthenticationSASLFinal(b"v=abc")


@pytest.mark.parametrize("code", [-1, 1, 4, 6, 13, 0x7FFFFFFF])
def test_unknown_authentication_code(code):
    with pytest.raises(ProtocolError):
        decode_backend(b"R", struct.pack("!i", code))


@MODERATE
@given(FIELDS)
def test_error_and_notice_fields(fields):
    for cls in (m.ErrorResponse, m.NoticeResponse):
        msg = cls(fields)
        decoded = decode_backend(*split_frame(msg.encode()))
        assert decoded == msg
        assert decoded.fields == fields
        first = {}
        for code, value in fields:
            first.setdefault(code, value)
        assert decoded.sqlstate == first.get("C")
        assert decoded.message == first.get("M")
        assert decoded.severity == (first.get("V") or first.get("S"))
        for code in m.FIELD_NAMES:
            assert decoded.get(code) == first.get(code)


def test_error_response_from_error():
    err = InsufficientPrivilege("denied by rule no_drop", hint="ask for approval")
    msg = m.ErrorResponse.from_error(err)
    assert msg.fields == (
        ("S", "ERROR"), ("V", "ERROR"), ("C", "42501"), ("M", "denied by rule no_drop"), ("H", "ask for approval"),
    )
    assert decode_backend(*split_frame(msg.encode())) == msg
    fatal = m.ErrorResponse.from_error(ProtocolViolation("bad bytes", detail="length 3"))
    assert (fatal.severity, fatal.sqlstate, fatal.message, fatal.get("D")) == ("FATAL", "08P01", "bad bytes", "length 3")
    assert m.ErrorResponse.from_error(ProtocolError("x")).sqlstate == "08P01"
    assert issubclass(ProtocolError, PgjitError)


def test_error_response_wire_layout():
    msg = m.ErrorResponse((("S", "ERROR"), ("C", "42P01"), ("M", "no table")))
    body = b"SERROR\x00C42P01\x00Mno table\x00\x00"
    assert msg.encode() == b"E" + struct.pack("!I", 4 + len(body)) + body
    assert m.NoticeResponse(()).encode() == b"N\x00\x00\x00\x05\x00"


@MODERATE
@given(st.lists(st.one_of(st.none(), st.binary(max_size=16)), max_size=20))
def test_data_row_with_nulls(values):
    row = m.DataRow(tuple(values))
    wire = row.encode()
    # NULL is length -1 with no bytes; an empty value is length 0.
    expected_body = struct.pack("!H", len(values)) + b"".join(
        b"\xff\xff\xff\xff" if v is None else struct.pack("!i", len(v)) + v for v in values
    )
    assert wire[5:] == expected_body
    assert decode_backend(b"D", wire[5:]) == row


def test_data_row_null_versus_empty():
    assert decode_backend(b"D", b"\x00\x02\xff\xff\xff\xff\x00\x00\x00\x00").values == (None, b"")
    with pytest.raises(ProtocolError):
        decode_backend(b"D", b"\x00\x01\xff\xff\xff\xfe")  # length -2


def test_row_description_layout():
    rd = m.RowDescription((m.FieldDescription("id", 16384, 1, 23, 4, -1, 0), m.FieldDescription("name")))
    wire = rd.encode()
    body = (
        b"\x00\x02"
        + b"id\x00" + struct.pack("!IhIhih", 16384, 1, 23, 4, -1, 0)
        + b"name\x00" + struct.pack("!IhIhih", 0, 0, 25, -1, -1, 0)
    )
    assert wire == b"T" + struct.pack("!I", len(body) + 4) + body
    assert decode_backend(b"T", body) == rd
    assert m.RowDescription().encode() == b"T\x00\x00\x00\x06\x00\x00"


def test_counts_above_32767_roundtrip():
    """Counts are unsigned 16-bit on the wire (PostgreSQL and libpq allow
    65535 parameters); a message with more than 32767 entries must decode
    and re-encode."""
    n = 40000
    for msg, decode in [
        (m.Parse("", "select", tuple(range(n))), decode_frontend),
        (m.Bind("", "", (), (b"x",) * n, ()), decode_frontend),
        (m.ParameterDescription(tuple([23] * n)), decode_backend),
        (m.DataRow((None,) * n), decode_backend),
        (m.RowDescription((m.FieldDescription("c"),) * n), decode_backend),
    ]:
        wire = msg.encode()
        decoded = decode(*split_frame(wire))
        assert decoded == msg
        assert decoded.encode() == wire


def test_startup_message_layout_and_versions():
    sm = m.StartupMessage({"user": "alice", "database": "app"})
    wire = sm.encode()
    body = struct.pack("!i", 196608) + b"user\x00alice\x00database\x00app\x00\x00"
    assert wire == struct.pack("!I", len(body) + 4) + body
    assert (sm.major, sm.minor) == (3, 0)
    sm32 = m.StartupMessage({"user": "alice", "_pq_.test_option": "on"}, protocol=196610)
    decoded = decode_startup_packet(split_startup(sm32.encode()))
    assert decoded == sm32
    assert (decoded.major, decoded.minor) == (3, 2)
    assert decoded.parameters["_pq_.test_option"] == "on"
    assert list(decoded.parameters) == ["user", "_pq_.test_option"]  # order kept


def test_startup_message_empty_parameters():
    sm = m.StartupMessage({})
    assert sm.encode() == b"\x00\x00\x00\x09\x00\x03\x00\x00\x00"
    assert decode_startup_packet(sm.encode()[4:]) == sm


def test_ssl_gss_cancel_layout():
    assert m.SSLRequest().encode() == b"\x00\x00\x00\x08\x04\xd2\x16\x2f"
    assert m.GSSENCRequest().encode() == b"\x00\x00\x00\x08\x04\xd2\x16\x30"
    assert decode_startup_packet(b"\x04\xd2\x16\x2f") == m.SSLRequest()
    assert decode_startup_packet(b"\x04\xd2\x16\x30") == m.GSSENCRequest()
    c4 = m.CancelRequest(1234, b"\x00\x01\x02\x03")
    assert c4.encode() == b"\x00\x00\x00\x10\x04\xd2\x16\x2e\x00\x00\x04\xd2\x00\x01\x02\x03"
    c32 = m.CancelRequest(-5, bytes(range(32)))
    assert len(c32.encode()) == 4 + 4 + 4 + 32
    assert decode_startup_packet(c32.encode()[4:]) == c32


@pytest.mark.parametrize("key_len", [0, 3, 257])
def test_cancel_request_bad_key_length(key_len):
    body = struct.pack("!ii", m.CANCEL_REQUEST_CODE, 1) + b"k" * key_len
    with pytest.raises(ProtocolError):
        decode_startup_packet(body)
    with pytest.raises(ProtocolError):
        decode_backend(b"K", struct.pack("!i", 1) + b"k" * key_len)


@pytest.mark.parametrize("body", [b"\x04\xd2\x16\x2f\x00", b"\x04\xd2\x16\x30\x00"])
def test_ssl_gss_request_with_trailing_bytes(body):
    with pytest.raises(ProtocolError):
        decode_startup_packet(body)


@pytest.mark.parametrize("version", [0, 1 << 16, 2 << 16, 4 << 16, 1234 << 16 | 5677])
def test_unsupported_protocol_version(version):
    with pytest.raises(ProtocolError):
        decode_startup_packet(struct.pack("!i", version) + b"\x00")


def test_negotiate_protocol_version_layout():
    msg = m.NegotiateProtocolVersion(0, ("_pq_.a", "_pq_.b"))
    assert msg.encode()[5:] == b"\x00\x00\x00\x00\x00\x00\x00\x02_pq_.a\x00_pq_.b\x00"
    assert decode_backend(b"v", msg.encode()[5:]) == msg


@MODERATE
@given(INT32, TEXT, TEXT)
def test_notification_response(pid, channel, payload):
    msg = m.NotificationResponse(pid, channel, payload)
    assert decode_backend(*split_frame(msg.encode())) == msg


# --------------------------------------------------------------------------
# wire-first: bytes -> message -> the same bytes
# --------------------------------------------------------------------------

_SAMPLE_BODIES = st.binary(max_size=40)


@MODERATE
@given(st.sampled_from(sorted(m.FRONTEND)), _SAMPLE_BODIES)
def test_frontend_bytes_roundtrip(tag, body):
    """Whatever a frontend body decodes to re-encodes to the very same bytes."""
    try:
        msg = decode_frontend(tag, body)
    except ProtocolError:
        return
    assert msg.encode() == m.frame(tag, body)


@MODERATE
@given(st.sampled_from(sorted(set(m.BACKEND) | {b"R"})), _SAMPLE_BODIES)
def test_backend_bytes_roundtrip(tag, body):
    try:
        msg = decode_backend(tag, body)
    except ProtocolError:
        return
    assert msg.encode() == m.frame(tag, body)


@MODERATE
@given(st.binary(max_size=60))
def test_error_fields_bytes_roundtrip(raw):
    """Any NUL-separated field list (including non-ASCII field codes and
    non-UTF-8 values) re-encodes byte for byte."""
    body = raw + b"\x00\x00"
    try:
        msg = decode_backend(b"E", body)
    except ProtocolError:
        return
    assert msg.encode() == m.frame(b"E", body)
