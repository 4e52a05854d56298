"""The audit writer in its own process (pgjit.audit.process): the same trail
as the thread writer, on both stores (a store outage: tests/audit/test_store.py);
a writer process that dies is replaced and loses nothing; a
gateway that dies leaves what it sent written and the chain closed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st_

from pgjit.audit import store as st
from pgjit.audit.chain import verify
from pgjit.audit.process import ProcessWriter
from pgjit.audit.writer import Deferred, Entries, Writer

from tests.audit.conftest import KEY

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _test_record(i: int) -> dict:
    return {"kind": "test_record", "session_id": "s" + str(i % 3), "person": "alice@example.com",
            "target": "appdb", "decision": "allow", "body": {"text": f"select {i}", "rows": 1}}


def _statement(sid: str, seq: int) -> dict:
    return {"kind": "statement", "session_id": sid, "person": "bob", "target": "appdb", "decision": "allow",
            "body": {"seq": seq, "text": f"select {seq}", "protocol": "extended", "rule": None,
                     "fingerprint": "ab", "policy_hash": "ph", "bytes": 10}}


def _result(sid: str, seq: int) -> dict:
    return {"kind": "statement_result", "session_id": sid, "person": "bob", "target": "appdb", "decision": None,
            "body": {"seq": seq, "outcome": "ok", "rows": 1, "sqlstate": None, "duration_ms": 0.5}}


def _mixed(w) -> None:  # type: ignore[no-untyped-def]
    """One of each thing the gateway submits, at fixed times."""
    at = 1_800_000_000.0
    for i in range(40):
        r = _test_record(i)
        r["at"] = at + i
        w.submit(r)
    for seq in range(1, 30):
        s, res = _statement("s9", seq), _result("s9", seq)
        s["at"] = res["at"] = at + 100 + seq
        w.submit(s)
        d = Deferred(lambda r=res: dict(r))
        d.at = res["at"]
        w.submit(d, force=True)
    # As the C core writes them: canonical JSON (sorted keys, UTF-8 as it is).
    text = ",".join(f'{{"at":"x","seq":{n},"text":"select \u00e9 {n}"}}' for n in range(100, 110))
    w.submit(Entries.of("s7", "carol", "appdb", text, 10, int((at + 500) * 1_000_000), "ph7"), force=True)
    # A claim may hold a lone surrogate (a JSON escape in a token): it
    # crosses the pipe and is stored as U+FFFD, as the thread writer stores it.
    w.submit({"kind": "test_record", "session_id": "s\udcff", "person": "p\ud800", "target": None,
              "decision": None, "body": {"k\udcfe": "v\udc80"}, "at": at + 600})


def _content(rows: list[dict]) -> list[tuple]:
    """What a trail says, less what differs between two writers (chain, hashes)."""
    return [(r["kind"], r["at"], r["session_id"], r["person"], r["target"], r["decision"], r["body"])
            for r in rows if r["kind"] != "checkpoint"]


def test_the_same_trail_as_the_thread_writer(store_url):
    st.upgrade(store_url)
    store = st.Store(store_url)
    tw = Writer(store, KEY, checkpoint_every=25).start()
    _mixed(tw)
    assert tw.close(30)
    thread_rows = list(store.records())
    pw = ProcessWriter(store_url, KEY, checkpoint_every=25).start()
    _mixed(pw)
    assert pw.flush(30) and pw.depth == 0
    assert pw.close(30)
    rows = list(store.records())
    store.close()
    process_rows = rows[len(thread_rows):]
    assert {r["chain"] for r in process_rows} == {pw.chain}
    assert _content(process_rows) == _content(thread_rows)
    assert any(r["person"] == "p\ufffd" for r in process_rows)
    report = verify(rows, KEY)
    assert report.ok and report.unchecked == 0 and report.chains == 2, report.problems
    assert pw.written == len(process_rows)


def test_a_writer_process_that_dies_is_replaced_and_nothing_is_lost(tmp_path):
    url = st.sqlite_url(tmp_path / "audit.db")
    st.upgrade(url)
    w = ProcessWriter(url, KEY, interval=0.01, checkpoint_every=50).start()
    first = w._proc
    for i in range(300):
        w.submit(_test_record(i))
    assert w.flush(30)  # these are stored by the first child
    for i in range(300, 600):
        w.submit(_test_record(i))
    # Killed while records are on their way: some in the pipe or stored
    # and not acknowledged, some still queued here.
    first.send_signal(signal.SIGKILL)
    for i in range(600, 900):
        w.submit(_test_record(i), force=True)
    deadline = time.monotonic() + 30
    while w.children < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert w.children == 2 and w._proc is not first
    assert w.flush(30), (w.depth, w.last_error)
    assert w.close(30)
    store = st.Store(url)
    rows = list(store.records())
    store.close()
    texts = [r["body"]["text"] for r in rows if r["kind"] == "test_record"]
    # Possibly twice (stored, then the child died before saying so), never lost,
    # and in the order submitted in each chain.
    assert sorted(set(texts), key=lambda t: int(t.split()[1])) == [f"select {i}" for i in range(900)]
    for chain in {r["chain"] for r in rows}:
        mine = [int(r["body"]["text"].split()[1]) for r in rows if r["chain"] == chain and r["kind"] == "test_record"]
        assert mine == sorted(mine)
    report = verify(rows, KEY)
    assert report.ok, report.problems  # the first chain ends early (as after a crash), unbroken
    assert report.chains == 2


def _pump_returns(w) -> bool:  # type: ignore[no-untyped-def]
    """pump() from another thread: whether it came back (a pump that waited
    for a stopped child's full pipe would stall the relay's every session)."""
    t = threading.Thread(target=w.pump, daemon=True)
    t.start()
    t.join(10)
    return not t.is_alive()


@pytest.mark.parametrize("then", ["resume", "kill"])
def test_the_relay_threads_pump_never_waits_for_the_pipe(tmp_path, then):
    """The relay's thread sends what is queued itself (pump) without ever
    waiting: with the child stopped, the pipe fills, a frame is cut where the
    pipe took no more, and each pump returns; the rest waits (for the next
    pump or the sender thread). Resumed, the child stores every record once,
    in order; killed, the next child is given all it had not stored."""
    url = st.sqlite_url(tmp_path / "audit.db")
    st.upgrade(url)
    w = ProcessWriter(url, KEY, interval=3600.0, batch=10**9, checkpoint_every=100_000).start()
    first = w._proc
    first.send_signal(signal.SIGSTOP)
    big = "x" * 20_000  # records larger than a pipe page: the pipe takes part of one
    n = 0
    try:
        for _ in range(400):
            w.submit({"kind": "test_record", "session_id": "s", "person": "p", "target": None, "decision": None,
                      "body": {"text": f"select {n}", "pad": big}})
            n += 1
            assert _pump_returns(w)
            if w._pending:
                break
        assert w._pending, "the pipe never filled"
        for _ in range(20):  # more queued behind the cut frame: each pump still returns, sending nothing
            w.submit({"kind": "test_record", "session_id": "s", "person": "p", "target": None, "decision": None,
                      "body": {"text": f"select {n}", "pad": big}})
            n += 1
            assert _pump_returns(w)
        assert len(w._queue) >= 20 and w.depth == n
    finally:
        if then == "kill":
            first.send_signal(signal.SIGKILL)
        first.send_signal(signal.SIGCONT)
    assert w.flush(60), (w.depth, w.last_error)
    assert w.close(30)
    store = st.Store(url)
    rows = list(store.records())
    store.close()
    texts = [int(r["body"]["text"].split()[1]) for r in rows if r["kind"] == "test_record"]
    if then == "resume":
        assert texts == list(range(n))
    else:
        assert sorted(set(texts)) == list(range(n)) and w.children == 2
    assert verify(rows, KEY).ok


def test_what_a_stalled_child_holds_is_bounded_in_bytes_too(tmp_path):
    """One queue entry may be a C core's Entries (many statements): with the
    child not acknowledging, the writer is degraded (the C path is left) once
    what was sent and not acknowledged reaches max_bytes, long before
    ``capacity`` entries wait; acknowledged, it is not."""
    url = st.sqlite_url(tmp_path / "audit.db")
    st.upgrade(url)
    w = ProcessWriter(url, KEY, capacity=100_000, interval=3600.0, batch=10**9, checkpoint_every=100_000).start()
    w.max_bytes = 100_000
    child = w._proc
    child.send_signal(signal.SIGSTOP)
    entry = '{"at":"2026-12-08T00:00:00.000000Z","text":"' + "x" * 9_000 + '"}'
    try:
        n = 0
        while not w.degraded:
            assert n < 50, (w.depth, w._unacked_bytes)
            w.submit(Entries.of("s", "p", None, entry, 1, 0), force=True)
            n += 1
            assert _pump_returns(w)
        assert w.depth == n < 20 and not w.failing  # degraded by bytes, not by count or a stall
    finally:
        child.send_signal(signal.SIGCONT)
    assert w.flush(60), (w.depth, w.last_error)
    assert not w.degraded and w._unacked_bytes == 0
    assert w.close(30)


def test_a_gateway_that_dies_leaves_what_it_sent_written(tmp_path):
    """The gateway's process is killed: the child reads its pipe to the end,
    writes everything sent and a final checkpoint, and exits."""
    url = st.sqlite_url(tmp_path / "audit.db")
    st.upgrade(url)
    script = textwrap.dedent(f"""
        import os, sys, time
        sys.path.insert(0, {REPO!r})
        from pgjit.audit.process import ProcessWriter
        w = ProcessWriter({url!r}, {KEY!r}, interval=60.0, checkpoint_every=10_000).start()
        for i in range(500):
            w.submit({{"kind": "test_record", "session_id": "s", "person": "p", "target": None,
                      "decision": None, "body": {{"text": f"select {{i}}"}}}})
        with w._wake:
            w._urgent = True
            w._wake.notify()
        while w.piped < 500:
            time.sleep(0.001)
        print(w._proc.pid, flush=True)
        os.kill(os.getpid(), 9)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode == -9, proc.stderr
    child = int(proc.stdout.split()[0])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{child}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    break  # ended, not reaped yet
        except FileNotFoundError:
            break
        time.sleep(0.05)
    else:
        pytest.fail("the writer process did not end after its gateway died")
    store = st.Store(url)
    rows = list(store.records())
    store.close()
    assert [r["body"]["text"] for r in rows if r["kind"] == "test_record"] == [f"select {i}" for i in range(500)]
    report = verify(rows, KEY)
    assert report.ok and report.unchecked == 0, report.problems
    assert rows[-1]["kind"] == "checkpoint" and rows[-1]["body"]["final"] is True


