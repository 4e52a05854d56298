"""The two kinds of socket the relay reads and writes: plain TCP and TLS.

The plain transport goes below trio's stream layer on purpose: it reads what
the kernel already has without waiting first and waits (``wait_readable``)
only when the socket would block, so a round trip costs one wakeup per
direction. trio's ``SocketStream.receive_some`` always checkpoints first, which
costs an extra scheduling pass and often an extra ``recv`` syscall.

TLS is an ``ssl.SSLObject`` with memory BIOs over the same kind of socket
(:class:`TLSTransport`), so that the reactor relays TLS sessions as it
relays plain ones.
"""

from __future__ import annotations

import socket
import ssl

import trio

RECV_SIZE = 256 * 1024

# recv_into a reused buffer (a fresh 256 KiB bytes per recv would be an
# mmap/munmap pair each time), one for every transport: each read is copied
# out before anything else runs on trio's one thread, so no session's bytes
# stay in it — and an idle session holds no receive buffer of its own.
_SCRATCH = bytearray(RECV_SIZE)
_SCRATCH_VIEW = memoryview(_SCRATCH)
# After this many reads that found data without waiting, yield to the
# scheduler once so one busy session cannot starve the others.
_FAIRNESS_BUDGET = 64


class TransportClosed(Exception):
    """The peer is gone (EOF, reset) while we wanted to write."""


class Transport:
    """Common interface. ``receive`` returns b"" at EOF."""

    tls: bool = False

    async def receive(self) -> bytes:  # pragma: no cover - interface
        raise NotImplementedError

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:  # pragma: no cover
        raise NotImplementedError

    async def aclose(self) -> None:  # pragma: no cover
        raise NotImplementedError

    def peer_certificate_der(self) -> bytes | None:
        return None


class SocketTransport(Transport):
    """A non-blocking stdlib socket driven with trio's low-level waits."""

    __slots__ = ("sock", "_budget", "closed", "_waited")

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock
        self._budget = _FAIRNESS_BUDGET
        self._waited = False
        self.closed = False

    @classmethod
    def from_trio_socket(cls, tsock: trio.socket.SocketType) -> "SocketTransport":
        family, type_, proto = tsock.family, tsock.type, tsock.proto
        fd = tsock.detach()
        return cls(socket.socket(family, type_, proto, fileno=fd))

    async def receive(self) -> bytes:
        sock = self.sock
        waited = self._waited
        if waited:
            # The last read had to wait, so this one almost surely would too
            # (request/response traffic): wait first and save a failing
            # recv syscall. Streaming traffic keeps reading without waiting.
            await trio.lowlevel.wait_readable(sock)
        else:
            self._budget -= 1
            if self._budget <= 0:
                # Many reads in a row found data: yield once, so one busy
                # session cannot starve the others.
                self._budget = _FAIRNESS_BUDGET
                await trio.lowlevel.checkpoint()
        while True:
            try:
                n = sock.recv_into(_SCRATCH)
            except BlockingIOError:
                waited = True
                self._budget = _FAIRNESS_BUDGET
                await trio.lowlevel.wait_readable(sock)
                continue
            except (ConnectionResetError, ConnectionAbortedError, TimeoutError):
                return b""
            except OSError:
                if self.closed:
                    return b""
                raise
            self._waited = waited
            return _SCRATCH_VIEW[:n].tobytes()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        sock = self.sock
        view = memoryview(data)
        total = len(view)
        sent = 0
        while sent < total:
            try:
                sent += sock.send(view[sent:])
                continue
            except BlockingIOError:
                pass
            except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError) as e:
                raise TransportClosed(str(e)) from None
            except OSError as e:
                raise TransportClosed(str(e)) from None
            await trio.lowlevel.wait_writable(sock)

    def to_trio_stream(self) -> trio.SocketStream:
        """Hand the socket to trio's stream layer (used to start TLS)."""
        self.closed = True
        return trio.SocketStream(trio.socket.from_stdlib_socket(self.sock))

    async def aclose(self) -> None:
        if self.closed:
            return
        self.closed = True
        _close(self.sock)


def _close(sock: socket.socket) -> None:
    """Close a socket trio may be waiting on (waiters are woken first)."""
    try:
        trio.lowlevel.notify_closing(sock)
    except Exception:
        pass
    sock.close()


