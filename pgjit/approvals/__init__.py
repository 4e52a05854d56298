"""Approvals: statements a rule says ``require_approval`` for are held on the
wire until a different, authorised person approves them — bound to exactly
that statement (docs/approvals.md).

* :mod:`pgjit.approvals.model` — requests, the binding, who may decide (pure);
* :mod:`pgjit.approvals.store` — requests and decisions in the store (SQLAlchemy);
* :mod:`pgjit.approvals.notify` — the webhook;
* :mod:`pgjit.approvals.evidence` — the rolled-back dry run shown to approvers.

The hold itself is the gateway's (pgjit.gateway.relay holds the bytes,
pgjit.gateway.holds waits for the decision).
"""
