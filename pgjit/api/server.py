"""A small HTTP/1.1 server for operators, on trio, on its own port.

    GET /metrics   Prometheus text format (prometheus-client's registry)
    GET /healthz   200 while the process serves: liveness
    GET /readyz    200 when this gateway should get connections, else 503;
                   the JSON body says which check failed

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
from typing import Callable

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


class Api:
    def __init__(self, readiness: Readiness) -> None:
        self.readiness = readiness
        self._slots = trio.Semaphore(_MAX_CONNECTIONS)

    def route(self, method: str, path: str) -> bytes:
        if method not in ("GET", "HEAD"):
            return _json("405 Method Not Allowed", {"error": "only GET and HEAD"}, False)
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
                    head = await _read_head(stream)
                if scope.cancelled_caught or head is None:
                    out = _json("400 Bad Request", {"error": "incomplete or oversized request"}, False)
                else:
                    parts = head.split(b"\r\n", 1)[0].split(b" ")
                    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
                        out = _json("400 Bad Request", {"error": "not an HTTP/1.x request line"}, False)
                    else:
                        out = self.route(parts[0].decode("latin-1"), parts[1].decode("latin-1"))
                with trio.move_on_after(_READ_TIMEOUT):
                    await stream.send_all(out)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass
            except Exception:
                log.exception("api request failed")
            finally:
                await stream.aclose()


async def _read_head(stream: trio.abc.Stream) -> bytes | None:
    buf = bytearray()
    while b"\r\n\r\n" not in buf:
        if len(buf) > _MAX_HEAD:
            return None
        data = await stream.receive_some(4096)
        if not data:
            return None
        buf += data
    return bytes(buf[: buf.index(b"\r\n\r\n")])


async def serve(api: Api, host: str, port: int, *, task_status=trio.TASK_STATUS_IGNORED) -> None:  # type: ignore[no-untyped-def]
    listeners = await trio.open_tcp_listeners(port, host=host)
    addresses = [lst.socket.getsockname()[:2] for lst in listeners]
    log.info("api listening", extra={"addresses": ",".join(f"{h}:{p}" for h, p in addresses)})
    task_status.started(addresses)
    await trio.serve_listeners(api.handle, listeners)
