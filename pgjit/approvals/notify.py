"""The webhook: every new approval request POSTed as JSON (``approvals.webhook``),
or as a Slack-compatible message (``webhook_format: slack``). Best effort:
a failing webhook is logged and the request still waits in the store."""

from __future__ import annotations

import json
import logging
import urllib.request
from typing import Any

from pgjit.approvals.model import Request

log = logging.getLogger("pgjit.approvals")


def payload(cfg: Any, req: Request, command: str) -> dict[str, Any]:
    link = f"{cfg.public_url.rstrip('/')}/approvals/{req.id}" if cfg.public_url else None
    if cfg.webhook_format == "slack":
        text = (f":lock: *{req.person}* wants to run on *{req.target}* (rule `{req.rule}`, "
                f"{req.required} approval{'s' if req.required > 1 else ''} from {', '.join(req.approvers)}):\n"
                f"```{req.text[:2500]}```\nRequest `{req.id}`; approve with `{command}`" + (f" or {link}" if link else ""))
        return {"text": text}
    return {"event": "approval_requested", "request": req.as_dict(), "approve_command": command, "url": link}


def post_webhook(cfg: Any, req: Request, command: str) -> bool:
    body = json.dumps(payload(cfg, req, command)).encode()
    http = urllib.request.Request(cfg.webhook, data=body, method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(http, timeout=5) as resp:  # noqa: S310 - the operator's URL
            ok = 200 <= resp.status < 300
    except Exception as e:
        log.warning("approval webhook failed", extra={"request": req.id, "error": str(e)[:200]})
        return False
    if not ok:
        log.warning("approval webhook refused the request", extra={"request": req.id})
    return ok
