"""Approval requests and who may decide them. Pure: no I/O.

A request is bound to (person, target, fingerprint, text, parameter hash)
and has an expiry: an approval never satisfies a different statement, other
parameters, another person or another target, and never after it expired.
A requester never decides their own request; only members of the rule's
approver groups decide; a rule may need N approvals from N different
people; one deny ends it.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass, replace
from typing import Any, Iterable, Sequence

PENDING, APPROVED, DENIED, EXPIRED, WITHDRAWN = "pending", "approved", "denied", "expired", "withdrawn"
OPEN = (PENDING,)


class ApprovalError(Exception):
    """A decision that may not be made (the HTTP API answers 403/409 with it)."""

    def __init__(self, message: str, status: int = 403) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def param_hash(params: Sequence[bytes | None] | None) -> str:
    """The SHA-256 of a statement's parameter values (Bind), "" for none."""
    if not params:
        return ""
    h = hashlib.sha256()
    for p in params:
        if p is None:
            h.update(b"\xff\xff\xff\xff")
        else:
            h.update(len(p).to_bytes(4, "big") + p)
    return h.hexdigest()


def new_id() -> str:
    return "apr_" + secrets.token_hex(8)


@dataclass(frozen=True)
class Decision:
    approver: str
    decision: str  # approve | deny
    reason: str
    at: float

    def as_dict(self) -> dict[str, Any]:
        return {"approver": self.approver, "decision": self.decision, "reason": self.reason, "at": self.at}


@dataclass(frozen=True)
class Request:
    id: str
    person: str
    target: str
    session_id: str | None
    text: str
    fingerprint: str | None
    param_hash: str
    rule: str
    approvers: tuple[str, ...]  # groups
    required: int
    created: float
    expires: float  # pending until then; an approval is usable until then too
    status: str = PENDING
    decisions: tuple[Decision, ...] = ()
    evidence: dict[str, Any] | None = None
    updated: float = 0.0
    used: int = 0

    @property
    def approvals(self) -> list[Decision]:
        return [d for d in self.decisions if d.decision == "approve"]

    def binds(self, person: str, target: str, fingerprint: str | None, text: str, phash: str) -> bool:
        return (self.person, self.target, self.fingerprint, self.text, self.param_hash) == (person, target, fingerprint, text, phash)

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "person": self.person, "target": self.target, "session_id": self.session_id,
                "text": self.text, "fingerprint": self.fingerprint, "param_hash": self.param_hash, "rule": self.rule,
                "approvers": list(self.approvers), "required": self.required, "created": self.created,
                "expires": self.expires, "status": self.status, "decisions": [d.as_dict() for d in self.decisions],
                "evidence": self.evidence, "used": self.used}


def decide(req: Request, approver: str, groups: Iterable[str], decision: str, reason: str, now: float) -> Request:
    """``req`` after ``approver`` (a member of ``groups``) decided; raises
    ApprovalError when they may not."""
    if decision not in ("approve", "deny"):
        raise ApprovalError(f"unknown decision {decision!r}", 400)
    if req.status != PENDING:
        raise ApprovalError(f"request {req.id} is {req.status}, not pending", 409)
    if now >= req.expires:
        raise ApprovalError(f"request {req.id} expired", 409)
    if approver == req.person:
        raise ApprovalError("a requester never decides their own request")
    mine = set(groups)
    if not req.approvers or not mine.intersection(req.approvers):
        raise ApprovalError(f"only members of {', '.join(req.approvers) or '(no group: the rule names no approvers)'} "
                            f"decide requests under rule {req.rule}")
    if any(d.approver == approver for d in req.decisions):
        raise ApprovalError(f"{approver} already decided request {req.id}; another person must", 409)
    d = Decision(approver, decision, reason, now)
    decisions = req.decisions + (d,)
    status = PENDING
    if decision == "deny":
        status = DENIED
    elif len([x for x in decisions if x.decision == "approve"]) >= req.required:
        status = APPROVED
    return replace(req, decisions=decisions, status=status, updated=now)


def approver(verifier: Any, token: str) -> tuple[str, frozenset[str]]:
    """Who an approver's OIDC token says they are: (person, groups), the
    person named as a session's is (subject, else user). Raises
    ApprovalError (401) when the token is refused; blocking (JWKS)."""
    from pgjit.errors import PgjitError

    try:
        ident = verifier.verify(token, verifier.config.user_placeholder)
    except PgjitError as e:
        raise ApprovalError(f"token refused: {e.message}", 401) from None
    return ident.subject or ident.user, frozenset(ident.groups)


def may_see(req: Request, who: str, groups: frozenset[str]) -> bool:
    """A request's statement is shown to its requester and to those who may decide it."""
    return req.person == who or bool(groups.intersection(req.approvers))


def denial_text(req: Request) -> str:
    d = next((x for x in req.decisions if x.decision == "deny"), None)
    if d is None:
        return f"approval request {req.id} was denied"
    return f"denied by {d.approver}: {d.reason or '(no reason given)'}"


def to_row(req: Request) -> dict[str, Any]:
    return {"id": req.id, "person": req.person, "target": req.target, "session_id": req.session_id, "text": req.text,
            "fingerprint": req.fingerprint, "param_hash": req.param_hash, "rule": req.rule,
            "approvers": json.dumps(list(req.approvers)), "required": req.required, "created": req.created,
            "expires": req.expires, "status": req.status, "decisions": json.dumps([d.as_dict() for d in req.decisions]),
            "evidence": json.dumps(req.evidence) if req.evidence is not None else None, "updated": req.updated,
            "used": req.used}


def from_row(m: Any) -> Request:
    return Request(
        id=m["id"], person=m["person"], target=m["target"], session_id=m["session_id"], text=m["text"],
        fingerprint=m["fingerprint"], param_hash=m["param_hash"], rule=m["rule"],
        approvers=tuple(json.loads(m["approvers"] or "[]")), required=int(m["required"]), created=float(m["created"]),
        expires=float(m["expires"]), status=m["status"],
        decisions=tuple(Decision(**d) for d in json.loads(m["decisions"] or "[]")),
        evidence=json.loads(m["evidence"]) if m["evidence"] else None, updated=float(m["updated"]), used=int(m["used"] or 0))
