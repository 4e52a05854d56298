"""PostgreSQL protocol 3.0 messages, one frozen dataclass each.

Names follow the PostgreSQL documentation ("Message Formats"). Every message
class has ``encode() -> bytes`` (the whole frame, tag and length included) and
``decode(body) -> message`` (the body after tag and length). Frontend and
backend messages live in separate decoder tables because a tag means different
things in each direction (``D`` is Describe from the client, DataRow from the
server).

This module is sans-IO: no sockets, no trio.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import ClassVar

from pgjit.protocol.errors import ProtocolError

_I16 = struct.Struct("!h")
_U16 = struct.Struct("!H")
_I32 = struct.Struct("!i")
_U32 = struct.Struct("!I")
_HDR = struct.Struct("!cI")

PROTOCOL_3_0 = 196608  # 3 << 16
SSL_REQUEST_CODE = 80877103
GSSENC_REQUEST_CODE = 80877104
CANCEL_REQUEST_CODE = 80877102


class Reader:
    """Reads fields from one message body; every short read is a ProtocolError."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes | bytearray | memoryview) -> None:
        self.data = bytes(data)
        self.pos = 0

    def _take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise ProtocolError("message is shorter than its fields")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def byte(self) -> int:
        return self._take(1)[0]

    def int16(self) -> int:
        return _I16.unpack(self._take(2))[0]

    def uint16(self) -> int:
        return _U16.unpack(self._take(2))[0]

    def int32(self) -> int:
        return _I32.unpack(self._take(4))[0]

    def cstr(self) -> str:
        end = self.data.find(b"\x00", self.pos)
        if end < 0:
            raise ProtocolError("string field is not NUL-terminated")
        raw = self.data[self.pos : end]
        self.pos = end + 1
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            # Client encodings other than UTF-8 exist; keep the bytes lossless.
            return raw.decode("utf-8", "surrogateescape")

    def take(self, n: int) -> bytes:
        return self._take(n)

    def rest(self) -> bytes:
        chunk = self.data[self.pos :]
        self.pos = len(self.data)
        return chunk

    def nullable_bytes(self) -> bytes | None:
        n = self.int32()
        if n == -1:
            return None
        if n < -1:
            raise ProtocolError("negative field length")
        return self._take(n)

    def end(self) -> None:
        if self.pos != len(self.data):
            raise ProtocolError("trailing bytes after message fields")


def _cstr(s: str) -> bytes:
    b = s.encode("utf-8", "surrogateescape")
    if b"\x00" in b:
        raise ValueError("string contains NUL")
    return b + b"\x00"


def frame(tag: bytes, body: bytes) -> bytes:
    return _HDR.pack(tag, len(body) + 4) + body


def _nullable(v: bytes | None) -> bytes:
    if v is None:
        return _I32.pack(-1)
    return _I32.pack(len(v)) + v


class Message:
    """Base class: ``tag`` is the one-byte type, ``None`` for startup-phase packets."""

    __slots__ = ()
    tag: ClassVar[bytes | None] = None

    def body(self) -> bytes:  # pragma: no cover - overridden
        return b""

    def encode(self) -> bytes:
        assert self.tag is not None
        return frame(self.tag, self.body())

    @classmethod
    def decode(cls, body: bytes) -> "Message":
        r = Reader(body)
        r.end()
        return cls()


# --------------------------------------------------------------------------
# Startup-phase packets (no tag byte)
# --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StartupMessage(Message):
    parameters: dict[str, str]
    protocol: int = PROTOCOL_3_0

    def body(self) -> bytes:
        out = [_I32.pack(self.protocol)]
        for k, v in self.parameters.items():
            out.append(_cstr(k))
            out.append(_cstr(v))
        out.append(b"\x00")
        return b"".join(out)

    def encode(self) -> bytes:
        b = self.body()
        return _I32.pack(len(b) + 4) + b

    @classmethod
    def decode(cls, body: bytes) -> "StartupMessage":
        r = Reader(body)
        proto = r.int32()
        params: dict[str, str] = {}
        while True:
            if r.pos >= len(r.data):
                raise ProtocolError("startup packet is missing its terminator")
            if r.data[r.pos] == 0:
                r.pos += 1
                break
            key = r.cstr()
            params[key] = r.cstr()
        r.end()
        return cls(params, proto)

    @property
    def major(self) -> int:
        return self.protocol >> 16

    @property
    def minor(self) -> int:
        return self.protocol & 0xFFFF


