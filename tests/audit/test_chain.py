"""The hash chain and its verification, on records as plain dicts (what the
store and an export both give)."""

from __future__ import annotations

import copy

from hypothesis import given, settings
from hypothesis import strategies as st

from pgjit.audit.chain import Chainer, verify

KEY = b"k" * 32


def _trail(n: int, every: int = 4, *, close: bool = True, chain: str = "c1") -> list[dict]:
    ch = Chainer(chain)
    out = []
    for i in range(n):
        out.append(ch.seal({"kind": "statement", "at": f"2026-12-03T00:00:{i:02d}.000000Z", "session_id": "s1",
                            "person": "alice@example.com", "target": "appdb", "decision": "allow",
                            "body": {"text": f"select {i}", "rows": i}}))
        if (i + 1) % every == 0:
            out.append(ch.checkpoint(KEY, "2026-12-03T00:01:00.000000Z"))
    if close:
        out.append(ch.checkpoint(KEY, "2026-12-03T00:02:00.000000Z", final=True))
    return out


def _named(report, what: str) -> set[int]:
    return {p.seq for p in report.problems if p.what == what}


def test_an_untouched_trail_verifies():
    r = verify(_trail(10), KEY)
    assert r.ok, r.problems
    assert r.records == 13 and r.checkpoints == 3 and r.unchecked == 0


def test_a_trail_without_its_last_checkpoint_counts_the_unsigned_tail():
    r = verify(_trail(10, close=False), KEY)
    assert r.ok and r.unchecked == 2


def test_the_wrong_key_fails_every_checkpoint():
    r = verify(_trail(8), b"x" * 32)
    assert not r.ok and _named(r, "bad-checkpoint")


def test_no_key_is_not_a_pass():
    r = verify(_trail(3), None)
    assert not r.ok and _named(r, "unverified-checkpoint")


def test_an_edited_record_is_named():
    t = _trail(10)
    t[5]["body"]["text"] = "select 'nothing to see'"
    r = verify(t, KEY)
    assert _named(r, "edited") == {t[5]["seq"]}


def test_an_edited_and_rehashed_tail_fails_at_the_next_checkpoint():
    t = _trail(10, every=100)  # only the final checkpoint
    ch = Chainer("c1")
    forged = []
    for rec in t[:-1]:
        rec = {k: v for k, v in rec.items() if k not in ("chain", "seq", "prev", "hash")}
        if rec["body"]["text"] == "select 3":
            rec["body"]["text"] = "select 'forged'"
        forged.append(ch.seal(rec))
    forged.append(t[-1])  # the signed final checkpoint, copied
    r = verify(forged, KEY)
    assert not r.ok
    bad = [p for p in r.problems if p.what == "bad-checkpoint"]
    assert bad and bad[0].seq == t[-1]["seq"]


def test_a_deleted_record_is_named():
    t = _trail(10)
    gone = t.pop(4)
    r = verify(t, KEY)
    assert _named(r, "deleted") == {gone["seq"]}


def test_the_first_records_deleted_are_named():
    t = _trail(10)
    r = verify(t[2:], KEY)
    assert 1 in _named(r, "deleted")


def test_an_inserted_record_is_named():
    t = _trail(10)
    fake = copy.deepcopy(t[3])
    fake["body"]["text"] = "select 'inserted'"
    t.insert(4, fake)  # same sequence number as the original
    r = verify(t, KEY)
    assert _named(r, "inserted") == {fake["seq"]}
    assert not _named(r, "edited") - {fake["seq"]}


def test_a_record_appended_after_the_final_checkpoint_is_named():
    t = _trail(6)
    ch = Chainer("c1")
    ch.seq, ch.last = t[-1]["seq"], t[-1]["hash"]
    t.append(ch.seal({"kind": "statement", "at": "2026-12-03T00:03:00.000000Z", "session_id": "s1", "person": "mallory",
                      "target": "appdb", "decision": "allow", "body": {"text": "select 'late'"}}))
    r = verify(t, KEY)
    assert _named(r, "inserted") == {t[-1]["seq"]}


