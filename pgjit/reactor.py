"""A shared epoll loop that relays every plain-TCP session, inside trio.

With a task per direction, each message costs a trio wakeup (scheduler pass,
``epoll_ctl`` re-arm, coroutine switch) on top of its syscalls. Here one trio
task waits on one epoll instance that holds every relayed socket
(level-triggered, registered once), and handles each ready socket
synchronously: read what is there, let the session's ``from_client`` /
``from_server`` decide what to forward, write it. Only a write that would block
is kept (one read's worth at most) and waited for with EPOLLOUT, while the
side that produced it stops being read: backpressure, bounded memory.

The session's own task just waits for its relay to finish; cancelling it
(shutdown, token expiry) closes the relay. TLS sessions keep the task pair.
"""

from __future__ import annotations

import logging
import select
import socket
from typing import TYPE_CHECKING

import trio

from pgjit.transport import RECV_SIZE, SocketTransport

if TYPE_CHECKING:  # pragma: no cover
    from pgjit.session import Session

log = logging.getLogger("pgjit.reactor")

_IN, _OUT = select.EPOLLIN, select.EPOLLOUT
_ERR = select.EPOLLERR | select.EPOLLHUP
# Events handled per wakeup before yielding to the rest of trio.
_BATCH = 256


class Relay:
    """One session's two sockets inside the reactor."""

    def __init__(self, reactor: "Reactor", session: "Session", client: SocketTransport, upstream: SocketTransport) -> None:
        self.reactor = reactor
        self.session = session
        self.client = client.sock
        self.upstream = upstream.sock
        self.cfd = self.client.fileno()
        self.ufd = self.upstream.fileno()
        self._backlog: dict[int, memoryview | None] = {self.cfd: None, self.ufd: None}  # unsent, per destination
        self._mask = {self.cfd: _IN, self.ufd: _IN}
        self._done = trio.Event()
        self.error: BaseException | None = None
        self.closed = False
        # One receive buffer per direction. Bytes read from the upstream are
        # handed on as a view of its buffer (no copy); that buffer is not
        # read into again while any of it waits to be sent, because the
        # upstream is not read while the client has a backlog.
        self._cbuf = bytearray(RECV_SIZE)
        self._ubuf = bytearray(RECV_SIZE)
        reactor._register(self)

    @property
    def client_mid_message(self) -> bool:
        return self._backlog[self.cfd] is not None or self.session._s_skip > 0

    async def finished(self) -> None:
        await self._done.wait()
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.reactor._unregister(self)
            self._done.set()

    def _finish(self, error: BaseException | None = None) -> None:
        if self.error is None:
            self.error = error
        self.close()

    # -------------------------------------------------------------- events

    def feed_client(self, data: bytes) -> None:
        out, stop = self.session.from_client(data)
        if out:
            self._send(self.ufd, out)
        if stop:
            self.session.end_reason = "ok"
            self._finish()

    def on_event(self, fd: int, ev: int) -> None:
        try:
            if ev & _OUT:
                self._flush(fd)
            if ev & (_IN | _ERR) and not self.closed and self._mask[fd] & _IN:
                if fd == self.cfd:
                    self._read_client()
                else:
                    self._read_upstream()
        except BaseException as e:  # ProtocolViolation, an internal error: the session reports it
            self._finish(e)

    @staticmethod
    def _recv(sock: socket.socket, buf: bytearray) -> memoryview | None:
        try:
            n = sock.recv_into(buf)
        except (BlockingIOError, InterruptedError):
            return None
        except (ConnectionResetError, ConnectionAbortedError, TimeoutError, OSError):
            n = 0
        return memoryview(buf)[:n]

    def _read_client(self) -> None:
        view = self._recv(self.client, self._cbuf)
        data = None if view is None else view.tobytes()  # client messages are small: copy
        if data is None:
            return
        if not data:
            self.session.end_reason = "client_gone"
            self._finish()
            return
        self.feed_client(data)

    def _read_upstream(self) -> None:
        data = self._recv(self.upstream, self._ubuf)
        if data is None:
            return
        if not data:
            self.session._client_mid_message = self.client_mid_message
            self.session.upstream_eof()
            self._finish()
            return
        out = self.session.from_server(data)
        if out:
            self._send(self.cfd, out)

    # -------------------------------------------------------------- writes

    def _send(self, fd: int, data: bytes | bytearray | memoryview) -> None:
        sock = self.client if fd == self.cfd else self.upstream
        view = memoryview(data)
        try:
            n = sock.send(view)
        except (BlockingIOError, InterruptedError):
            n = 0
        except OSError:
            # The destination is gone: the session ends (its reader sees EOF).
            if fd == self.cfd:
                self.session.end_reason = "client_gone"
            self._finish()
            return
        if n < len(view):
            # Keep the rest, wait until writable, stop reading the source.
            self._backlog[fd] = view[n:]
            source = self.ufd if fd == self.cfd else self.cfd
            self._set_mask(fd, self._mask[fd] | _OUT)
            self._set_mask(source, self._mask[source] & ~_IN)

    def _flush(self, fd: int) -> None:
        view = self._backlog[fd]
        if view is None:
            self._set_mask(fd, self._mask[fd] & ~_OUT)
            return
        sock = self.client if fd == self.cfd else self.upstream
        try:
            n = sock.send(view)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._finish()
            return
        if n < len(view):
            self._backlog[fd] = view[n:]
            return
        self._backlog[fd] = None
        source = self.ufd if fd == self.cfd else self.cfd
        self._set_mask(fd, self._mask[fd] & ~_OUT)
        self._set_mask(source, self._mask[source] | _IN)

    def _set_mask(self, fd: int, mask: int) -> None:
        if self.closed or self._mask[fd] == mask:
            return
        self._mask[fd] = mask
        self.reactor._modify(fd, mask)


class Reactor:
    def __init__(self) -> None:
        self._ep = select.epoll()
        self._relays: dict[int, Relay] = {}

    def relay(self, session: "Session", client: SocketTransport, upstream: SocketTransport) -> Relay:
        return Relay(self, session, client, upstream)

    def _register(self, relay: Relay) -> None:
        for fd in (relay.cfd, relay.ufd):
            self._relays[fd] = relay
            self._ep.register(fd, _IN)

    def _modify(self, fd: int, mask: int) -> None:
        self._ep.modify(fd, mask)

    def _unregister(self, relay: Relay) -> None:
        for fd in (relay.cfd, relay.ufd):
            if self._relays.get(fd) is relay:
                del self._relays[fd]
                try:
                    self._ep.unregister(fd)
                except (OSError, ValueError):
                    pass

    async def run(self) -> None:
        ep = self._ep
        relays = self._relays
        try:
            while True:
                await trio.lowlevel.wait_readable(ep.fileno())
                for fd, ev in ep.poll(0, _BATCH):
                    relay = relays.get(fd)
                    if relay is not None:
                        relay.on_event(fd, ev)
        finally:
            for relay in list(relays.values()):
                relay._finish()
            ep.close()
