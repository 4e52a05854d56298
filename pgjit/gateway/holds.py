"""Statements held for approval: the gateway's side (docs/approvals.md).

The relay stops at a statement a ``require_approval`` rule matches and
keeps it, with everything the client sent after it (``Relay.hold``); the
relay's driver stops reading the client and calls the session's
``start_hold``, which runs :func:`hold` here:

1. an approval given already for exactly this statement (the same person,
   target, fingerprint, text and parameters; unexpired; unused when single
   use) lets it run at once — a client that timed out retries and runs;
2. otherwise a request is stored (shared by every replica), logged, counted
   (``pgjit_approvals_held``), POSTed to the webhook, and the client gets a
   NOTICE with the request id and the command that approves it;
3. the session waits — for a decision (``Approvals.watch`` polls the store
   and, on PostgreSQL, LISTENs for the NOTIFY every decision sends), the
   hold timeout, or a CancelRequest (which withdraws the request);
4. approved: the statement runs (the approval used); denied: 42501 "denied
   by <approver>: <reason>"; timed out: 57014 with the request id and the
   command that approves it; withdrawn: 57014.

The HTTP API's ``/approvals`` and ``pgjit approvals`` decide through
:class:`Approvals` (any replica): tokens verified as the gateway verifies
passwords, the rule's approver groups checked, never the requester.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
from typing import Any

import trio

from pgjit import metrics
from pgjit.approvals import model
from pgjit.approvals.model import APPROVED, DENIED, PENDING, WITHDRAWN, ApprovalError, Request, may_see
from pgjit.errors import InsufficientPrivilege, PgjitError, QueryCanceled

log = logging.getLogger("pgjit.approvals")


class Approvals:
    """One gateway's approval service: the store, the sessions waiting on it."""

    def __init__(self, config: Any, store: Any, verifier: Any = None) -> None:
        self.config = config  # pgjit.config.ApprovalsConfig
        self.store = store  # pgjit.approvals.store.ApprovalStore
        self.verifier = verifier  # pgjit.identity.TokenVerifier (API and CLI decisions)
        self._waiting: dict[str, trio.Event] = {}
        self._kick = trio.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._listener: threading.Thread | None = None
        self._stop = threading.Event()

    @property
    def held(self) -> int:
        return len(self._waiting)

    def command(self, rid: str) -> str:
        return f"pgjit approvals approve {rid}"

    # -------------------------------------------------------------- watch

    async def watch(self) -> None:
        """Wake held sessions when their request is decided (all replicas)."""
        self._token = trio.lowlevel.current_trio_token()
        if self.store.postgres:
            self._listener = threading.Thread(target=self._listen, name="pgjit-approvals-listen", daemon=True)
            self._listener.start()
        try:
            while True:
                with trio.move_on_after(self.config.poll_interval):
                    await self._kick.wait()
                self._kick = trio.Event()
                ids = list(self._waiting)
                if not ids:
                    continue
                try:
                    statuses = await trio.to_thread.run_sync(self.store.statuses, ids)
                except Exception as e:
                    log.warning("approval store unreachable", extra={"error": str(e)[:200]})
                    continue
                for rid, status in statuses.items():
                    if status != PENDING and rid in self._waiting:
                        self._waiting[rid].set()
        finally:
            self._stop.set()

    def _listen(self) -> None:
        """LISTEN for decisions on a PostgreSQL store (another replica's too)."""
        import psycopg

        from pgjit.approvals.store import CHANNEL

        url = self.store.url.replace("postgresql+psycopg://", "postgresql://")
        while not self._stop.is_set():
            try:
                with psycopg.connect(url, autocommit=True) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    while not self._stop.is_set():
                        for _ in conn.notifies(timeout=1.0):
                            if self._token is not None:
                                try:
                                    trio.from_thread.run_sync(self._kick.set, trio_token=self._token)
                                except trio.RunFinishedError:
                                    return
            except Exception as e:  # the store went away: poll meanwhile, LISTEN again
                log.info("approval LISTEN connection lost; polling meanwhile", extra={"error": str(e)[:200]})
                self._stop.wait(2.0)

    # ----------------------------------------------------------- decisions

    def identity(self, token: str) -> tuple[str, frozenset[str]]:
        """Who a bearer token says the approver is (blocking: JWKS)."""
        if self.verifier is None:
            raise ApprovalError("approvals are decided with OIDC tokens; this gateway has no oidc section", 401)
        return model.approver(self.verifier, token)

    def decide(self, rid: str, token: str, decision: str, reason: str) -> Request:
        """Blocking: verify the approver, record the decision, wake the session."""
        who, groups = self.identity(token)
        req = self.store.decide(rid, who, groups, decision, reason)
        log.info("approval decision", extra={"request": rid, "approver": who, "decision": decision, "status": req.status})
        if self._token is not None and rid in self._waiting and req.status != PENDING:
            try:
                trio.from_thread.run_sync(self._kick.set, trio_token=self._token)
            except Exception:
                pass
        return req

    # --------------------------------------------------------------- API

    async def api(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, Any]:
        """GET /approvals[?status=], GET /approvals/{id}, POST /approvals/{id}/approve|deny."""
        auth = headers.get("authorization", "")
        if not auth.lower().startswith("bearer "):
            return 401, {"error": "an Authorization: Bearer <OIDC token> header is required"}
        token = auth[7:].strip()
        parts = [p for p in path.split("?", 1)[0].split("/") if p]
        query = dict(q.split("=", 1) for q in path.split("?", 1)[1].split("&") if "=" in q) if "?" in path else {}
        try:
            if method == "GET" and parts == ["approvals"]:
                who, groups = await trio.to_thread.run_sync(self.identity, token)
                status = query.get("status", "pending")
                reqs = await trio.to_thread.run_sync(self.store.list, None if status == "all" else status)
                return 200, {"requests": [r.as_dict() for r in reqs if may_see(r, who, groups)]}
            if method == "GET" and len(parts) == 2:
                who, groups = await trio.to_thread.run_sync(self.identity, token)
                req = await trio.to_thread.run_sync(self.store.get, parts[1])
                if req is None or not may_see(req, who, groups):
                    return 404, {"error": f"no approval request {parts[1]} that you may see"}
                return 200, req.as_dict()
            if method == "POST" and len(parts) == 3 and parts[2] in ("approve", "deny"):
                try:
                    reason = str((json.loads(body or b"{}") or {}).get("reason", ""))[:1000]
                except (ValueError, AttributeError):
                    return 400, {"error": "the body must be JSON: {\"reason\": \"...\"}"}
                decision = "approve" if parts[2] == "approve" else "deny"
                req = await trio.to_thread.run_sync(self.decide, parts[1], token, decision, reason)
                return 200, req.as_dict()
        except ApprovalError as e:
            return e.status, {"error": e.message}
        return 404, {"error": "unknown path", "paths": ["GET /approvals", "GET /approvals/{id}",
                                                         "POST /approvals/{id}/approve", "POST /approvals/{id}/deny"]}


