"""A shared epoll loop that relays every plain-TCP session, inside trio.

With a task per direction, each message costs a trio wakeup (scheduler pass,
``epoll_ctl`` re-arm, coroutine switch) on top of its syscalls. Here one trio
task waits on one epoll instance that holds every relayed socket
(level-triggered, registered once), and handles each ready socket
synchronously: read what is there, let the session's ``from_client`` /
``from_server`` decide what to forward, write it. Only a write that would block
is kept (one read's worth at most) and waited for with EPOLLOUT, while the
side that produced it stops being read: backpressure, bounded memory.

When the optional C module ``pgjit.gateway._relaycore`` is built, its ``pump`` takes
the reads that need no Python at all (whole frames that only move the
ReadyForQuery count: a Query, its reply) and relays them itself; every other
read comes back here. The session's counters then live in the C ``Core``.
``PGJIT_RELAY_CORE=python`` turns the C path off (the tests run both).

The session's own task just waits for its relay to finish; cancelling it
(shutdown, token expiry) closes the relay. TLS sessions are relayed the same
way: the C core reads and makes their records on the session's own TLS object
(pgjit.gateway.transport.TLSTransport), Python does for the reads it takes.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import time
import traceback
from typing import TYPE_CHECKING, Callable, Protocol

import trio

from pgjit.gateway import recording
from pgjit.gateway.relay import RelayCounters
from pgjit.gateway.transport import RECV_SIZE, SocketTransport

try:  # the optional C hot path (setup.py); the Python below is the reference
    from pgjit.gateway import _relaycore
except ImportError:  # pragma: no cover - only where it could not be built
    _relaycore = None

if TYPE_CHECKING:  # pragma: no cover
    from pgjit.gateway.relay import Relay


class RelayedSession(Protocol):
    """What the reactor needs of a session (pgjit.gateway.session.Session)."""

    relay: "Relay"
    end_reason: str
    _client_mid_message: bool

    def upstream_eof(self) -> None: ...

    def start_hold(self, channel: "Channel") -> None: ...  # a statement waits for an approval (pgjit.gateway.holds)

log = logging.getLogger("pgjit.gateway.reactor")

_IN, _OUT = select.EPOLLIN, select.EPOLLOUT
# Reads of one TLS socket per event at most (each up to the receive buffer):
# what the TLS object holds decrypted is read without waiting for an event.
_TLS_READS = 64
_ERR = select.EPOLLERR | select.EPOLLHUP
# Events handled per wakeup before yielding to the rest of trio.
_BATCH = 256
# Polls in a row, while each finds events, before trio runs other tasks
# (the Python relay; the C core's reactor slices by time instead).
_SPINS = 16
# How long the reactor relays (and waits for events in C) before trio runs
# its other tasks again: the most a login or a timer waits for the relayed
# sessions' traffic. (Each return to trio costs a scheduler pass in Python:
# 2 ms rather than 0.5 ms took 27.2 -> 23.6 us of CPU per pgbench -S
# transaction.)
_SLICE_NS = 2_000_000
# How often the statements the C cores finished go to the audit writer (one
# submit per session each time; the writer batches every 50 ms anyway).
DONE_EVERY = 0.01
# How often the reactor's keep_tracked task looks, relaying or not.
TRACKED_TICK = 0.05
# How long a statement the C core tracks may run before its record is made
# in Python (and written while it runs): Reactor._sweep_tracked.
TRACKED_SWEEP = 1.0

_C_MASKS: dict[tuple[frozenset[int], frozenset[int], bool], bytes] = {}
_Q, _P = b"Q"[0], b"P"[0]


def client_mask(watch: frozenset[int], count_only: frozenset[int], gated: bool) -> bytes:
    """The C path's code for each client frame type: relayed as is, counted,
    a Query or Parse for the gate callback, or (anything else the session
    watches) handed to Python."""
    key = (watch, count_only, gated)
    mask = _C_MASKS.get(key)
    if mask is None:
        rc = _relaycore
        counted = {b"Q"[0]: rc.C_QUERY, b"S"[0]: rc.C_SYNC, b"E"[0]: rc.C_EXECUTE}

        def code(t: int) -> int:
            if t not in watch:
                return rc.PASS
            if t in count_only and t in counted:
                return counted[t]
            if gated and t == _Q:
                return rc.C_GATED
            if gated and t == _P:
                return rc.C_GATED_PARSE
            return rc.PYTHON

        mask = _C_MASKS[key] = bytes(code(t) for t in range(256))
    return mask


def server_mask() -> bytes:
    """The C path's code for each server frame type: only ReadyForQuery and
    ErrorResponse mean anything to it. A read with a ParameterStatus goes to
    Python, which may end the session on it (pgjit.gateway.lexstate); they are rare."""
    rc = _relaycore
    # CopyInResponse too: whether a CopyDone ends a COPY (and which Syncs the
    # COPY swallowed) is the relay's to decide (Relay._count), once per COPY.
    codes = {b"Z"[0]: rc.S_READY, b"E"[0]: rc.S_ERROR, b"S"[0]: rc.PYTHON, b"G"[0]: rc.PYTHON}
    return bytes(codes.get(t, rc.PASS) for t in range(256))


def _audit_masks() -> tuple[bytes, bytes]:
    head, frame = 1, 2
    client = {b"Q"[0]: frame, b"P"[0]: frame, b"B"[0]: frame, b"E"[0]: frame,
              b"D"[0]: head, b"C"[0]: head, b"S"[0]: head}
    server = {t: head for t in b"123nTIsZHW"} | {b"C"[0]: frame, b"E"[0]: frame}
    return bytes(client.get(t, 0) for t in range(256)), bytes(server.get(t, 0) for t in range(256))


_AUDIT_CLIENT, _AUDIT_SERVER = _audit_masks()


def c_core_enabled() -> bool:
    return _relaycore is not None and os.environ.get("PGJIT_RELAY_CORE", "c") != "python"


class Channel:
    """One session's two sockets inside the reactor."""

    def __init__(self, reactor: "Reactor", session: RelayedSession, client: SocketTransport, upstream: SocketTransport) -> None:
        self.reactor = reactor
        self.session = session
        self.relay = relay = session.relay  # the I/O-free half (pgjit.gateway.relay)
        # A plain socket, or a TLS transport with the same recv_into/send/fileno
        # (pgjit.gateway.transport.TLSTransport). The C core makes and reads
        # the records of the reads it relays itself, on the same TLS object.
        self.tls = bool(client.tls or upstream.tls)
        self.client = client if client.tls else client.sock  # type: ignore[attr-defined]
        self.upstream = upstream if upstream.tls else upstream.sock  # type: ignore[attr-defined]
        self.cfd = self.client.fileno()
        self.ufd = self.upstream.fileno()
        self._backlog: dict[int, memoryview | None] = {self.cfd: None, self.ufd: None}  # unsent, per destination
        self._mask = {self.cfd: _IN, self.ufd: _IN}
        self._done = trio.Event()
        self.holding = False  # a statement of this session waits for an approval
        self.error: BaseException | None = None
        self.closed = False
        # A relay owns no receive buffer: every read goes into the reactor's
        # one (Reactor._buf), and nothing keeps a view of it past handling
        # that read (Relay.from_server keeps none; _keep copies).
        self.core = None
        self._log: bytearray | None = None
        self._tracker = False  # the core tracks simple Queries while Python's statement queue is empty
        self._tracking = False  # ... and _sync let it (the core's numbering counts until _claim)
        # A masked session's every server byte goes through its masker
        # (pgjit.masking.wire): its reads take the Python path.
        core = None
        if reactor.use_core and relay.masker is None:
            watch, count_only, max_size, backend_max = relay.relay_profile()
            gated = relay.gate is not None
            core = _relaycore.Core(self.cfd, self.ufd, client_mask(watch, count_only, gated),
                                   reactor.server_mask, max_size, backend_max)
            try:
                for side, transport in enumerate((self.client, self.upstream)):
                    if getattr(transport, "tls", False):
                        core.set_tls(side, *transport.core_objects())
            except (RuntimeError, TypeError, AttributeError) as e:
                # An ssl module whose objects the core does not know: this
                # session's TLS records are made in Python.
                log.warning("TLS session relayed in Python: %s", e)
                core = None
        if core is not None:
            if gated:
                core.gate = relay.gate_allows
                core.gate_shapes = relay.shape_verdicts
            old = relay.ctr
            for name in RelayCounters.__slots__:
                setattr(core, name, getattr(old, name))
            relay.ctr = core
            self.core = core
            if relay.recorder is not None:
                # What the core relays of the messages the server answers is
                # logged for the relay's statement queue (replay_log).
                self._log = bytearray()
                core.set_audit(self._log, _AUDIT_CLIENT, _AUDIT_SERVER)
                if relay.recorder.tracks:
                    # Simple Queries and their replies: the core keeps the
                    # statement queue itself while Python's is empty, and
                    # writes their entries (_relaycore.c, Statements).
                    core.set_tracker(bytearray(), reactor._dirty, self, recording._FINGERPRINTS,
                                     recording.fingerprint_of, relay.recorder.trailer())
                    self._tracker = True
            self._sync()
        reactor._register(self)

    @property
    def client_mid_message(self) -> bool:
        return self._backlog[self.cfd] is not None or self.relay._s_skip > 0

    async def finished(self) -> None:
        await self._done.wait()
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        if not self.closed:
            if self._tracker:
                # What the core tracked: finished, to the writer; in flight,
                # to the queue (the session then records it as unanswered).
                self._claim()
                self._submit_done()
                self.core.drop_tracker()  # type: ignore[union-attr]  # it refers back to this channel
                self._tracker = False
            self.closed = True
            if self.core is not None:
                self.core.gate = None  # the bound method refers back to the session
                self.reactor._gate_reused_closed += self.core.gate_reused
            self.reactor._unregister(self)
            self._done.set()

    def _finish(self, error: BaseException | None = None) -> None:
        if self.error is None:
            self.error = error
            if error is not None:
                # The error is kept until the session reports it; the frames
                # of its traceback must not keep their locals, among them
                # views of the shared receive buffer, which the C pump may
                # hand to another session as that session's own.
                _drop_locals(error)
        self.close()

    # -------------------------------------------------------------- audit

    def _claim(self) -> None:
        """Python is about to handle this session: the statements the core's
        tracker has in flight move to the relay's queue (in order, ahead of
        anything Python queues next), and the core stops tracking until
        _sync lets it again. Every entry point that may reach the relay
        calls this first."""
        if not self._tracking:
            return
        # The core numbered the statements since _sync let it track (it may
        # have stopped by itself since, at a frame it does not track).
        self._tracking = False
        core, relay = self.core, self.relay
        tracked = core.reclaim()  # type: ignore[union-attr]
        queue = relay.queue
        queue.seq = core.seq  # type: ignore[union-attr]
        if tracked:
            for st, item in zip(queue.adopt(tracked), tracked):
                relay.recorder.adopted(st, item[3] / 1e6)

    def _submit_done(self) -> None:
        done = self.core.take_done()  # type: ignore[union-attr]
        if done is not None:
            self.relay.recorder.entries(*done)

    # -------------------------------------------------------------- events

    def feed_client(self, data: bytes) -> None:
        if self._tracker:
            self._claim()
        out, stop = self.relay.from_client(data)
        if out:
            self._send(self.ufd, out)
        if self.relay.hold is not None and not self.holding:
            # A statement waits for an approval (the session's hold task calls
            # release). The client is still read: what it sends waits behind
            # the held statement (bounded), and a client that goes away ends
            # the session, which withdraws the request.
            self.holding = True
            self.session.start_hold(self)
        if stop:
            self.session.end_reason = "ok"
            if self.relay.terminating:
                # A Terminate went upstream: the client is not read again, and
                # its socket closes after the server's, once what the server
                # still sends (the reply of a query that was running) is through.
                self._set_mask(self.cfd, self._mask[self.cfd] & ~_IN)
            else:
                self._finish()
        self._sync()

    def send_between(self, data: bytes) -> None:
        """Bytes of pgjit's own (a NOTICE) for the client, at a message
        boundary: after what is queued for it; not while a large row streams."""
        if self.closed or self.relay._s_skip:
            return
        backlog = self._backlog[self.cfd]
        if backlog is not None:
            self._backlog[self.cfd] = memoryview(bytes(backlog) + data)
            return
        self._send(self.cfd, data)

    def release(self, error: BaseException | None) -> None:
        """The held statement was decided (None: it runs; else the error it is
        refused with): what the client sent from it on goes through the relay
        again, and the client is read again unless another statement is held."""
        if self.closed:
            return
        try:
            if self._tracker:
                self._claim()
            data = self.relay.release(error)  # type: ignore[arg-type]
            self.holding = False
            if data:
                self.feed_client(data)
            self._sync()
        except BaseException as e:
            self._finish(e)

    def _sync(self) -> None:
        """Tell the C path which directions it may take: none with bytes
        carried over, a backlog, or a refusal's reply still to rewrite."""
        core = self.core
        if core is not None:
            relay, backlog = self.relay, self._backlog
            halted = relay.halted
            core.c_fast = (not halted and not relay.terminating and backlog[self.ufd] is None and relay._c_pending is None
                           # approvals: a held statement, or prepared ones whose Executes are held
                           and relay.hold is None and not relay._approval_stmts
                           # the audit store failing: statements take the Python path, which
                           # records each before it goes up, or refuses it (fail_closed)
                           and (relay.recorder is None or not relay.recorder.degraded))
            core.s_fast = (
                not halted
                and not relay.terminating  # the drain after Terminate watches each ReadyForQuery
                and not relay._copy_ends  # so does deciding whether a CopyDone ended a COPY
                and not relay._copy_ins  # and the ReadyForQuery that ends a COPY the server announced
                and backlog[self.cfd] is None
                and relay._s_skip == 0
                and relay._s_pending is None
                and not relay._rewrites
            )
            if self._tracker:
                track = core.c_fast and not self._log and not relay.queue and not self.closed
                if track != self._tracking:
                    if track:
                        core.seq = relay.queue.seq
                        core.track = self._tracking = True
                    else:
                        self._claim()

    def on_event(self, fd: int, ev: int) -> None:
        try:
            if self._tracker:
                self._claim()
            if fd == self.cfd and ev & _ERR and self.relay.terminating:
                self._finish()  # the client went away after its Terminate: nobody to answer
                return
            if ev & _OUT:
                self._flush(fd)
            if ev & (_IN | _ERR) and not self.closed and self._mask[fd] & _IN:
                if fd == self.cfd:
                    self._read_client()
                else:
                    self._read_upstream()
            self._sync()
        except BaseException as e:  # ProtocolViolation, an internal error: the session reports it
            self._finish(e)

    def _drain_log(self) -> None:
        log = self._log
        if log:
            data = bytes(log)
            del log[:]
            self.relay.replay_log(data)
        if self.core.audit_lost:  # type: ignore[union-attr]
            from pgjit.errors import AuditUnavailableError

            raise AuditUnavailableError("terminating connection: pgjit could not record what this session sent",
                                        severity="FATAL")

    def on_report(self, fd: int, ev: int, n: int, sent: int, data: bytes | bytearray | None) -> None:
        """What the C path left for Python (see _relaycore.c for the codes).
        ``data`` is this read's own (no other read of the batch reuses it)."""
        if self._log is not None and not self.closed:
            try:
                if self._tracker:
                    self._claim()  # first: what the core tracked came before what it logged
                self._drain_log()  # then: what the core relayed came before this
            except BaseException as e:
                self._finish(e)
                return
        if n == -3:  # relayed, or TLS bytes wait
            if self.tls and not self.closed:
                self._tls_waiting()
            if self._tracker and not self.closed:
                self._sync()  # the log is replayed: the core may track again
            return
        if n < 0:
            self.on_event(fd, ev)
            return
        try:
            if self.closed:
                return
            if sent == -1:  # read, not looked at: data[:n], or the end of the stream
                if not n:
                    data = b""
                elif len(data) != n:
                    del data[n:]  # a buffer the C path gave up: ours alone, no copy
                if fd == self.cfd:
                    self._got_client(data)
                else:
                    self._got_upstream(memoryview(data))
            elif sent == -2:  # relayed and counted; the destination is gone
                self._send_failed(self.ufd if fd == self.cfd else self.cfd)
            else:  # relayed and counted; data is what was not written
                self._keep(self.ufd if fd == self.cfd else self.cfd, data)
            if self.tls and not self.closed:
                self._tls_waiting()
            self._sync()
        except BaseException as e:
            self._finish(e)

    def _tls_waiting(self) -> None:
        """After the C core read or wrote a TLS side: records it left unsent
        wait for writable; plaintext it left decrypted is read on the next poll."""
        for fd, sock in ((self.cfd, self.client), (self.ufd, self.upstream)):
            if getattr(sock, "tls", False):
                if self._backlog[fd] is None and sock.pending:
                    self._keep(fd, b"")
                # (ciphertext the core wrote into the TLS object is never more
                # than one partial record once decrypted: its reads fit the buffer)
                if self._mask[fd] & _IN and sock.ssl.pending():
                    self.reactor._tls_ready.add(self)

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
        for _ in range(_TLS_READS):
            view = self._recv(self.client, self.reactor._buf)
            if view is None:
                return
            data = view.tobytes()  # the session may keep it (an incomplete message): copy
            view.release()
            self._got_client(data)
            # TLS: decrypted bytes no socket event will announce are read now
            # (while the client is read at all: backpressure may have stopped it).
            if not (self.tls and data and not self.closed and self._mask[self.cfd] & _IN
                    and getattr(self.client, "buffered", False)):
                return
        self.reactor._tls_ready.add(self)  # more than one turn's worth: the rest on the next poll

    def _got_client(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            self.session.end_reason = "client_gone"
            self._finish()
            return
        self.feed_client(data)

    def _read_upstream(self) -> None:
        for _ in range(_TLS_READS):
            data = self._recv(self.upstream, self.reactor._buf)
            if data is None:
                return
            got = len(data)
            try:
                self._got_upstream(data)
            finally:
                data.release()
            if not (self.tls and got and not self.closed and self._mask[self.ufd] & _IN
                    and getattr(self.upstream, "buffered", False)):
                return
        self.reactor._tls_ready.add(self)

    def tls_ready(self) -> None:
        """TLS bytes decrypted (or received) but not read yet, on either side:
        read them now, as if their socket had said so."""
        if self.closed:
            return
        try:
            if self._tracker:
                self._claim()
            for fd, sock, read in ((self.cfd, self.client, self._read_client), (self.ufd, self.upstream, self._read_upstream)):
                if not self.closed and self._mask[fd] & _IN and getattr(sock, "buffered", False):
                    read()
            self._sync()
        except BaseException as e:
            self._finish(e)

    def _got_upstream(self, data: memoryview) -> None:
        if not data:
            self.session._client_mid_message = self.client_mid_message
            self.session.upstream_eof()
            self._finish()
            return
        out = self.relay.from_server(data)
        if out:
            self._send(self.cfd, out)
        if self.relay.halted:
            self._halt()

    def _halt(self) -> None:
        """The session halted (a lexer setting the gate does not model): read
        neither side again, drop client bytes not yet sent upstream, and end
        once the client has what came before (then the session sends the FATAL)."""
        self._backlog[self.ufd] = None
        self._set_mask(self.ufd, 0)
        if self._backlog[self.cfd] is None:
            self._finish()
        else:
            self._set_mask(self.cfd, _OUT)

    # -------------------------------------------------------------- writes

    def _send(self, fd: int, data: bytes | bytearray | memoryview) -> None:
        sock = self.client if fd == self.cfd else self.upstream
        view = memoryview(data)
        try:
            n = sock.send(view)
        except (BlockingIOError, InterruptedError):
            n = 0
        except OSError:
            self._send_failed(fd)
            return
        if n < len(view):
            self._keep(fd, view[n:])
        elif getattr(sock, "pending", False):
            self._keep(fd, b"")  # TLS records the kernel did not take yet: wait until writable

    def _send_failed(self, fd: int) -> None:
        # The destination is gone: the session ends (its reader sees EOF).
        if fd == self.cfd:
            self.session.end_reason = "client_gone"
        self._finish()

    def _keep(self, fd: int, rest: bytes | memoryview) -> None:
        """Keep what a write left (a copy, unless it is bytes already: the
        receive buffer is shared), wait until writable, stop reading the source."""
        self._backlog[fd] = memoryview(rest if isinstance(rest, bytes) else bytes(rest))
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
            if len(view):
                n = sock.send(view)
            else:  # only TLS records left over
                n = 0
                if not sock.flush():
                    return
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._finish()
            return
        if n < len(view):
            self._backlog[fd] = view[n:]
            return
        if getattr(sock, "pending", False):
            self._backlog[fd] = memoryview(b"")
            return
        self._backlog[fd] = None
        if self.relay.halted:
            self._finish()
            return
        source = self.ufd if fd == self.cfd else self.cfd
        self._set_mask(fd, self._mask[fd] & ~_OUT)
        if source == self.cfd and self.relay.terminating:
            return  # nothing more is read from a client that sent Terminate
        self._set_mask(source, self._mask[source] | _IN)
        if self.tls:
            # What the TLS object decrypted while the source was not read: no
            # socket event will announce it.
            self.reactor._tls_ready.add(self)

    def _set_mask(self, fd: int, mask: int) -> None:
        if self.closed or self._mask[fd] == mask:
            return
        self._mask[fd] = mask
        self.reactor._modify(fd, mask)


def _drop_locals(error: BaseException) -> None:
    """Clear the locals of the finished frames in ``error``'s traceback and
    in those of the exceptions chained to it (the report needs only code
    and line numbers)."""
    seen: set[int] = set()
    todo = [error]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        traceback.clear_frames(e.__traceback__)
        todo += [e.__cause__, e.__context__]
        if isinstance(e, BaseExceptionGroup):
            todo += e.exceptions


class Reactor:
    def __init__(self, *, use_core: bool | None = None) -> None:
        self._ep = select.epoll()
        self._epfd = self._ep.fileno()
        self._relays: dict[int, Channel] = {}
        self._cores: dict[int, object] = {}  # fd -> the C Core of its relay
        self.use_core = c_core_enabled() if use_core is None else use_core
        self.server_mask = server_mask() if self.use_core else b""
        # The one receive buffer of every relay. The C pump may hand a large
        # read to Python together with this buffer and put a fresh one in its
        # place, so it is always reached through the list.
        self._bufs = [bytearray(RECV_SIZE)]
        # Channels whose TLS objects hold bytes no socket event will announce.
        self._tls_ready: set[Channel] = set()
        # Channels whose core finished tracked statements since the last look
        # (each core appends its channel; _take_done empties it in place).
        self._dirty: list[Channel] = []
        self._tracked_sweep_at = 0.0
        self._done_due = 0.0
        # Set by the gateway when it keeps an audit trail: is its store failing?
        self.audit_degraded: Callable[[], bool] | None = None
        # The audit writer's pump (pgjit.audit.process.ProcessWriter.pump):
        # what is queued goes down its pipe from this thread as the cores'
        # entries are handed over, not from a thread that takes the GIL.
        self.audit_pump: Callable[[], None] | None = None
        self._degraded = False
        self._gate_reused_closed = 0  # Core.gate_reused of the sessions that ended

    @property
    def tracked_records(self) -> int:
        """Statements the C cores hold the records of (finished, not handed
        to the writer yet, or still running): pgjit_audit_queue_depth."""
        return sum(ch.core.done_count + ch.core.in_flight for ch in set(self._relays.values()) if ch._tracker)

    @property
    def gate_reused(self) -> int:
        """Queries the C cores let through on a verdict the gate gave for
        their shape earlier in the session (pgjit_gate_reused_total)."""
        return self._gate_reused_closed + sum(c.gate_reused for c in set(self._cores.values()))

    @property
    def _buf(self) -> bytearray:
        return self._bufs[0]

    def attach(self, session: RelayedSession, client: SocketTransport, upstream: SocketTransport) -> Channel:
        return Channel(self, session, client, upstream)

    def _register(self, relay: Channel) -> None:
        for fd in (relay.cfd, relay.ufd):
            self._relays[fd] = relay
            if relay.core is not None:
                self._cores[fd] = relay.core
            self._ep.register(fd, _IN)

    def _modify(self, fd: int, mask: int) -> None:
        self._ep.modify(fd, mask)

    def _unregister(self, relay: Channel) -> None:
        for fd in (relay.cfd, relay.ufd):
            if self._relays.get(fd) is relay:
                del self._relays[fd]
                self._cores.pop(fd, None)
                try:
                    self._ep.unregister(fd)
                except (OSError, ValueError):
                    pass

    def poll(self) -> bool:
        """Handle the events that are ready now, without waiting; False when
        there were none."""
        if self._serve_tls_ready():
            self._poll()
            return True
        return self._poll()

    def _serve_tls_ready(self) -> bool:
        """Read what TLS objects hold decrypted (no socket event announces
        it); True when any channel had some."""
        ready = self._tls_ready
        if not ready:
            return False
        self._tls_ready = set()
        for channel in ready:
            channel.tls_ready()
        return True

    def _watch_audit(self) -> None:
        watch = self.audit_degraded
        if watch is not None and watch() != self._degraded:
            # The audit store started (or stopped) failing: every audited
            # session's client reads leave the C path now (or may take it
            # again), not at their next event.
            self._degraded = not self._degraded
            for channel in set(self._relays.values()):
                channel._sync()

    def _dispatch(self, reports: list) -> None:
        relays = self._relays
        for fd, ev, n, sent, data in reports:
            relay = relays.get(fd)
            if relay is not None:
                relay.on_report(fd, ev, n, sent, data)

    def _run_slice(self, budget_us: int) -> None:
        """The C core relays until it leaves something for Python or
        budget_us have passed (pgjit.gateway._relaycore.run_slice)."""
        if self._serve_tls_ready():
            budget_us = 0  # and poll once, without waiting
        self._watch_audit()
        reports = _relaycore.run_slice(self._epfd, _BATCH, self._cores, self._bufs, budget_us)
        if reports is not None:
            self._dispatch(reports)
        if self._dirty or self.audit_pump is not None:
            now = time.monotonic()
            if now >= self._done_due:
                self._done_due = now + DONE_EVERY
                self._take_done()

    async def keep_tracked(self) -> None:
        """What the C cores track reaches the audit writer when the reactor
        is idle too: finished statements every TRACKED_TICK (the reactor's
        slices take them sooner while it relays), and statements running for
        more than TRACKED_SWEEP move to their sessions' queues."""
        while True:
            await trio.sleep(TRACKED_TICK)
            if self._dirty:
                self._done_due = time.monotonic() + DONE_EVERY
                self._take_done()
            if self._tracked_sweep_at <= time.monotonic():
                self._sweep_tracked()

    def _sweep_tracked(self) -> None:
        """Statements the cores have had in flight for a while are taken into
        their sessions' queues (Channel._claim), whose records then reach the
        store while they run: the trail shows a long statement before its
        answer comes, as it does for every statement the Python path relays."""
        now = time.monotonic()
        self._tracked_sweep_at = now + TRACKED_SWEEP
        limit = int((now - TRACKED_SWEEP) * 1e9)
        for channel in {c for c in self._relays.values() if c._tracking}:
            try:
                since = channel.core.in_flight_since  # type: ignore[union-attr]
                if since is not None and since <= limit and not channel.closed:
                    channel._claim()
                    channel._sync()
            except BaseException as e:
                channel._finish(e)

    def _take_done(self) -> None:
        """The statements the cores finished, to the audit writer: one
        submit per session, every DONE_EVERY while relaying (TRACKED_TICK
        while idle)."""
        dirty = self._dirty
        for channel in dirty:
            if channel._tracker:
                channel._submit_done()
        dirty.clear()
        if self.audit_pump is not None:
            self.audit_pump()

    def _poll(self) -> bool:
        if self.use_core:
            self._watch_audit()
            reports = _relaycore.pump(self._epfd, _BATCH, self._cores, self._bufs)
            if reports is not None:
                self._dispatch(reports)
            if self._dirty:
                self._take_done()
            return reports is not None
        events = self._ep.poll(0, _BATCH)
        relays = self._relays
        for fd, ev in events:
            relay = relays.get(fd)
            if relay is not None:
                relay.on_event(fd, ev)
        return bool(events)

    async def run(self) -> None:
        poll = self.poll
        epfd = self._epfd
        core = self.use_core and _relaycore is not None
        now = time.perf_counter_ns
        try:
            while True:
                if self._tls_ready:
                    await trio.lowlevel.checkpoint()  # decrypted bytes wait: no epoll event will come for them
                else:
                    await trio.lowlevel.wait_readable(epfd)
                if not core:
                    # While events keep coming, poll again before going back to
                    # trio: a reply has often arrived by the time a batch is
                    # done, and a trio wakeup costs more than an empty poll.
                    for _ in range(_SPINS):
                        if not poll():
                            break
                    continue
                # A slice of relaying without trio: pump what is ready and,
                # when nothing is, wait for the next event in C with the GIL
                # released (a reply is usually some tens of microseconds
                # away), until the slice is over; then trio runs its other
                # tasks (logins, approval holds, timers), which wait at most
                # this long. The loop is C's (run_slice): it returns when it
                # leaves something for Python, handled here, or when the
                # slice is over.
                end = now() + _SLICE_NS
                while True:
                    left = (end - now()) // 1000
                    if left <= 0:
                        break
                    self._run_slice(left)
        finally:
            for relay in list(self._relays.values()):
                relay._finish()
            self._ep.close()
