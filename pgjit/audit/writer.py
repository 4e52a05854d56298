"""The batched audit writer: records in, off the hot path, into the store.

``submit`` only appends to a bounded in-memory queue (no I/O, no hashing);
a background thread takes what has queued, seals it into the process's hash
chain (pgjit.audit.chain), writes it in one transaction, and checkpoints
every ``checkpoint_every`` records or ``checkpoint_seconds``. When the store
cannot be written the thread keeps the sealed batch and retries it (backing
off up to ``retry_max`` seconds) until it can: nothing queued is lost. While
it fails the queue grows; once it holds ``capacity`` records, ``submit``
raises AuditUnavailable, and the gateway refuses the statement rather than
run it unrecorded (``on_store_failure: fail_closed``).

A thread rather than a trio task: SQLAlchemy's drivers block, and the
writer must keep draining while the event loop is busy relaying. The gateway
runs this writer in a process of its own (pgjit.audit.process), off the
relay's GIL; tests and tools use it directly.
"""

from __future__ import annotations

import collections
import logging
import secrets
import threading
import time
from typing import Any, Callable

import json

from pgjit.audit.chain import Chainer, _encode_str, body_json, scrub, write_jsonl
from pgjit.audit.errors import short_error

log = logging.getLogger("pgjit.audit.writer")


#: Records the writer's thread handles between two offers of the GIL to the
#: relay's thread (time.sleep(0)): without them, a relay that wants the GIL
#: waits for the interpreter's switch interval (5 ms), every session stalled.
YIELD_EVERY = 64
#: Entries in one statements record at most: a record is sealed (its JSON
#: made) in one go, holding the GIL that long.
GROUP_MAX = 64


_ANY = object()  # a result's entry: it goes with any policy hash

#: A write outstanding this long (for the writer process: sent and not
#: acknowledged) means the store does not answer: a server that stopped
#: (SIGSTOP, a hung disk) or a network that drops packets takes no error,
#: only time. The writer then counts as failing (readiness, metrics, the C
#: path left) until the store answers again.
STALL_SECONDS = 5.0


class WriterHealth:
    """``failing``, ``last_error`` and ``degraded``, shared by Writer and
    pgjit.audit.process.ProcessWriter: failing when the last write failed
    or one has been outstanding for STALL_SECONDS (``_waiting_since``: the
    monotonic time it started, 0.0 when none is), degraded when failing or
    ``capacity`` records wait."""

    capacity: int
    _failing = False
    _last_error = ""
    _behind = False  # capacity records waited, and half of them have not drained yet

    def _waiting_since(self) -> float:  # pragma: no cover - each writer says
        raise NotImplementedError

    @property
    def depth(self) -> int:  # pragma: no cover - each writer says
        raise NotImplementedError

    def _over_bytes(self) -> bool:
        """Over the bound on bytes held (the writer process: sent and not
        acknowledged); the thread writer counts records only."""
        return False

    def _stalled_for(self) -> float:
        since = self._waiting_since()
        if not since:
            return 0.0
        waited = time.monotonic() - since
        return waited if waited >= STALL_SECONDS else 0.0

    @property
    def failing(self) -> bool:
        """The last write failed, or the store has not answered for STALL_SECONDS."""
        return self._failing or bool(self._stalled_for())

    @failing.setter
    def failing(self, value: bool) -> None:
        self._failing = value

    @property
    def last_error(self) -> str:
        if not self._failing:
            waited = self._stalled_for()
            if waited:
                return f"the audit store has not answered for {waited:.0f} s"
        return self._last_error

    @last_error.setter
    def last_error(self, value: str) -> None:
        self._last_error = value

    @property
    def degraded(self) -> bool:
        """Statements must have their records queued before they go upstream
        (the relay's Python path), and may be refused: the store fails, or
        ``capacity`` records wait (a slow store). The C core's path, which
        queues a statement's record after it ran, is left meanwhile, so
        that what waits stays bounded (the C core's statements in flight and
        those it finished since its entries were last taken: 10 ms' worth).
        One record of the queue may be many statements (a C core's
        Entries), so the writer process bounds the bytes it holds too."""
        if self._behind:  # until half of it has drained: not a flip per record at the bound
            self._behind = self.depth > self.capacity // 2
        else:
            self._behind = self.depth >= self.capacity
        return self._failing or self._behind or self._over_bytes() or bool(self._stalled_for())


