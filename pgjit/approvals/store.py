"""Approval requests in the store (the audit store's database: SQLite or
PostgreSQL, Alembic revision 0003), shared by every replica.

Blocking (SQLAlchemy): the gateway calls it from a worker thread. A decision
is read, checked and written in one transaction with the row locked (SELECT
… FOR UPDATE on PostgreSQL; SQLite's writes are serialised by the database),
so two approvers deciding at once cannot both count as "the first". On
PostgreSQL each decision also NOTIFYs ``pgjit_approvals`` with the request's
id, which held sessions on every replica LISTEN for.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any, Iterable

import sqlalchemy as sa

from pgjit.approvals import model
from pgjit.approvals.model import APPROVED, PENDING, Request

CHANNEL = "pgjit_approvals"

metadata = sa.MetaData()
requests = sa.Table(
    "approval_requests",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("person", sa.Text, nullable=False),
    sa.Column("target", sa.Text, nullable=False),
    sa.Column("session_id", sa.String(32)),
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("fingerprint", sa.String(64)),
    sa.Column("param_hash", sa.String(64), nullable=False),
    sa.Column("rule", sa.Text, nullable=False),
    sa.Column("approvers", sa.Text, nullable=False),
    sa.Column("required", sa.Integer, nullable=False),
    sa.Column("created", sa.Float, nullable=False),
    sa.Column("expires", sa.Float, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("decisions", sa.Text, nullable=False),
    sa.Column("evidence", sa.Text),
    sa.Column("updated", sa.Float, nullable=False),
    sa.Column("used", sa.Integer, nullable=False),
)


class ApprovalStore:
    def __init__(self, url: str) -> None:
        from pgjit.audit.store import make_engine

        self.url = url
        self.engine = make_engine(url)
        self.postgres = self.engine.dialect.name == "postgresql"

    def close(self) -> None:
        self.engine.dispose()

    def create(self, req: Request) -> None:
        with self.engine.begin() as conn:
            conn.execute(requests.insert().values(**model.to_row(req)))

    def get(self, rid: str) -> Request | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(requests).where(requests.c.id == rid)).first()
        return model.from_row(row._mapping) if row is not None else None

    def statuses(self, ids: Iterable[str]) -> dict[str, str]:
        ids = list(ids)
        if not ids:
            return {}
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(requests.c.id, requests.c.status).where(requests.c.id.in_(ids))).all()
        return {r[0]: r[1] for r in rows}

    def list(self, status: str | None = None, limit: int = 100) -> list[Request]:
        q = sa.select(requests).order_by(requests.c.created.desc()).limit(limit)
        if status is not None:
            q = q.where(requests.c.status == status)
        with self.engine.connect() as conn:
            return [model.from_row(r._mapping) for r in conn.execute(q)]

    def _locked(self, conn: Any, rid: str) -> Request | None:
        q = sa.select(requests).where(requests.c.id == rid)
        if self.postgres:
            q = q.with_for_update()
        row = conn.execute(q).first()
        return model.from_row(row._mapping) if row is not None else None

    def _write(self, conn: Any, old: Request, new: Request) -> bool:
        """Write ``new`` over ``old`` if nobody changed the row meanwhile
        (its ``updated`` is still old's): the check that makes concurrent
        deciders, and two sessions using one single-use approval, safe on
        SQLite too (PostgreSQL also has the row locked)."""
        row = model.to_row(new)
        done = conn.execute(requests.update().where(requests.c.id == new.id, requests.c.updated == old.updated).values(
            status=row["status"], decisions=row["decisions"], updated=row["updated"],
            used=row["used"])).rowcount == 1  # (evidence: set_evidence's alone)
        if done and self.postgres:
            conn.execute(sa.text("SELECT pg_notify(:c, :id)"), {"c": CHANNEL, "id": new.id})
        return done

    def _change(self, rid: str, change: Any) -> Request | None:
        """Read, ``change(req) -> new request | None`` (None: leave it), write;
        again from the read when someone else wrote between."""
        for _ in range(20):
            with self.engine.begin() as conn:
                req = self._locked(conn, rid)
                if req is None:
                    return None
                new = change(req)
                if new is None:
                    return req
                if new.updated <= req.updated:
                    new = replace(new, updated=req.updated + 1e-6)
                if self._write(conn, req, new):
                    return new
            time.sleep(0.01)
        raise model.ApprovalError(f"request {rid} keeps changing; try again", 409)

    def decide(self, rid: str, approver: str, groups: Iterable[str], decision: str, reason: str) -> Request:
        """Record one decision (raises model.ApprovalError when it may not be made)."""
        new = self._change(rid, lambda req: model.decide(req, approver, groups, decision, reason, time.time()))
        if new is None:
            raise model.ApprovalError(f"no approval request {rid}", 404)
        return new

    def set_status(self, rid: str, status: str, *, only_if: str | None = PENDING) -> Request | None:
        """Withdraw or expire a request (only while it is ``only_if``)."""
        return self._change(rid, lambda req: None if only_if is not None and req.status != only_if
                            else replace(req, status=status, updated=time.time()))

    def set_evidence(self, rid: str, evidence: dict[str, Any]) -> None:
        import json

        with self.engine.begin() as conn:
            conn.execute(requests.update().where(requests.c.id == rid).values(evidence=json.dumps(evidence)))

    def take_approval(self, rid: str, *, single_use: bool) -> bool:
        """Use an approved request to run its statement: True when it may run
        (approved, not expired, not used up when single use); marks it used."""
        taken = []

        def use(req: Request) -> Request | None:
            taken.clear()  # (called again when another writer came between)
            if req.status != APPROVED or time.time() >= req.expires or (single_use and req.used):
                return None
            taken.append(True)
            return replace(req, used=req.used + 1, updated=time.time())

        self._change(rid, use)
        return bool(taken)

    def find_approved(self, person: str, target: str, fingerprint: str | None, text: str, phash: str) -> Request | None:
        """The newest approved, unexpired request bound to exactly this statement."""
        now = time.time()
        q = (sa.select(requests).where(requests.c.person == person, requests.c.target == target,
                                       requests.c.status == APPROVED, requests.c.expires > now)
             .order_by(requests.c.updated.desc()).limit(20))
        with self.engine.connect() as conn:
            for row in conn.execute(q):
                req = model.from_row(row._mapping)
                if req.binds(person, target, fingerprint, text, phash):
                    return req
        return None
