"""The C core's statement tracker (pgjit/gateway/_relaycore.c, Statements)
against the Python relay's statement queue, with the real recorder and
writer: the same conversations give the same audit entries, seq by seq, and
the trail the core's entries go into verifies (its JSON is the canonical
JSON the hash chain covers, byte for byte).

The conversations stress what the tracker must hand back to Python exactly
where it cannot model a frame: texts that are not UTF-8, with control
characters or other escapes, large ones, tags and error codes it does not
read, and extended-protocol frames between simple Queries.
"""

from __future__ import annotations

import json
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pgjit.audit.chain import verify
from pgjit.audit.sessions import gather
from pgjit.audit.writer import Entries, Writer
from pgjit.gateway import recording
from pgjit.gateway.recording import SessionRecorder
from tests.test_relay_paths import backend_frame, conversation, frame, frontend_frame, needs_core, relay_once

KEY = b"tracker-test-key-0123456789abcdef"

TEXTS = [
    b"select 1",
    b"select abalance from pgbench_accounts where aid = 7",  # allowed by the gate, with a shape key
    b"select abalance from pgbench_accounts where aid = 8123",
    b"select 'it''s', \"Col\" from t",  # no shape key: quoted identifier
    b"select $1",
    b"select 1 -- a comment",
    b"select 'tab\there', 'nl\nthere', 'cr\rthere', '\x01\x1f\x7f'",
    b"select '\\\\ back \\\" slash', '\x08\x0c'",
    "select 'été', '😀', '\u2028', 'ß'".encode(),
    b"select '\xff'",  # not UTF-8
    b"select '\xed\xa0\x80'",  # a surrogate
    b"select '\xc0\xaf'",  # an overlong form
    b"select '\xe2\x82'",  # cut short
    b"select '\xf4\x90\x80\x80'",  # above U+10FFFF
    b"select 1\0 and after",  # an embedded NUL
    b"",
    b"select '" + b"x" * 5000 + b"'",  # over the shape key's 4 KiB
    b"drop table pgbench_accounts",  # the gate refuses it
    b"begin",
    b"commit",
]

query = st.sampled_from(TEXTS).map(lambda q: frame(b"Q", q + b"\0"))
front = st.one_of(query, query, query, frontend_frame)

TAGS = [b"SELECT 12", b"UPDATE 0", b"CREATE TABLE", b"COPY 3", b"INSERT 0 1", b" SELECT\t5 ", b"SELECT 1 x",
        b"SELECT 99999999999999999999", "SELECT é".encode(), "SELECT ²".encode(), b"FETCH", b"", b"MOVE 4\x1f"]
CODES = [b"SERROR\0C42P01\0Mno\0\0", b"SERROR\0Mno code\0\0", b"SERROR\0C4\t2\"\0\0", "SERROR\0Cé1\0\0".encode(),
         b"SERROR\0C" + b"9" * 40 + b"\0\0", b"\0", b"SERROR\0C22012"]
back = st.one_of(
    st.sampled_from(TAGS).map(lambda t: frame(b"C", t + b"\0")),
    st.sampled_from(CODES).map(lambda b: frame(b"E", b)),
    st.sampled_from(b"ITE").map(lambda s: frame(b"Z", bytes([s]))),
    st.sampled_from(b"ITE").map(lambda s: frame(b"Z", bytes([s]))),
    st.just(frame(b"H", b"\0\0\0")),
    st.just(frame(b"d", b"1\n")),
    st.just(frame(b"T", b"\0\0")),
    backend_frame,
)


class _Store:
    """The store's round trip: what it keeps is each record's canonical
    body text, read back as JSON (pgjit.audit.store)."""

    def __init__(self) -> None:
        self.rows: list[dict] = []

    def append(self, rows: list[dict]) -> None:
        for r in rows:
            r = dict(r)
            r["body"] = json.loads(r.pop("body_json"))
            self.rows.append(r)


def recorded(steps, *, use_core: bool, gated: bool) -> tuple[dict, dict, list]:
    """The relay's outcome, its statements by seq (what each record says,
    less its times), and the trail's records."""
    store = _Store()
    writer = Writer(store, KEY, batch=7, interval=0.001, checkpoint_every=5).start()
    rec = SessionRecorder(writer, session_id="s1", person="alice", target="appdb", policy_hash='p"h',
                          redact_literals=False, fail_open=False)
    out = relay_once(steps, use_core=use_core, gated=gated, recorder=rec)
    assert writer.close(10)
    view = gather(store.rows).get("s1")
    statements = {}
    for seq, r in (view.statements.items() if view else ()):
        body = {k: v for k, v in r["body"].items() if k not in ("duration_ms", "outcome", "rows", "sqlstate")}
        res = view.results.get(seq)
        result = None if res is None else tuple(res["body"].get(k) for k in ("outcome", "rows", "sqlstate"))
        statements[seq] = (r["decision"], body, result)
    for seq in view.results if view else ():
        assert seq in view.statements, f"a result without its statement: {seq}"
    return out, statements, store.rows


