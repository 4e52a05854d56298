"""Hypothesis strategies for every message class of pgjit.protocol.messages.

``FRONTEND_STRATEGIES`` / ``BACKEND_STRATEGIES`` / ``STARTUP_STRATEGIES`` /
``P_VIEW_STRATEGIES`` map each message class to a strategy producing instances
of it; test_roundtrip.py checks that together they cover every message class
the codec defines.
"""

from __future__ import annotations

from hypothesis import strategies as st

from pgjit.protocol import messages as m

INT16 = st.integers(-(2**15), 2**15 - 1)
INT32 = st.integers(-(2**31), 2**31 - 1)
UINT32 = st.integers(0, 2**32 - 1)
BYTE = st.integers(0, 255)


def _wire_str(raw: bytes) -> str:
    """What the codec's Reader makes of a NUL-free byte string."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("utf-8", "surrogateescape")


# Text as Python code would build it (no NUL, no lone surrogates) ...
_py_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=24)
# ... and text as the codec decodes it from arbitrary (non-UTF-8) client bytes.
_wire_text = st.binary(max_size=24).map(lambda b: b.replace(b"\x00", b"")).map(_wire_str)
TEXT = st.one_of(_py_text, _wire_text)
NONEMPTY_TEXT = TEXT.filter(bool)
SMALL_BYTES = st.binary(max_size=64)
NULLABLE_BYTES = st.one_of(st.none(), SMALL_BYTES)


def tuples(elem, max_size: int = 8):
    return st.lists(elem, max_size=max_size).map(tuple)


KIND = st.sampled_from([b"S", b"P"])

# --------------------------------------------------------------------------
# startup phase
# --------------------------------------------------------------------------

_param_key = st.one_of(
    st.sampled_from(["user", "database", "application_name", "options", "replication", "client_encoding"]),
    NONEMPTY_TEXT.map(lambda s: "_pq_." + s),
    NONEMPTY_TEXT,
)
STARTUP_STRATEGIES = {
    m.StartupMessage: st.builds(
        m.StartupMessage,
        st.dictionaries(_param_key, TEXT, max_size=6),
        st.one_of(
            st.sampled_from([m.PROTOCOL_3_0, 196610]),  # 3.0 and 3.2
            st.integers(0, 0xFFFF).map(lambda minor: (3 << 16) | minor),
        ),
    ),
    m.SSLRequest: st.just(m.SSLRequest()),
    m.GSSENCRequest: st.just(m.GSSENCRequest()),
    m.CancelRequest: st.builds(
        m.CancelRequest,
        INT32,
        st.one_of(st.binary(min_size=4, max_size=4), st.binary(min_size=32, max_size=32), st.binary(min_size=4, max_size=256)),
    ),
}

# --------------------------------------------------------------------------
# frontend
# --------------------------------------------------------------------------

FRONTEND_STRATEGIES = {
    m.PasswordMessage: st.builds(m.PasswordMessage, SMALL_BYTES),
    m.Query: st.builds(m.Query, TEXT),
    m.Parse: st.builds(m.Parse, TEXT, TEXT, tuples(UINT32)),
    m.Bind: st.builds(m.Bind, TEXT, TEXT, tuples(INT16), tuples(NULLABLE_BYTES), tuples(INT16)),
    m.Describe: st.builds(m.Describe, KIND, TEXT),
    m.Execute: st.builds(m.Execute, TEXT, INT32),
    m.Close: st.builds(m.Close, KIND, TEXT),
    m.Sync: st.just(m.Sync()),
    m.Flush: st.just(m.Flush()),
    m.Terminate: st.just(m.Terminate()),
    m.CopyData: st.builds(m.CopyData, SMALL_BYTES),
    m.CopyDone: st.just(m.CopyDone()),
    m.CopyFail: st.builds(m.CopyFail, TEXT),
    m.FunctionCall: st.builds(m.FunctionCall, UINT32, tuples(INT16), tuples(NULLABLE_BYTES), INT16),
}

# Typed views of the body of a 'p' message.
P_VIEW_STRATEGIES = {
    m.SASLInitialResponse: st.builds(
        m.SASLInitialResponse,
        st.one_of(st.sampled_from(["SCRAM-SHA-256", "SCRAM-SHA-256-PLUS"]), TEXT),
        NULLABLE_BYTES,
    ),
    m.SASLResponse: st.builds(m.SASLResponse, SMALL_BYTES),
}

# --------------------------------------------------------------------------
# backend
# --------------------------------------------------------------------------

AUTHENTICATION_STRATEGIES = {
    m.AuthenticationOk: st.just(m.AuthenticationOk()),
    m.AuthenticationKerberosV5: st.just(m.AuthenticationKerberosV5()),
    m.AuthenticationCleartextPassword: st.just(m.AuthenticationCleartextPassword()),
    m.AuthenticationMD5Password: st.builds(m.AuthenticationMD5Password, st.binary(min_size=4, max_size=4)),
    m.AuthenticationGSS: st.just(m.AuthenticationGSS()),
    m.AuthenticationGSSContinue: st.builds(m.AuthenticationGSSContinue, SMALL_BYTES),
    m.AuthenticationSSPI: st.just(m.AuthenticationSSPI()),
    m.AuthenticationSASL: st.builds(
        m.AuthenticationSASL,
        st.one_of(
            st.just(("SCRAM-SHA-256-PLUS", "SCRAM-SHA-256")),
            tuples(NONEMPTY_TEXT, max_size=4),
        ),
    ),
    m.AuthenticationSASLContinue: st.builds(m.AuthenticationSASLContinue, SMALL_BYTES),
    m.AuthenticationSASLFinal: st.builds(m.AuthenticationSASLFinal, SMALL_BYTES),
}

FIELD_CODE = st.one_of(st.sampled_from(sorted(m.FIELD_NAMES)), st.integers(1, 255).map(chr))
FIELDS = tuples(st.tuples(FIELD_CODE, TEXT), max_size=10)

FIELD_DESCRIPTION = st.builds(m.FieldDescription, TEXT, UINT32, INT16, UINT32, INT16, INT32, INT16)

BACKEND_STRATEGIES = {
    **AUTHENTICATION_STRATEGIES,
    m.BackendKeyData: st.builds(
        m.BackendKeyData,
        INT32,
        st.one_of(st.binary(min_size=4, max_size=4), st.binary(min_size=32, max_size=32), st.binary(min_size=4, max_size=256)),
    ),
    m.BindComplete: st.just(m.BindComplete()),
    m.CloseComplete: st.just(m.CloseComplete()),
    m.CommandComplete: st.builds(m.CommandComplete, TEXT),
    m.CopyData: st.builds(m.CopyData, SMALL_BYTES),
    m.CopyDone: st.just(m.CopyDone()),
    m.CopyInResponse: st.builds(m.CopyInResponse, BYTE, tuples(INT16)),
    m.CopyOutResponse: st.builds(m.CopyOutResponse, BYTE, tuples(INT16)),
    m.CopyBothResponse: st.builds(m.CopyBothResponse, BYTE, tuples(INT16)),
    m.DataRow: st.builds(m.DataRow, tuples(NULLABLE_BYTES, max_size=12)),
    m.EmptyQueryResponse: st.just(m.EmptyQueryResponse()),
    m.ErrorResponse: st.builds(m.ErrorResponse, FIELDS),
    m.NoticeResponse: st.builds(m.NoticeResponse, FIELDS),
    m.FunctionCallResponse: st.builds(m.FunctionCallResponse, NULLABLE_BYTES),
    m.NegotiateProtocolVersion: st.builds(
        m.NegotiateProtocolVersion, INT32, tuples(st.one_of(NONEMPTY_TEXT.map(lambda s: "_pq_." + s), TEXT))
    ),
    m.NoData: st.just(m.NoData()),
    m.NotificationResponse: st.builds(m.NotificationResponse, INT32, TEXT, TEXT),
    m.ParameterDescription: st.builds(m.ParameterDescription, tuples(UINT32)),
    m.ParameterStatus: st.builds(m.ParameterStatus, TEXT, TEXT),
    m.ParseComplete: st.just(m.ParseComplete()),
    m.PortalSuspended: st.just(m.PortalSuspended()),
    m.ReadyForQuery: st.builds(m.ReadyForQuery, st.sampled_from([b"I", b"T", b"E"])),
    m.RowDescription: st.builds(m.RowDescription, tuples(FIELD_DESCRIPTION)),
}

ANY_FRONTEND = st.one_of(*FRONTEND_STRATEGIES.values())
ANY_BACKEND = st.one_of(*BACKEND_STRATEGIES.values())
ANY_STARTUP = st.one_of(*STARTUP_STRATEGIES.values())


def split_frame(wire: bytes) -> tuple[bytes, bytes]:
    """(tag, body) of one encoded tagged message, checking its length word."""
    assert int.from_bytes(wire[1:5], "big") == len(wire) - 1
    return wire[:1], wire[5:]


def split_startup(wire: bytes) -> bytes:
    """Body of one encoded startup packet, checking its length word."""
    assert int.from_bytes(wire[:4], "big") == len(wire)
    return wire[4:]