def _json_value(v: str | None) -> str:
    return "null" if v is None else _encode_str(v)


class AuditUnavailable(Exception):
    """The record cannot be queued: the store is failing and the buffer is full."""


_second = [-1, ""]  # the last whole second formatted, and its text


def iso_utc(t: float) -> str:
    """``t`` (time.time()) as the records' ISO 8601 UTC text with
    microseconds (2026-12-03T10:00:00.123456Z); the date and time of day
    are made once a second."""
    s = int(t)
    if s != _second[0]:
        _second[1] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(s))
        _second[0] = s
    return f"{_second[1]}.{int((t - s) * 1_000_000):06d}Z"


def iso_utc_us(us: int) -> str:
    """``us`` (microseconds since the epoch) as iso_utc writes it."""
    s, frac = divmod(us, 1_000_000)
    if s != _second[0]:
        _second[1] = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(s))
        _second[0] = s
    return f"{_second[1]}.{frac:06d}Z"


def utc_now() -> str:
    return iso_utc(time.time())


#: The fields a statement's result adds to its statement's entry when the
#: writer takes both in one batch (records.statement_result's body, less seq).
RESULT_FIELDS = ("outcome", "rows", "sqlstate", "duration_ms")


class Deferred:
    """A record the writer's thread builds (``make(*args)`` -> the record
    dict) when it takes it, so that the relay's thread only queues it: the
    text's decoding, fingerprint and normalising happen off the hot path.
    ``args`` must hold what the record says as of now (a copy of anything
    that may change later); ``at`` is the time it was queued."""

    __slots__ = ("make", "args", "at")

    def __init__(self, make: Callable[..., dict[str, Any]], *args: Any) -> None:
        self.make = make
        self.args = args
        self.at = time.time()

    def build(self) -> dict[str, Any]:
        record = self.make(*self.args)
        record["at"] = self.at
        return record


_TRAILER_JSON = json.JSONEncoder(ensure_ascii=True, separators=(",", ":")).encode


def entries_trailer(session_id: str, person: str | None, target: str | None, policy_hash: str | None) -> bytes:
    """The first items of an Entries trailer (what the C core is given,
    set_tracker): JSON, ASCII only (a lone surrogate in a claim stays an
    escape), without the list's brackets."""
    return _TRAILER_JSON([session_id, person, target, policy_hash])[1:-1].encode("ascii")


class Entries:
    """Statements of one session the C core tracked and finished, as it
    wrote them (pgjit/gateway/_relaycore.c, Statements, take_done): ``frame``
    is what goes down the pipe to the writer process as it is — b"E", the
    payload's length (4 bytes, big-endian), the payload: the entries (JSON
    objects joined by ','; each what this writer makes of a statement and
    its result taken together, less the policy hash its record holds once),
    b"\n", and a JSON list: session id, person, target, policy hash, count,
    the last entry's time in microseconds. The gateway's threads never look
    inside; the writer's does (parse)."""

    __slots__ = ("frame",)

    def __init__(self, frame: bytes) -> None:
        self.frame = frame

    @classmethod
    def of(cls, session_id: str, person: str | None, target: str | None, json_text: str, count: int, at_us: int,
           policy_hash: str | None = None) -> "Entries":
        """The frame the core would write for these entries (tests, tools)."""
        payload = (json_text.encode("utf-8", "surrogatepass") + b"\n[" + entries_trailer(session_id, person, target, policy_hash)
                   + b",%d,%d]" % (count, at_us))
        return cls(b"E" + len(payload).to_bytes(4, "big") + payload)

    def parse(self) -> tuple[str, str | None, str | None, str | None, str, int, int]:
        """(session_id, person, target, policy_hash, entries' JSON, count, at_us)."""
        f = self.frame
        nl = f.rindex(b"\n")
        sid, person, target, policy_hash, count, at_us = json.loads(f[nl + 1:])
        return sid, person, target, policy_hash, f[5:nl].decode("utf-8", "surrogatepass"), count, at_us


