"""The relay's work on one session's bytes, without I/O.

``Relay.from_client`` takes what the client sent and returns what goes
upstream; ``Relay.from_server`` takes what the server sent and returns what
goes to the client. Both find frame boundaries with the codec's
``scan_watched``, look only at the few message types they must (everything
else is forwarded as raw bytes), and keep the ReadyForQuery accounting that
tells when the session is idle. Both drivers call them: the reactor (and its
C core, which takes the frames nobody needs to look at) for plain TCP, and
the session's two tasks for TLS.

Replies the gateway makes up itself (a refused statement, a refused
FunctionCall) must reach the client in order with the server's replies and
leave the upstream transaction exactly as an error would. pgjit therefore
never writes such a reply itself mid-stream: it replaces the refused message
by a ``Bind`` to a prepared statement that does not exist, whose name is a
random marker. The server answers with its own 26000 error at exactly the
right place (and aborts the transaction or skips to Sync, as for any error);
``from_server`` swaps that error for pgjit's. The pending markers are the
session's queue of made-up replies.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import re
import secrets
import struct
import time
from typing import Callable, Protocol

from pgjit import metrics
from pgjit.errors import (
    FatalError,
    FeatureNotSupported,
    InsufficientPrivilege,
    PgjitError,
    ProtocolViolation,
    SyntaxErrorSQL,
)
from pgjit.config import LimitsConfig
from pgjit.gateway.lexstate import lexer_state_problem
from pgjit.logs import Throttle
from pgjit.policy import ParseFailure
from pgjit.policy.facts import merge_facts
from pgjit.policy.gate import Gate, ShapeVerdicts, statement_fingerprint
from pgjit.policy.model import prepared_facts
from pgjit.protocol import messages as m
from pgjit.protocol.framing import scan_watched
from pgjit.gateway.statements import Statement, StatementQueue
from pgjit.masking.wire import Masker, Refused as MaskRefused

log = logging.getLogger("pgjit.gateway.relay")
_REFUSED_LOG = Throttle()  # one line per 10 s at most, for all sessions (the metric counts each)

_U32 = struct.Struct("!I")
_I32 = struct.Struct("!i")
_clock = time.perf_counter
_GATE_SECONDS = metrics.GATE_SECONDS

# Frontend tags.
F_QUERY, F_SYNC, F_FUNCTION_CALL, F_TERMINATE, F_PARSE = b"Q"[0], b"S"[0], b"F"[0], b"X"[0], b"P"[0]
F_EXECUTE, F_COPY_DONE, F_COPY_FAIL = b"E"[0], b"c"[0], b"f"[0]
# Backend tags.
B_READY, B_ERROR, B_DATA_ROW, B_COPY_DATA = b"Z"[0], b"E"[0], b"D"[0], b"d"[0]
B_PARAMETER_STATUS = b"S"[0]
B_COPY_IN = b"G"[0]

# Backend messages that may stream through unbuffered when split across reads.
_STREAMABLE = frozenset((B_DATA_ROW, B_COPY_DATA))
_STREAM_THRESHOLD = 64 * 1024
# Upstream messages may be as large as PostgreSQL allows (1 GB field + header).
MAX_BACKEND_MESSAGE = (1 << 30) + (1 << 20)

# Statements deallocated (perhaps: the server may have refused it) whose facts
# are kept, most recent first out last.
_DEALLOCATED_KEPT = 64

# Every frontend message type there is after startup; anything else is a
# protocol violation the gateway answers itself (08P01), not the server.
_FRONTEND_KNOWN = frozenset(t[0] for t in m.FRONTEND)
# Frames that only move the ReadyForQuery count (Query too, when no gate reads it).
_COUNT_ONLY = frozenset((F_QUERY, F_SYNC, F_EXECUTE, F_COPY_DONE, F_COPY_FAIL))
_COUNT_ONLY_GATED = _COUNT_ONLY - {F_QUERY}
_FRONTEND_WATCH = _COUNT_ONLY | frozenset((F_FUNCTION_CALL, F_TERMINATE)) | (
    frozenset(range(256)) - _FRONTEND_KNOWN
)
# Statement kinds that change the session's prepared statements.
_PREPARED_KINDS = frozenset(("prepare", "deallocate", "discard"))
_FRONTEND_WATCH_GATED = _FRONTEND_WATCH | frozenset((F_PARSE,))
F_BIND, F_DESCRIBE, F_CLOSE = b"B"[0], b"D"[0], b"C"[0]
# With an audit trail, every client message the server answers is watched, and
# every backend message that answers one (pgjit.gateway.statements).
_AUDIT_FRONTEND = frozenset((F_QUERY, F_PARSE, F_BIND, F_DESCRIBE, F_CLOSE, F_EXECUTE, F_SYNC))
_AUDIT_BACKEND = frozenset(b"123nTCIsGHWEZ")
_BODY_NEEDED = frozenset(b"CE")  # the command tag, the SQLSTATE
# ParameterStatus: a report of a lexer setting may end the session (lexstate).
_BACKEND_WATCH = frozenset((B_READY, B_ERROR, B_PARAMETER_STATUS, B_COPY_IN))


@dataclasses.dataclass
class Hold:
    """A statement the policy says needs a human's approval, held: it (and
    everything the client sent after it) waits in ``Relay._held`` until the
    session's hold (pgjit.gateway.holds) decides, then ``Relay.release``."""

    text: bytes  # its SQL
    rule: str  # the require_approval rule
    message: str | None  # the rule's message
    params: tuple[bytes | None, ...] | None = None  # an Execute's Bind values (extended protocol)
    protocol: str = "simple"


def lexer_error(reason: str) -> FatalError:
    return FatalError(
        f"terminating connection: {reason}, which pgjit cannot check statements under",
        sqlstate="0A000",
        hint="use a UTF-8 compatible client_encoding and keep standard_conforming_strings on",
    )


_DDL_PREFIXES = ("create_", "alter_", "drop_")


def _changes_catalog(analysis) -> bool:
    """Does the statement create, change or drop objects (functions, views,
    rules, triggers, operators …) that the gate resolves names through?"""
    return any(k.startswith(_DDL_PREFIXES) for f in analysis.statements for k in f.kinds)


def _created_facts(facts, name: str):
    """What calling a function (or using an operator) this session created does:
    the facts of the statement that created it, as a user function."""
    kinds = frozenset(k for k in facts.kinds if not k.startswith(_DDL_PREFIXES))
    if name.startswith("relation "):  # a view: what reading it reads
        writes = facts.writes - {name.removeprefix("relation ")}
        if "create_foreign_table" in facts.kinds:
            writes = writes | {"?"}  # a foreign table's rows live wherever its server points
        return dataclasses.replace(facts, kinds=kinds, created=(), prepares=None, writes=writes)
    qualified = name.removeprefix("operator ")
    return dataclasses.replace(
        facts, kinds=kinds, created=(), prepares=None,
        user_functions=facts.user_functions | ({qualified} if not name.startswith("operator ") else frozenset()),
        calls_user_function=True if not name.startswith("operator ") else facts.calls_user_function,
    )


