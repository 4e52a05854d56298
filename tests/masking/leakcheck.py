"""Helpers for the masking leak suite (no fixtures here).

``RecordingProxy``  a TCP forwarder on 127.0.0.1 that keeps every byte the
                    gateway sends to the client, per connection.
``Needles``         the sensitive values and the forms they might be smuggled
                    out in (clear, hex, base64, reversed, split into
                    characters, md5/sha256), and a search over recorded bytes.
``backend_messages`` a parser of the server-to-client protocol stream, so that
                    values split over several DataRow / CopyData messages (one
                    character per row, say) are found too.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import select
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Iterable, Iterator

LOOPBACK = "127.0.0.1"


# --------------------------------------------------------------------------
# the recording forwarder
# --------------------------------------------------------------------------


class RecordingProxy:
    """client -> 127.0.0.1:port -> gateway; records what the gateway sends back.

    Bytes are recorded *before* they are passed on, so once a client has read
    an answer, the answer is in the record. Recording is bounded by
    ``max_bytes`` (over it, ``overflowed`` is set and the suite fails), and a
    connection with no traffic for ``idle_timeout`` seconds is closed.
    """

    def __init__(self, target_port: int, target_host: str = LOOPBACK, max_bytes: int = 256 << 20, idle_timeout: float = 120) -> None:
        self.target = (target_host, target_port)
        self.idle_timeout = idle_timeout  # a connection silent both ways this long is cut (bounds a hung test)
        self.max_bytes = max_bytes
        self.overflowed = False
        self._lock = threading.Lock()
        self._streams: dict[int, bytearray] = {}
        self._total = 0
        self._next_id = 0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._socks: set[socket.socket] = set()
        self._listener = socket.create_server((LOOPBACK, 0), backlog=64)
        self._listener.settimeout(0.2)
        self.host, self.port = LOOPBACK, self._listener.getsockname()[1]
        t = threading.Thread(target=self._accept_loop, name="leak-proxy-accept", daemon=True)
        t.start()
        self._threads.append(t)

    # -- recording views ------------------------------------------------------

    def snapshot(self) -> dict[int, int]:
        with self._lock:
            return {cid: len(s) for cid, s in self._streams.items()}

    def since(self, snap: dict[int, int]) -> list[tuple[int, bytes, int]]:
        """[(connection id, that connection's whole stream, offset of the window)]
        for every connection with bytes after ``snap``."""
        out = []
        with self._lock:
            for cid, s in self._streams.items():
                start = snap.get(cid, 0)
                if len(s) > start:
                    out.append((cid, bytes(s), start))
        return out

    def connection_count(self) -> int:
        with self._lock:
            return len(self._streams)

    # -- forwarding -----------------------------------------------------------

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self._lock:
                cid = self._next_id
                self._next_id += 1
                self._streams[cid] = bytearray()
            t = threading.Thread(target=self._pump, args=(cid, client), name=f"leak-proxy-{cid}", daemon=True)
            t.start()
            self._threads.append(t)

    def _record(self, cid: int, data: bytes) -> None:
        with self._lock:
            if self._total + len(data) > self.max_bytes:
                self.overflowed = True
                return
            self._streams[cid] += data
            self._total += len(data)

    def _pump(self, cid: int, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self.target, timeout=10)
        except OSError:
            client.close()
            return
        with self._lock:
            self._socks.update((client, upstream))
        try:
            client.setblocking(True)
            upstream.setblocking(True)
            last = time.monotonic()
            while not self._stop.is_set():
                r, _, _ = select.select([client, upstream], [], [], 0.2)
                if not r:
                    if time.monotonic() - last > self.idle_timeout:
                        return
                    continue
                last = time.monotonic()
                for s in r:
                    try:
                        data = s.recv(65536)
                    except OSError:
                        data = b""
                    if not data:
                        return
                    if s is upstream:
                        self._record(cid, data)  # before the client can see it
                        client.sendall(data)
                    else:
                        upstream.sendall(data)
        except OSError:
            return
        finally:
            for s in (client, upstream):
                try:
                    s.close()
                except OSError:
                    pass
            with self._lock:
                self._socks.discard(client)
                self._socks.discard(upstream)

    def close(self) -> None:
        self._stop.set()
        try:
            self._listener.close()
        except OSError:
            pass
        with self._lock:
            socks = list(self._socks)
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for t in self._threads:
            t.join(5)


# --------------------------------------------------------------------------
# the backend protocol stream
# --------------------------------------------------------------------------


@dataclass
class Msg:
    offset: int
    type: bytes
    body: bytes


def backend_messages(stream: bytes) -> Iterator[Msg]:
    """Messages of a server-to-client stream (tolerates the one-byte answers
    to SSLRequest / GSSENCRequest and a truncated tail)."""
    pos = 0
    n = len(stream)
    # A one-byte 'N' / 'S' / 'G' answer to an SSL or GSS request is followed by a
    # message whose int32 length starts with a zero byte; a message type is not.
    while pos + 1 < n and stream[pos : pos + 1] in (b"N", b"S", b"G") and stream[pos + 1] != 0:
        pos += 1
    while pos + 5 <= n:
        t = stream[pos : pos + 1]
        (length,) = struct.unpack("!I", stream[pos + 1 : pos + 5])
        if length < 4 or pos + 1 + length > n:
            return
        yield Msg(pos, t, stream[pos + 5 : pos + 1 + length])
        pos += 1 + length


def data_values(body: bytes) -> list[bytes]:
    """The non-null field values of a DataRow body."""
    out = []
    if len(body) < 2:
        return out
    (count,) = struct.unpack("!H", body[:2])
    p = 2
    for _ in range(count):
        if p + 4 > len(body):
            break
        (ln,) = struct.unpack("!i", body[p : p + 4])
        p += 4
        if ln >= 0:
            out.append(body[p : p + ln])
            p += ln
    return out


def error_fields(body: bytes) -> dict[str, str]:
    out = {}
    for part in body.split(b"\0"):
        if part:
            out[chr(part[0])] = part[1:].decode("utf-8", "replace")
    return out


def window_views(stream: bytes, start: int) -> tuple[bytes, bytes]:
    """(raw bytes after ``start``, the concatenation of every DataRow field and
    CopyData payload after ``start`` with no separators)."""
    raw = stream[start:]
    parts: list[bytes] = []
    for m in backend_messages(stream):
        if m.offset < start:
            continue
        if m.type == b"D":
            parts.extend(data_values(m.body))
        elif m.type == b"d":
            parts.append(m.body)
    return raw, b"".join(parts)


def sqlstates_in(stream: bytes, start: int) -> list[str]:
    return [error_fields(m.body).get("C", "") for m in backend_messages(stream) if m.offset >= start and m.type == b"E"]


# --------------------------------------------------------------------------
# needles
# --------------------------------------------------------------------------

# Separators a value's characters may be split by: ",", '","', '", "', "\n",
# "|", array braces and quotes... anything that is not a letter or digit.
_SEP = rb"[^a-z0-9]{1,6}"


@dataclass
class Needle:
    label: str  # e.g. customers.email[id=3]
    value: str
    forms: list[tuple[str, bytes, bool]] = field(default_factory=list)  # (form, bytes, case-insensitive)
    split_re: re.Pattern[bytes] | None = None


def _b64_cores(b: bytes) -> list[bytes]:
    """base64 of ``b`` at each of the three alignments it can have inside a
    longer string, with the edge characters (which depend on the neighbours) cut."""
    out = [base64.b64encode(b).rstrip(b"=")]
    for k in (1, 2):
        enc = base64.b64encode(b"\0" * k + b)
        core = enc[4:-4]
        if len(core) >= 8:
            out.append(core)
    if len(out[0]) > 8:
        out.append(out[0][:-4])  # not at the end of the encoded string
    return out


def make_needle(label: str, value: str) -> Needle:
    b = value.encode("utf-8")
    low = b.lower()
    n = Needle(label, value)
    n.forms.append(("clear", low, True))
    n.forms.append(("reversed", low[::-1], True))
    n.forms.append(("hex", b.hex().encode(), True))
    n.forms.append(("hex-reversed", b[::-1].hex().encode(), True))
    for i, core in enumerate(_b64_cores(b)):
        n.forms.append((f"base64/{i}", core, False))
        n.forms.append((f"base64url/{i}", core.replace(b"+", b"-").replace(b"/", b"_"), False))
    n.forms.append(("md5", hashlib.md5(b).hexdigest().encode(), True))
    n.forms.append(("sha256", hashlib.sha256(b).hexdigest().encode(), True))
    n.split_re = re.compile(_SEP.join(re.escape(low[i : i + 1]) for i in range(len(low))))
    return n


@dataclass
class Hit:
    label: str
    form: str
    where: str
    conn: int | str
    context: bytes

    def __str__(self) -> str:
        return f"{self.label} found as {self.form} in {self.where} (connection {self.conn}): ...{self.context!r}..."


class Needles:
    def __init__(self, values: Iterable[tuple[str, str]]) -> None:
        self.needles = [make_needle(label, v) for label, v in values]

    def add_parts(self, values: Iterable[tuple[str, str]]) -> None:
        """Fragments: searched in every form but split into characters (short
        patterns with loose separators would match noise in binary data)."""
        for label, v in values:
            n = make_needle(label, v)
            n.split_re = None
            self.needles.append(n)

    def __len__(self) -> int:
        return len(self.needles)

    def search_bytes(self, data: bytes, where: str, conn: int | str = "-") -> list[Hit]:
        hits: list[Hit] = []
        if not data:
            return hits
        low = data.lower()
        flat = data.replace(b"\n", b"").replace(b"\r", b"")  # base64 wraps lines at 76
        for n in self.needles:
            for form, nb, ci in n.forms:
                hay = low if ci else flat
                i = hay.find(nb)
                if i >= 0:  # (lower() keeps byte offsets: it only changes ASCII letters)
                    hits.append(Hit(n.label, form, where, conn, data[max(0, i - 20) : i + len(nb) + 20]))
            if n.split_re is not None:
                m = n.split_re.search(low)
                if m:
                    hits.append(Hit(n.label, "split-characters", where, conn, data[m.start() : m.end()][:200]))
        return hits

    def search_stream(self, stream: bytes, start: int, conn: int | str) -> list[Hit]:
        raw, fields = window_views(stream, start)
        hits = self.search_bytes(raw, "raw bytes", conn)
        seen = {(h.label, h.form) for h in hits}
        for h in self.search_bytes(fields, "DataRow/CopyData values joined", conn):
            if (h.label, h.form) not in seen:
                hits.append(h)
        return hits

    def search_proxy(self, proxy: RecordingProxy, snap: dict[int, int]) -> list[Hit]:
        hits: list[Hit] = []
        for cid, stream, start in proxy.since(snap):
            hits.extend(self.search_stream(stream, start, cid))
        return hits


# --------------------------------------------------------------------------
# random, recognisable sensitive values
# --------------------------------------------------------------------------


def luhn_complete(prefix: str, length: int = 16) -> str:
    digits = prefix + "".join(str(secrets.randbelow(10)) for _ in range(length - len(prefix) - 1))
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 0:  # doubled positions, counted from the check digit's left
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return digits + str((10 - total % 10) % 10)


def luhn_ok(number: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(number)):
        d = int(ch)
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def ssn(first: str | None = None) -> str:
    d = first if first is not None else str(2 + secrets.randbelow(7))
    rnd = lambda k: "".join(str(secrets.randbelow(10)) for _ in range(k))  # noqa: E731
    return f"{d}{rnd(2)}-{rnd(2)}-{rnd(4)}"
