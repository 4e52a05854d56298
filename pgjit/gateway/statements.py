"""One object per statement, and the queue of the replies the server owes.

A :class:`Statement` is made when the client's Query, or Execute, goes
upstream (or a refused one is answered in its place): its text, protocol,
decision, and when it started. It waits in the session's
:class:`StatementQueue` among the other client messages that the server
answers, in order, until its reply comes back — CommandComplete (the tag
gives the rows), EmptyQueryResponse, PortalSuspended, or ErrorResponse (the
SQLSTATE) — which finishes it with its duration. Audit records are built
from finished statements; masking and approvals hang their state on them.

The server answers the client's messages strictly in order, so the queue
holds one entry per message that gets an answer — Query, Parse, Bind,
Describe, Close, Execute, Sync — and each backend message is matched with
the entry at its head:

    ParseComplete '1'  Parse       BindComplete '2'  Bind
    CloseComplete '3'  Close       NoData 'n', RowDescription 'T'  Describe
    DataRow 'D'        counted on the statement at the head, when fed
                       (the relays do not: tags give the rows)
    CommandComplete 'C', EmptyQueryResponse 'I', PortalSuspended 's'
                       an Execute finishes; a Query collects the tag (a
                       Query may hold several statements); a suspended
                       Execute returned its row limit's worth of rows
    CopyInResponse 'G', CopyOutResponse 'H', CopyBothResponse 'W'
                       the statement at the head is a COPY
    ErrorResponse 'E'  the statement it belongs to fails; in the extended
                       protocol the server then skips to Sync, so the
                       Executes queued before the next Sync are skipped
    ReadyForQuery 'Z'  ends a Query, or the Sync at the head (anything still
                       queued before it had no answer: skipped)

Nothing here does I/O or parses more than the few fields it needs; it is
fed frames by the relay.

The relay keeps its own ReadyForQuery counters as well (``Relay._count``;
the C core has the same ones), which decide the Syncs a COPY FROM STDIN
swallows (a client may send Execute, Sync, CopyData…, CopyDone, Sync and get
one ReadyForQuery); it tells the queue (``swallow_syncs``).
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass, field
from typing import Callable

# Client message kinds that get an answer.
Q, P, B, D, C, E, S = "Q", "P", "B", "D", "C", "E", "S"

# Backend message types, as the ints the relays see.
_D, _T, _n, _C, _I, _s, _Z, _E = b"DTnCIsZE"
_1, _2, _3, _G, _H, _W = b"123GHW"
_NONE: list = []  # "finished nothing" (never appended to)

# Command tags whose last number is the rows returned or affected.
_ROW_TAGS = frozenset(("SELECT", "INSERT", "UPDATE", "DELETE", "MERGE", "COPY", "FETCH", "MOVE"))


@dataclass(eq=False, slots=True)
class Statement:
    seq: int  # in the session, from 1
    protocol: str  # simple | extended | copy (a COPY, in either protocol)
    text: bytes  # the SQL as the client sent it
    started: float  # clock() when it went upstream
    decision: str = "allow"  # allow | deny (refused by pgjit: never ran)
    rule: str | None = None
    sqlstate: str | None = None  # the error it ended with (pgjit's own for a refusal)
    outcome: str = "running"  # running | ok | error | suspended | skipped | refused
    tags: list[str] = field(default_factory=list)  # CommandComplete tags, in order
    rows_seen: int = 0  # DataRows relayed (when rows are counted frame by frame)
    bytes_in: int = 0  # the client bytes it arrived in
    ended: float | None = None
    parameters: list[str | None] | None = None  # bind values, when the audit records them
    max_rows: int = 0  # an Execute's row limit (0: none)
    rows_base: int | None = None  # rows the C core's tracker counted before Python took it over (adopt)

    @property
    def rows(self) -> int | None:
        """Rows returned or affected, from the command tags (None when no
        tag says, e.g. CREATE TABLE); DataRows counted otherwise."""
        total = self.rows_base
        for tag in self.tags:
            parts = tag.split()
            if parts and parts[0] in _ROW_TAGS and parts[-1].isascii() and parts[-1].isdigit():
                total = (total or 0) + int(parts[-1])
        if total is None and self.rows_seen:
            return self.rows_seen
        return total

    @property
    def duration(self) -> float | None:
        return None if self.ended is None else self.ended - self.started


class StatementQueue:
    """The statements of one session in flight, and every other client
    message the server still owes an answer to."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._q: collections.deque[tuple[str, Statement | None]] = collections.deque()
        self._seq = 0
        self._portals: dict[str, bytes] = {}  # portal -> the SQL it runs
        self._params: dict[str, list[str | None]] = {}  # portal -> its bind values (only when recorded)
        self._prepared: dict[str, bytes] = {}  # statement name -> SQL

    def __len__(self) -> int:
        return len(self._q)

    @property
    def seq(self) -> int:
        """The last statement number given out."""
        return self._seq

    @seq.setter
    def seq(self, value: int) -> None:
        self._seq = value

    @property
    def in_flight(self) -> list[Statement]:
        return [st for _, st in self._q if st is not None]

    def _new(self, protocol: str, text: bytes, decision: str, rule: str | None, size: int) -> Statement:
        self._seq += 1
        return Statement(self._seq, protocol, bytes(text), self.clock(), decision, rule, bytes_in=size)

    # ------------------------------------------------------------ client side

    def query(self, text: bytes, *, size: int = 0, decision: str = "allow", rule: str | None = None,
              sqlstate: str | None = None) -> Statement:
        """A Query went upstream — or, refused (``decision`` not allow), its
        stand-in (a Bind to a missing statement and a Sync: an ErrorResponse
        and a ReadyForQuery come back, as for a Query that failed)."""
        st = self._new("simple", text, decision, rule, size)
        if decision != "allow":
            st.outcome, st.sqlstate = "refused", sqlstate
        self._q.append((Q, st))
        return st

    def adopt(self, tracked: list[tuple]) -> list[Statement]:
        """The statements the C core's tracker had in flight (its reclaim():
        seq, text, size, at_us, start_ns, copy, rows, error, sqlstate), at
        the head of this queue, which was empty while the core tracked.
        (The caller takes the core's sequence number too: ``seq``.)"""
        out = []
        for seq, text, size, _at, start_ns, copy, rows, error, sqlstate in tracked:
            st = Statement(seq, "copy" if copy else "simple", text, start_ns / 1e9, bytes_in=size, rows_base=rows)
            if error:
                st.outcome, st.sqlstate = "error", sqlstate
            self._q.append((Q, st))
            out.append(st)
        return out

    def parse(self, name: str, text: bytes) -> None:
        self._prepared[name] = bytes(text)
        self._q.append((P, None))

    def refused_parse(self, name: str, text: bytes, *, size: int = 0, rule: str | None = None,
                      sqlstate: str | None = None) -> Statement:
        """A Parse the gate refused; a Bind to a missing statement went up in
        its place (the server fails it and skips to the client's Sync)."""
        st = self._new("extended", text, "deny", rule, size)
        st.outcome, st.sqlstate = "refused", sqlstate
        self._prepared.pop(name, None)
        self._q.append((B, st))
        return st

    def bind(self, portal: str, statement: str, parameters: list[str | None] | None = None) -> None:
        self._portals[portal] = self._prepared.get(statement, b"")
        if parameters is not None:
            self._params[portal] = parameters
        else:
            self._params.pop(portal, None)
        self._q.append((B, None))

    def describe(self) -> None:
        self._q.append((D, None))

    def close(self) -> None:
        self._q.append((C, None))

    def execute(self, portal: str, max_rows: int = 0, *, size: int = 0) -> Statement:
        st = self._new("extended", self._portals.get(portal, b""), "allow", None, size)
        st.parameters = self._params.get(portal)
        st.max_rows = max_rows
        self._q.append((E, st))
        return st

    def sync(self) -> None:
        self._q.append((S, None))

    def swallow_syncs(self, n: int) -> None:
        """``n`` Syncs the client sent during a COPY FROM STDIN (after its
        Execute) that the server ignored: no ReadyForQuery comes for them
        (the relay's ReadyForQuery accounting decides which, Relay._count)."""
        if n <= 0:
            return
        items = list(self._q)
        for i, (kind, st) in enumerate(items):
            if kind == E and st is not None and st.protocol == "copy" and st.outcome == "running":
                kept = items[: i + 1]
                for k, s2 in items[i + 1 :]:
                    if k == S and n:
                        n -= 1
                        continue
                    kept.append((k, s2))
                self._q = collections.deque(kept)
                return

    # ------------------------------------------------------------ server side

    def server(self, tag: int, body: bytes | bytearray | memoryview) -> list[Statement]:
        """One backend message; returns the statements it finished. (Tags
        compared as ints: this runs for every reply the audit sees.)"""
        q = self._q
        if not q:
            return _NONE
        kind, st = q[0]
        if tag == _D:
            if st is not None:
                st.rows_seen += 1
            return _NONE
        if tag == _T or tag == _n:
            if kind == D:
                q.popleft()
            return _NONE  # a Query's or Execute's RowDescription changes nothing
        if tag == _C or tag == _I or tag == _s:
            if st is not None and (kind == Q or kind == E):
                if tag == _C:
                    st.tags.append(_cstr(body))
                if kind == E:
                    if tag == _s:
                        # PortalSuspended: the Execute returned its row limit's worth
                        # (no tag says how many; the DataRows are not counted one by one).
                        st.outcome, st.rows_seen = "suspended", st.max_rows
                    else:
                        st.outcome = "ok"
                    q.popleft()
                    done: list[Statement] = []
                    self._finish(st, done)
                    return done
            return _NONE
        if tag == _Z:
            # Ends a Query, or the Sync at the head; anything before that had
            # no answer of its own (the server skipped it after an error).
            done = []
            while q:
                kind, st = q.popleft()
                if st is not None:
                    if st.outcome == "running":
                        st.outcome = "ok" if kind == Q else "skipped"
                    self._finish(st, done)
                if kind == Q or kind == S:
                    break
            return done
        if tag == _E:
            done = []
            self._error(_sqlstate(body), done)
            return done
        if (tag == _1 and kind == P) or (tag == _2 and kind == B) or (tag == _3 and kind == C):
            q.popleft()
        elif tag == _G or tag == _H or tag == _W:
            if st is not None:
                st.protocol = "copy"
        # Anything else (notices, ParameterStatus, NotificationResponse,
        # CopyData …) changes nothing.
        return _NONE

    def _error(self, sqlstate: str, done: list[Statement]) -> None:
        q = self._q
        kind, st = q[0]
        if kind == Q:
            if st is not None and st.outcome == "running":
                st.outcome, st.sqlstate = "error", sqlstate
            return  # the ReadyForQuery ends it
        # Extended protocol: the message at the head failed. Its statement is
        # the head's own (an Execute, a refused Parse's stand-in), else the
        # first Execute before the next Sync (its Parse or Bind failed).
        owner = st
        if owner is None:
            for k, s in q:
                if k == S:
                    break
                if k == E:
                    owner = s
                    break
        if owner is not None and owner.outcome == "running":
            owner.outcome, owner.sqlstate = "error", sqlstate
        # The server skips to Sync: what is queued before it gets no answer.
        while q and q[0][0] != S:
            k, s = q.popleft()
            if s is not None:
                if s.outcome == "running":
                    s.outcome = "skipped"
                self._finish(s, done)

    def _finish(self, st: Statement, done: list[Statement]) -> None:
        st.ended = self.clock()
        done.append(st)

    def abandon(self) -> list[Statement]:
        """The session ended: what is still in flight never got its answer."""
        out = []
        while self._q:
            _, st = self._q.popleft()
            if st is not None:
                if st.outcome == "running":
                    st.outcome = "unanswered"
                st.ended = self.clock()
                out.append(st)
        return out


def _cstr(body: bytes | bytearray | memoryview) -> str:
    b = bytes(body)
    end = b.find(b"\0")
    return (b if end < 0 else b[:end]).decode("utf-8", "replace")


def _sqlstate(body: bytes | bytearray | memoryview) -> str:
    """The C (code) field of an ErrorResponse body."""
    b = bytes(body)
    pos = 0
    while pos < len(b) and b[pos] != 0:
        end = b.find(b"\0", pos + 1)
        if end < 0:
            break
        if b[pos] == ord("C"):
            return b[pos + 1 : end].decode("ascii", "replace")
        pos = end + 1
    return ""
