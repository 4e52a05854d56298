"""How the audit code names a failure in one line (a log field, a message)."""

from __future__ import annotations


def short_error(e: BaseException, limit: int = 200) -> str:
    """The first line of ``e``'s message (a driver's own error when SQLAlchemy
    wrapped one), at most ``limit`` characters; the type's name when empty."""
    text = str(getattr(e, "orig", None) or e).strip().splitlines()
    return text[0][:limit] if text else type(e).__name__