def _sets_statement_timeout(analysis) -> bool:
    """Does the statement set statement_timeout (approvals follow it)?"""
    return any("statement_timeout" in f.settings for f in analysis.statements)


def _changes_prepared(analysis) -> bool:
    """Does the statement create or drop prepared statements (PREPARE,
    DEALLOCATE, DISCARD)? Then the session's map of them must follow."""
    return any(f.kind in _PREPARED_KINDS for f in analysis.statements)


# What gate_allows asks of an analysis beyond its decision, by the analysis
# (the gate's caches hand out the same objects for every statement of a
# shape): (analysis, changes neither prepared statements nor the catalog,
# sets statement_timeout, every statement of its shape has these facts).
# The analysis is kept, so its id is not reused while it is here.
_PLAIN: dict[int, tuple[object, bool, bool, bool]] = {}

#: gate_allows's answer for a statement whose every shape-mate (same shape
#: key: only its literals differ) the session may send the same way.
ALLOW_SHAPE = 2
_PLAIN_MAX = 4096


def _plain(analysis) -> tuple[object, bool, bool, bool]:
    memo = _PLAIN.get(id(analysis))
    if memo is None or memo[0] is not analysis:
        memo = (analysis, not _changes_prepared(analysis) and not _changes_catalog(analysis),
                _sets_statement_timeout(analysis), Gate.shareable(analysis))
        if len(_PLAIN) >= _PLAIN_MAX:
            _PLAIN.clear()
        _PLAIN[id(analysis)] = memo
    return memo


class RelayCounters:
    """The ReadyForQuery accounting of one session: client messages that
    the server answers with a ReadyForQuery (``rfq_sent``), ReadyForQuery
    frames relayed back (``rfq_received``), the last transaction status, and
    whether the last server frame was an ErrorResponse. The C relay core
    (pgjit.gateway._relaycore.Core) has the same fields."""

    __slots__ = ("rfq_sent", "rfq_received", "syncs_since_execute", "copy_base", "txn_status", "last_was_error")

    def __init__(self) -> None:
        self.rfq_sent = 0
        self.rfq_received = 0
        self.syncs_since_execute = 0
        self.copy_base = 0
        self.txn_status = b"I"
        self.last_was_error = False


def _nothing() -> None:
    pass


class BufferBudget(Protocol):
    """The gateway-wide count of bytes held in incomplete client messages."""

    buffered: int


class CatalogRefresh(Protocol):
    def request_refresh(self) -> None: ...


class Recorder(Protocol):
    """Where a session's statements are recorded (pgjit.gateway.recording)."""

    bind_parameters: bool

    def statement(self, st: Statement, *, force: bool = False) -> None: ...  # raises when it cannot be queued
    @property
    def degraded(self) -> bool: ...
    def result(self, st: Statement) -> None: ...