@dataclass(frozen=True, slots=True)
class SSLRequest(Message):
    def encode(self) -> bytes:
        return _I32.pack(8) + _I32.pack(SSL_REQUEST_CODE)


@dataclass(frozen=True, slots=True)
class GSSENCRequest(Message):
    def encode(self) -> bytes:
        return _I32.pack(8) + _I32.pack(GSSENC_REQUEST_CODE)


@dataclass(frozen=True, slots=True)
class CancelRequest(Message):
    process_id: int
    secret_key: bytes  # 4 bytes in protocol 3.0, up to 256 in 3.2

    def encode(self) -> bytes:
        body = _I32.pack(CANCEL_REQUEST_CODE) + _I32.pack(self.process_id) + self.secret_key
        return _I32.pack(len(body) + 4) + body

    @classmethod
    def decode(cls, body: bytes) -> "CancelRequest":
        r = Reader(body)
        if r.int32() != CANCEL_REQUEST_CODE:
            raise ProtocolError("not a CancelRequest")
        pid = r.int32()
        key = r.rest()
        if not 4 <= len(key) <= 256:
            raise ProtocolError("CancelRequest key has a bad length")
        return cls(pid, key)


def decode_startup_packet(body: bytes) -> Message:
    """Decode the body (after the length word) of a startup-phase packet."""
    if len(body) < 4:
        raise ProtocolError("startup packet too short")
    code = _I32.unpack_from(body)[0]
    if code == SSL_REQUEST_CODE:
        if len(body) != 4:
            raise ProtocolError("SSLRequest has trailing bytes")
        return SSLRequest()
    if code == GSSENC_REQUEST_CODE:
        if len(body) != 4:
            raise ProtocolError("GSSENCRequest has trailing bytes")
        return GSSENCRequest()
    if code == CANCEL_REQUEST_CODE:
        return CancelRequest.decode(body)
    if code >> 16 == 3:
        return StartupMessage.decode(body)
    raise ProtocolError(f"unsupported frontend protocol {code >> 16}.{code & 0xFFFF}")


# --------------------------------------------------------------------------
# Frontend messages
# --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PasswordMessage(Message):
    """'p' carries a password, a SASL response or a GSS response; the meaning
    depends on the authentication exchange, so the raw body is kept and the
    typed views below decode it once the exchange is known."""

    tag: ClassVar[bytes] = b"p"
    data: bytes

    def body(self) -> bytes:
        return self.data

    @classmethod
    def decode(cls, body: bytes) -> "PasswordMessage":
        return cls(bytes(body))

    @property
    def password(self) -> str:
        r = Reader(self.data)
        s = r.cstr()
        r.end()
        return s


@dataclass(frozen=True, slots=True)
class SASLInitialResponse(Message):
    tag: ClassVar[bytes] = b"p"
    mechanism: str
    data: bytes | None

    def body(self) -> bytes:
        return _cstr(self.mechanism) + _nullable(self.data)

    @classmethod
    def decode(cls, body: bytes) -> "SASLInitialResponse":
        r = Reader(body)
        mech = r.cstr()
        data = r.nullable_bytes()
        r.end()
        return cls(mech, data)


@dataclass(frozen=True, slots=True)
class SASLResponse(Message):
    tag: ClassVar[bytes] = b"p"
    data: bytes

    def body(self) -> bytes:
        return self.data

    @classmethod
    def decode(cls, body: bytes) -> "SASLResponse":
        return cls(bytes(body))


@dataclass(frozen=True, slots=True)
class Query(Message):
    tag: ClassVar[bytes] = b"Q"
    query: str

    def body(self) -> bytes:
        return _cstr(self.query)

    @classmethod
    def decode(cls, body: bytes) -> "Query":
        r = Reader(body)
        q = r.cstr()
        r.end()
        return cls(q)


