"""The codec's single error type."""

from __future__ import annotations

from pgjit.errors import ProtocolViolation


class ProtocolError(ProtocolViolation):
    """Bytes that are not a valid PostgreSQL protocol message (08P01)."""
