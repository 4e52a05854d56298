"""The records pgjit writes, one function per kind, so that the gateway,
``pgjit sessions`` and ``pgjit policy replay`` agree on their fields
(docs/audit.md lists them). Each returns the dict the writer seals:
kind, session_id, person, target, decision and a JSON body."""

from __future__ import annotations

from typing import Any, Iterable, Mapping


def session_start(session_id: str, *, person: str, email: str | None, groups: Iterable[str], target: str,
                  client_addr: str | None, tls: str | None, application_name: str | None,
                  jit_role: str | None) -> dict[str, Any]:
    return {"kind": "session_start", "session_id": session_id, "person": person, "target": target, "decision": None,
            "body": {"email": email, "groups": sorted(groups), "client_addr": client_addr, "tls": tls,
                     "application_name": application_name, "jit_role": jit_role}}


def session_end(session_id: str, *, person: str | None, target: str | None, reason: str,
                seconds: float) -> dict[str, Any]:
    return {"kind": "session_end", "session_id": session_id, "person": person, "target": target, "decision": None,
            "body": {"reason": reason, "seconds": round(seconds, 6)}}


def statement(session_id: str, *, person: str | None, target: str | None, seq: int, text: str, protocol: str,
              decision: str, rule: str | None, fingerprint: str | None, policy_hash: str | None,
              size: int, parameters: list[str | None] | None = None) -> dict[str, Any]:
    """Queued before the statement goes upstream (or is refused)."""
    body: dict[str, Any] = {"seq": seq, "text": text, "protocol": protocol, "rule": rule,
                            "fingerprint": fingerprint, "policy_hash": policy_hash, "bytes": size}
    if parameters is not None:
        body["parameters"] = parameters
    return {"kind": "statement", "session_id": session_id, "person": person, "target": target,
            "decision": decision, "body": body}


def statement_result(session_id: str, *, person: str | None, target: str | None, seq: int, outcome: str,
                     rows: int | None, sqlstate: str | None, duration: float | None) -> dict[str, Any]:
    """Queued when the server's answer came back (or the session ended first)."""
    return {"kind": "statement_result", "session_id": session_id, "person": person, "target": target,
            "decision": None, "body": {"seq": seq, "outcome": outcome, "rows": rows, "sqlstate": sqlstate,
                                       "duration_ms": duration_ms(duration)}}


def duration_ms(seconds: float | None) -> float | None:
    """A duration as the records give it: milliseconds, to the microsecond
    (the C core's tracker writes the same, _relaycore.c track_finish)."""
    return None if seconds is None else round(seconds * 1_000_000) / 1000


def jit_role(event: str, role: str, *, session_id: str | None, person: str | None, target: str) -> dict[str, Any]:
    return {"kind": "jit_role", "session_id": session_id, "person": person, "target": target, "decision": None,
            "body": {"event": event, "role": role}}


def config_load(config_hash: str, policies: Mapping[str, str]) -> dict[str, Any]:
    """Each policy file's SHA-256, so that each decision names the policy
    version it was made under (statement records carry the hash too)."""
    return {"kind": "config_load", "session_id": None, "person": None, "target": None, "decision": None,
            "body": {"config_hash": config_hash, "policies": dict(policies)}}


def approval(session_id: str, *, person: str | None, target: str, request: str, event: str, rule: str,
             decisions: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """A statement held for approval: requested, approved, denied, timeout,
    withdrawn, used (an earlier approval let it run); decisions name the approvers."""
    body: dict[str, Any] = {"request": request, "event": event, "rule": rule}
    if decisions is not None:
        body["decisions"] = decisions
    return {"kind": "approval", "session_id": session_id, "person": person, "target": target,
            "decision": event, "body": body}