@dataclass(frozen=True, slots=True)
class Parse(Message):
    tag: ClassVar[bytes] = b"P"
    name: str
    query: str
    param_types: tuple[int, ...] = ()

    def body(self) -> bytes:
        return (
            _cstr(self.name)
            + _cstr(self.query)
            + _U16.pack(len(self.param_types))
            + b"".join(_U32.pack(t) for t in self.param_types)
        )

    @classmethod
    def decode(cls, body: bytes) -> "Parse":
        r = Reader(body)
        name = r.cstr()
        query = r.cstr()
        n = r.uint16()
        types = tuple(_U32.unpack(r.take(4))[0] for _ in range(n))
        r.end()
        return cls(name, query, types)


@dataclass(frozen=True, slots=True)
class Bind(Message):
    tag: ClassVar[bytes] = b"B"
    portal: str
    statement: str
    param_formats: tuple[int, ...] = ()
    params: tuple[bytes | None, ...] = ()
    result_formats: tuple[int, ...] = ()

    def body(self) -> bytes:
        out = [_cstr(self.portal), _cstr(self.statement), _U16.pack(len(self.param_formats))]
        out += [_I16.pack(f) for f in self.param_formats]
        out.append(_U16.pack(len(self.params)))
        out += [_nullable(p) for p in self.params]
        out.append(_U16.pack(len(self.result_formats)))
        out += [_I16.pack(f) for f in self.result_formats]
        return b"".join(out)

    @classmethod
    def decode(cls, body: bytes) -> "Bind":
        r = Reader(body)
        portal = r.cstr()
        stmt = r.cstr()
        pf = tuple(r.int16() for _ in range(_count(r)))
        params = tuple(r.nullable_bytes() for _ in range(_count(r)))
        rf = tuple(r.int16() for _ in range(_count(r)))
        r.end()
        return cls(portal, stmt, pf, params, rf)


def _count(r: Reader) -> int:
    # Counts are unsigned on the wire: PostgreSQL reads them with
    # pq_getmsgint(msg, 2) and libpq allows up to 65535 parameters.
    return r.uint16()


@dataclass(frozen=True, slots=True)
class Describe(Message):
    tag: ClassVar[bytes] = b"D"
    kind: bytes  # b"S" statement or b"P" portal
    name: str

    def body(self) -> bytes:
        return self.kind + _cstr(self.name)

    @classmethod
    def decode(cls, body: bytes) -> "Describe":
        r = Reader(body)
        kind = r.take(1)
        if kind not in (b"S", b"P"):
            raise ProtocolError("Describe target must be 'S' or 'P'")
        name = r.cstr()
        r.end()
        return cls(kind, name)


@dataclass(frozen=True, slots=True)
class Execute(Message):
    tag: ClassVar[bytes] = b"E"
    portal: str
    max_rows: int = 0

    def body(self) -> bytes:
        return _cstr(self.portal) + _I32.pack(self.max_rows)

    @classmethod
    def decode(cls, body: bytes) -> "Execute":
        r = Reader(body)
        portal = r.cstr()
        n = r.int32()
        r.end()
        return cls(portal, n)


@dataclass(frozen=True, slots=True)
class Close(Message):
    tag: ClassVar[bytes] = b"C"
    kind: bytes
    name: str

    def body(self) -> bytes:
        return self.kind + _cstr(self.name)

    @classmethod
    def decode(cls, body: bytes) -> "Close":
        r = Reader(body)
        kind = r.take(1)
        if kind not in (b"S", b"P"):
            raise ProtocolError("Close target must be 'S' or 'P'")
        name = r.cstr()
        r.end()
        return cls(kind, name)


@dataclass(frozen=True, slots=True)
class Sync(Message):
    tag: ClassVar[bytes] = b"S"


@dataclass(frozen=True, slots=True)
class Flush(Message):
    tag: ClassVar[bytes] = b"H"


@dataclass(frozen=True, slots=True)
class Terminate(Message):
    tag: ClassVar[bytes] = b"X"


@dataclass(frozen=True, slots=True)
class CopyData(Message):
    """Both directions."""

    tag: ClassVar[bytes] = b"d"
    data: bytes

    def body(self) -> bytes:
        return self.data

    @classmethod
    def decode(cls, body: bytes) -> "CopyData":
        return cls(bytes(body))