def test_a_child_that_cannot_start_says_why(tmp_path):
    from pgjit.audit.store import StoreError

    with pytest.raises(StoreError, match="could not start"):
        ProcessWriter("sqlite:///" + str(tmp_path / "no" / "such" / "dir" / "audit.db"), KEY).start()


def test_a_child_that_hangs_while_starting_is_given_up_on(tmp_path, monkeypatch):
    """A writer process that never says it is up (hung on its store, say)
    is killed after START_TIMEOUT, and the start fails saying so: neither the
    gateway's start nor a respawn waits for ever."""
    import os
    import signal

    from pgjit.audit import process
    from pgjit.audit.store import StoreError

    monkeypatch.setattr(process, "START_TIMEOUT", 1.0)
    pidfile = tmp_path / "pid"
    hang = tmp_path / "hang.sh"
    hang.write_text(f"#!/bin/sh\necho $$ > {pidfile}\nexec sleep 600\n")
    hang.chmod(0o755)
    with pytest.raises(StoreError, match="no answer within 1 s"):
        ProcessWriter("sqlite:///" + str(tmp_path / "audit.db"), KEY, python=str(hang)).start()
    pid = int(pidfile.read_text())
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        pass  # killed and reaped
    else:
        os.kill(pid, signal.SIGKILL)
        raise AssertionError("the hung writer process was left running")


