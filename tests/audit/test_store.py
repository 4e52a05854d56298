"""The audit store on both backends (SQLite, PostgreSQL): migrations, the
writer, tampering through SQL, the CLI, export and offline verification, and
a store outage with nothing lost."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from pgjit.audit import store as st
from pgjit.audit.chain import verify
from pgjit.audit.writer import AuditUnavailable, Writer

from tests.audit.conftest import KEY


def _statement(i: int, **over) -> dict:
    # A record of a kind the writer takes as it is (statements it groups per
    # session and batch: test_statements_of_a_session_are_grouped_per_batch).
    rec = {"kind": "test_record", "session_id": "s" + str(i % 3), "person": "alice@example.com", "target": "appdb",
           "decision": "allow", "body": {"text": f"select {i}", "rows": 1, "protocol": "simple"}}
    rec.update(over)
    return rec


def _fill(url: str, n: int, *, every: int = 10) -> list[dict]:
    st.upgrade(url)
    store = st.Store(url)
    w = Writer(store, KEY, checkpoint_every=every).start()
    for i in range(n):
        w.submit(_statement(i))
    assert w.close()
    rows = list(store.records())
    store.close()
    return rows


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pgjit", *args], capture_output=True, text=True, timeout=120, env=env)


def _sql(url: str, statement: str, **params) -> None:
    engine = st.make_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text(statement), params)
    engine.dispose()


def test_upgrade_creates_and_then_leaves_alone(store_url):
    out = _cli("store", "upgrade", "--url", store_url)
    assert out.returncode == 0, out.stderr
    assert "upgraded from (empty) to revision 0003" in out.stdout
    out = _cli("store", "upgrade", "--url", store_url)
    assert out.returncode == 0 and "store is current (revision 0003)" in out.stdout
    engine = st.make_engine(store_url)
    assert "approval_requests" in sa.inspect(engine).get_table_names()  # 0003: approvals
    engine.dispose()


def test_a_store_at_the_first_revision_upgrades_and_keeps_its_records(store_url):
    """0001 -> head (0002: the (chain, seq) index goes; 0003: approvals):
    records written at 0001 are still there and still verify."""
    from alembic import command

    if store_url.startswith("sqlite"):
        Path(store_url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    engine = st.make_engine(store_url)
    command.upgrade(st._alembic_config(engine), "0001")
    assert "audit_records_chain_seq" in {i["name"] for i in sa.inspect(engine).get_indexes("audit_records")}
    store = st.Store(store_url, check_schema=False)
    w = Writer(store, KEY, checkpoint_every=5).start()
    for i in range(12):
        w.submit(_statement(i))
    assert w.close()
    store.close()
    out = _cli("store", "upgrade", "--url", store_url)
    assert out.returncode == 0, out.stderr
    assert "upgraded from revision 0001 to revision 0003" in out.stdout, out.stdout
    assert "audit_records_chain_seq" not in {i["name"] for i in sa.inspect(engine).get_indexes("audit_records")}
    engine.dispose()
    store = st.Store(store_url)
    rows = list(store.records())
    store.close()
    assert len([r for r in rows if r["kind"] == "test_record"]) == 12
    assert verify(rows, KEY).ok


def test_a_store_behind_the_schema_is_refused_with_the_fix(store_url):
    if store_url.startswith("sqlite"):
        Path(store_url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    with pytest.raises(st.StoreError, match="pgjit store upgrade"):
        st.Store(store_url)


def test_written_records_come_back_in_order_and_verify(store_url, key_file):
    rows = _fill(store_url, 25, every=10)
    statements = [r for r in rows if r["kind"] == "test_record"]
    assert [r["body"]["text"] for r in statements] == [f"select {i}" for i in range(25)]
    assert [r["seq"] for r in rows] == list(range(1, len(rows) + 1))
    assert sum(r["kind"] == "checkpoint" for r in rows) == 3  # after 10, 20, and the final one
    out = _cli("audit", "verify", "--url", store_url, "--key-file", str(key_file))
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.startswith("ok: 28 records in 1 chain(s), 3 checkpoint(s)")


@pytest.mark.parametrize("tamper", ["update", "delete", "insert", "swap"])
def test_tampering_through_sql_is_named(store_url, key_file, tamper):
    rows = _fill(store_url, 30, every=10)
    victim = next(r for r in rows if r["body"].get("text") == "select 12")
    chain, seq = victim["chain"], victim["seq"]
    if tamper == "update":
        _sql(store_url, "update audit_records set decision = 'deny' where chain = :c and seq = :s", c=chain, s=seq)
        expect = [f"record {seq}: edited"]
    elif tamper == "delete":
        _sql(store_url, "delete from audit_records where chain = :c and seq = :s", c=chain, s=seq)
        expect = [f"record {seq}: deleted"]
    elif tamper == "insert":
        _sql(store_url, "insert into audit_records (chain, seq, kind, at, session_id, person, target, decision, body, prev, hash) "
             "select chain, seq, kind, at, session_id, 'mallory', target, decision, body, prev, hash "
             "from audit_records where chain = :c and seq = :s", c=chain, s=seq)
        expect = [f"record {seq}: inserted"]
    else:
        other = seq + 3
        _sql(store_url, "update audit_records set seq = -1 where chain = :c and seq = :s", c=chain, s=seq)
        _sql(store_url, "update audit_records set seq = :s where chain = :c and seq = :o", c=chain, s=seq, o=other)
        _sql(store_url, "update audit_records set seq = :o where chain = :c and seq = -1", c=chain, o=other)
        expect = [f"record {seq}: edited", f"record {other}: edited"]
    out = _cli("audit", "verify", "--url", store_url, "--key-file", str(key_file))
    assert out.returncode == 1, out.stdout + out.stderr
    for line in expect:
        assert f"chain {chain} {line}" in out.stdout, out.stdout
    assert "FAILED" in out.stdout


def test_export_verifies_offline_and_names_an_edit_in_it(store_url, key_file, tmp_path):
    _fill(store_url, 12, every=5)
    export = tmp_path / "trail.jsonl"
    out = _cli("audit", "export", "--url", store_url, "--format", "jsonl", "-o", str(export))
    assert out.returncode == 0, out.stderr
    lines = export.read_text().splitlines()
    first = json.loads(lines[0])
    assert list(first) == ["chain", "seq", "kind", "at", "session_id", "person", "target", "decision", "body", "prev", "hash"]
    assert _cli("audit", "verify", "--file", str(export), "--key-file", str(key_file)).returncode == 0
    rec = json.loads(lines[4])
    rec["body"]["rows"] = 0
    lines[4] = json.dumps(rec)
    export.write_text("\n".join(lines) + "\n")
    out = _cli("audit", "verify", "--file", str(export), "--key-file", str(key_file))
    assert out.returncode == 1 and f"record {rec['seq']}: edited" in out.stdout


def test_verify_without_a_key_refuses(store_url):
    _fill(store_url, 2)
    out = _cli("audit", "verify", "--url", store_url)
    assert out.returncode == 2 and "no checkpoint key" in out.stderr


@pytest.mark.parametrize("kind", ["thread", "process"])
def test_store_outage_fails_closed_then_loses_nothing(pg_factory, kind):
    """The store (PostgreSQL) stops while records are being written: the
    writer keeps retrying; once its buffer is full, submit refuses (the
    gateway's fail_closed); the store comes back and every record queued
    before and during the outage is written, in order, and verifies. The
    same for the writer in a process of its own (pgjit.audit.process, the
    gateway's), whose bound counts what waits in either process."""
    cluster = pg_factory()
    url = cluster.url(dbname="postgres")
    st.upgrade(url)
    errors: list[int] = []
    if kind == "thread":
        store = st.Store(url)
        w = Writer(store, KEY, capacity=50, batch=10, checkpoint_every=20, retry_max=0.2)
    else:
        from pgjit.audit.process import ProcessWriter

        store = None
        w = ProcessWriter(url, KEY, capacity=50, batch=10, interval=0.01, checkpoint_every=20, retry_max=0.2)
    w.on_error = lambda: errors.append(1)
    w.start()
    for i in range(30):
        w.submit(_statement(i))
    assert w.flush(20)
    cluster.stop()
    accepted = list(range(30))
    refused = 0
    for i in range(30, 200):
        try:
            w.submit(_statement(i))
            accepted.append(i)  # not always contiguous: the writer may take a batch off the queue meanwhile
        except AuditUnavailable as e:
            refused += 1
            assert "cannot be written" in str(e)
        if kind == "process":
            time.sleep(0.002)  # the sender takes batches off the queue meanwhile: they still count
    queued = len(accepted)
    deadline = time.monotonic() + 20
    while not w.failing and time.monotonic() < deadline:
        time.sleep(0.05)
    assert w.failing and w.store_errors > 0 and len(errors) == w.store_errors
    assert refused > 0 and queued < 200
    assert w.depth >= 40  # what waits is counted, wherever it waits
    cluster.start()
    assert w.close(60)
    assert not w.failing
    if store is not None:
        store.close()
    store = st.Store(url)
    rows = list(store.records())
    store.close()
    texts = [r["body"]["text"] for r in rows if r["kind"] == "test_record"]
    assert texts == [f"select {i}" for i in accepted]
    assert verify(rows, KEY).ok


def test_statements_of_a_session_are_grouped_per_batch(store_url):
    """The writer writes the statements of one session that it takes in one
    batch as one ``statements`` record, a statement's result merged into its
    entry when both came in that batch, alone in a later record when not; a
    Deferred record that cannot be built becomes a record_error, and writing
    goes on. pgjit.audit.sessions reads them back statement by statement."""
    from pgjit.audit import records as rec
    from pgjit.audit.sessions import expand, gather
    from pgjit.audit.writer import Deferred

    st.upgrade(store_url)
    store = st.Store(store_url)
    w = Writer(store, KEY)  # not started: batches are taken by hand below

    def statement(sid: str, seq: int) -> dict:
        return rec.statement(sid, person="alice", target="appdb", seq=seq, text=f"select {seq}", protocol="simple",
                             decision="allow" if seq != 3 else "deny", rule=None, fingerprint=None, policy_hash=None,
                             size=10)

    def result(sid: str, seq: int) -> dict:
        return rec.statement_result(sid, person="alice", target="appdb", seq=seq, outcome="ok", rows=seq,
                                    sqlstate=None, duration=0.001)

    def broken() -> dict:
        raise RuntimeError("no such field")

    w.submit(Deferred(statement, "s1", 1))
    w.submit(Deferred(statement, "s2", 1))
    w.submit(Deferred(result, "s1", 1))
    w.submit(Deferred(statement, "s1", 2))
    w.submit(Deferred(broken))
    w.submit(Deferred(statement, "s1", 3))
    store.append(w._take(False)[0])
    w.submit(Deferred(result, "s1", 2))
    w.submit(Deferred(result, "s2", 1))
    store.append(w._take(True)[0])
    rows = list(store.records())
    store.close()
    kinds = [(r["kind"], r["session_id"]) for r in rows]
    assert kinds == [("statements", "s1"), ("statements", "s2"), ("record_error", None), ("statements", "s1"),
                     ("statements", "s2"), ("checkpoint", None)], kinds
    first = rows[0]["body"]["statements"]
    assert [(e["seq"], e.get("outcome"), e["decision"]) for e in first] == [(1, "ok", "allow"), (2, None, "allow"),
                                                                            (3, None, "deny")]
    assert all(e["at"].endswith("Z") for e in first)
    assert rows[2]["body"]["error"] == "no such field"
    flat = [(r["kind"], r["session_id"], r["body"]["seq"]) for r in expand(rows) if r["kind"].startswith("statement")]
    assert flat == [("statement", "s1", 1), ("statement", "s1", 2), ("statement", "s1", 3), ("statement", "s2", 1),
                    ("statement_result", "s1", 2), ("statement_result", "s2", 1)]
    views = gather(rows)
    assert {seq: r["body"]["rows"] for seq, r in views["s1"].results.items()} == {1: 1, 2: 2}
    assert views["s1"].denied == 1 and views["s2"].results[1]["body"]["outcome"] == "ok"
    assert verify(rows, KEY).ok


def test_a_search_since_a_time_finds_every_statements_record_with_an_entry_since_then(store_url):
    """A statements record's time is its last entry's: a record whose first
    entry is before T and last after T is found by records(since=T)."""
    from pgjit.audit import records as rec
    from pgjit.audit.writer import Deferred, iso_utc

    st.upgrade(store_url)
    store = st.Store(store_url)
    w = Writer(store, KEY)

    def statement(seq: int) -> dict:
        return rec.statement("s1", person="alice", target="appdb", seq=seq, text=f"select {seq}", protocol="simple",
                             decision="allow", rule=None, fingerprint=None, policy_hash=None, size=10)

    base = 1_800_000_000.0
    for seq, t in ((1, base), (2, base + 5.0)):
        d = Deferred(statement, seq)
        d.at = t
        w.submit(d)
    store.append(w._take(True)[0])
    since = iso_utc(base + 1.0)
    found = [r for r in store.records(since=since) if r["kind"] == "statements"]
    store.close()
    assert len(found) == 1 and found[0]["at"] == iso_utc(base + 5.0)
    assert [e["at"] for e in found[0]["body"]["statements"]] == [iso_utc(base), iso_utc(base + 5.0)]