@dataclass(frozen=True, slots=True)
class CopyDone(Message):
    """Both directions."""

    tag: ClassVar[bytes] = b"c"


@dataclass(frozen=True, slots=True)
class CopyFail(Message):
    tag: ClassVar[bytes] = b"f"
    message: str

    def body(self) -> bytes:
        return _cstr(self.message)

    @classmethod
    def decode(cls, body: bytes) -> "CopyFail":
        r = Reader(body)
        m = r.cstr()
        r.end()
        return cls(m)


@dataclass(frozen=True, slots=True)
class FunctionCall(Message):
    tag: ClassVar[bytes] = b"F"
    function_oid: int
    arg_formats: tuple[int, ...] = ()
    args: tuple[bytes | None, ...] = ()
    result_format: int = 0

    def body(self) -> bytes:
        out = [_U32.pack(self.function_oid), _U16.pack(len(self.arg_formats))]
        out += [_I16.pack(f) for f in self.arg_formats]
        out.append(_U16.pack(len(self.args)))
        out += [_nullable(a) for a in self.args]
        out.append(_I16.pack(self.result_format))
        return b"".join(out)

    @classmethod
    def decode(cls, body: bytes) -> "FunctionCall":
        r = Reader(body)
        oid = _U32.unpack(r.take(4))[0]
        af = tuple(r.int16() for _ in range(_count(r)))
        args = tuple(r.nullable_bytes() for _ in range(_count(r)))
        rf = r.int16()
        r.end()
        return cls(oid, af, args, rf)


FRONTEND: dict[bytes, type[Message]] = {
    m.tag: m  # type: ignore[misc]
    for m in (
        PasswordMessage,
        Query,
        Parse,
        Bind,
        Describe,
        Execute,
        Close,
        Sync,
        Flush,
        Terminate,
        CopyData,
        CopyDone,
        CopyFail,
        FunctionCall,
    )
}


def decode_frontend(tag: bytes, body: bytes) -> Message:
    cls = FRONTEND.get(tag)
    if cls is None:
        raise ProtocolError(f"unknown frontend message type {tag!r}")
    return cls.decode(body)


# --------------------------------------------------------------------------
# Backend messages
# --------------------------------------------------------------------------


class Authentication(Message):
    """'R': the subtype code selects the class."""

    __slots__ = ()
    tag: ClassVar[bytes] = b"R"
    code: ClassVar[int] = -1

    def payload(self) -> bytes:
        return b""

    def body(self) -> bytes:
        return _I32.pack(self.code) + self.payload()


@dataclass(frozen=True, slots=True)
class AuthenticationOk(Authentication):
    code: ClassVar[int] = 0


@dataclass(frozen=True, slots=True)
class AuthenticationKerberosV5(Authentication):
    code: ClassVar[int] = 2


@dataclass(frozen=True, slots=True)
class AuthenticationCleartextPassword(Authentication):
    code: ClassVar[int] = 3


@dataclass(frozen=True, slots=True)
class AuthenticationMD5Password(Authentication):
    code: ClassVar[int] = 5
    salt: bytes

    def payload(self) -> bytes:
        return self.salt


@dataclass(frozen=True, slots=True)
class AuthenticationGSS(Authentication):
    code: ClassVar[int] = 7


@dataclass(frozen=True, slots=True)
class AuthenticationGSSContinue(Authentication):
    code: ClassVar[int] = 8
    data: bytes

    def payload(self) -> bytes:
        return self.data


@dataclass(frozen=True, slots=True)
class AuthenticationSSPI(Authentication):
    code: ClassVar[int] = 9


@dataclass(frozen=True, slots=True)
class AuthenticationSASL(Authentication):
    code: ClassVar[int] = 10
    mechanisms: tuple[str, ...]

    def payload(self) -> bytes:
        return b"".join(_cstr(m) for m in self.mechanisms) + b"\x00"


@dataclass(frozen=True, slots=True)
class AuthenticationSASLContinue(Authentication):
    code: ClassVar[int] = 11
    data: bytes

    def payload(self) -> bytes:
        return self.data


