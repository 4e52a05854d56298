"""A small HTTP/1.1 server for operators, on trio, on its own port.

    GET /metrics   Prometheus text format (prometheus-client's registry)
    GET /healthz   200 while the process serves: liveness
    GET /readyz    200 when this gateway should get connections, else 503;
                   the JSON body says which check failed
    GET /approvals, GET /approvals/{id}, POST /approvals/{id}/approve|deny
                   statements held for approval (pgjit.gateway.holds), with
                   the approver's OIDC token as a bearer token; POST bodies
                   are JSON ({"reason": ...}), at most 8 KiB

One request per connection (``Connection: close``); requests are read with
a 5 s deadline and at most 8 KiB of head; at most 32 connections at once,
more are closed at once. It binds to 127.0.0.1 unless ``api.host`` says
otherwise: metrics name targets and outcomes, not secrets, but they are
nobody else's business.

The module knows nothing of the gateway: it is handed a function that
returns the readiness checks.
"""

from __future__ import annotations

import json
import logging
from typing import Awaitable, Callable

import trio
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

log = logging.getLogger("pgjit.api")

_MAX_HEAD = 8192
_READ_TIMEOUT = 5.0
_MAX_CONNECTIONS = 32

#: readiness() -> {check name: (ok, detail)}
Readiness = Callable[[], dict[str, tuple[bool, str]]]


def _response(status: str, ctype: str, body: bytes, *, head_only: bool = False) -> bytes:
    head = (f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
            "Cache-Control: no-store\r\nConnection: close\r\n\r\n").encode()
    return head if head_only else head + body


def _json(status: str, obj: object, head_only: bool) -> bytes:
    return _response(status, "application/json", (json.dumps(obj, sort_keys=True) + "\n").encode(), head_only=head_only)


#: approvals(method, path, headers, body) -> (HTTP status, JSON object)
ApprovalsHandler = Callable[[str, str, dict, bytes], Awaitable[tuple[int, object]]]
_STATUS = {200: "200 OK", 400: "400 Bad Request", 401: "401 Unauthorized", 403: "403 Forbidden", 404: "404 Not Found",
           409: "409 Conflict", 500: "500 Internal Server Error"}
_MAX_BODY = 8192


class Api:
    def __init__(self, readiness: Readiness, approvals: "ApprovalsHandler | None" = None) -> None:
        self.readiness = readiness
        self.approvals = approvals
        self._slots = trio.Semaphore(_MAX_CONNECTIONS)

    async def route_async(self, method: str, path: str, headers: dict[str, str], body: bytes) -> bytes:
        if path.split("?", 1)[0].rstrip("/").startswith("/approvals"):
            if self.approvals is None:
                return _json("404 Not Found", {"error": "approvals are not configured on this gateway (approvals section)"}, False)
            status, obj = await self.approvals(method, path, headers, body)
            return _json(_STATUS.get(status, f"{status} Error"), obj, method == "HEAD")
        return self.route(method, path)

    def route(self, method: str, path: str) -> bytes:
        if method not in ("GET", "HEAD"):
            return _json("405 Method Not Allowed", {"error": "only GET and HEAD (POST for /approvals)"}, False)
        head_only = method == "HEAD"
        path = path.split("?", 1)[0]
        if path == "/metrics":
            return _response("200 OK", CONTENT_TYPE_LATEST, generate_latest(REGISTRY), head_only=head_only)
        if path == "/healthz":
            return _json("200 OK", {"status": "ok"}, head_only)
        if path == "/readyz":
            checks = self.readiness()
            ready = all(ok for ok, _ in checks.values())
            body = {"status": "ready" if ready else "not ready",
                    "checks": {name: {"ok": ok, "detail": detail} for name, (ok, detail) in checks.items()}}
            return _json("200 OK" if ready else "503 Service Unavailable", body, head_only)
        return _json("404 Not Found", {"error": "unknown path", "paths": ["/metrics", "/healthz", "/readyz"]}, head_only)

    async def handle(self, stream: trio.abc.Stream) -> None:
        if self._slots.value == 0:
            await stream.aclose()
            return
        async with self._slots:
            try:
                with trio.move_on_after(_READ_TIMEOUT) as scope:
                    got = await _read_request(stream)
                if scope.cancelled_caught or got is None:
                    out = _json("400 Bad Request", {"error": "incomplete or oversized request"}, False)
                else:
                    head, body = got
                    lines = head.split(b"\r\n")
                    parts = lines[0].split(b" ")
                    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
                        out = _json("400 Bad Request", {"error": "not an HTTP/1.x request line"}, False)
                    else:
                        headers = {}
                        for line in lines[1:]:
                            k, _, v = line.decode("latin-1").partition(":")
                            headers[k.strip().lower()] = v.strip()
                        out = await self.route_async(parts[0].decode("latin-1"), parts[1].decode("latin-1"), headers, body)
                with trio.move_on_after(_READ_TIMEOUT):
                    await stream.send_all(out)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass
            except Exception:
                log.exception("api request failed")
            finally:
                await stream.aclose()


async def _read_request(stream: trio.abc.Stream) -> tuple[bytes, bytes] | None:
    """The head and the body (Content-Length, at most 8 KiB) of one request."""
    buf = bytearray()
    while b"\r\n\r\n" not in buf:
        if len(buf) > _MAX_HEAD:
            return None
        data = await stream.receive_some(4096)
        if not data:
            return None
        buf += data
    end = buf.index(b"\r\n\r\n")
    head, rest = bytes(buf[:end]), bytes(buf[end + 4 :])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            try:
                length = int(v.strip())
            except ValueError:
                return None
    if length < 0 or length > _MAX_BODY:
        return None
    while len(rest) < length:
        data = await stream.receive_some(4096)
        if not data:
            return None
        rest += data
    return head, rest[:length]


async def serve(api: Api, host: str, port: int, *, task_status=trio.TASK_STATUS_IGNORED) -> None:  # type: ignore[no-untyped-def]
    listeners = await trio.open_tcp_listeners(port, host=host)
    addresses = [lst.socket.getsockname()[:2] for lst in listeners]
    log.info("api listening", extra={"addresses": ",".join(f"{h}:{p}" for h, p in addresses)})
    task_status.started(addresses)
    await trio.serve_listeners(api.handle, listeners)
