"""The result filter (pgjit.masking.wire) on replayed server messages:
RowDescription origins and lineage, DataRow in text and binary, the
extended protocol's Describe/Bind/Execute, COPY text and csv, error and
notice scrubbing, refusals' own errors left alone."""

from __future__ import annotations

from pgjit.masking.rules import MaskProfile, parse_rules
from pgjit.masking.wire import Masker
from pgjit.protocol import messages as m
from tests.masking.test_lineage import CATALOG

RULES = parse_rules([
    {"name": "pii", "columns": ["public.customers.email", "public.customers.ssn"], "function": "partial", "keep": 4},
    {"name": "content", "detect": ["email"], "text": "[e]"},
])


def masker() -> Masker:
    return Masker(MaskProfile(RULES, b"k"), lambda: CATALOG)


def fd(name, table=0, col=0, type_oid=25, fmt=0):
    return m.FieldDescription(name, table, col, type_oid, -1, -1, fmt)


def frames(*msgs) -> bytes:
    return b"".join(x.encode() for x in msgs)


def decode_rows(data: bytes) -> list[tuple]:
    out, pos = [], 0
    while pos < len(data):
        tag = data[pos:pos + 1]
        ln = int.from_bytes(data[pos + 1:pos + 5], "big")
        if tag == b"D":
            out.append(m.DataRow.decode(data[pos + 5:pos + 1 + ln]).values)
        pos += 1 + ln
    return out


def test_text_row_masked_by_origin_and_lineage():
    k = masker()
    k.on_query(b"SELECT id, email, (SELECT ssn FROM customers LIMIT 1), name FROM customers")
    out = k.server_bytes(frames(
        m.RowDescription((fd("id", 100, 1, 23), fd("email", 100, 3), fd("ssn", 0, 0), fd("name", 100, 2))),
        m.DataRow((b"1", b"ann@example.org", b"123-45-6789", b"mail ann@example.org")),
        m.DataRow((b"2", None, b"987-65-4321", b"Bob")),
        m.CommandComplete("SELECT 2"), m.ReadyForQuery(b"I")))
    rows = decode_rows(out)
    assert rows == [(b"1", b"***********.org", b"*******6789", b"mail [e]"), (b"2", None, b"*******4321", b"Bob")]
    assert b"ann@example.org" not in out


def test_binary_non_text_type_becomes_null_and_jsonb_stays_valid():
    k = masker()
    k.on_query(b"SELECT email FROM customers")
    out = k.server_bytes(frames(
        m.RowDescription((fd("email", 100, 3, 3802, 1),)), m.DataRow((b'\x01"ann@example.org"',)),
        m.CommandComplete("SELECT 1"), m.ReadyForQuery(b"I")))
    assert decode_rows(out) == [(b'\x01"***********.org"',)]
    k.on_query(b"SELECT ssn FROM customers")
    out = k.server_bytes(frames(
        m.RowDescription((fd("ssn", 100, 4, 20, 1),)), m.DataRow((b"\x00" * 7 + b"\x05",)),
        m.CommandComplete("SELECT 1"), m.ReadyForQuery(b"I")))
    assert decode_rows(out) == [(None,)]


def test_extended_protocol_describe_statement_then_binary_bind():
    k = masker()
    k.on_parse("s1", b"SELECT id, email FROM customers WHERE id = $1")
    k.on_describe("S", "s1")
    k.on_sync()
    k.server_bytes(frames(m.ParseComplete(), m.ParameterDescription((23,)),
                          m.RowDescription((fd("id", 100, 1, 23), fd("email", 100, 3))), m.ReadyForQuery(b"I")))
    bind = m.Bind("", "s1", (), (b"1",), (1, 1)).encode()[5:]
    k.on_bind(bind)
    k.on_execute("")
    k.on_sync()
    out = k.server_bytes(frames(m.BindComplete(), m.DataRow((b"\x00\x00\x00\x01", b"ann@example.org")),
                                m.CommandComplete("SELECT 1"), m.ReadyForQuery(b"I")))
    assert decode_rows(out) == [(b"\x00\x00\x00\x01", b"***********.org")]


