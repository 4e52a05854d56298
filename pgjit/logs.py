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