@needs_core
@settings(max_examples=int(os.environ.get("PGJIT_RELAY_EXAMPLES", "300")), deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(steps=conversation(front, back), gated=st.booleans())
def test_the_tracker_records_exactly_as_python(steps, gated):
    py_out, py_statements, py_rows = recorded(steps, use_core=False, gated=gated)
    c_out, c_statements, c_rows = recorded(steps, use_core=True, gated=gated)
    assert c_out == py_out
    assert c_statements == py_statements
    assert sorted(c_statements) == list(range(1, len(c_statements) + 1))  # every number once, none skipped
    for rows in (py_rows, c_rows):
        report = verify(rows, KEY)
        assert report.ok, report.problems


def _exchange(n: int) -> list:
    """n simple Queries, each answered by a row, a tag and ReadyForQuery."""
    steps = []
    for i in range(n):
        steps.append(("c", frame(b"Q", b"select abalance from pgbench_accounts where aid = %d\0" % i)))
        steps.append(("s", frame(b"T", b"\0\0") + frame(b"D", b"\0\1\0\0\0\1" + b"7") + frame(b"C", b"SELECT 1\0")
                      + frame(b"Z", b"I")))
        steps.append(("drain", "cl"))
    return steps


@needs_core
def test_the_core_tracks_simple_queries_without_python(monkeypatch):
    """Twenty Queries and their replies through the core: no Statement is
    made for them in Python, their entries reach the writer as the core
    wrote them, and they say what Python's would."""
    from pgjit.gateway import statements as statements_mod

    made, submitted = [], []
    real_query = statements_mod.StatementQueue.query
    monkeypatch.setattr(statements_mod.StatementQueue, "query",
                        lambda self, *a, **k: made.append(1) or real_query(self, *a, **k))
    real_submit = Writer.submit
    monkeypatch.setattr(Writer, "submit", lambda self, r, **k: submitted.append(type(r)) or real_submit(self, r, **k))
    out, statements, rows = recorded(_exchange(20), use_core=True, gated=True)
    assert made == []
    assert Entries in submitted
    assert len(statements) == 20
    for seq, (decision, body, result) in statements.items():
        assert decision == "allow" and result == ("ok", 1, None)
        assert body["text"] == "select abalance from pgbench_accounts where aid = %d" % (seq - 1)
        assert body["protocol"] == "simple" and body["policy_hash"] == 'p"h' and body["rule"] is None
        assert body["fingerprint"] == recording.fingerprint_of(body["text"].encode())
    monkeypatch.undo()
    assert recorded(_exchange(20), use_core=False, gated=True)[1] == statements


@needs_core
def test_statements_in_flight_when_the_session_ends_are_unanswered():
    steps = [("c", frame(b"Q", b"select 1\0") + frame(b"Q", b"select 2\0")),
             ("s", frame(b"C", b"SELECT 1\0") + frame(b"Z", b"I") + frame(b"C", b"SELECT 1\0"))]
    for use_core in (True, False):
        _, statements, _ = recorded(steps, use_core=use_core, gated=False)
        assert [r for _, _, r in statements.values()] == [("ok", 1, None), ("unanswered", 1, None)]


@pytest.mark.parametrize("duration", [0.0, 0.0004995, 0.0005, 0.0015, 1.2345678, 3600.0])
def test_durations_are_written_to_the_microsecond(duration):
    from pgjit.audit.records import duration_ms

    ms = duration_ms(duration)
    assert ms == round(duration * 1_000_000) / 1000
    assert json.dumps(ms) == repr(ms)



@given(us=st.integers(0, 10**15 - 1))
def test_the_cores_duration_text_is_pythons_repr(us):
    """The C tracker writes duration_ms as the three-decimal text of
    us / 1000 without its trailing zeros (_relaycore.c, out_ms), which is
    what json.dumps writes for that float (and what the hash chain covers)."""
    whole, frac = divmod(us, 1000)
    text = f"{whole}." + (f"{frac:03d}".rstrip("0") or "0")
    assert json.dumps(us / 1000) == text


@needs_core
def test_the_queue_depth_counts_the_records_the_core_holds():
    """pgjit_audit_queue_depth adds the statements whose records the C core
    holds (in flight, or finished and not yet taken) to the writer's queue."""
    seen = []

    def depth(session, channel) -> None:
        seen.append(channel.reactor.tracked_records)

    steps = [("call", depth), ("c", frame(b"Q", b"select 1\0") + frame(b"Q", b"select 2\0")), ("call", depth),
             ("s", frame(b"C", b"SELECT 1\0") + frame(b"Z", b"I")), ("drain", "cl"), ("call", depth),
             ("s", frame(b"C", b"SELECT 1\0") + frame(b"Z", b"I")), ("drain", "cl"), ("call", depth)]
    _, statements, _ = recorded(steps, use_core=True, gated=False)
    assert len(statements) == 2
    assert seen == [0, 2, 1, 0]
