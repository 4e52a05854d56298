"""JSON-lines logging with the session id on every line.

The session id lives in a context variable; trio copies the context into every
task a session starts, so each line a session's tasks log carries its id.
Never pass tokens, passwords or masked values to a logger.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time

session_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("pgjit_session_id", default=None)

_RESERVED = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        sid = session_id.get()
        if sid is not None:
            out["session"] = sid
        for k, v in record.__dict__.items():
            if k not in _RESERVED and not k.startswith("_"):
                out[k] = v if isinstance(v, (str, int, float, bool, type(None))) else str(v)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def configure(level: str = "info", file: str | None = None) -> None:
    # Text from clients (user and database names) may hold bytes that are not
    # UTF-8 (kept as surrogates): written escaped, never dropped.
    handler: logging.Handler = (
        logging.FileHandler(file, encoding="utf-8", errors="backslashreplace") if file else logging.StreamHandler(sys.stderr)
    )
    handler.setFormatter(JSONFormatter())
    root = logging.getLogger("pgjit")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


class Throttle:
    """At most one line per ``interval`` seconds for a message that can come
    once per statement (a statement refused or run unrecorded while the
    audit store is down: a client retrying in a loop must not flood the
    log). The first comes at once; the next after ``interval``, with
    ``suppressed``: how many were not logged in between. The metrics count
    every one."""

    def __init__(self, interval: float = 10.0) -> None:
        self.interval = interval
        self._next = 0.0
        self._suppressed = 0

    def __call__(self, logger: logging.Logger, level: int, msg: str, extra: dict[str, object]) -> bool:
        now = time.monotonic()
        if now < self._next:
            self._suppressed += 1
            return False
        self._next = now + self.interval
        if self._suppressed:
            extra = dict(extra, suppressed=self._suppressed)
            self._suppressed = 0
        logger.log(level, msg, extra=extra)
        return True