@dataclass(frozen=True, slots=True)
class AuthenticationSASLFinal(Authentication):
    code: ClassVar[int] = 12
    data: bytes

    def payload(self) -> bytes:
        return self.data


def _decode_authentication(body: bytes) -> Authentication:
    r = Reader(body)
    code = r.int32()
    if code in (0, 2, 3, 7, 9):
        r.end()
        return {
            0: AuthenticationOk,
            2: AuthenticationKerberosV5,
            3: AuthenticationCleartextPassword,
            7: AuthenticationGSS,
            9: AuthenticationSSPI,
        }[code]()
    if code == 5:
        salt = r.take(4)
        r.end()
        return AuthenticationMD5Password(salt)
    if code == 8:
        return AuthenticationGSSContinue(r.rest())
    if code == 10:
        mechs = []
        while True:
            if r.pos >= len(r.data):
                raise ProtocolError("SASL mechanism list is not terminated")
            if r.data[r.pos] == 0:
                r.pos += 1
                break
            mechs.append(r.cstr())
        r.end()
        return AuthenticationSASL(tuple(mechs))
    if code == 11:
        return AuthenticationSASLContinue(r.rest())
    if code == 12:
        return AuthenticationSASLFinal(r.rest())
    raise ProtocolError(f"unknown authentication request {code}")


@dataclass(frozen=True, slots=True)
class BackendKeyData(Message):
    tag: ClassVar[bytes] = b"K"
    process_id: int
    secret_key: bytes

    def body(self) -> bytes:
        return _I32.pack(self.process_id) + self.secret_key

    @classmethod
    def decode(cls, body: bytes) -> "BackendKeyData":
        r = Reader(body)
        pid = r.int32()
        key = r.rest()
        if not 4 <= len(key) <= 256:
            raise ProtocolError("BackendKeyData key has a bad length")
        return cls(pid, key)


@dataclass(frozen=True, slots=True)
class BindComplete(Message):
    tag: ClassVar[bytes] = b"2"


@dataclass(frozen=True, slots=True)
class CloseComplete(Message):
    tag: ClassVar[bytes] = b"3"


@dataclass(frozen=True, slots=True)
class CommandComplete(Message):
    tag: ClassVar[bytes] = b"C"
    command_tag: str

    def body(self) -> bytes:
        return _cstr(self.command_tag)

    @classmethod
    def decode(cls, body: bytes) -> "CommandComplete":
        r = Reader(body)
        t = r.cstr()
        r.end()
        return cls(t)


@dataclass(frozen=True, slots=True)
class _CopyResponse(Message):
    overall_format: int
    column_formats: tuple[int, ...]

    def body(self) -> bytes:
        return (
            bytes([self.overall_format])
            + _U16.pack(len(self.column_formats))
            + b"".join(_I16.pack(f) for f in self.column_formats)
        )

    @classmethod
    def decode(cls, body: bytes):  # type: ignore[override]
        r = Reader(body)
        fmt = r.byte()
        cols = tuple(r.int16() for _ in range(_count(r)))
        r.end()
        return cls(fmt, cols)


@dataclass(frozen=True, slots=True)
class CopyInResponse(_CopyResponse):
    tag: ClassVar[bytes] = b"G"


@dataclass(frozen=True, slots=True)
class CopyOutResponse(_CopyResponse):
    tag: ClassVar[bytes] = b"H"


@dataclass(frozen=True, slots=True)
class CopyBothResponse(_CopyResponse):
    tag: ClassVar[bytes] = b"W"


@dataclass(frozen=True, slots=True)
class DataRow(Message):
    tag: ClassVar[bytes] = b"D"
    values: tuple[bytes | None, ...]

    def body(self) -> bytes:
        return _U16.pack(len(self.values)) + b"".join(_nullable(v) for v in self.values)

    @classmethod
    def decode(cls, body: bytes) -> "DataRow":
        r = Reader(body)
        vals = tuple(r.nullable_bytes() for _ in range(_count(r)))
        r.end()
        return cls(vals)


