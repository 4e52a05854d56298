"""``pgjit approvals list | show | approve | deny`` — deciding held statements
from a shell. Reads the gateway's config for the store (shared by every
replica: a decision wakes the held session wherever it is) and the OIDC
settings that verify the approver's token (``--token``, ``--token-file`` or
``$PGJIT_TOKEN``): the approver must be in the rule's approver groups and is
never the requester."""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

EPILOG = """\
examples:
  pgjit approvals list --config pgjit.yaml --token "$(cat token)"
  pgjit approvals show apr_0123456789abcdef --config pgjit.yaml --token-file token
  pgjit approvals approve apr_0123456789abcdef --reason "reviewed the migration" --config pgjit.yaml
  pgjit approvals deny apr_0123456789abcdef --reason "not during business hours" --config pgjit.yaml

exit status: 0 done, 1 the decision was refused (not an approver, your own
request, not pending), 2 bad config or token, 3 no such request.
"""


def build_parser(sub: Any) -> None:
    import argparse

    p = sub.add_parser("approvals", help="list, show, approve and deny statements held for approval",
                       description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    s = p.add_subparsers(dest="approvals_command", metavar="ACTION")
    s.required = True
    for name, help_ in (("list", "requests (pending by default)"), ("show", "one request, its statement, evidence and decisions"),
                        ("approve", "approve a request"), ("deny", "deny a request")):
        a = s.add_parser(name, help=help_)
        a.add_argument("--config", "-c", default=os.environ.get("PGJIT_CONFIG"), help="path to pgjit.yaml (default: $PGJIT_CONFIG)")
        a.add_argument("--token", default=os.environ.get("PGJIT_TOKEN"), help="your OIDC token (default: $PGJIT_TOKEN)")
        a.add_argument("--token-file", help="read the token from this file")
        a.add_argument("--json", action="store_true", help="print JSON")
        if name == "list":
            a.add_argument("--status", default="pending", help="pending (default), approved, denied, expired, withdrawn, or all")
        else:
            a.add_argument("id", help="the request id (apr_…), from the NOTICE the client got")
        if name in ("approve", "deny"):
            a.add_argument("--reason", default="", help="why (shown to the requester on a deny, and in the audit trail)")
        a.set_defaults(func=run)


def _token(args: Any) -> str:
    if args.token_file:
        return open(args.token_file, encoding="utf-8").read().strip()
    if not args.token:
        print("pgjit approvals: a token is required (--token, --token-file or $PGJIT_TOKEN)", file=sys.stderr)
        raise SystemExit(2)
    return args.token.strip()


def run(args: Any) -> int:
    from pgjit.approvals.model import ApprovalError, approver
    from pgjit.approvals.store import ApprovalStore
    from pgjit.cli import _load

    cfg = _load(args)
    if cfg.store is None or cfg.approvals is None:
        print(f"pgjit approvals: {cfg.source} has no approvals section (and store): nothing is held", file=sys.stderr)
        return 2
    if cfg.oidc is None:
        print(f"pgjit approvals: {cfg.source} has no oidc section: approvers are identified by OIDC tokens", file=sys.stderr)
        return 2
    from pgjit.identity import TokenVerifier
    from pgjit.identity.http import make_fetcher

    try:
        who, groups = approver(TokenVerifier(cfg.oidc.verifier, make_fetcher()), _token(args))
    except ApprovalError as e:
        print(f"pgjit approvals: {e.message}", file=sys.stderr)
        return 2
    store = ApprovalStore(cfg.store.url)
    try:
        from pgjit.approvals.model import may_see

        if args.approvals_command == "list":
            reqs = [r for r in store.list(None if args.status == "all" else args.status) if may_see(r, who, groups)]
            if args.json:
                print(json.dumps([r.as_dict() for r in reqs], indent=2))
            else:
                for r in reqs:
                    age = time.time() - r.created
                    print(f"{r.id}  {r.status:<9} {r.person} on {r.target}, rule {r.rule}, {len(r.approvals)}/{r.required} "
                          f"approvals, {age:.0f} s ago: {' '.join(r.text.split())[:100]}")
                if not reqs:
                    print(f"no {args.status} requests")
            return 0
        req = store.get(args.id)
        if req is None or (args.approvals_command == "show" and not may_see(req, who, groups)):
            print(f"pgjit approvals: no request {args.id}", file=sys.stderr)
            return 3
        if args.approvals_command == "show":
            if args.json:
                print(json.dumps(req.as_dict(), indent=2))
            else:
                _show(req)
            return 0
        try:
            req = store.decide(args.id, who, groups, "approve" if args.approvals_command == "approve" else "deny", args.reason)
        except ApprovalError as e:
            print(f"pgjit approvals: {e.message}", file=sys.stderr)
            return 3 if e.status == 404 else 1
        print(json.dumps(req.as_dict(), indent=2) if args.json else f"{req.id}: {req.status} "
              f"({len(req.approvals)}/{req.required} approvals)")
        return 0
    finally:
        store.close()


def _show(req: Any) -> None:
    print(f"request {req.id}: {req.status}")
    print(f"  who: {req.person} on {req.target} (session {req.session_id})")
    print(f"  rule: {req.rule}; needs {req.required} approval(s) from {', '.join(req.approvers)}")
    print(f"  statement: {req.text}")
    print(f"  fingerprint: {req.fingerprint}; parameters: {'sha256 ' + req.param_hash if req.param_hash else 'none'}")
    print(f"  expires: {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(req.expires))} UTC")
    if req.evidence:
        print("  evidence (a dry run, rolled back):")
        for k, v in req.evidence.items():
            print(f"    {k}: {v}")
    for d in req.decisions:
        print(f"  {d.decision} by {d.approver}: {d.reason or '(no reason)'}")