class TLSTransport(Transport):
    """TLS over a non-blocking stdlib socket with an ``ssl.SSLObject`` and a
    pair of memory BIOs: the same object serves the session's phases
    (``receive``/``send_all``, waiting with trio's low-level waits) and the
    reactor (``recv_into``/``send``, which never block: the reactor relays TLS
    sessions like plain ones, pgjit.gateway.reactor).

    ``send`` takes all the plaintext it is given when no ciphertext is left
    over from before, and keeps what the kernel did not take of its records
    (``pending``); with ciphertext left over it takes nothing
    (BlockingIOError), so the reactor's backpressure holds as for TCP: at most
    one write's records are held. ``recv_into`` may leave decrypted plaintext
    in the TLS object that no socket event will announce (``buffered``): the
    reactor reads again while there is."""

    tls = True

    def __init__(self, sock: socket.socket, ctx: ssl.SSLContext, *, server_side: bool,
                 server_hostname: str | None = None) -> None:
        sock.setblocking(False)
        self.sock = sock
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self.ssl = ctx.wrap_bio(self._in, self._out, server_side=server_side, server_hostname=server_hostname)
        self._pending = b""  # ciphertext the kernel has not taken yet
        self.closed = False
        self._eof = False

    # -- compatibility (the session reads the TLS version through .stream)
    @property
    def stream(self) -> "TLSTransport":
        return self

    def version(self) -> str | None:
        return self.ssl.version()

    def fileno(self) -> int:
        return self.sock.fileno()

    def peer_certificate_der(self) -> bytes | None:
        try:
            return self.ssl.getpeercert(binary_form=True)
        except Exception:
            return None

    # ------------------------------------------------------------ async side

    async def _flush_async(self) -> None:
        data = self._pending + self._out.read()
        self._pending = b""
        view = memoryview(data)
        while view:
            try:
                n = self.sock.send(view)
                view = view[n:]
                continue
            except BlockingIOError:
                pass
            except OSError as e:
                raise TransportClosed(str(e)) from None
            await trio.lowlevel.wait_writable(self.sock)

    async def _fill_async(self) -> bool:
        """Read ciphertext from the socket into the TLS object; False at EOF."""
        while True:
            try:
                data = self.sock.recv(RECV_SIZE)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(self.sock)
                continue
            except OSError:
                data = b""
            if not data:
                self._in.write_eof()
                self._eof = True
                return False
            self._in.write(data)
            return True

    async def handshake(self) -> None:
        while True:
            try:
                self.ssl.do_handshake()
                await self._flush_async()
                return
            except ssl.SSLWantReadError:
                await self._flush_async()
                if not await self._fill_async():
                    raise ssl.SSLEOFError("the peer closed the connection during the TLS handshake")
            except ssl.SSLWantWriteError:  # pragma: no cover - memory BIOs do not ask
                await self._flush_async()

    async def receive(self) -> bytes:
        while True:
            try:
                data = self.ssl.read(RECV_SIZE)
                if self._out.pending:
                    await self._flush_async()  # e.g. a TLS 1.3 key update answered
                return data
            except ssl.SSLWantReadError:
                if self._out.pending:
                    await self._flush_async()
                if self._eof or not await self._fill_async():
                    return b""
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return b""
            except (ssl.SSLError, TransportClosed):
                return b""

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        try:
            self.ssl.write(bytes(data))
        except ssl.SSLError as e:
            raise TransportClosed(str(e)) from None
        await self._flush_async()

    # ---------------------------------------------------------- reactor side

    @property
    def pending(self) -> bool:
        """Ciphertext not sent yet (kept here, or in the outgoing BIO, where
        the reactor's C core leaves what the kernel did not take)."""
        return bool(self._pending) or self._out.pending > 0

    def core_objects(self) -> tuple[object, ssl.MemoryBIO, ssl.MemoryBIO]:
        """What the reactor's C core drives this TLS object through
        (pgjit.gateway._relaycore.Core.set_tls)."""
        return self.ssl._sslobj, self._in, self._out  # type: ignore[attr-defined]

    @property
    def buffered(self) -> bool:
        """Plaintext (or ciphertext still to decrypt) inside the TLS object."""
        return self.ssl.pending() > 0 or self._in.pending > 0

    def flush(self) -> bool:
        """Send what ciphertext is left over; True when none is."""
        data = self._pending + self._out.read()
        if not data:
            self._pending = b""
            return True
        try:
            n = self.sock.send(data)
        except BlockingIOError:
            n = 0
        self._pending = data[n:]
        return not self._pending

    def recv_into(self, buf: bytearray) -> int:
        """Plaintext into ``buf``: its length, 0 at the end of the stream;
        BlockingIOError when none is there yet."""
        while True:
            try:
                n = self.ssl.read(len(buf), buf)
                if self._out.pending:
                    self.flush()
                return n
            except ssl.SSLWantReadError:
                if self._out.pending:
                    self.flush()
                if self._eof:
                    return 0
                data = self.sock.recv(RECV_SIZE)  # BlockingIOError: nothing there
                if not data:
                    self._in.write_eof()
                    self._eof = True
                    return 0
                self._in.write(data)
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return 0
            except ssl.SSLError as e:
                raise ConnectionResetError(str(e)) from None

    def send(self, data: bytes | bytearray | memoryview) -> int:
        """Encrypt and send ``data`` (see the class): len(data), or
        BlockingIOError while ciphertext of an earlier write is left over."""
        if self._pending and not self.flush():
            raise BlockingIOError()
        try:
            self.ssl.write(data)
        except ssl.SSLError as e:
            raise BrokenPipeError(str(e)) from None
        self.flush()
        return len(data)

    async def aclose(self) -> None:
        if self.closed:
            return
        self.closed = True
        # A close_notify if it goes at once; never wait for the peer's.
        try:
            self.ssl.unwrap()
        except Exception:
            pass
        try:
            self.flush()
        except Exception:
            pass
        _close(self.sock)


async def start_tls(
    transport: SocketTransport, ctx: ssl.SSLContext, *, server_side: bool, server_hostname: str | None = None
) -> TLSTransport:
    transport.closed = True  # the socket is the TLS transport's now
    tls = TLSTransport(transport.sock, ctx, server_side=server_side, server_hostname=server_hostname)
    try:
        await tls.handshake()
    except BaseException:
        # A failed or timed-out handshake closes the socket here (not left to
        # the garbage collector).
        tls.closed = True
        _close(tls.sock)
        raise
    return tls


async def open_tcp(host: str, port: int) -> SocketTransport:
    stream = await trio.open_tcp_stream(host, port)
    tsock = stream.socket
    return SocketTransport.from_trio_socket(tsock)
