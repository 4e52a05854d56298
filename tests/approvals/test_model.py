"""Who may decide an approval request, and what binds it (pgjit.approvals.model)."""

from __future__ import annotations

import pytest

from pgjit.approvals.model import APPROVED, DENIED, PENDING, ApprovalError, Request, decide, param_hash


def _req(required: int = 1, **kw) -> Request:
    base = dict(id="apr_1", person="alice", target="appdb", session_id="s", text="DELETE FROM t WHERE id = $1",
                fingerprint="fp", param_hash=param_hash([b"1"]), rule="r", approvers=("dba",), required=required,
                created=0.0, expires=100.0)
    base.update(kw)
    return Request(**base)


def test_one_approval_approves_and_one_deny_ends_it():
    assert decide(_req(), "bob", {"dba"}, "approve", "", 1).status == APPROVED
    assert decide(_req(2), "bob", {"dba"}, "deny", "no", 1).status == DENIED


def test_n_different_people():
    r = decide(_req(2), "bob", {"dba"}, "approve", "", 1)
    assert r.status == PENDING
    with pytest.raises(ApprovalError, match="another person"):
        decide(r, "bob", {"dba"}, "approve", "", 2)
    assert decide(r, "carol", {"dba"}, "approve", "", 2).status == APPROVED


@pytest.mark.parametrize("who,groups,match", [
    ("alice", {"dba"}, "own request"), ("bob", {"devs"}, "only members"), ("bob", set(), "only members")])
def test_who_may_not_decide(who, groups, match):
    with pytest.raises(ApprovalError, match=match):
        decide(_req(), who, groups, "approve", "", 1)


def test_not_after_expiry_nor_twice():
    with pytest.raises(ApprovalError, match="expired"):
        decide(_req(), "bob", {"dba"}, "approve", "", 100)
    with pytest.raises(ApprovalError, match="not pending"):
        decide(decide(_req(), "bob", {"dba"}, "approve", "", 1), "carol", {"dba"}, "approve", "", 2)


def test_binding():
    r = _req()
    assert r.binds("alice", "appdb", "fp", "DELETE FROM t WHERE id = $1", param_hash([b"1"]))
    assert not r.binds("alice", "appdb", "fp", "DELETE FROM t WHERE id = $1", param_hash([b"2"]))
    assert not r.binds("bob", "appdb", "fp", "DELETE FROM t WHERE id = $1", param_hash([b"1"]))
    assert not r.binds("alice", "other", "fp", "DELETE FROM t WHERE id = $1", param_hash([b"1"]))
    assert not r.binds("alice", "appdb", "fp", "DELETE FROM t WHERE id = $1 ", param_hash([b"1"]))
    assert param_hash([b"1", None]) != param_hash([b"1", b""]) != param_hash([b"1"])
    assert param_hash(None) == param_hash([]) == ""
