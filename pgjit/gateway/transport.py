"""The two kinds of socket the relay reads and writes: plain TCP and TLS.

The plain transport goes below trio's stream layer on purpose: it reads what
the kernel already has without waiting first and waits (``wait_readable``)
only when the socket would block, so a round trip costs one wakeup per
direction. trio's ``SocketStream.receive_some`` always checkpoints first, which
costs an extra scheduling pass and often an extra ``recv`` syscall.

TLS goes through ``trio.SSLStream``, whose per-record work dominates anyway.
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
        try:
            trio.lowlevel.notify_closing(self.sock)
        except Exception:
            pass
        self.sock.close()


class TLSTransport(Transport):
    tls = True

    def __init__(self, stream: trio.SSLStream) -> None:
        self.stream = stream
        self.closed = False

    async def receive(self) -> bytes:
        try:
            return await self.stream.receive_some(RECV_SIZE)
        except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError):
            return b""

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        try:
            await self.stream.send_all(bytes(data))
        except (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError) as e:
            raise TransportClosed(str(e)) from None

    def peer_certificate_der(self) -> bytes | None:
        try:
            return self.stream.getpeercert(binary_form=True)
        except Exception:
            return None

    async def aclose(self) -> None:
        if self.closed:
            return
        self.closed = True
        # Do not wait for the peer's close_notify; a dead peer must not hang us.
        with trio.move_on_after(1) as scope:
            scope.shield = True
            try:
                await self.stream.aclose()
            except Exception:
                pass
        if scope.cancelled_caught:
            try:
                await trio.aclose_forcefully(self.stream.transport_stream)
            except Exception:
                pass


async def start_tls(
    transport: SocketTransport, ctx: ssl.SSLContext, *, server_side: bool, server_hostname: str | None = None
) -> TLSTransport:
    stream = transport.to_trio_stream()
    ssl_stream = trio.SSLStream(
        stream, ctx, server_side=server_side, server_hostname=server_hostname, https_compatible=False
    )
    try:
        await ssl_stream.do_handshake()
    except BaseException:
        # A failed or timed-out handshake: the socket now belongs to the
        # trio stream, so it is closed here (not left to the garbage collector).
        await trio.aclose_forcefully(stream)
        raise
    return TLSTransport(ssl_stream)


async def open_tcp(host: str, port: int) -> SocketTransport:
    stream = await trio.open_tcp_stream(host, port)
    tsock = stream.socket
    return SocketTransport.from_trio_socket(tsock)
