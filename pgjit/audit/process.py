"""The audit writer in a process of its own.

The gateway's relay is one Python thread; the writer's work (sealing each
record into the hash chain, SHA-256 over its JSON, the store's inserts) is
a few microseconds per statement. In a thread of the gateway's process it
shares the GIL with the relay, and every time it holds it the relay waits:
on pgbench -S, 8 clients, the audit cost 21 % of TPS although the writer's
own work was under 4 % of a core (BENCHMARKS.md, "Audit"). Here it runs in
a child process (``python -m pgjit.audit.process``), the same Writer
(pgjit.audit.writer) on the same Store, and the gateway keeps only what
must stay with the statements: the bounded queue, and the sending. What
is queued is taken, the Deferred records built (they refer to live
Statements), and written down the pipe in one write by ``pump``, which the
relay's own thread calls as it hands the C cores' entries over: the pipe
never blocks it (what it did not take of a frame waits, ahead of the rest,
for the next send), and no other thread takes the GIL from the relay for
it. A sender thread sends what the pumps leave (the pipe was full, more
than a pump takes, an idle reactor) every ``interval`` or when a batch's
worth waits, and the end frame at shutdown.

ProcessWriter has the Writer's interface (submit, flush, close, depth,
failing, store_errors, written, last_error, chain, on_error), so the
gateway cannot tell them apart. What it adds (and ``pump``):

- **Acknowledgements.** The child writes a status line (JSON) after each
  batch it stored or failed to store: the queue entries it has stored so
  far, its errors, whether it is failing. ``depth`` is what is queued here
  plus what was sent and not yet acknowledged; ``submit`` refuses (fail
  closed) once that reaches ``capacity``, as the thread writer does while
  the store is down. Sent and not acknowledged for STALL_SECONDS, the
  writer is ``failing`` (a store that stopped answering gives no error;
  pgjit.audit.writer.WriterHealth).
- **A child that dies** (killed, out of memory) is started again, with a
  new chain (the old one ends without a final checkpoint, as a gateway
  crash leaves it), and everything sent to it and not acknowledged is sent
  to the new one. A record stored by the old child in the instant between
  its insert and its acknowledgement is then stored twice, each copy in
  its own chain: possibly twice, never lost. While no child runs the
  writer is ``failing`` (readiness, metrics) and the queue fills.
- **Shutdown.** ``close`` sends what is queued and then an end frame; the
  child writes the rest and the final checkpoint and exits. A child whose
  pipe closes without an end frame (the gateway died) does the same.

The wire between them is frames: a type byte, a 4-byte big-endian length,
the payload. To the child: ``I`` (first, once: the settings as JSON,
checkpoint key included: never on a command line), ``D`` (a record, JSON),
``E`` (a core's Entries, the frame as the core wrote it: pgjit.audit.writer.Entries),
``X`` (end). From the child: one JSON object per line.
"""

from __future__ import annotations

import array
import collections
import itertools
import json
import logging
import os
import secrets
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from typing import Any, Callable

from pgjit.audit.errors import short_error
from pgjit.audit.writer import AuditUnavailable, Deferred, Entries, WriterHealth

log = logging.getLogger("pgjit.audit.process")

_LEN = struct.Struct(">I")


def _make_dumps():  # type: ignore[no-untyped-def]
    """JSON, ASCII only (a lone surrogate crosses the pipe as an escape),
    with the C encoder made once (as pgjit.audit.chain does)."""
    enc = json.JSONEncoder(ensure_ascii=True, separators=(",", ":"))
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # pragma: no cover - no C accelerator
        return enc.encode
    c = make(None, enc.default, json.encoder.encode_basestring_ascii, None, ":", ",", False, False, True)
    join = "".join

    def dumps(o: Any) -> str:
        return join(c(o, 0))

    return dumps


_dumps = _make_dumps()

