"""A session's audit records: built from its statements (pgjit.gateway.
statements) and queued on the gateway's writer (pgjit.audit.writer).

``statement`` is called before a statement goes upstream and raises when
the record cannot be queued (the store is down and the buffer is full) —
the relay then refuses the statement (fail_closed), unless the config says
fail_open, when it runs unrecorded and a warning and a metric say so.
``result`` is called when the server's answer came back; a statement that
ran always gets its result queued, over the buffer's bound if need be, so
nothing that ran loses its outcome.
"""

from __future__ import annotations

import logging
from typing import Any

from pgjit import metrics
from pgjit.logs import Throttle
from pgjit.audit import records
from pgjit.audit.writer import AuditUnavailable, Deferred, Entries, entries_trailer
from pgjit.gateway.statements import Statement
from pgjit.policy.gate import shape_key, statement_fingerprint

log = logging.getLogger("pgjit.gateway.recording")
_UNRECORDED_LOG = Throttle()  # one line per 10 s at most, for all sessions (the metric counts each)


_FINGERPRINTS: dict[bytes, str | None] = {}  # shape key -> fingerprint (bounded below)
_FINGERPRINTS_MAX = 8192


def fingerprint_of(raw: bytes) -> str | None:
    """pglast's fingerprint of ``raw`` (pgjit.policy.gate.statement_fingerprint),
    remembered by the statement's shape key (literals replaced by ``?``):
    the fingerprint ignores constants too, so statements of one shape share
    it, and a client that inlines literals (pgbench -S) costs one shape key
    (C, about 1 µs) per statement instead of a parse (about 10 µs)."""
    shape = shape_key(raw) if len(raw) <= 4096 else None
    if shape is None:
        return statement_fingerprint(raw)
    try:
        return _FINGERPRINTS[shape]
    except KeyError:
        pass
    fp = _FINGERPRINTS[shape] = statement_fingerprint(raw)
    if len(_FINGERPRINTS) > _FINGERPRINTS_MAX:
        del _FINGERPRINTS[next(iter(_FINGERPRINTS))]  # oldest first
    return fp


class SessionRecorder:
    def __init__(self, writer: Any, *, session_id: str, person: str | None, target: str | None,
                 policy_hash: str | None, redact_literals: bool, fail_open: bool,
                 bind_parameters: bool = False) -> None:
        self.writer = writer
        self.session_id = session_id
        self.person = person
        self.target = target
        self.policy_hash = policy_hash
        self.redact_literals = redact_literals
        self.fail_open = fail_open
        self.bind_parameters = bind_parameters  # off by default: values may be secrets

    def _text(self, st: Statement) -> tuple[str, str | None]:
        text = st.text.decode("utf-8", "replace")
        fingerprint = fingerprint_of(st.text) if st.text else None
        if self.redact_literals and text:
            from pglast.parser import normalize

            try:
                text = normalize(text)
            except Exception:
                text = f"<not parsable: {len(st.text)} bytes, literals not recorded>"
        return text, fingerprint

    @property
    def degraded(self) -> bool:
        """The store is failing or behind (pgjit.audit.writer.WriterHealth):
        statements must be recorded before they go up (the relay's Python
        path, which refuses them when the buffer is full), not after (the C
        core's log, which must not grow while the store does not answer)."""
        return self.writer.degraded

    def _statement_record(self, st: Statement, protocol: str, decision: str, rule: str | None) -> dict[str, Any]:
        text, fingerprint = self._text(st)
        return records.statement(
            self.session_id, person=self.person, target=self.target, seq=st.seq, text=text, protocol=protocol,
            decision=decision, rule=rule, fingerprint=fingerprint, policy_hash=self.policy_hash,
            size=st.bytes_in, parameters=st.parameters if self.bind_parameters else None)

    def _result_record(self, st: Statement) -> dict[str, Any]:
        return records.statement_result(
            self.session_id, person=self.person, target=self.target, seq=st.seq, outcome=st.outcome,
            rows=st.rows, sqlstate=st.sqlstate, duration=st.duration)

    @property
    def tracks(self) -> bool:
        """Whether the C core may keep this session's simple Queries itself
        and write their entries (_relaycore.c, Statements): not when the
        text is to be normalised, which takes pglast."""
        return not self.redact_literals

    def trailer(self) -> bytes:
        """What the C core puts in the trailer of its Entries frames
        (pgjit.audit.writer.Entries): this session, person, target and policy hash."""
        return entries_trailer(self.session_id, self.person, self.target, self.policy_hash)

    def entries(self, frame: bytes, count: int) -> None:
        """Statements the C core tracked and finished: ``count`` entries
        (statement and result in one, as the writer merges them) in one
        frame for the writer process, as the core wrote it."""
        metrics.STATEMENTS.add("allow", count)
        self.writer.submit(Entries(frame), force=True)

    def adopted(self, st: Statement, at: float) -> None:
        """A statement the C core relayed and tracked, now in Python's queue
        (StatementQueue.adopt): its record, with the time it went upstream."""
        # As it went upstream: a simple Query (a COPY it started since is
        # the statement's protocol now, as for any other statement).
        record = Deferred(self._statement_record, st, "simple", st.decision, st.rule)
        record.at = at
        metrics.STATEMENTS.inc(st.decision)
        self.writer.submit(record, force=True)

    def statement(self, st: Statement, *, force: bool = False) -> None:
        # Built in the writer's thread; what may change once the statement
        # runs (the server may make it a COPY) is taken now. Its text,
        # sequence number, size and parameters do not change.
        record = Deferred(self._statement_record, st, st.protocol, st.decision, st.rule)
        metrics.STATEMENTS.inc(st.decision)
        try:
            self.writer.submit(record, force=force)
        except AuditUnavailable:
            metrics.AUDIT_UNRECORDED.labels("fail_open" if self.fail_open else "fail_closed").inc()
            if not self.fail_open:
                raise
            _UNRECORDED_LOG(log, logging.WARNING, "statement runs unrecorded (audit.on_store_failure: fail_open)",
                            {"session": self.session_id})

    def result(self, st: Statement) -> None:
        """The statement finished (nothing of it changes any more)."""
        self.writer.submit(Deferred(self._result_record, st), force=True)