def test_copy_csv_with_header_and_text():
    k = masker()
    k.on_query(b"COPY customers (id, email) TO STDOUT (FORMAT csv, HEADER)")
    out = k.server_bytes(frames(
        m.CopyOutResponse(0, (0, 0)), m.CopyData(b"id,email\n"), m.CopyData(b'1,"ann@example.org"\n'),
        m.CopyData(b"2,\n"), m.CopyDone(), m.CommandComplete("COPY 2"), m.ReadyForQuery(b"I")))
    assert b"ann@example.org" not in out and b'"***********.org"' in out and b"id,email\n" in out
    k.on_query(b"COPY customers (ssn, name) TO STDOUT")
    out = k.server_bytes(frames(
        m.CopyOutResponse(0, (0, 0)), m.CopyData(b"123-45-6789\tAnn\\tB\n"), m.CopyData(b"\\N\tC\n"),
        m.CopyDone(), m.CommandComplete("COPY 2"), m.ReadyForQuery(b"I")))
    assert b"*******6789\tAnn\\tB\n" in out and b"\\N\tC\n" in out


def test_errors_scrubbed_on_masked_tables_only_and_refusals_untouched():
    k = masker()
    k.on_query(b"UPDATE customers SET name = NULL WHERE id = 1")
    err = m.ErrorResponse.build("ERROR", "23502", 'null value in column "name"',
                                detail="Failing row contains (1, null, ann@example.org, 123-45-6789, x).")
    out = k.server_bytes(frames(err, m.ReadyForQuery(b"I")))
    assert b"ann@example.org" not in out and b"123-45-6789" not in out and b"23502" in out
    k.on_query(b"SELECT 1 / 0 FROM orders")
    err = m.ErrorResponse.build("ERROR", "22012", "division by zero", detail="see ann@example.org")
    out = k.server_bytes(frames(err, m.ReadyForQuery(b"I")))
    assert b"division by zero" in out and b"ann@example.org" not in out and b"see [e]" in out
    k.on_refused(sync=True)
    own = m.ErrorResponse.build("ERROR", "42501", 'statement denied by masking rule "pii": masked column ...')
    out = k.server_bytes(frames(own, m.ReadyForQuery(b"I")))
    assert out == frames(own, m.ReadyForQuery(b"I"))


def test_multi_statement_query_follows_each_result():
    k = masker()
    k.on_query(b"SELECT name FROM customers; SELECT email FROM customers")
    out = k.server_bytes(frames(
        m.RowDescription((fd("name", 100, 2),)), m.DataRow((b"Ann",)), m.CommandComplete("SELECT 1"),
        m.RowDescription((fd("email", 100, 3),)), m.DataRow((b"ann@example.org",)), m.CommandComplete("SELECT 1"),
        m.ReadyForQuery(b"I")))
    assert decode_rows(out) == [(b"Ann",), (b"***********.org",)]


def test_unknown_description_fails_closed():
    k = masker()
    k.on_parse("s", b"SELECT email FROM customers")
    k.on_sync()
    k.server_bytes(frames(m.ParseComplete(), m.ReadyForQuery(b"I")))
    k.on_bind(m.Bind("", "s").encode()[5:])
    k.on_execute("")
    k.on_sync()
    out = k.server_bytes(frames(m.BindComplete(), m.DataRow((b"ann@example.org",)), m.CommandComplete("SELECT 1"),
                                m.ReadyForQuery(b"I")))
    assert decode_rows(out) == [(None,)]


# ---------------------------------------------------------------- the C loop

from hypothesis import given, settings, strategies as st  # noqa: E402

from pgjit.masking import wire  # noqa: E402

_values = st.one_of(st.none(), st.text(max_size=12).map(lambda s: s.encode("utf-8")), st.binary(max_size=12))
_ops = st.one_of(st.none(), st.just(-1), st.integers(0, 5), st.binary(max_size=6),
                 st.just(lambda b: b[::-1]), st.just(lambda b: None))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(_values, min_size=0, max_size=5), min_size=0, max_size=5),
       st.one_of(st.none(), st.lists(_ops, max_size=6).map(tuple)), st.binary(max_size=8))
def test_c_rows_equal_reference(rows_, spec, tail):
    import pytest as _pytest

    if wire.rows is wire.rows_py:
        _pytest.fail("the C loop (pgjit.masking._rows) was not built")
    buf = b"".join(m.DataRow(tuple(r)).encode() for r in rows_) + m.CommandComplete("SELECT 1").encode() + tail
    assert wire.rows(buf, 0, spec) == wire.rows_py(buf, 0, spec)