class Relay:
    """One session's relay state: what is carried over between reads, the
    ReadyForQuery accounting, COPY FROM STDIN, the prepared statements the
    gate knows of, and the refusals whose replies are still to rewrite."""

    def __init__(
        self,
        limits: LimitsConfig,
        budget: BufferBudget,
        *,
        session_id: str,
        user: str | None = None,
        database: str | None = None,
        gate: Gate | None = None,
        groups: frozenset[str] = frozenset(),
        catalog: CatalogRefresh | None = None,
        recorder: "Recorder | None" = None,
        masker: "Masker | None" = None,
    ) -> None:
        self.limits = limits
        self.budget = budget
        self.session_id = session_id
        self.user = user
        self.database = database
        self.gate = gate
        self.groups = groups
        self.catalog = catalog  # asked for a fresh snapshot after DDL let through
        # ReadyForQuery accounting and transaction status. The reactor swaps
        # in its C core's counters (same fields) while it relays the session.
        self.ctr: RelayCounters = RelayCounters()
        self._c_pending: bytearray | None = None  # an incomplete client frame
        self._c_buffered = 0  # its bytes, as counted in budget.buffered
        # COPY FROM STDIN and the Syncs it swallows (see _count): CopyInResponses
        # whose CopyDone has not come, and CopyDones not yet known to end a COPY
        # (the ReadyForQuery count before their run of Syncs, its length).
        self._copy_ins = 0
        self._copy_ends: collections.deque[tuple[int, int]] = collections.deque()
        self._c_watch = _FRONTEND_WATCH_GATED if gate is not None else _FRONTEND_WATCH
        self._s_pending: bytearray | None = None  # an incomplete server frame
        self._s_skip = 0  # bytes of a large streamable message still to pass through
        # marker -> (error to show, index of the ReadyForQuery that ends its pipeline)
        self._rewrites: dict[str, tuple[PgjitError, int]] = {}
        # Set when the server reported a lexer state the gate does not model:
        # nothing more of the client's goes upstream (see from_server), and
        # the session ends with halt_error.
        self.halted = False
        self.halt_error: PgjitError | None = None
        # Set when the client's Terminate went upstream: the client is not read
        # again, and the relay ends when the server closes its side.
        self.terminating = False
        # Called after a Terminate went upstream and whenever a reply comes
        # back after it: the driver bounds how long it waits for the server.
        self.arm_drain: Callable[[], None] = _nothing
        self.prepared: dict[str, object] = {}  # prepared-statement name -> Analysis/Facts
        self._deallocated: collections.OrderedDict[str, None] = collections.OrderedDict()  # see _track_prepared
        # Functions and operators this session created, which the target's
        # catalog snapshot may not show yet (or, inside its transaction, ever).
        self.overlay: dict[str, object] = {}
        # Shape keys gate_allows answered ALLOW_SHAPE for, which the C core
        # lets through without asking again (the gate empties it when its
        # catalog changes; _note_ddl and enable_approvals when this session's
        # answers change).
        self.shape_verdicts: ShapeVerdicts | None = gate.shape_verdicts() if gate is not None else None
        # With an audit trail: the statements in flight (pgjit.gateway.statements)
        # and where their records go. Every message the server answers is
        # watched, both ways; what the C core relays of them it logs for
        # replay_log (pgjit.gateway.reactor).
        self.recorder = recorder
        self.queue: StatementQueue | None = None
        self._s_watch = _BACKEND_WATCH
        self.last_refusal: tuple[str, str] = ("deny", "default")
        self._audit_error = ""
        self._c_watch_base = self._c_watch  # what the C core is told (it logs the rest, replay_log)
        if recorder is not None:
            self.queue = StatementQueue()
            self._c_watch = self._c_watch | _AUDIT_FRONTEND
            self._s_watch = _BACKEND_WATCH | _AUDIT_BACKEND
        # Masking (pgjit.masking.wire): told every client message the server
        # answers; every server byte goes through it (the Python path only).
        self.masker = masker
        if masker is not None:
            self._c_watch = self._c_watch | _AUDIT_FRONTEND
        # Approvals (pgjit.gateway.holds): set by the session when the gateway
        # holds require_approval statements instead of refusing them.
        self.approvals = False
        self.hold: Hold | None = None
        self._held: bytes = b""  # the held statement's frame and everything after it
        self._release: tuple[bytes, tuple | None, PgjitError | None] | None = None  # how the held one goes, once
        self._approval_stmts: dict[str, tuple[bytes, str, str | None]] = {}  # prepared name -> (SQL, rule, message)
        self._approval_portals: dict[str, tuple[bytes, str, str | None, tuple]] = {}  # portal -> (SQL, rule, msg, params)
        self.client_statement_timeout: float | None = None  # seconds, as the client last SET it

    def enable_approvals(self) -> None:
        self.approvals = True
        if self.shape_verdicts is not None:
            self.shape_verdicts.clear()
        self._c_watch = self._c_watch | frozenset((F_BIND,))

    @property
    def idle(self) -> bool:
        """Nothing in flight and no open transaction."""
        ctr = self.ctr
        return ctr.rfq_sent == ctr.rfq_received and ctr.txn_status == b"I"

    def relay_profile(self) -> tuple[frozenset[int], frozenset[int], int, int]:
        """For the reactor's C path: the client frame types this session
        watches, those of them that only move the ReadyForQuery count, and
        the largest client and server message allowed."""
        count_only = _COUNT_ONLY_GATED if self.gate is not None else _COUNT_ONLY
        return self._c_watch_base, count_only, self.limits.max_message_size, MAX_BACKEND_MESSAGE

    def from_client(self, data: bytes | bytearray) -> tuple[bytes | bytearray | memoryview | None, bool]:
        """Bytes from the client -> (bytes for the upstream, stop after sending)."""
        if self.halted:
            return None, True  # the server's lexer state left the gate's: nothing more goes up
        if self.hold is not None:
            # Held: what else the client sends waits behind the held statement.
            self._held += bytes(data)
            if len(self._held) > self.limits.max_message_size:
                raise FatalError("out of memory: too much sent behind a statement held for approval",
                                 sqlstate="53200", hint="wait for the held statement's answer")
            return None, False
        pending = self._c_pending
        if pending is not None:
            pending += data
            data = pending
        frames, end = scan_watched(data, 0, len(data), self.limits.max_message_size, self._c_watch)
        self._c_pending = carried = _carry(data, end, pending)
        if carried is not None or self._c_buffered:
            self._account_buffered(len(carried) if carried is not None else 0)
        if not end:
            return None, False
        stop = False
        if frames and (self.queue is not None or self.masker is not None or self.approvals):
            rebuilt, stop = self._frontend_frames(data, frames, end)
            if rebuilt is not None:
                return rebuilt, stop
        elif frames:
            simple = _COUNT_ONLY_GATED if self.gate is not None else _COUNT_ONLY
            for tag, _, _ in frames:
                if tag not in simple:
                    simple = None
                    break
            if simple is not None:
                for tag, _, _ in frames:
                    self._count(tag)
            elif len(frames) == 1 and frames[0][0] == F_QUERY:
                # The common gated case, one simple Query: no rebuild
                # unless it is refused.
                _, qs, qe = frames[0]
                self._count(F_QUERY)
                error = self.gate_statement(bytes(data[qs + 5 : qe - 1]), None)
                if error is not None:
                    return bytes(data[:qs]) + self._refuse(error) + bytes(data[qe:end]), False
            else:
                rebuilt, stop = self._frontend_frames(data, frames, end)
                if rebuilt is not None:
                    return rebuilt, stop
        if end == len(data):
            return data, stop
        return bytes(data[:end]), stop

    def _account_buffered(self, held: int) -> None:
        """Keep the gateway-wide count of incomplete client messages' bytes
        (``limits.max_buffered``); the session whose growth passes it ends
        with 53200, so that many clients each holding a message just under
        ``max_message_size`` cannot multiply it into the gateway's memory."""
        gateway = self.budget
        grew = held - self._c_buffered
        gateway.buffered += grew
        self._c_buffered = held
        if grew > 0 and gateway.buffered > self.limits.max_buffered:
            # This session ends: its incomplete message is dropped and its
            # bytes leave the budget now, not when its socket has closed (a
            # client slow to take the error must not get others refused too).
            self._c_pending = None
            self.release_buffered()
            raise FatalError(
                "out of memory: pgjit's buffer for incomplete messages is full",
                detail=f"limits.max_buffered is {self.limits.max_buffered} bytes over all sessions",
                hint="send large statements one at a time, or ask for a larger limits.max_buffered",
                sqlstate="53200",
            )

    def release_buffered(self) -> None:
        if self._c_buffered:
            self.budget.buffered -= self._c_buffered
            self._c_buffered = 0

    def from_server(self, data: bytes | bytearray | memoryview) -> bytes | bytearray | memoryview | None:
        """Bytes from the upstream -> bytes for the client (masked, for a
        masked session: pgjit.masking.wire)."""
        out = self._from_server(data)
        if self.masker is not None and out:
            return self.masker.server_bytes(out)
        return out

    def _from_server(self, data: bytes | bytearray | memoryview) -> bytes | bytearray | memoryview | None:
        """Bytes from the upstream -> bytes for the client. Sets
        ``_s_skip`` while a large message is streaming through. ``data``
        may be a view of a receive buffer; the result may be a view of it
        too, and nothing here keeps a reference to it past the call."""
        skip = self._s_skip
        head = b""
        if skip:
            if len(data) <= skip:
                self._s_skip = skip - len(data)
                return data
            head, data = data[:skip], data[skip:]
            self._s_skip = 0
        pending = self._s_pending
        if pending is not None:
            pending += data
            data = pending
        n = len(data)
        frames, end = scan_watched(data, 0, n, MAX_BACKEND_MESSAGE, self._s_watch)
        if frames:
            rewrite = False
            ctr = self.ctr
            queue = self.queue
            for i, (tag, start, stop) in enumerate(frames):
                if queue is not None:
                    for st in queue.server(tag, data[start + 5 : stop] if tag in _BODY_NEEDED else b""):
                        self.recorder.result(st)  # type: ignore[union-attr]
                if tag == B_READY:
                    if stop - start != 6:
                        raise ProtocolViolation("malformed ReadyForQuery message from the server")
                    ctr.rfq_received += 1
                    ctr.txn_status = bytes(data[start + 5 : start + 6])
                    if self._copy_ends or self._copy_ins:
                        self._copy_ready()
                elif tag == B_COPY_IN:
                    self._copy_started()
                elif tag == B_PARAMETER_STATUS:
                    if self.gate is not None and self._lexer_report(data, start, stop):
                        return self._halt_before(data, frames[:i], start, head)
                elif self._rewrites:
                    rewrite = True
            last = frames[-1]
            ctr.last_was_error = last[0] == B_ERROR and last[2] == end
            if self.terminating:
                self.arm_drain()
            if rewrite or self._rewrites:
                out = self._backend_frames(data, frames, end)
            else:
                out = data if end == n else data[:end]
        elif end:
            self.ctr.last_was_error = False
            out = data if end == n else data[:end]
        else:
            out = b""
        tail = n - end
        if tail >= 5 and self.masker is None and data[end] in _STREAMABLE and _U32.unpack_from(data, end + 1)[0] + 1 - tail >= _STREAM_THRESHOLD:
            # A large row: pass what we have through now and the rest as it
            # arrives, instead of buffering it whole.
            self._s_skip = _U32.unpack_from(data, end + 1)[0] + 1 - tail
            self.ctr.last_was_error = False  # the last server message is this row, whatever came before
            out = data if end == 0 and not out else bytes(out) + bytes(data[end:])
            self._s_pending = None
        else:
            self._s_pending = _carry(data, end, pending)
        if head:
            return bytes(head) + bytes(out)
        return out

    def _lexer_report(self, data: bytes | bytearray | memoryview, start: int, stop: int) -> bool:
        """Does the ParameterStatus at ``data[start:stop]`` leave the lexer
        state the gate models? Then the session is halted: ``halted`` is
        set and the FATAL to send is the terminate error."""
        try:
            ps = m.ParameterStatus.decode(bytes(data[start + 5 : stop]))
        except Exception:
            raise ProtocolViolation("malformed ParameterStatus message from the server") from None
        reason = lexer_state_problem(ps.name, ps.value)
        if reason is None:
            return False
        log.warning("server lexer state not modelled", extra={"session": self.session_id, "setting": ps.name, "value": ps.value, "phase": "relay"})
        self.halted = True
        self.halt_error = lexer_error(reason)
        return True

    def _halt_before(self, data, frames: list[tuple[int, int, int]], cut: int, head) -> bytes | bytearray | memoryview:
        """The server's bytes before the ParameterStatus at ``cut`` (the
        watched ``frames`` before it handled as usual): the client gets them,
        then the FATAL; the rest of the read is dropped."""
        ctr = self.ctr
        ctr.last_was_error = bool(frames) and frames[-1][0] == B_ERROR and frames[-1][2] == cut
        out = self._backend_frames(data, frames, cut) if self._rewrites else data[:cut]
        self._s_pending = None
        self._s_skip = 0
        if head:
            return bytes(head) + bytes(out)
        return out

    def _frontend_frames(self, buf: bytes | bytearray, frames: list[tuple[int, int, int]], end: int) -> tuple[bytes | None, bool]:
        """``buf[:end]`` with the watched frames handled, in order; returns
        (bytes to send upstream or None when ``buf[:end]`` goes unchanged,
        stop after sending)."""
        out: list[bytes] = []
        seg = 0
        queue = self.queue
        tracked = queue is not None or self.masker is not None or self.approvals
        for tag, start, stop in frames:
            if self.approvals and (tag == F_QUERY or tag == F_EXECUTE):
                hold = self._hold_for(tag, buf, start, stop)
                if hold is not None:
                    # This statement and everything after it wait for the
                    # decision; what came before goes now.
                    self.hold = hold
                    self._held = bytes(buf[start:end]) + (bytes(self._c_pending) if self._c_pending is not None else b"")
                    self._c_pending = None
                    self._account_buffered(0)
                    out.append(bytes(buf[seg:start]))
                    return b"".join(out), False
            if tag in _COUNT_ONLY:
                self._count(tag)
                if tracked and tag != F_QUERY:
                    replacement = self._track(tag, buf, start, stop)
                    if replacement is not None:
                        out.append(bytes(buf[seg:start]))
                        out.append(replacement)
                        seg = stop
                    continue
                if tag != F_QUERY or (self.gate is None and not tracked):
                    continue
            if tag not in _FRONTEND_KNOWN:
                raise ProtocolViolation(f"invalid frontend message type {tag}")
            if tag == F_TERMINATE:
                out.append(bytes(buf[seg:stop]))
                # The relay ends when the server has closed its side, after
                # whatever it still sends the client (see reactor/_client_to_server).
                self.terminating = True
                self.arm_drain()
                return b"".join(out), True
            replacement: bytes | None = None
            if tag == F_QUERY:
                text = bytes(buf[start + 5 : stop - 1])
                error = self.gate_statement(text, None) if self.gate is not None else None
                if error is not None:
                    replacement = self._refuse(error)
                    if queue is not None:
                        self._record(queue.query(text, size=stop - start, decision=self.last_refusal[0],
                                                 rule=self.last_refusal[1], sqlstate=error.sqlstate), refused=True)
                elif queue is not None:
                    st = queue.query(text, size=stop - start)
                    if not self._record(st):
                        replacement = self._refuse(self._unrecorded(st), replaces=True)
            elif tag == F_PARSE:
                # Gated: a Parse that cannot be read is refused (08P01). Only
                # recorded: the server judges it, as it does unrecorded.
                name, query = (_parse_name_and_query(buf, start + 5, stop) if self.gate is not None
                               else _lenient_name_and_query(buf, start + 5, stop))
                error = self.gate_statement(query, name) if self.gate is not None else None
                if error is not None:
                    replacement = self._refuse(error, sync=False)
                    if queue is not None:
                        self._record(queue.refused_parse(name, query, size=stop - start, rule=self.last_refusal[1],
                                                         sqlstate=error.sqlstate), refused=True)
                elif queue is not None:
                    queue.parse(name, query)
            elif tag == F_FUNCTION_CALL:
                self.ctr.rfq_sent += 1
                self._log_refusal("pgjit:function-call", "deny", "function-call", stop - start)
                error = FeatureNotSupported(
                    "the FunctionCall protocol message is not allowed through pgjit",
                    hint="call the function with a SQL statement, so that it can be checked",
                )
                replacement = self._refuse(error)
                if queue is not None:
                    self._record(queue.query(b"<FunctionCall>", size=stop - start, decision="deny",
                                             rule="pgjit:function-call", sqlstate=error.sqlstate), refused=True)
            elif tracked:
                replacement = self._track(tag, buf, start, stop)
            if replacement is not None:
                out.append(bytes(buf[seg:start]))
                out.append(replacement)
                seg = stop
        if seg == 0:
            return None, False  # nothing replaced: forward the bytes as they came
        out.append(bytes(buf[seg:end]))
        return b"".join(out), False

    # ----------------------------------------------------------- audit

    # ----------------------------------------------------------- approvals

    def _hold_for(self, tag: int, buf, start: int, stop: int) -> Hold | None:  # type: ignore[no-untyped-def]
        """Must this Query or Execute wait for an approval? Not when it is the
        held statement coming back with its decision (``_release``)."""
        if tag == F_QUERY:
            text, params, protocol = bytes(buf[start + 5 : stop - 1]), None, "simple"
            rule = message = None
            if self.gate is None:
                return None
            try:
                _, decision = self.gate.verdict(text, self.groups, self.prepared, self.overlay)
            except Exception:
                return None  # gate_statement reports it
            if decision.action != "require_approval":
                return None
            rule, message = decision.rule or "default", decision.message
        else:
            portal, _ = _execute_args(buf, start + 5, stop)
            entry = self._approval_portals.get(portal)
            if entry is None:
                return None
            text, rule, message, params = entry
            protocol = "extended"
        if self._is_release(text, params):
            return None  # decided: gate_statement (or _track) lets it run or refuses it
        return Hold(text, rule, message, params, protocol)

    def _track_approval_portal(self, buf, start: int, stop: int) -> None:  # type: ignore[no-untyped-def]
        """A Bind of a statement that needs approval: its portal's Execute is held."""
        portal = _cstr_at(buf, start + 5, stop)
        name = _cstr_at(buf, min(_find0(buf, start + 5, stop) + 1, stop), stop)
        entry = self._approval_stmts.get(name)
        if entry is None:
            self._approval_portals.pop(portal, None)
            return
        try:
            params = m.Bind.decode(bytes(buf[start + 5 : stop])).params
        except Exception:
            params = ()
        self._approval_portals[portal] = (entry[0], entry[1], entry[2], tuple(params))

    def release(self, error: PgjitError | None) -> bytes:
        """The held statement's decision: None runs it, an error refuses it in
        its place. Returns the held bytes, to feed to ``from_client`` again
        (the held statement first, decided; the rest as it comes)."""
        hold = self.hold
        assert hold is not None
        self._release = (hold.text, hold.params, error)
        self.hold = None
        held, self._held = self._held, b""
        return held

    def _is_release(self, text: bytes, params: tuple | None) -> bool:
        """Is this the held statement coming back with its decision?"""
        release = self._release
        return release is not None and release[0] == text and release[1] == params

    def _released(self, text: bytes, params: tuple | None) -> tuple[bool, PgjitError | None]:
        """(is this the held statement coming back, the error to refuse it
        with); the decision is used up."""
        if not self._is_release(text, params):
            return False, None
        error = self._release[2]  # type: ignore[index]
        self._release = None
        return True, error

    def _track(self, tag: int, buf, start: int, stop: int) -> bytes | None:  # type: ignore[no-untyped-def]
        """Tell the statement queue about a client message the server will
        answer (audit on). Returns a stand-in when an Execute cannot be
        recorded: it then does not go upstream."""
        queue, masker = self.queue, self.masker
        if tag == F_EXECUTE:
            portal, max_rows = _execute_args(buf, start + 5, stop)
            entry = self._approval_portals.get(portal)
            if entry is not None:
                back, error = self._released(entry[0], entry[3])
                if not back:  # pragma: no cover - _hold_for holds it first
                    return self._refuse(InsufficientPrivilege("statement needs approval"), sync=False)
                if error is not None:
                    self._log_refusal(entry[1], "require_approval", statement_fingerprint(entry[0]) or "unparsable", stop - start)
                    if queue is not None:
                        self._record(queue.refused_parse("", entry[0], size=stop - start, rule=entry[1],
                                                         sqlstate=error.sqlstate), refused=True)
                    return self._refuse(error, sync=False)
            if queue is not None:
                st = queue.execute(portal, max_rows, size=stop - start)
                if not self._record(st):
                    return self._refuse(self._unrecorded(st), sync=False)
            if masker is not None:
                masker.on_execute(portal)
        elif tag == F_SYNC:
            if queue is not None:
                queue.sync()
            if masker is not None:
                masker.on_sync()
        elif tag == F_BIND:
            if self.approvals:
                self._track_approval_portal(buf, start, stop)
            if queue is not None:
                portal_end = _find0(buf, start + 5, stop)
                params = None
                if self.recorder.bind_parameters:  # type: ignore[union-attr]
                    params = _bind_values(bytes(buf[start + 5 : stop]))
                queue.bind(_cstr_at(buf, start + 5, stop), _cstr_at(buf, min(portal_end + 1, stop), stop), params)
            if masker is not None:
                masker.on_bind(bytes(buf[start + 5 : stop]))
        elif tag == F_DESCRIBE:
            if queue is not None:
                queue.describe()
            if masker is not None:
                kind = chr(buf[start + 5]) if stop > start + 5 else "S"
                masker.on_describe(kind, _cstr_at(buf, start + 6, stop))
        elif tag == F_CLOSE:
            if queue is not None:
                queue.close()
            if masker is not None:
                masker.on_close()
        return None

    def _record(self, st: Statement, *, refused: bool = False) -> bool:
        """Queue the statement's record before it goes upstream; False when
        the audit trail cannot take it (the store is down and the buffer is
        full): the statement must not run."""
        assert self.recorder is not None
        try:
            # A refusal is recorded whatever the buffer holds: nothing runs,
            # and who tried what is what an audit is for.
            self.recorder.statement(st, force=refused)
        except Exception as e:  # AuditUnavailable, or anything else: fail closed
            if refused:
                return True
            self._audit_error = str(e)
            st.outcome, st.decision = "refused", "unrecorded"
            return False
        return True

    def _unrecorded(self, st: Statement) -> PgjitError:
        from pgjit.errors import AuditUnavailableError

        _REFUSED_LOG(log, logging.WARNING, "statement refused: audit trail unavailable",
                     {"session": self.session_id, "error": self._audit_error})
        return AuditUnavailableError(
            "pgjit cannot record this statement, so it did not run: the audit store is unreachable and its buffer is full",
            detail=self._audit_error or None,
            hint="retry when the audit store is back (audit.on_store_failure: fail_closed)",
        )

    def replay_log(self, data: bytes) -> None:
        """What the C core relayed of the messages the server answers, in
        order (a direction byte, then the frame: _relaycore.c, set_audit):
        the statement queue learns it as if this relay had seen it. The
        core relays only what the gate allowed and only while the audit
        store takes records, so nothing here is refused; records are queued
        over the buffer's bound rather than lost."""
        queue, recorder = self.queue, self.recorder
        assert queue is not None and recorder is not None
        pos, n = 0, len(data)
        while pos < n:
            direction, tag = data[pos], data[pos + 1]
            stop = pos + 2 + _U32.unpack_from(data, pos + 2)[0]
            if direction == 99:  # "c"
                if tag == F_QUERY:
                    recorder.statement(queue.query(data[pos + 6 : stop - 1], size=stop - pos - 1), force=True)
                elif tag == F_EXECUTE:
                    recorder.statement(queue.execute(*_execute_args(data, pos + 6, stop), size=stop - pos - 1), force=True)
                elif tag == F_PARSE:
                    queue.parse(*_lenient_name_and_query(data, pos + 6, stop))
                else:
                    self._track(tag, data, pos + 1, stop)
            else:
                for st in queue.server(tag, data[pos + 6 : stop] if tag in _BODY_NEEDED else b""):
                    recorder.result(st)
            pos = stop

    def finish_audit(self) -> None:
        """The session ended: what is still in flight is recorded as unanswered."""
        if self.queue is not None and self.recorder is not None:
            for st in self.queue.abandon():
                self.recorder.result(st)

    def _count(self, tag: int) -> None:
        """Keep count of the ReadyForQuery replies the server owes us.

        Each Query and Sync is answered by one ReadyForQuery, except that the
        server ignores Sync while it is in COPY FROM STDIN: a client running
        COPY through the extended protocol sends Execute, Sync, then CopyData
        ... CopyDone, Sync, and gets one ReadyForQuery for the two Syncs. So
        the Syncs between an Execute and a CopyDone/CopyFail are uncounted
        when the server shows (CopyInResponse) that they fell into a copy; a
        CopyDone/CopyFail outside COPY, which the server ignores, changes
        nothing."""
        ctr = self.ctr
        if tag == F_SYNC:
            ctr.rfq_sent += 1
            ctr.syncs_since_execute += 1
        elif tag == F_QUERY:
            ctr.copy_base = ctr.rfq_sent  # the replies owed before this Query's (a COPY's key)
            ctr.rfq_sent += 1
            ctr.syncs_since_execute = 0
        elif tag == F_EXECUTE:
            ctr.copy_base = ctr.rfq_sent
            ctr.syncs_since_execute = 0
        else:  # CopyDone, CopyFail
            syncs = ctr.syncs_since_execute
            ctr.syncs_since_execute = 0
            if self._copy_ins:
                # The server said it is in COPY FROM STDIN: this ends it, and
                # the Syncs since its Execute fell into it.
                self._copy_ins -= 1
                ctr.rfq_sent -= syncs
                if self.queue is not None:
                    self.queue.swallow_syncs(syncs)
            else:
                # Not known yet (the client did not wait for CopyInResponse),
                # or no COPY at all (the server ignores a stray CopyDone): the
                # server's next replies decide (_copy_started, _copy_ready).
                # Kept even with no Sync to uncount: it ends the COPY that the
                # server has yet to announce, which must then not count as
                # running (a later stray CopyDone would uncount real Syncs).
                self._copy_ends.append((ctr.copy_base, syncs))

    def _copy_started(self) -> None:
        """A CopyInResponse: the server entered COPY FROM STDIN."""
        ends = self._copy_ends
        if ends and self.ctr.rfq_received == ends[0][0]:
            # The CopyDone already seen ends this copy: its Syncs were swallowed.
            swallowed = ends.popleft()[1]
            self.ctr.rfq_sent -= swallowed
            if self.queue is not None:
                self.queue.swallow_syncs(swallowed)
        else:
            self._copy_ins += 1

    def _copy_ready(self) -> None:
        """A ReadyForQuery: no COPY is running any more (one that ended by an
        error has no CopyDone to come), and a CopyDone whose run of Syncs got
        an answer without a CopyInResponse before it was outside any COPY."""
        self._copy_ins = 0
        ends = self._copy_ends
        while ends and self.ctr.rfq_received > ends[0][0]:
            ends.popleft()

    def gate_allows(self, raw: bytes) -> bool | int:
        """For the reactor's C path: may this Query's SQL go upstream with
        nothing more from Python? True only for an allowed statement that
        needs no bookkeeping (prepared statements) and no log line (shadow
        rules); ALLOW_SHAPE when, besides, every statement of its shape key
        gets the same answer for this session (the core then remembers the
        shape in shape_verdicts and asks no more). Anything else is False,
        and the read takes the Python path, which decides again and does
        the rest. No side effects."""
        started = _clock()
        try:
            analysis, decision = self.gate.verdict(raw, self.groups, self.prepared, self.overlay)  # type: ignore[union-attr]
        except Exception:
            return False
        if not decision.allowed or decision.shadow:
            return False
        _, plain, sets_timeout, shareable = _plain(analysis)
        if plain and not (self.approvals and sets_timeout):
            _GATE_SECONDS.observe(_clock() - started)  # a False is timed again on the Python path
            # (No NUL: the gate refuses such text today; should that change, its
            # shape cache would still not hold it, and nor may the core.)
            return ALLOW_SHAPE if shareable and not self.overlay and b"\x00" not in raw else True
        return False

    def gate_statement(self, raw: bytes, parse_name: str | None, *, startup: bool = False) -> PgjitError | None:
        """Check one Query or Parse (its SQL as UTF-8 bytes) against the
        policy: None when allowed, else the error the client must see (the
        statement is not forwarded)."""
        gate = self.gate
        assert gate is not None
        started = _clock()
        try:
            try:
                analysis, decision = gate.verdict(raw, self.groups, self.prepared, self.overlay)
            finally:
                _GATE_SECONDS.observe(_clock() - started)
        except UnicodeDecodeError:
            self.last_refusal = ("deny", "pgjit:not-utf8")
            self._log_refusal("pgjit:not-utf8", "deny", "not-utf8", len(raw))
            return FeatureNotSupported(
                "pgjit could not read the statement: it is not valid UTF-8",
                hint="use client_encoding UTF8",
            )
        except ParseFailure as e:
            self.last_refusal = ("deny", "pgjit:unparsable")
            self._log_refusal("pgjit:unparsable", "deny", "unparsable", len(raw), position=e.cursorpos)
            return SyntaxErrorSQL(
                f"pgjit could not parse the statement: {e.message}",
                position=e.cursorpos if e.cursorpos and e.cursorpos > 0 else None,
                hint="pgjit refuses statements it cannot parse",
            )
        if decision.shadow:
            log.info("audit rule matched (shadow mode)", extra={"session": self.session_id, "rules": ",".join(decision.shadow)})
        rule = decision.rule or "default"
        allowed = decision.allowed
        if decision.needs_approval and self.approvals and not startup:
            if parse_name is not None:
                # Extended protocol: the Parse runs nothing; the Execute of a
                # portal bound to it is held, with its parameters (_hold_for).
                self._approval_stmts[parse_name] = (raw, rule, decision.message)
                allowed = True
            else:
                back, error = self._released(raw, None)
                if back and error is not None:
                    self.last_refusal = ("approval", rule)
                    metrics.STATEMENTS_DENIED.labels(decision.action).inc()
                    self._log_refusal(rule, decision.action, statement_fingerprint(raw) or "unparsable", len(raw))
                    return error
                if back:
                    log.info("statement approved", extra={"session": self.session_id, "rule": rule})
                    allowed = True
        elif parse_name is not None:
            self._approval_stmts.pop(parse_name, None)
        if allowed:
            if self.approvals and _sets_statement_timeout(analysis):
                self._note_statement_timeout(raw)
            if self.masker is not None and not startup:  # a startup setting gets no reply to mask
                dynamic = any(f.dynamic_sql or f.unknown_body for f in analysis.statements)
                error = self._mask_statement(raw, parse_name, dynamic)
                if error is not None:
                    return error
            if _changes_catalog(analysis):
                self._note_ddl(analysis)
            if parse_name or _changes_prepared(analysis):
                self._track_prepared(analysis, parse_name)
            return None
        self.last_refusal = ("approval" if decision.needs_approval else "deny", rule)
        if decision.message and "catalog yet" in decision.message:
            if self.catalog is not None:
                self.catalog.request_refresh()  # a name created since the last snapshot
        metrics.STATEMENTS_DENIED.labels(decision.action).inc()
        self._log_refusal(rule, decision.action, statement_fingerprint(raw) or "unparsable", len(raw))
        if decision.needs_approval:
            return InsufficientPrivilege(
                f'statement needs approval under policy rule "{rule}"',
                detail=decision.message,
                hint="this gateway holds no statements for approval (it has no approvals section); ask a DBA to run it",
            )
        return InsufficientPrivilege(
            f'statement denied by policy rule "{rule}"' + (f": {decision.message}" if decision.message else ""),
            hint=decision.hint or "ask a DBA if you need this",
        )

    def _note_statement_timeout(self, raw: bytes) -> None:
        """The client set (or reset) statement_timeout: a hold never waits longer
        (pgjit.gateway.holds). ``SET [SESSION|LOCAL] statement_timeout = v`` and
        RESET; a value pgjit cannot read leaves the last one known."""
        text = raw.decode("utf-8", "replace")
        if _RESET_TIMEOUT.search(text):
            self.client_statement_timeout = None
            return
        m_ = _SET_TIMEOUT.search(text)
        if m_ is None:
            return
        value = pg_duration_seconds(m_.group(1))
        if value is not None:
            self.client_statement_timeout = value or None  # 0: no limit

    def _mask_statement(self, raw: bytes, parse_name: str | None, dynamic: bool = False) -> PgjitError | None:
        """Tell the masker about an allowed Query or Parse; the error to
        answer instead when the masking rules refuse it (an oracle, a
        computed column, something pgjit cannot follow)."""
        masker = self.masker
        assert masker is not None
        try:
            if dynamic:
                # SQL run from a string, or code pgjit cannot read: its columns cannot be followed.
                raise MaskRefused("pgjit:masking", "the statement runs SQL pgjit cannot see (dynamic SQL or a body "
                                                   "it cannot read), so pgjit cannot follow masked columns through it")
            if parse_name is None:
                masker.on_query(raw)
            else:
                masker.on_parse(parse_name, raw)
        except MaskRefused as r:
            if "catalog snapshot" in r.message and self.catalog is not None:
                self.catalog.request_refresh()  # a name created since the last snapshot
            self.last_refusal = ("deny", r.rule)
            metrics.STATEMENTS_DENIED.labels("deny").inc()
            self._log_refusal(r.rule, "deny", statement_fingerprint(raw) or "unparsable", len(raw))
            return InsufficientPrivilege(
                f'statement denied by masking rule "{r.rule}": {r.message}',
                hint="select the masked column itself, without comparing, sorting, grouping or computing on it",
            )
        return None

    def _log_refusal(self, rule: str, action: str, fingerprint: str, size: int, *, position: int | None = None) -> None:
        """One line per refused statement: who, which rule, and the statement
        by its fingerprint (PostgreSQL's, constants left out; or what kept it
        from having one) — never its text."""
        extra: dict[str, object] = {
            # Named here: in the reactor's callbacks the log context is not the session's.
            "session": self.session_id,
            "user": self.user,
            "database": self.database,
            "rule": rule,
            "action": action,
            "fingerprint": fingerprint,
            "statement_bytes": size,
        }
        if position:
            extra["error_position"] = position
        log.info("statement refused", extra=extra)

    def _note_ddl(self, analysis) -> None:
        """DDL let through: the catalog snapshot is out of date. Remember the
        functions and operators it creates (their facts were just checked) until
        a fresh snapshot has them, and ask for one."""
        if self.shape_verdicts is not None:
            self.shape_verdicts.clear()  # decided under the catalog as it was
        for f in analysis.statements:
            for name in f.created:
                facts = _created_facts(f, name)
                self.overlay[name] = facts
                if "." in name and not name.startswith(("operator ", "relation ")):
                    self.overlay[name.rsplit(".", 1)[1]] = facts
        if self.catalog is not None:
            self.catalog.request_refresh()

    def _track_prepared(self, analysis, parse_name: str | None) -> None:
        """Keep the map from prepared-statement names to what they run, so that
        EXECUTE is decided as the statement it runs (SQL PREPARE and named
        protocol-level statements share one namespace in PostgreSQL)."""
        if parse_name:
            self._remember_prepared(parse_name, analysis)
        for f in analysis.statements:
            if f.prepares:
                self._remember_prepared(f.prepares, f)
            if f.deallocates == "*" or f.kind == "discard":
                self.prepared.clear()
                self._deallocated.clear()
            elif f.deallocates and f.deallocates in self.prepared:
                # The server may refuse the DEALLOCATE (in a failed transaction,
                # 25P02) and keep the statement: pgjit keeps knowing what it
                # runs, for the last _DEALLOCATED_KEPT names deallocated.
                self._deallocated[f.deallocates] = None
                self._deallocated.move_to_end(f.deallocates)
                while len(self._deallocated) > _DEALLOCATED_KEPT:
                    gone, _ = self._deallocated.popitem(last=False)
                    self.prepared.pop(gone, None)

    def _remember_prepared(self, name: str, target) -> None:  # type: ignore[no-untyped-def]
        """``name`` now prepares ``target``. If pgjit knew the name already,
        the server may still hold the old statement (the new PREPARE refused
        as a duplicate, or in a failed transaction; a DEALLOCATE refused):
        EXECUTE is then decided as both, the strictest way."""
        old = self.prepared.get(name)
        self._deallocated.pop(name, None)
        if old is not None and old is not target:
            a, b = prepared_facts({name: target}, name), prepared_facts({name: old}, name)
            if a is not None and b is not None:
                target = merge_facts(a, b)
        self.prepared[name] = target

    def _refuse(self, error: PgjitError, *, sync: bool = True, replaces: bool = False) -> bytes:
        """Bytes that stand in, upstream, for a refused client message: a Bind
        to a statement that does not exist, named by a marker, so that the
        server fails exactly there (aborting the transaction or skipping to
        Sync as for any error) and the reply is swapped for ``error``. With
        ``sync`` (Query, FunctionCall: they are answered by a ReadyForQuery of
        their own) a Sync follows; a refused Parse waits for the client's."""
        if self.masker is not None:
            # ``replaces``: the statement was told to the masker as allowed, and is refused after all.
            self.masker.on_refused(sync=sync, replaces=replaces)
        marker = "pgjit_refused_" + secrets.token_hex(8)
        due = self.ctr.rfq_sent if sync else self.ctr.rfq_sent + 1
        self._rewrites[marker] = (error, due)
        return m.Bind("", marker).encode() + (m.Sync().encode() if sync else b"")

    def _backend_frames(self, buf: bytearray, frames: list[tuple[int, int, int]], end: int) -> bytes:
        out: list[bytes] = []
        seg = 0
        # rfq_received already counts this batch; replay the count frame by frame.
        received = self.ctr.rfq_received - sum(1 for f in frames if f[0] == B_READY)
        for tag, start, stop in frames:
            if tag == B_READY:
                received += 1
                if self._rewrites:
                    for marker in [k for k, (_, due) in self._rewrites.items() if due <= received]:
                        del self._rewrites[marker]
            elif tag == B_ERROR and self._rewrites:
                replacement = self._rewrite_error(bytes(buf[start + 5 : stop]))
                if replacement is not None:
                    out.append(bytes(buf[seg:start]))
                    out.append(replacement)
                    seg = stop
        out.append(bytes(buf[seg:end]))
        return b"".join(out)

    def _rewrite_error(self, body: bytes) -> bytes | None:
        err = m.ErrorResponse.decode(body)
        if err.sqlstate != "26000":
            return None
        text = err.message or ""
        for marker, (error, _) in self._rewrites.items():
            if marker in text:
                del self._rewrites[marker]
                return m.ErrorResponse.from_error(error).encode()
        return None


