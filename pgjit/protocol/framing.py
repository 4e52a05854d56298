"""Splitting byte streams into protocol frames, sans-IO.

``FrameBuffer`` is fed bytes as they arrive and hands back whole frames. It
never allocates for a length field it has not checked against the configured
maximum: a frame that claims to be larger is a ``ProtocolError`` (08P01) as
soon as its header is seen.

The relay's hot path uses :func:`scan` directly on its receive buffer to find
frame boundaries without copying message bodies.
"""

from __future__ import annotations

import struct

from pgjit.protocol.errors import ProtocolError

DEFAULT_MAX_MESSAGE_SIZE = 64 * 1024 * 1024
MAX_STARTUP_PACKET = 10_000  # PostgreSQL's own limit for startup packets

_U32 = struct.Struct("!I")
_unpack_u32 = _U32.unpack_from


def scan(buf: bytearray | bytes | memoryview, pos: int, end: int, max_size: int) -> tuple[list[tuple[int, int, int]], int]:
    """Find whole frames in ``buf[pos:end]``.

    Returns ``([(tag, frame_start, frame_end), ...], next_pos)`` where
    ``next_pos`` is where the first incomplete frame begins. Raises
    ProtocolError on a length field below 4 or above ``max_size``.
    """
    return scan_watched(buf, pos, end, max_size, _ALL_TAGS)


class FrameBuffer:
    """Accumulates bytes; yields ``(tag, body)`` for each whole frame.

    With ``startup=True`` the first frames have no tag byte (startup packets);
    call :meth:`end_startup` once the startup phase is over.
    """

    __slots__ = ("_buf", "_pos", "max_size", "startup")

    def __init__(self, max_size: int = DEFAULT_MAX_MESSAGE_SIZE, *, startup: bool = False) -> None:
        self._buf = bytearray()
        self._pos = 0
        self.max_size = max_size
        self.startup = startup

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if self._pos and self._pos == len(self._buf):
            self._buf.clear()
            self._pos = 0
        elif self._pos > 65536:
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    def end_startup(self) -> None:
        self.startup = False

    @property
    def buffered(self) -> int:
        return len(self._buf) - self._pos

    def take_raw(self) -> bytes:
        """Everything buffered and not yet returned (e.g. bytes sent after SSLRequest)."""
        raw = bytes(self._buf[self._pos :])
        self._buf.clear()
        self._pos = 0
        return raw

    def next_startup_packet(self) -> bytes | None:
        """Body (after the length word) of the next startup-phase packet."""
        buf, pos = self._buf, self._pos
        if len(buf) - pos < 4:
            return None
        length = _unpack_u32(buf, pos)[0]
        if length < 8 or length > MAX_STARTUP_PACKET:
            raise ProtocolError(f"invalid startup packet length {length}")
        if len(buf) - pos < length:
            return None
        body = bytes(buf[pos + 4 : pos + length])
        self._pos = pos + length
        return body

    def next_frame(self) -> tuple[bytes, bytes] | None:
        buf, pos = self._buf, self._pos
        if len(buf) - pos < 5:
            return None
        length = _unpack_u32(buf, pos + 1)[0]
        if length < 4 or length > self.max_size:
            raise ProtocolError(
                f"message length {length} is outside the allowed range 4..{self.max_size}"
            )
        if len(buf) - pos < 1 + length:
            return None
        tag = bytes(buf[pos : pos + 1])
        body = bytes(buf[pos + 5 : pos + 1 + length])
        self._pos = pos + 1 + length
        return tag, body

    def frames(self):
        while (f := self.next_frame()) is not None:
            yield f


try:  # the optional C accelerator (setup.py); identical results
    from pgjit.protocol import _scan as _c_scan
except ImportError:  # pragma: no cover - only where it could not be built
    _c_scan = None

_MASKS: dict[frozenset[int], bytes] = {}
_ALL_TAGS = frozenset(range(256))


def scan_watched(
    buf: bytearray | bytes | memoryview,
    pos: int,
    end: int,
    max_size: int,
    watch: frozenset[int],
) -> tuple[list[tuple[int, int, int]], int]:
    """Like :func:`scan`, but return only the frames whose tag is in ``watch``.

    The relay's hot path: it must find every frame boundary, but looks only at
    a few message types, so the rest cost one header read each (in C when the
    accelerator is built: about 5 ns instead of 140 ns a message).
    """
    if _c_scan is None:
        return _scan_watched_py(buf, pos, end, max_size, watch)
    mask = _MASKS.get(watch)
    if mask is None:
        mask = _MASKS[watch] = bytes(1 if i in watch else 0 for i in range(256))
    frames, pos, bad = _c_scan.scan_watched(buf, pos, end, max_size, mask)
    if bad >= 0:
        raise ProtocolError(f"message length {bad} is outside the allowed range 4..{max_size}")
    return frames, pos


def _scan_watched_py(
    buf: bytearray | bytes | memoryview,
    pos: int,
    end: int,
    max_size: int,
    watch: frozenset[int],
) -> tuple[list[tuple[int, int, int]], int]:
    """The reference implementation of :func:`scan_watched`."""
    frames = []
    while end - pos >= 5:
        length = _unpack_u32(buf, pos + 1)[0]
        if length < 4 or length > max_size:
            raise ProtocolError(
                f"message length {length} is outside the allowed range 4..{max_size}"
            )
        stop = pos + 1 + length
        if stop > end:
            break
        tag = buf[pos]
        if tag in watch:
            frames.append((tag, pos, stop))
        pos = stop
    return frames, pos