class Writer(WriterHealth):
    def __init__(
        self,
        store: Any,  # pgjit.audit.store.Store, or anything with append(list[dict])
        key: bytes,
        *,
        chain: str | None = None,
        capacity: int = 100_000,
        batch: int = 1000,
        interval: float = 0.05,  # the longest a record waits to be written when fewer than a batch are queued
        checkpoint_every: int = 1000,
        checkpoint_seconds: float = 10.0,
        retry_max: float = 5.0,
        clock: Callable[[], str] = utc_now,
        sink: str | None = None,
    ) -> None:
        self.store = store
        self.key = key
        self.chainer = Chainer(chain or secrets.token_hex(16))
        self.capacity = capacity
        self.batch = batch
        self.interval = interval
        self.checkpoint_every = checkpoint_every
        self.checkpoint_seconds = checkpoint_seconds
        self.retry_max = retry_max
        self.clock = clock
        self._queue: collections.deque[dict[str, Any] | Deferred] = collections.deque()
        self._wake = threading.Condition()
        self._closing = False
        self._urgent = False  # flush(): write what is queued without waiting for a batch
        self._thread: threading.Thread | None = None
        self.written = 0
        self.store_errors = 0
        self.failing = False  # the last write failed (readiness, metrics); or one is stalled (WriterHealth)
        self.last_error = ""
        self._append_since = 0.0  # when the write in progress started (0.0: none is)
        self._since_checkpoint = 0
        self._last_checkpoint = time.monotonic()
        self._inflight: list[dict[str, Any]] = []
        self._inflight_items = 0  # queue entries the batch in _inflight holds
        self.items_stored = 0  # queue entries whose records are in the store (pgjit.audit.process acks them)
        self._sealing = 0  # 1 while _take has records off the queue that are not in _inflight yet
        # A live copy for a SIEM: every record the store took, as one JSON
        # line (the export's fields), appended to this file.
        self.sink = sink
        self._sink_file: Any = None
        self.on_error: Callable[[], None] | None = None  # called (in the writer's thread) on each failed write
        self.on_written: Callable[[], None] | None = None  # called (in the writer's thread) after each batch stored

    @property
    def chain(self) -> str:
        return self.chainer.chain

    @property
    def depth(self) -> int:
        """Records queued or being written (a batch being sealed counts one)."""
        return len(self._queue) + len(self._inflight) + self._sealing

    def _waiting_since(self) -> float:
        return self._append_since

    def start(self) -> "Writer":
        self._thread = threading.Thread(target=self._run, name="pgjit-audit-writer", daemon=True)
        self._thread.start()
        return self

    def submit(self, record: dict[str, Any] | Deferred, *, force: bool = False) -> None:
        """Queue one record (a dict with kind, session_id, person, target,
        decision, body; ``at`` is filled in when absent), or a Deferred one.
        Raises AuditUnavailable when the buffer is full, unless ``force``
        (the outcome of something that already happened: it must not be lost)."""
        if not force and len(self._queue) >= self.capacity:
            raise AuditUnavailable(
                f"the audit store cannot be written ({self.last_error or 'writes are behind'}) "
                f"and {self.capacity} records are waiting"
            )
        if type(record) is dict and "at" not in record:
            record["at"] = time.time()  # made a string in the writer's thread (iso_utc)
        self._queue.append(record)
        if len(self._queue) == self.batch:  # a batch's worth: wake the writer (once, not for every record after)
            with self._wake:
                self._wake.notify()

    def _hurry(self) -> None:
        with self._wake:
            self._urgent = True
            self._wake.notify()

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything submitted so far is written (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        while self.depth:
            self._hurry()  # write what is queued now, not when a batch's worth is
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True

    def close(self, timeout: float = 30.0) -> bool:
        """Write what is queued, then a final checkpoint; True when all of it
        reached the store within ``timeout``."""
        with self._wake:
            self._closing = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout)
            return not self._thread.is_alive() and not self.depth
        return not self.depth

    # ------------------------------------------------------------ thread

    def _run(self) -> None:
        backoff = 0.05
        last = 0.0  # when the last batch was taken
        while True:
            with self._wake:
                if not self._inflight:
                    # Gather a batch: write when a batch's worth waits, or
                    # `interval` after the last write, whichever comes first
                    # (a transaction per batch: writing each record as it
                    # comes would cost a commit per statement at low load).
                    left = self.interval - (time.monotonic() - last)
                    while (left > 0 and len(self._queue) < self.batch and not self._closing
                           and not self._urgent):
                        self._wake.wait(timeout=left)
                        left = self.interval - (time.monotonic() - last)
                self._urgent = False
                closing = self._closing
            last = time.monotonic()
            if not self._inflight:
                self._sealing = 1
                try:
                    self._inflight, self._inflight_items = self._take(closing)
                finally:
                    self._sealing = 0
            if not self._inflight:
                if closing:
                    return
                continue
            self._append_since = time.monotonic()
            try:
                self.store.append(self._inflight)
            except Exception as e:  # the store is down: keep the batch, retry
                self._append_since = 0.0
                self.store_errors += 1
                self.failing = True
                self.last_error = short_error(e)
                if self.on_error is not None:
                    self.on_error()
                if self.store_errors == 1 or self.store_errors % 50 == 0:
                    log.warning("audit store write failed; retrying", extra={"error": self.last_error,
                                                                            "queued": self.depth})
                time.sleep(backoff)
                backoff = min(self.retry_max, backoff * 2)
                continue
            if self.failing:  # failed, or took STALL_SECONDS
                log.info("audit store writable again", extra={"written": len(self._inflight)})
            self._append_since = 0.0
            self.failing = False
            backoff = 0.05
            self.written += len(self._inflight)
            self.items_stored += self._inflight_items
            if self.sink is not None:
                self._to_sink(self._inflight)
            self._inflight = []
            self._inflight_items = 0
            if self.on_written is not None:
                self.on_written()

    def _to_sink(self, rows: list[dict[str, Any]]) -> None:
        try:
            if self._sink_file is None:
                self._sink_file = open(self.sink, "a", encoding="utf-8")  # type: ignore[arg-type]
            for r in rows:
                if r.get("body") is None and r.get("body_json") is not None:
                    r["body"] = json.loads(r["body_json"])
            write_jsonl(rows, self._sink_file)
            self._sink_file.flush()
        except OSError as e:  # the store has the records; the copy is best effort
            log.warning("audit sink write failed", extra={"sink": self.sink, "error": str(e)})
            self._sink_file = None

    def _take(self, closing: bool) -> tuple[list[dict[str, Any]], int]:
        """The next batch, sealed into the chain, with checkpoints where due,
        and how many queue entries it took.

        The statements of one session in a batch are written as one
        ``statements`` record (at the place of the first), its body a list
        of entries in order: each statement's fields, with its result's when
        that was queued in the same batch too, or a result alone for a
        statement an earlier record holds (pgjit.audit.sessions reads them
        back as one record each). One row to hash and insert per session
        and batch, not two per statement: what keeps the audit trail cheap
        on a busy gateway (BENCHMARKS.md)."""
        out: list[dict[str, Any]] = []
        q = self._queue
        chainer = self.chainer
        taken: list[dict[str, Any]] = []
        groups: dict[Any, dict[str, Any]] = {}  # session -> its open statements record in this batch
        pending: dict[tuple[Any, Any], dict[str, Any]] = {}  # (session, seq) -> its statement's entry, this batch
        n = 0
        sizes: dict[int, int] = {}  # id(statements record) -> its entries, when some came as Entries
        while q and n < self.batch:
            r = q.popleft()
            n += 1
            if not n % YIELD_EVERY:
                time.sleep(0)
            if type(r) is Entries:
                sid, person, target, policy_hash, text, count, at_us = r.parse()
                group = groups.get(sid)
                size = sizes.get(id(group), len(group["body"]["statements"])) if group is not None else 0
                if group is None or size >= GROUP_MAX or group["body"]["policy_hash"] != policy_hash:
                    group = groups[sid] = {"kind": "statements", "at": 0.0, "session_id": sid, "person": person,
                                           "target": target, "decision": None,
                                           "body": {"policy_hash": policy_hash, "statements": []}}
                    taken.append(group)
                    size = 0
                group["at"] = at_us  # an int: microseconds (below)
                group["body"]["statements"].append(text)
                sizes[id(group)] = size + count
                continue
            if type(r) is not dict:
                try:
                    r = r.build()
                except Exception as e:  # a bug: say so in the trail itself rather than stop writing
                    log.exception("an audit record could not be built")
                    r = {"kind": "record_error", "at": r.at, "session_id": None, "person": None, "target": None,
                         "decision": None, "body": {"error": short_error(e)}}
            kind = r.get("kind")
            if kind != "statement" and kind != "statement_result":
                taken.append(r)
                continue
            sid = r.get("session_id")
            entry = r["body"]
            key = (sid, entry.get("seq"))
            if kind == "statement_result":
                st = pending.pop(key, None)
                if st is not None:
                    for k in RESULT_FIELDS:
                        st[k] = entry.get(k)
                    continue
            else:
                entry["decision"] = r.get("decision")
                pending[key] = entry
            entry["at"] = r["at"]
            group = groups.get(sid)
            # A statement's policy hash is its record's, once for all its
            # entries (pgjit.audit.sessions.expand gives it back to each).
            policy_hash = entry.pop("policy_hash", None) if kind == "statement" else _ANY
            if (group is None or sizes.get(id(group), len(group["body"]["statements"])) >= GROUP_MAX
                    or (policy_hash is not _ANY and group["body"]["policy_hash"] != policy_hash)):
                group = groups[sid] = {"kind": "statements", "at": r["at"], "session_id": sid, "person": r.get("person"),
                                       "target": r.get("target"), "decision": None,
                                       "body": {"policy_hash": None if policy_hash is _ANY else policy_hash,
                                                "statements": []}}
                taken.append(group)
            else:
                # A statements record's time is its last entry's, so that a
                # query for records since T finds every record with an entry since T.
                group["at"] = r["at"]
            group["body"]["statements"].append(entry)
            if id(group) in sizes:
                sizes[id(group)] += 1
        for r in taken:
            at = r["at"]
            if type(at) is float:
                r["at"] = iso_utc(at)
            elif type(at) is int:
                r["at"] = iso_utc_us(at)
            if r["kind"] == "statements":
                entries = r["body"]["statements"]
                raw = id(r) in sizes
                for i, entry in enumerate(entries):
                    if type(entry) is str:
                        continue
                    at = entry["at"]
                    if type(at) is float:
                        entry["at"] = iso_utc(at)
                    if raw:
                        entries[i] = body_json(entry)
                if raw:
                    # Entries the core wrote are JSON already: the body's
                    # canonical JSON is made around them ({"policy_hash": ...,
                    # "statements": [...]}, its keys in order), and its
                    # structure only when a sink wants it.
                    r["body_json"] = ('{"policy_hash":' + _json_value(r["body"]["policy_hash"]) + ',"statements":['
                                      + ",".join(entries) + "]}")
                    r["body"] = None
            try:
                out.append(chainer.seal(r))
            except UnicodeEncodeError:  # a lone surrogate somewhere in it: U+FFFD instead
                if r.get("body") is not None:
                    r.pop("body_json", None)  # made again from the scrubbed body
                out.append(chainer.seal(scrub(r)))
            if not len(out) % YIELD_EVERY:
                time.sleep(0)
            self._since_checkpoint += 1
            if self._since_checkpoint >= self.checkpoint_every:
                out.append(self._checkpoint())
        due = self._since_checkpoint and time.monotonic() - self._last_checkpoint >= self.checkpoint_seconds
        if due or (closing and not q and (self._since_checkpoint or chainer.seq == 0)):
            out.append(self._checkpoint(final=closing and not q))
        return out, n

    def _checkpoint(self, *, final: bool = False) -> dict[str, Any]:
        self._since_checkpoint = 0
        self._last_checkpoint = time.monotonic()
        record = self.chainer.checkpoint(self.key, self.clock(), final=final)
        return record
