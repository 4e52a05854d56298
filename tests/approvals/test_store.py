"""The approval store on SQLite: concurrent deciders and concurrent uses of
one single-use approval (the row check in ApprovalStore._write)."""

from __future__ import annotations

import threading
import time

from pgjit.approvals.model import APPROVED, Request
from pgjit.approvals.store import ApprovalStore
from pgjit.audit.store import upgrade


def _store(tmp_path) -> ApprovalStore:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    upgrade(url)
    return ApprovalStore(url)


def _req(rid: str, required: int) -> Request:
    now = time.time()
    return Request(id=rid, person="alice", target="appdb", session_id="s", text="DROP TABLE t", fingerprint="f",
                   param_hash="", rule="r", approvers=("dba",), required=required, created=now, expires=now + 600,
                   updated=now)


def test_concurrent_approvers_all_count(tmp_path):
    store = _store(tmp_path)
    store.create(_req("apr_a", 5))
    errors: list = []

    def approve(who: str) -> None:
        try:
            store.decide("apr_a", who, {"dba"}, "approve", "")
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=approve, args=(f"dba{i}",)) for i in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    req = store.get("apr_a")
    assert req.status == APPROVED and len({d.approver for d in req.decisions}) == 5
    store.close()


def test_a_single_use_approval_runs_once(tmp_path):
    store = _store(tmp_path)
    store.create(_req("apr_b", 1))
    store.decide("apr_b", "dana", {"dba"}, "approve", "")
    results: list = []
    threads = [threading.Thread(target=lambda: results.append(store.take_approval("apr_b", single_use=True)))
               for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results.count(True) == 1 and len(results) == 8
    store.close()