def test_swapped_records_are_named():
    t = _trail(10)
    a, b = t[2], t[6]
    a["seq"], b["seq"] = b["seq"], a["seq"]  # the order changed, contents kept
    r = verify(t, KEY)
    named = set().union(*(_named(r, w) for w in ("edited", "moved", "inserted", "deleted")))
    assert {a["seq"], b["seq"]} <= named


def test_chains_of_several_processes_verify_apart():
    t = _trail(5, chain="a") + _trail(7, chain="b")
    t.reverse()
    r = verify(t, KEY)
    assert r.ok and r.chains == 2
    t[0]["decision"] = "deny"
    assert not verify(t, KEY).ok


@settings(max_examples=150, deadline=None)
@given(n=st.integers(3, 30), data=st.data())
def test_any_single_change_is_caught(n, data):
    """Whatever one record's field is changed to, or whichever record is
    dropped, verify fails and names a record at or next to it."""
    t = _trail(n, every=5)
    i = data.draw(st.integers(0, len(t) - 1))
    action = data.draw(st.sampled_from(["edit", "drop", "dup"]))
    seq = t[i]["seq"]
    if action == "edit":
        field = data.draw(st.sampled_from(["kind", "at", "session_id", "person", "target", "decision", "body"]))
        value = data.draw(st.one_of(st.none(), st.text(max_size=8), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2)))
        if t[i].get(field) == value:
            return
        t[i][field] = value
    elif action == "drop":
        del t[i]
    else:
        fake = copy.deepcopy(t[i])
        fake["at"] = "1999-01-01T00:00:00.000000Z"
        t.insert(i + 1, fake)
    r = verify(t, KEY)
    if action == "drop" and i == len(t):
        # The final checkpoint itself dropped: the one change a chain cannot
        # show (chain.py says so). What it leaves is still a valid chain.
        assert r.ok
        return
    assert not r.ok
    assert any(p.seq is not None and abs(p.seq - seq) <= 1 for p in r.problems), r.problems


def test_the_records_layer_imports_neither_trio_nor_the_wire_codec():
    import subprocess
    import sys

    code = ("import sys, pgjit.audit.chain, pgjit.audit.store, pgjit.audit.writer, pgjit.audit.tool\n"
            "bad = [m for m in ('trio', 'pgjit.protocol', 'pgjit.gateway') if m in sys.modules]\n"
            "assert not bad, bad\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


_json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
_json = st.recursive(_json_scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
                     max_leaves=12)


@given(record=st.fixed_dictionaries({k: st.none() | st.text() for k in ("at", "session_id", "person", "target", "decision", "kind")}),
       body=_json, seq=st.integers(min_value=1, max_value=2**62))
@settings(max_examples=300, deadline=None)
def test_the_writers_canonical_form_is_the_reference_one(record, body, seq):
    """Chainer.seal hashes canonical_with (the body's JSON made once, spliced
    in); verify and exports hash canonical (json.dumps of the whole record).
    They must give the same bytes for any record, or every record of a
    chain would verify as edited."""
    import hashlib

    from pgjit.audit.chain import GENESIS, canonical, canonical_with, link

    r = dict(record, body=body)
    ch = Chainer("c" * 32)
    ch.seq = seq - 1
    sealed = ch.seal(r)
    assert canonical_with(sealed, sealed["body_json"]) == canonical(sealed)
    assert sealed["hash"] == link(GENESIS, sealed) == hashlib.sha256(bytes(32) + canonical(sealed)).hexdigest()


@given(t=st.floats(min_value=0, max_value=4_000_000_000, allow_nan=False))
@settings(max_examples=300, deadline=None)
def test_fast_timestamps_match_strftime(t):
    from datetime import datetime, timezone

    from pgjit.audit.writer import iso_utc

    s = int(t)
    us = int((t - s) * 1_000_000)
    want = datetime.fromtimestamp(s, timezone.utc).replace(microsecond=us).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    assert iso_utc(t) == want