@settings(max_examples=25, deadline=None)
@given(sizes=st_.lists(st_.one_of(st_.integers(0, 300), st_.integers(60_000, 70_000)), max_size=40),
       cuts=st_.lists(st_.integers(1, 200_000), min_size=1, max_size=20))
def test_frames_cross_the_pipe_whole_however_the_bytes_are_cut(sizes, cuts):
    """The child's reader gives back every frame as sent, whatever pieces
    the pipe hands it, frames larger than its buffer included."""
    from pgjit.audit import process

    frames = [(b"DEW"[i % 3:i % 3 + 1], bytes([i % 251]) * n) for i, n in enumerate(sizes)]
    frames.append((b"X", b"x" * (process.PIPE_SIZE + 1234)))  # larger than the reader's buffer
    data = b"".join(process._frame(k, p) for k, p in frames)
    r, w = os.pipe()

    def feed() -> None:
        pos, i = 0, 0
        while pos < len(data):
            n = cuts[i % len(cuts)]
            os.write(w, data[pos:pos + n])  # a blocking pipe: all of it
            pos += n
            i += 1
        os.close(w)

    t = threading.Thread(target=feed)
    t.start()
    got = [f for chunk in process._read_frames(r) for f in chunk]
    t.join()
    os.close(r)
    # An E frame is given whole (pgjit.audit.writer.Entries keeps it), any other's payload.
    assert [(bytes(k), p) for k, p in got] == [(k, process._frame(k, p) if k == b"E" else p) for k, p in frames]