@dataclass(frozen=True, slots=True)
class EmptyQueryResponse(Message):
    tag: ClassVar[bytes] = b"I"


# Field codes of ErrorResponse / NoticeResponse.
FIELD_NAMES = {
    "S": "severity_local",
    "V": "severity",
    "C": "sqlstate",
    "M": "message",
    "D": "detail",
    "H": "hint",
    "P": "position",
    "p": "internal_position",
    "q": "internal_query",
    "W": "where",
    "s": "schema",
    "t": "table",
    "c": "column",
    "d": "data_type",
    "n": "constraint",
    "F": "file",
    "L": "line",
    "R": "routine",
}


@dataclass(frozen=True, slots=True)
class _Fields(Message):
    fields: tuple[tuple[str, str], ...]

    def body(self) -> bytes:
        return b"".join(code.encode("latin-1") + _cstr(v) for code, v in self.fields) + b"\x00"

    @classmethod
    def decode(cls, body: bytes):  # type: ignore[override]
        r = Reader(body)
        out = []
        while True:
            code = r.byte()
            if code == 0:
                break
            out.append((chr(code), r.cstr()))
        r.end()
        return cls(tuple(out))

    def get(self, code: str, default: str | None = None) -> str | None:
        for c, v in self.fields:
            if c == code:
                return v
        return default

    @property
    def sqlstate(self) -> str | None:
        return self.get("C")

    @property
    def message(self) -> str | None:
        return self.get("M")

    @property
    def severity(self) -> str | None:
        return self.get("V") or self.get("S")

    @classmethod
    def build(
        cls,
        severity: str,
        sqlstate: str,
        message: str,
        detail: str | None = None,
        hint: str | None = None,
        position: int | None = None,
    ):
        fields = [("S", severity), ("V", severity), ("C", sqlstate), ("M", message)]
        if detail:
            fields.append(("D", detail))
        if hint:
            fields.append(("H", hint))
        if position:
            fields.append(("P", str(position)))
        return cls(tuple(fields))


@dataclass(frozen=True, slots=True)
class ErrorResponse(_Fields):
    tag: ClassVar[bytes] = b"E"

    @classmethod
    def from_error(cls, err) -> "ErrorResponse":
        """The one place a :class:`pgjit.errors.PgjitError` becomes wire bytes."""
        return cls.build(err.severity, err.sqlstate, err.message, err.detail, err.hint, getattr(err, "position", None))


@dataclass(frozen=True, slots=True)
class NoticeResponse(_Fields):
    tag: ClassVar[bytes] = b"N"


@dataclass(frozen=True, slots=True)
class FunctionCallResponse(Message):
    tag: ClassVar[bytes] = b"V"
    result: bytes | None

    def body(self) -> bytes:
        return _nullable(self.result)

    @classmethod
    def decode(cls, body: bytes) -> "FunctionCallResponse":
        r = Reader(body)
        v = r.nullable_bytes()
        r.end()
        return cls(v)


@dataclass(frozen=True, slots=True)
class NegotiateProtocolVersion(Message):
    tag: ClassVar[bytes] = b"v"
    newest_minor: int
    unrecognized: tuple[str, ...] = ()

    def body(self) -> bytes:
        return (
            _I32.pack(self.newest_minor)
            + _I32.pack(len(self.unrecognized))
            + b"".join(_cstr(o) for o in self.unrecognized)
        )

    @classmethod
    def decode(cls, body: bytes) -> "NegotiateProtocolVersion":
        r = Reader(body)
        minor = r.int32()
        n = r.int32()
        if n < 0:
            raise ProtocolError("negative option count")
        opts = tuple(r.cstr() for _ in range(n))
        r.end()
        return cls(minor, opts)


@dataclass(frozen=True, slots=True)
class NoData(Message):
    tag: ClassVar[bytes] = b"n"


@dataclass(frozen=True, slots=True)
class NotificationResponse(Message):
    tag: ClassVar[bytes] = b"A"
    process_id: int
    channel: str
    payload: str

    def body(self) -> bytes:
        return _I32.pack(self.process_id) + _cstr(self.channel) + _cstr(self.payload)

    @classmethod
    def decode(cls, body: bytes) -> "NotificationResponse":
        r = Reader(body)
        pid = r.int32()
        ch = r.cstr()
        pl = r.cstr()
        r.end()
        return cls(pid, ch, pl)