_SET_TIMEOUT = re.compile(r"(?i)\bset\s+(?:session\s+|local\s+)?statement_timeout\s*(?:=|\bto\b)\s*'?([0-9.]+\s*[a-z]*)'?")
_RESET_TIMEOUT = re.compile(r"(?i)\breset\s+(?:statement_timeout|all)\b")
_PG_UNITS = {"": 0.001, "us": 1e-6, "ms": 0.001, "s": 1.0, "min": 60.0, "h": 3600.0, "d": 86400.0}


def pg_duration_seconds(text: str) -> float | None:
    """A statement_timeout value as PostgreSQL reads it (a bare number is
    milliseconds), in seconds; None when it cannot be read."""
    m_ = re.fullmatch(r"([0-9.]+)\s*([a-z]*)", text.strip().lower())
    if m_ is None or m_.group(2) not in _PG_UNITS:
        return None
    try:
        return float(m_.group(1)) * _PG_UNITS[m_.group(2)]
    except ValueError:
        return None


def _parse_name_and_query(buf: bytes | bytearray, pos: int, stop: int) -> tuple[str, bytes]:
    """A Parse message's statement name and query bytes, without decoding the rest."""
    name_end = buf.find(b"\x00", pos, stop)
    query_end = buf.find(b"\x00", name_end + 1, stop) if name_end >= 0 else -1
    if query_end < 0:
        raise ProtocolViolation("malformed Parse message")
    return bytes(buf[pos:name_end]).decode("utf-8", "surrogateescape"), bytes(buf[name_end + 1 : query_end])


