"""WriterHealth (pgjit.audit.writer): a write that takes no error but no
answer either counts as failing after STALL_SECONDS, names why, and clears
when the store answers; a full buffer makes the writer degraded until half
of it has drained. The live test with a stopped store server is in
tests/test_audit_live.py."""

from __future__ import annotations

import threading
import time

from pgjit.audit import writer as audit_writer
from pgjit.audit.writer import Writer
from tests.clients._helpers import wait_for

KEY = b"writer-health-test-key-0123456789"


class HangingStore:
    """A store whose appends wait until ``release`` is set (a server that
    stopped answering), then take the rows."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()
        self.rows: list[dict] = []

    def append(self, rows: list[dict]) -> None:
        self.entered.set()
        assert self.release.wait(30), "never released"
        self.rows.extend(rows)


def _record(i: int) -> dict:
    return {"kind": "config_load", "session_id": None, "person": None, "target": None, "decision": None,
            "body": {"i": i}}


def test_a_write_that_hangs_is_failing_after_the_stall_and_clears_after(monkeypatch):
    monkeypatch.setattr(audit_writer, "STALL_SECONDS", 1.0)
    store = HangingStore()
    w = Writer(store, KEY, interval=0.01).start()
    try:
        w.submit(_record(0))
        assert store.entered.wait(10)
        assert not w.failing and not w.degraded  # a write in progress is not a stall yet
        assert wait_for(lambda: w.failing, 10)
        assert "has not answered for" in w.last_error
        assert w.degraded
        assert w.store_errors == 0  # no error was raised: only time passed
        store.release.set()
        assert wait_for(lambda: not w.failing, 10)
        assert w.flush(10)
        assert not w.degraded and w.last_error == ""
        assert [r["body"] for r in store.rows if r["kind"] == "config_load"] == [{"i": 0}]
    finally:
        store.release.set()
        w.close(10)


def test_a_full_buffer_is_degraded_until_half_has_drained():
    store = HangingStore()
    w = Writer(store, KEY, capacity=10, interval=0.01)  # not started: nothing drains
    for i in range(9):
        w.submit(_record(i))
    assert not w.degraded
    w.submit(_record(9))
    assert w.degraded and not w.failing  # behind, not failing: readiness says so (server.readiness)
    for _ in range(4):
        w._queue.popleft()  # drained to 6: still above half
    assert w.degraded
    w._queue.popleft()  # 5: half
    assert not w.degraded
    w._queue.append(_record(10))  # 6 again: under the bound, not degraded until it is reached
    assert not w.degraded


def test_a_refusal_per_statement_is_one_log_line_per_interval(caplog):
    """pgjit.logs.Throttle, as the relay uses it for 'statement refused:
    audit trail unavailable': a client retrying in a loop gives one line,
    then one per interval saying how many were not logged."""
    import logging

    from pgjit.logs import Throttle

    log = logging.getLogger("pgjit.test.throttle")
    throttle = Throttle(interval=0.2)
    with caplog.at_level(logging.WARNING, logger="pgjit.test.throttle"):
        logged = [throttle(log, logging.WARNING, "refused", {"session": "s"}) for _ in range(1000)]
        assert logged.count(True) == 1 and logged[0]
        time.sleep(0.25)
        assert throttle(log, logging.WARNING, "refused", {"session": "s"})
    lines = [r for r in caplog.records if r.name == "pgjit.test.throttle"]
    assert len(lines) == 2
    assert getattr(lines[1], "suppressed") == 999 and not hasattr(lines[0], "suppressed")
