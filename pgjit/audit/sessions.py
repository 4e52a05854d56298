"""Reading sessions back from the records: ``pgjit sessions list|show`` and
``pgjit policy replay``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, TextIO


@dataclass
class SessionView:
    session_id: str
    person: str | None = None
    target: str | None = None
    start: dict[str, Any] | None = None
    end: dict[str, Any] | None = None
    statements: dict[int, dict[str, Any]] = field(default_factory=dict)  # seq -> statement record
    results: dict[int, dict[str, Any]] = field(default_factory=dict)  # seq -> result record

    @property
    def denied(self) -> int:
        return sum(1 for s in self.statements.values() if s.get("decision") not in (None, "allow"))


def expand(records: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """The records, with each ``statements`` record (the writer's batch of
    one session's statements) given as one ``statement`` record per entry
    that holds a statement (its result's fields in its body when the writer
    had them) and one ``statement_result`` record per entry that holds only
    a result. Every other record as it is."""
    for r in records:
        if r.get("kind") != "statements":
            yield r
            continue
        rbody = r.get("body") or {}
        entries = rbody.get("statements") or []
        for e in entries:
            if not isinstance(e, dict):
                continue
            body = {k: v for k, v in e.items() if k not in ("at", "decision")}
            kind = "statement" if "text" in e else "statement_result"
            if kind == "statement" and "policy_hash" not in body and "policy_hash" in rbody:
                body["policy_hash"] = rbody["policy_hash"]  # the record's, once for its entries
            yield {"kind": kind, "at": e.get("at"), "session_id": r.get("session_id"), "person": r.get("person"),
                   "target": r.get("target"), "decision": e.get("decision") if kind == "statement" else None,
                   "body": body, "chain": r.get("chain"), "seq": r.get("seq")}


def gather(records: Iterable[dict[str, Any]]) -> dict[str, SessionView]:
    out: dict[str, SessionView] = {}
    for r in expand(records):
        sid = r.get("session_id")
        kind = r.get("kind")
        if not sid or kind not in ("session_start", "session_end", "statement", "statement_result"):
            continue
        v = out.get(sid)
        if v is None:
            v = out[sid] = SessionView(sid)
        v.person = v.person or r.get("person")
        v.target = v.target or r.get("target")
        body = r.get("body") or {}
        if kind == "session_start":
            v.start = r
        elif kind == "session_end":
            v.end = r
        elif kind == "statement":
            v.statements[int(body.get("seq", 0))] = r
            if "outcome" in body:  # the writer merged its result into it
                v.results[int(body.get("seq", 0))] = r
        else:
            v.results[int(body.get("seq", 0))] = r
    return out


def select(views: dict[str, SessionView], *, user: str | None = None, target: str | None = None,
           since: str | None = None, denied: bool = False) -> list[SessionView]:
    out = []
    for v in views.values():
        start_at = (v.start or {}).get("at") or min((s["at"] for s in v.statements.values()), default="")
        email = ((v.start or {}).get("body") or {}).get("email")
        if user is not None and user not in (v.person, email):
            continue
        if target is not None and v.target != target:
            continue
        if since is not None and start_at < since:
            continue
        if denied and not v.denied:
            continue
        out.append(v)
    out.sort(key=lambda v: ((v.start or {}).get("at") or "", v.session_id))
    return out


def print_list(views: list[SessionView], out: TextIO) -> None:
    print(f"{'session':<18} {'started (UTC)':<27} {'person':<28} {'target':<12} {'stmts':>5} {'denied':>6}  end", file=out)
    for v in views:
        start = (v.start or {}).get("at", "?")
        end = ((v.end or {}).get("body") or {}).get("reason", "(open)")
        print(f"{v.session_id:<18} {start:<27} {str(v.person):<28} {str(v.target):<12} "
              f"{len(v.statements):>5} {v.denied:>6}  {end}", file=out)


def print_timeline(v: SessionView, out: TextIO) -> None:
    sb = (v.start or {}).get("body") or {}
    print(f"session {v.session_id}: {v.person} ({sb.get('email') or '-'}) on {v.target}", file=out)
    if v.start is not None:
        print(f"  {v.start['at']}  start   from {sb.get('client_addr') or '?'} tls={sb.get('tls') or 'none'} "
              f"app={sb.get('application_name') or '-'} role={sb.get('jit_role') or '-'} "
              f"groups={','.join(sb.get('groups') or []) or '-'}", file=out)
    for seq in sorted(v.statements):
        s = v.statements[seq]
        b = s.get("body") or {}
        res = (v.results.get(seq) or {}).get("body") or {}
        outcome = res.get("outcome", "(no answer recorded)")
        detail = []
        if res.get("rows") is not None:
            detail.append(f"rows={res['rows']}")
        if res.get("sqlstate"):
            detail.append(f"sqlstate={res['sqlstate']}")
        if res.get("duration_ms") is not None:
            detail.append(f"{res['duration_ms']} ms")
        rule = f" rule={b['rule']}" if b.get("rule") else ""
        text = " ".join(str(b.get("text", "")).split())
        if len(text) > 200:
            text = text[:197] + "..."
        print(f"  {s['at']}  #{seq:<5} {s.get('decision')}{rule} {b.get('protocol')} {outcome} {' '.join(detail)}", file=out)
        print(f"      {text}", file=out)
    if v.end is not None:
        eb = v.end.get("body") or {}
        print(f"  {v.end['at']}  end     {eb.get('reason')} after {eb.get('seconds')} s", file=out)


@dataclass
class Change:
    session_id: str
    seq: int
    at: str
    text: str
    before: str
    after: str
    rule: str | None


def replay(views: Iterable[SessionView], gate: Any, *, since: str | None = None) -> Iterator[Change]:
    """Decide every recorded statement again with ``gate`` (a
    pgjit.policy.gate.Gate), as the person's groups at the time; yield each
    whose decision would change."""
    from pgjit.policy import ParseFailure

    for v in views:
        groups = frozenset(((v.start or {}).get("body") or {}).get("groups") or ())
        prepared: dict[str, object] = {}
        for seq in sorted(v.statements):
            s = v.statements[seq]
            if since is not None and s["at"] < since:
                continue
            b = s.get("body") or {}
            text = str(b.get("text", ""))
            try:
                _analysis, decision = gate.verdict(text.encode("utf-8"), groups, prepared)
                after, rule = ("allow" if decision.allowed else "approval" if decision.needs_approval else "deny"), decision.rule
            except (ParseFailure, UnicodeError):
                after, rule = "deny", "pgjit:unparsable"
            before = s.get("decision") or "allow"
            if (before == "allow") != (after == "allow") or before != after:
                yield Change(v.session_id, seq, s["at"], text, before, after, rule)