def _carry(data: bytes | bytearray, end: int, pending: bytearray | None) -> bytearray | None:
    """The incomplete tail of ``data`` after ``end``, without copying a
    message that is still accumulating in ``pending``."""
    if end == len(data):
        return None
    if end == 0 and data is pending:
        return pending
    return bytearray(memoryview(data)[end:])


def _find0(buf, pos: int, stop: int) -> int:  # type: ignore[no-untyped-def]
    """Where the NUL ending the string at ``pos`` is; ``stop`` when there is
    none (a malformed message: the server refuses it itself, and the
    statement queue gets its ErrorResponse)."""
    end = bytes(buf[pos:stop]).find(b"\x00")
    return stop if end < 0 else pos + end


def _cstr_at(buf, pos: int, stop: int) -> str:  # type: ignore[no-untyped-def]
    return bytes(buf[pos : _find0(buf, pos, stop)]).decode("utf-8", "surrogateescape")


def _execute_args(buf, pos: int, stop: int) -> tuple[str, int]:  # type: ignore[no-untyped-def]
    """An Execute body's portal name and row limit (0, its default, when the
    frame is too short to hold one: the server rejects such a frame)."""
    end = _find0(buf, pos, stop)
    max_rows = _I32.unpack_from(buf, end + 1)[0] if end + 5 <= stop else 0
    return bytes(buf[pos:end]).decode("utf-8", "surrogateescape"), max(max_rows, 0)


def _lenient_name_and_query(buf, pos: int, stop: int) -> tuple[str, bytes]:  # type: ignore[no-untyped-def]
    name_end = _find0(buf, pos, stop)
    query_end = _find0(buf, min(name_end + 1, stop), stop)
    return (bytes(buf[pos:name_end]).decode("utf-8", "surrogateescape"),
            bytes(buf[min(name_end + 1, stop) : query_end]))


def _bind_values(body: bytes) -> list[str | None] | None:
    """A Bind's parameter values for the audit record: text-format ones as
    text, binary ones as \\x and hex; None when the message cannot be read
    (the server refuses it)."""
    try:
        b = m.Bind.decode(body)
    except Exception:
        return None
    formats = b.param_formats
    out: list[str | None] = []
    for i, v in enumerate(b.params):
        fmt = formats[i] if len(formats) > 1 else (formats[0] if formats else 0)
        if v is None:
            out.append(None)
        elif fmt == 0:
            out.append(v.decode("utf-8", "replace"))
        else:
            out.append("\\x" + v.hex())
    return out