#: The pipe to the writer process, in bytes (Linux's default most).
PIPE_SIZE = 1 << 20
#: The writer process's niceness (child_main).
NICE = 10
#: The longest wait between two attempts to start a child that died.
RESPAWN_MAX = 5.0
#: Seconds a writer process may take to start (its store opened: a
#: PostgreSQL store's connect gives up after 10 s, pgjit.audit.store).
START_TIMEOUT = 30.0
#: Bytes per record of ``capacity`` that what was sent and not acknowledged
#: may hold before the writer is degraded (pgjit.audit.writer.WriterHealth):
#: one queue entry may be a C core's Entries, tens of statements, so a
#: store that is slow but answers must not let them pile up in memory
#: (51 MB at the default 100,000 records).
BYTES_PER_RECORD = 512
#: ... and 4 MB at least (a small buffer must not degrade a busy gateway).
MIN_BYTES = 4 << 20
#: Queue entries one pump (the relay's own thread) takes at most: the
#: rest waits for the next pump or the sender thread.
PUMP_MAX = 256


def _frame(kind: bytes, payload: bytes) -> bytes:
    return kind + _LEN.pack(len(payload)) + payload


_WRITE = _frame(b"W", b"")


class ProcessWriter(WriterHealth):
    """The gateway's side of the audit writer process (module docstring)."""

    def __init__(
        self,
        url: str,
        key: bytes,
        *,
        capacity: int = 100_000,
        batch: int = 1000,
        interval: float = 0.05,
        checkpoint_every: int = 1000,
        checkpoint_seconds: float = 10.0,
        retry_max: float = 5.0,
        sink: str | None = None,
        log_level: str = "info",
        log_file: str | None = None,
        python: str | None = None,
    ) -> None:
        self.url = url
        self.key = key
        self.capacity = capacity
        self.batch = batch
        self.interval = interval
        self.settings = {"checkpoint_every": checkpoint_every, "checkpoint_seconds": checkpoint_seconds,
                         "retry_max": retry_max, "sink": sink, "batch": batch, "log_level": log_level,
                         "log_file": log_file}
        self.sink = sink
        self.python = python or sys.executable
        self._queue: collections.deque[Any] = collections.deque()
        self._wake = threading.Condition()
        self._closing = False
        self._ended = False  # the sender sent everything and the end frame
        self._close_deadline = 0.0
        self._urgent = False
        self._taking = 0  # entries the sender took off the queue and has not counted as sent yet
        # Every entry sent gets the next number (from 0); the child's
        # acknowledgements count entries stored, in the order sent.
        self._sent = 0
        self._acked = 0
        # What was sent and not acknowledged: (number of its first entry,
        # the bytes sent, each entry's offset in them), for a child that dies.
        self._unacked: collections.deque[tuple[int, bytes, array.array]] = collections.deque()
        # Since when the child owes an acknowledgement (0.0: it owes none):
        # the oldest unacknowledged send, or the last acknowledgement that
        # left some owing. STALL_SECONDS of it and the writer is failing
        # (WriterHealth): a store that does not answer gives no error.
        self._ack_since = 0.0
        self._unacked_bytes = 0  # the bytes of _unacked's chunks
        self.max_bytes = max(capacity * BYTES_PER_RECORD, MIN_BYTES)
        self._lock = threading.Lock()  # _unacked, _acked and the child, between the sender and the receiver
        # One sender at a time, the relay's thread (pump) or the sender
        # thread; taken before _lock. What the pipe has not taken yet of the
        # last chunk sent (the pipe does not block: a pump never waits).
        self._send_lock = threading.Lock()
        self._pending = memoryview(b"")
        self._pending_entries = 0  # the entries of the chunk in _pending (piped once all of it is)
        self._proc: subprocess.Popen[bytes] | None = None
        self._child_errors = 0  # the current child's store errors so far (its own count)
        self._child_base = 0  # the number of the first entry the current child was sent
        self._chain = ""
        self._sender: threading.Thread | None = None
        self._receiver: threading.Thread | None = None
        self._stopped = threading.Event()
        self.piped = 0  # entries the pipe took (sent, as far as this process goes)
        self.children = 0  # children started (1 unless one died)
        self.written = 0
        self.store_errors = 0
        self.failing = False
        self.last_error = ""
        self.on_error: Callable[[], None] | None = None

    # ----------------------------------------------------------- the API

    @property
    def chain(self) -> str:
        """The current child's chain."""
        return self._chain

    @property
    def depth(self) -> int:
        """Entries queued here, or sent and not yet in the store."""
        return len(self._queue) + self._taking + self._sent - self._acked

    def _waiting_since(self) -> float:
        return self._ack_since

    def _over_bytes(self) -> bool:
        return self._unacked_bytes >= self.max_bytes

    def start(self) -> "ProcessWriter":
        with self._lock:
            self._spawn()
        self._sender = threading.Thread(target=self._send_loop, name="pgjit-audit-sender", daemon=True)
        self._sender.start()
        return self

    def submit(self, record: dict[str, Any] | Deferred | Entries, *, force: bool = False) -> None:
        """As Writer.submit: queue one record (no I/O); raises
        AuditUnavailable when ``capacity`` entries wait, unless ``force``."""
        q = self._queue
        if not force and len(q) + self._taking + self._sent - self._acked >= self.capacity:
            raise AuditUnavailable(
                f"the audit store cannot be written ({self.last_error or 'writes are behind'}) "
                f"and {self.capacity} records are waiting"
            )
        if type(record) is dict and "at" not in record:
            record["at"] = time.time()
        q.append(record)
        if len(q) == self.batch:
            with self._wake:
                self._wake.notify()

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything submitted so far is in the store."""
        deadline = time.monotonic() + timeout
        while self.depth:
            with self._wake:
                self._urgent = True
                self._wake.notify()
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True

    def close(self, timeout: float = 30.0) -> bool:
        """Send what is queued, end the child (it writes the rest and a
        final checkpoint); True when all of it reached the store in time."""
        deadline = self._close_deadline = time.monotonic() + timeout
        with self._wake:
            self._closing = True
            self._wake.notify()
        if self._sender is not None:
            self._sender.join(max(0.0, deadline - time.monotonic()))
        proc = None
        while self._proc is not proc:  # a child that died while closing is replaced: wait for that one
            proc = self._proc
            if proc is None:
                break
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("the audit writer process did not finish in time; stopping it",
                          extra={"queued": self.depth, "error": self.last_error})
                self._stopped.set()
                proc.kill()
                proc.wait()
                break
            if proc.returncode != 0:
                time.sleep(0.05)  # the receiver may be starting another
                with self._lock:
                    pass
                if time.monotonic() > deadline:
                    break
        self._stopped.set()
        if self._receiver is not None:
            self._receiver.join(max(0.1, deadline - time.monotonic()))
        return not self.depth and proc is not None and proc.returncode == 0

    # ------------------------------------------------------- the child

    def _write_end(self) -> None:
        """The end frame to the current child (self._lock held)."""
        try:
            _write_all(self._proc.stdin.fileno(), self._end_frame())  # type: ignore[union-attr]
            self._proc.stdin.close()  # type: ignore[union-attr]
        except (OSError, ValueError):
            pass  # the child died: the receiver starts another and sends it the end

    def _end_frame(self) -> bytes:
        """The end, with how long the child may take to write the rest."""
        left = max(1.0, self._close_deadline - time.monotonic())
        return _frame(b"X", f"{left:.3f}".encode())

    def _spawn(self) -> None:
        """Start a child (self._lock held) and send it the settings."""
        self._chain = secrets.token_hex(16)
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = dict(os.environ)
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        proc = subprocess.Popen([self.python, "-m", "pgjit.audit.process"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, bufsize=0, env=env, close_fds=True)
        assert proc.stdin is not None and proc.stdout is not None
        try:  # a send's worth in the pipe at once: the child reads it in a few reads, not a page at a time
            import fcntl

            fcntl.fcntl(proc.stdin.fileno(), getattr(fcntl, "F_SETPIPE_SZ", 1031), PIPE_SIZE)
        except (OSError, ImportError):
            pass
        init = dict(self.settings, url=self.url, key=self.key.hex(), chain=self._chain)
        try:
            proc.stdin.write(_frame(b"I", _dumps(init).encode()))
        except OSError:
            pass  # it died at once: the receiver sees it
        os.set_blocking(proc.stdin.fileno(), False)  # a pump never waits for the pipe (_write_all where one may)
        lines = _lines(proc.stdout.fileno())
        # The child is up (or says why not) within START_TIMEOUT: one that
        # hangs while starting must not hold the gateway's start, or the
        # locks a respawn holds, for ever.
        if select.select([proc.stdout.fileno()], [], [], START_TIMEOUT)[0]:
            hello = next(lines, b"")
            status = json.loads(hello) if hello.startswith(b"{") else {"fatal": "exited while starting"}
        else:
            status = {"fatal": f"no answer within {START_TIMEOUT:g} s"}
        if "fatal" in status:
            proc.kill()
            proc.wait()
            proc.stdin.close()
            proc.stdout.close()
            from pgjit.audit.store import StoreError

            raise StoreError(f"the audit writer process could not start: {status['fatal']}")
        self._proc = proc
        self._child_base = self._acked
        self._child_errors = 0
        self.children += 1
        self._receiver = threading.Thread(target=self._receive, args=(proc, lines), name="pgjit-audit-receiver", daemon=True)
        self._receiver.start()

    def _receive(self, proc: subprocess.Popen[bytes], lines: Any) -> None:
        """The child's status lines, until it exits; then a new child if
        this one died (not closing)."""
        for line in lines:
            try:
                status = json.loads(line)
            except ValueError:
                continue
            self._status(status)
        rc = proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()
        if self._closing and rc == 0:
            return
        if self._stopped.is_set():
            return  # close() gave up on it
        self.failing = True
        self.last_error = f"the audit writer process exited (code {rc})"
        log.error("the audit writer process exited; starting another", extra={"code": rc, "queued": self.depth})
        backoff = 0.1
        while not self._stopped.is_set():
            try:
                with self._send_lock, self._lock:
                    self._pending = memoryview(b"")  # the dead child's: all of it is in _unacked, resent below
                    self._pending_entries = 0
                    if proc.stdin is not None:
                        try:
                            proc.stdin.close()
                        except OSError:
                            pass
                    self._spawn()
                    try:
                        for first, data, offsets in self._unacked:  # what the dead child may not have stored
                            skip = self._acked - first
                            part = data[offsets[skip]:] if skip > 0 else data
                            _write_all(self._proc.stdin.fileno(), part)  # type: ignore[union-attr]
                        if self._ended:  # the sender is done: the end it sent went to the dead child
                            self._write_end()
                    except (OSError, ValueError):
                        pass  # the new one died too: its own receiver starts the next
                return
            except Exception as e:  # StoreError, OSError
                self.last_error = f"the audit writer process cannot be started: {short_error(e)}"
                log.error("the audit writer process cannot be started", extra={"error": self.last_error})
                self._stopped.wait(backoff)
                backoff = min(RESPAWN_MAX, backoff * 2)

    def _status(self, status: dict[str, Any]) -> None:
        errors = int(status.get("errors", 0))
        with self._lock:
            stored = self._child_base + int(status.get("stored", 0))
            if stored > self._acked:
                self._acked = stored
                u = self._unacked
                while u and u[0][0] + len(u[0][2]) <= stored:
                    self._unacked_bytes -= len(u.popleft()[1])
                self._ack_since = time.monotonic() if self._sent > stored else 0.0
            new_errors = errors - self._child_errors
            self._child_errors = errors
        self.written += int(status.get("written_delta", 0))
        if new_errors > 0:
            self.store_errors += new_errors
            if self.on_error is not None:
                for _ in range(new_errors):
                    self.on_error()
        self.failing = bool(status.get("failing"))
        if status.get("last_error"):
            self.last_error = status["last_error"]

    # ------------------------------------------------------- the sender

    def pump(self) -> None:
        """Send what is queued now from the calling thread (the relay's: the
        reactor calls this as it hands the C core's entries over), if that
        needs no waiting: at most PUMP_MAX entries, none when the sender
        thread is sending or the pipe is full. The sender thread would
        otherwise take the GIL from the relay for it, and each hand-over of
        the GIL between two busy threads stalls every session a while; here
        it costs one non-blocking write."""
        if not (self._queue or self._pending) or self._closing or not self._send_lock.acquire(blocking=False):
            return
        try:
            if self._pending and not self._write_pending(block=False):
                return
            if self._queue and not self._closing:
                self._push(self._take(PUMP_MAX), block=False)
        finally:
            self._send_lock.release()

    def _send_loop(self) -> None:
        last = 0.0
        while True:
            with self._wake:
                left = self.interval - (time.monotonic() - last)
                while left > 0 and len(self._queue) < self.batch and not self._closing and not self._urgent:
                    self._wake.wait(timeout=left)
                    left = self.interval - (time.monotonic() - last)
                urgent = self._urgent
                self._urgent = False
                closing = self._closing
            last = time.monotonic()
            with self._send_lock:
                sent = bool(self._pending)
                self._write_pending(block=True)
                while self._queue:
                    self._push(self._take(8 * self.batch), block=True)
                    sent = True
                if sent or urgent:
                    # The end of what was sent at once: the child writes it
                    # now, not after its own interval.
                    self._write(_WRITE, block=True)
                if closing:
                    with self._lock:
                        self._ended = True  # a child started from now on is sent the end after the rest
                        self._write_end()
                    return

    def _take(self, most: int) -> tuple[bytes, array.array]:
        """What is queued (at most ``most`` entries), encoded: one write
        (self._send_lock held)."""
        q = self._queue
        n = min(len(q), most)
        self._taking = n
        parts: list[bytes] = []
        offsets = array.array("I")
        at = 0
        for _ in range(n):
            r = q.popleft()
            t = type(r)
            if t is Entries:
                frame = r.frame  # as the core wrote it
            else:
                if t is not dict:
                    try:
                        r = r.build()
                    except Exception as e:  # a bug: say so in the trail itself rather than stop writing
                        log.exception("an audit record could not be built")
                        r = {"kind": "record_error", "at": r.at, "session_id": None, "person": None,
                             "target": None, "decision": None, "body": {"error": short_error(e)}}
                payload = _dumps(r).encode()
                frame = b"D" + _LEN.pack(len(payload)) + payload
            offsets.append(at)
            at += len(frame)
            parts.append(frame)
        return b"".join(parts), offsets

    def _push(self, chunk: tuple[bytes, array.array], *, block: bool) -> None:
        """The chunk, as sent: numbered, kept until acknowledged, and
        written (self._send_lock held; what the pipe does not take now
        waits in _pending, ahead of anything else)."""
        data, offsets = chunk
        with self._lock:
            first = self._sent
            if self._sent == self._acked:
                self._ack_since = time.monotonic()
            self._unacked.append((first, data, offsets))
            self._unacked_bytes += len(data)
            self._sent += len(offsets)
            self._taking = 0
        self._pending_entries = len(offsets)
        self._write(data, block=block)

    def _write(self, data: bytes, *, block: bool) -> bool:
        """``data`` to the current child, nothing being pending (self._send_lock
        held): True when the pipe took all of it."""
        self._pending = memoryview(data)
        return self._write_pending(block=block)

    def _write_pending(self, *, block: bool) -> bool:
        """Write what is pending (self._send_lock held); True when nothing is
        left. Waits for the pipe only when ``block``. A child that died takes
        nothing more: what it was sent is in _unacked, and the receiver
        sends it to the next."""
        proc = self._proc
        while self._pending:
            try:
                fd = proc.stdin.fileno()  # type: ignore[union-attr]
                n = os.write(fd, self._pending)
            except BlockingIOError:
                if not block:
                    return False
                try:
                    select.select([], [fd], [], 0.5)  # the GIL is free meanwhile
                except (OSError, ValueError):
                    pass
                continue
            except (OSError, ValueError, AttributeError):
                self._pending = memoryview(b"")
                self._pending_entries = 0
                return True
            self._pending = self._pending[n:]
        self.piped += self._pending_entries
        self._pending_entries = 0
        return True


def _write_all(fd: int, data: bytes) -> None:
    """All of ``data`` to a pipe that may not block, waiting as need be."""
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except BlockingIOError:
            select.select([], [fd], [], 0.5)
            continue
        view = view[n:]


def _lines(fd: int):  # type: ignore[no-untyped-def]
    """The lines read from ``fd`` until it ends (a read per many lines:
    the pipe is unbuffered, and its readline would read a byte at a time)."""
    rest = b""
    while True:
        try:
            data = os.read(fd, 65536)
        except OSError:
            data = b""
        if not data:
            return
        *done, rest = (rest + data).split(b"\n")
        yield from done


# ------------------------------------------------------------ the child


def _read_frames(fd: int):  # type: ignore[no-untyped-def]
    """Lists of (type, payload) read from ``fd``, until it ends (an E
    frame's payload is the whole frame, as pgjit.audit.writer.Entries holds it): each read
    into one buffer made once (a read of a fresh 1 MB object costs its
    page faults every time)."""
    buf = bytearray(PIPE_SIZE)
    view = memoryview(buf)
    end = 0  # bytes in buf
    while True:
        if end == len(buf):  # a frame larger than the buffer: grow it
            view.release()
            buf.extend(bytes(len(buf)))
            view = memoryview(buf)
        try:
            n = os.readv(fd, [view[end:]])
        except InterruptedError:
            continue
        if not n:
            return
        end += n
        frames = []
        pos = 0
        while end - pos >= 5:
            size = _LEN.unpack_from(buf, pos + 1)[0]
            if end - pos - 5 < size:
                break
            kind = buf[pos:pos + 1]
            # An E frame whole (Entries keeps the frame), any other's payload.
            frames.append((kind, bytes(view[pos:pos + 5 + size] if kind == b"E" else view[pos + 5:pos + 5 + size])))
            pos += 5 + size
        if pos:
            buf[:end - pos] = view[pos:end]
            end -= pos
        yield frames


def child_main() -> int:
    """``python -m pgjit.audit.process``: frames on stdin, status on stdout."""
    # The gateway ends this process (an end frame, or its pipe closing): a
    # Ctrl-C or a SIGTERM to the process group must not lose what is queued.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # Behind the relay for the CPU: its work can wait (the gateway's queue
    # holds it), a relayed round trip cannot. Where the CPUs are all busy
    # (a 2-core box under pgbench) a commit that preempts the relay's thread
    # costs every session that round trip. At nice 10 and SCHED_BATCH it
    # still gets a share of a busy CPU, and all of an idle one (BENCHMARKS.md,
    # "The audit writer in a process": no TPS difference outside the noise).
    try:
        os.nice(NICE)
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    except (AttributeError, OSError):
        pass
    out = sys.stdout.buffer
    out_lock = threading.Lock()

    def say(status: dict[str, Any]) -> None:
        with out_lock:
            try:
                out.write(json.dumps(status).encode() + b"\n")
                out.flush()
            except (OSError, ValueError):
                pass  # the gateway is gone: the records still go to the store

    frames = _read_frames(sys.stdin.fileno())
    first = next(frames, [])
    if not first or first[0][0] != b"I":
        say({"fatal": "no settings"})
        return 2
    init = json.loads(first[0][1])
    from pgjit import logs

    logs.configure(init.get("log_level") or "info", init.get("log_file"))
    try:
        from pgjit.audit.store import Store
        from pgjit.audit.writer import Writer

        store = Store(init["url"])
        writer = Writer(store, bytes.fromhex(init["key"]), chain=init["chain"], capacity=1 << 62,
                        batch=int(init["batch"]), interval=0.05, checkpoint_every=int(init["checkpoint_every"]),
                        checkpoint_seconds=float(init["checkpoint_seconds"]), retry_max=float(init["retry_max"]),
                        sink=init.get("sink"))
    except Exception as e:
        say({"fatal": short_error(e)})
        return 2
    written = [0]

    def report() -> None:
        delta = writer.written - written[0]
        written[0] = writer.written
        say({"stored": writer.items_stored, "written_delta": delta, "errors": writer.store_errors,
             "failing": writer.failing, "last_error": writer.last_error})

    writer.on_written = report
    writer.on_error = report
    writer.start()
    say({"ready": True})
    submit = writer.submit
    ended = False
    close_timeout = 60.0  # the gateway died (its pipe closed without an end frame)
    for chunk in itertools.chain([first[1:]], frames):  # what came with the settings, then the rest
        for kind, payload in chunk:
            if kind == b"D":
                submit(json.loads(payload), force=True)
            elif kind == b"E":
                submit(Entries(payload), force=True)  # the whole frame: the writer's thread reads it
            elif kind == b"W":
                writer._hurry()  # the end of what the gateway sent at once: written now, not after an interval
            elif kind == b"X":
                ended = True
                if payload:
                    close_timeout = float(payload)
        if ended:
            break
    ok = writer.close(timeout=close_timeout)
    report()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(child_main())