@dataclass(frozen=True, slots=True)
class ParameterDescription(Message):
    tag: ClassVar[bytes] = b"t"
    type_oids: tuple[int, ...]

    def body(self) -> bytes:
        return _U16.pack(len(self.type_oids)) + b"".join(_U32.pack(t) for t in self.type_oids)

    @classmethod
    def decode(cls, body: bytes) -> "ParameterDescription":
        r = Reader(body)
        n = r.uint16()
        oids = tuple(_U32.unpack(r.take(4))[0] for _ in range(n))
        r.end()
        return cls(oids)


@dataclass(frozen=True, slots=True)
class ParameterStatus(Message):
    tag: ClassVar[bytes] = b"S"
    name: str
    value: str

    def body(self) -> bytes:
        return _cstr(self.name) + _cstr(self.value)

    @classmethod
    def decode(cls, body: bytes) -> "ParameterStatus":
        r = Reader(body)
        n = r.cstr()
        v = r.cstr()
        r.end()
        return cls(n, v)


@dataclass(frozen=True, slots=True)
class ParseComplete(Message):
    tag: ClassVar[bytes] = b"1"


@dataclass(frozen=True, slots=True)
class PortalSuspended(Message):
    tag: ClassVar[bytes] = b"s"


@dataclass(frozen=True, slots=True)
class ReadyForQuery(Message):
    tag: ClassVar[bytes] = b"Z"
    status: bytes  # b"I" idle, b"T" in transaction, b"E" failed transaction

    def body(self) -> bytes:
        return self.status

    @classmethod
    def decode(cls, body: bytes) -> "ReadyForQuery":
        r = Reader(body)
        s = r.take(1)
        if s not in (b"I", b"T", b"E"):
            raise ProtocolError("bad transaction status in ReadyForQuery")
        r.end()
        return cls(s)


@dataclass(frozen=True, slots=True)
class FieldDescription:
    name: str
    table_oid: int = 0
    column: int = 0
    type_oid: int = 25
    type_size: int = -1
    type_modifier: int = -1
    format: int = 0


_FIELD = struct.Struct("!IhIhih")


@dataclass(frozen=True, slots=True)
class RowDescription(Message):
    tag: ClassVar[bytes] = b"T"
    fields: tuple[FieldDescription, ...] = field(default_factory=tuple)

    def body(self) -> bytes:
        out = [_U16.pack(len(self.fields))]
        for f in self.fields:
            out.append(_cstr(f.name))
            out.append(
                _FIELD.pack(f.table_oid, f.column, f.type_oid, f.type_size, f.type_modifier, f.format)
            )
        return b"".join(out)

    @classmethod
    def decode(cls, body: bytes) -> "RowDescription":
        r = Reader(body)
        n = r.uint16()
        out = []
        for _ in range(n):
            name = r.cstr()
            vals = _FIELD.unpack(r.take(_FIELD.size))
            out.append(FieldDescription(name, *vals))
        r.end()
        return cls(tuple(out))


BACKEND: dict[bytes, type[Message]] = {
    m.tag: m  # type: ignore[misc]
    for m in (
        BackendKeyData,
        BindComplete,
        CloseComplete,
        CommandComplete,
        CopyData,
        CopyDone,
        CopyInResponse,
        CopyOutResponse,
        CopyBothResponse,
        DataRow,
        EmptyQueryResponse,
        ErrorResponse,
        NoticeResponse,
        FunctionCallResponse,
        NegotiateProtocolVersion,
        NoData,
        NotificationResponse,
        ParameterDescription,
        ParameterStatus,
        ParseComplete,
        PortalSuspended,
        ReadyForQuery,
        RowDescription,
    )
}


def decode_backend(tag: bytes, body: bytes) -> Message:
    if tag == b"R":
        return _decode_authentication(body)
    cls = BACKEND.get(tag)
    if cls is None:
        raise ProtocolError(f"unknown backend message type {tag!r}")
    return cls.decode(body)