async def hold(session: Any, held: Any, cancelled: trio.Event) -> PgjitError | None:
    """Wait for the decision on the relay's held statement: None when it may
    run, else the error it is refused with."""
    from pgjit.approvals.model import new_id, param_hash
    from pgjit.policy.gate import statement_fingerprint

    service: Approvals = session.gateway.approvals
    cfg = service.config
    person = session._person or session.principal.user
    target = session.database or ""
    text = held.text.decode("utf-8", "replace")
    fp = statement_fingerprint(held.text)
    phash = param_hash(held.params)
    policy = session.config.targets[target].policy
    rule = policy.rule_named(held.rule) if policy is not None else None
    store = service.store
    try:
        prior = await trio.to_thread.run_sync(store.find_approved, person, target, fp, text, phash)
        if prior is not None and await trio.to_thread.run_sync(
                lambda: store.take_approval(prior.id, single_use=cfg.single_use)):
            log.info("statement runs under an earlier approval", extra={"session": session.id, "request": prior.id})
            session.record_approval(prior.id, "used", held.rule, prior)
            metrics.APPROVAL_OUTCOMES.labels("reused").inc()
            return None
        if rule is None or not rule.approvers:
            return InsufficientPrivilege(
                f'statement needs approval under policy rule "{held.rule}", which names no approvers',
                detail=held.message, hint="the policy's rule must list its approvers (groups)")
        now = time.time()
        timeout = cfg.hold_timeout
        limit = session.statement_timeout_seconds()
        if limit:
            timeout = min(timeout, limit)
        req = Request(id=new_id(), person=person, target=target, session_id=session.id, text=text, fingerprint=fp,
                      param_hash=phash, rule=held.rule, approvers=rule.approvers, required=rule.approvals,
                      created=now, expires=now + timeout + cfg.reuse_window, updated=now)
        await trio.to_thread.run_sync(store.create, req)
    except Exception as e:  # the store is unreachable: the statement does not run
        log.warning("approval store unreachable", extra={"session": session.id, "error": str(e)[:200]})
        return InsufficientPrivilege(f'statement needs approval under policy rule "{held.rule}", '
                                     "and pgjit cannot record the request: the store is unreachable",
                                     hint="try again when the store is back")
    rid = req.id
    event = service._waiting[rid] = trio.Event()
    log.info("statement held for approval", extra={"session": session.id, "request": rid, "rule": held.rule,
                                                   "user": person, "fingerprint": fp})
    session.record_approval(rid, "requested", held.rule)
    await session.notice(f"statement held for approval: request {rid} (rule {held.rule}, "
                   f"{rule.approvals} approval{'s' if rule.approvals > 1 else ''} from {', '.join(rule.approvers)}); "
                   f"approve with: {service.command(rid)}")
    waited = False
    try:
        async with trio.open_nursery() as nursery:
            if cfg.webhook:
                from pgjit.approvals.notify import post_webhook

                nursery.start_soon(functools.partial(trio.to_thread.run_sync, post_webhook, cfg, req, service.command(rid),
                                                     abandon_on_cancel=True))
            if rule.evidence:
                nursery.start_soon(_evidence, session, req)
            outcome = "timeout"
            with trio.move_on_after(timeout):
                while True:
                    async with trio.open_nursery() as race:
                        async def on_decision() -> None:
                            await event.wait()
                            race.cancel_scope.cancel()

                        async def on_cancel() -> None:
                            await cancelled.wait()
                            race.cancel_scope.cancel()

                        race.start_soon(on_decision)
                        race.start_soon(on_cancel)
                    if cancelled.is_set():
                        outcome = "withdrawn"
                        break
                    try:
                        current = await trio.to_thread.run_sync(store.get, rid)
                    except Exception as e:  # the store went away: keep waiting (the timeout still ends it)
                        log.warning("approval store unreachable", extra={"request": rid, "error": str(e)[:200]})
                        current = None
                    if current is not None and current.status != PENDING:
                        outcome = current.status
                        req = current
                        break
                    service._waiting[rid] = event = trio.Event()
            nursery.cancel_scope.cancel()
        waited = True
    finally:
        service._waiting.pop(rid, None)
        if not waited:
            # The session ended (or failed) while its statement was held:
            # nobody waits for it any more, so nobody may approve it.
            with trio.CancelScope(shield=True):
                with trio.move_on_after(5):
                    await trio.to_thread.run_sync(lambda: store.set_status(rid, WITHDRAWN))
            session.record_approval(rid, "withdrawn", held.rule)
    metrics.APPROVAL_OUTCOMES.labels(outcome if outcome in ("approved", "denied", "withdrawn", "timeout") else "expired").inc()
    if outcome == APPROVED:
        try:
            ok = await trio.to_thread.run_sync(lambda: store.take_approval(rid, single_use=cfg.single_use))
        except Exception as e:  # approved, but the store cannot say it is unused: it does not run
            log.warning("approval store unreachable", extra={"request": rid, "error": str(e)[:200]})
            return InsufficientPrivilege(f"approval request {rid} was approved, but pgjit cannot record its use: "
                                         "the store is unreachable", hint="send the statement again when the store is back")
        if ok:
            session.record_approval(rid, "approved", held.rule, req)
            return None
        outcome = "expired"
    if outcome == DENIED:
        session.record_approval(rid, "denied", held.rule, req)
        return InsufficientPrivilege(model.denial_text(req), detail=f"approval request {rid}")
    if outcome == "withdrawn":
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(lambda: store.set_status(rid, WITHDRAWN))
        session.record_approval(rid, "withdrawn", held.rule)
        return QueryCanceled(f"canceling statement due to user request: approval request {rid} withdrawn")
    session.record_approval(rid, "timeout", held.rule)
    return QueryCanceled(
        f"statement held for approval timed out: request {rid} is still waiting for a decision",
        detail=f"no decision within {timeout:g} s; the request stays open for {cfg.reuse_window:g} s more",
        hint=f"approve it with: {service.command(rid)} — then send the same statement again; it runs without a new hold")


async def _evidence(session: Any, req: Request) -> None:
    from pgjit.approvals.evidence import collect

    try:
        evidence = await collect(session, req)
    except Exception as e:
        evidence = {"error": str(e)[:500]}
    try:
        await trio.to_thread.run_sync(session.gateway.approvals.store.set_evidence, req.id, evidence)
    except Exception:
        log.warning("evidence could not be stored", extra={"request": req.id})
