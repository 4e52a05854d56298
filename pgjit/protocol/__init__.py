"""Sans-IO PostgreSQL frontend/backend protocol 3.0 codec."""

from pgjit.protocol.errors import ProtocolError
from pgjit.protocol.framing import DEFAULT_MAX_MESSAGE_SIZE, FrameBuffer, scan

__all__ = ["DEFAULT_MAX_MESSAGE_SIZE", "FrameBuffer", "ProtocolError", "scan"]
