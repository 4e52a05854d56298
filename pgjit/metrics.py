"""Every Prometheus metric pgjit exports, in one place, all prefixed ``pgjit_``.

Label values are bounded: outcomes, events and decisions are fixed
vocabularies, targets are the configured ones (``-`` before a session has
one), never user names, SQL or database names supplied by clients.

Most are prometheus-client's own. The few observed on the per-statement path
(``pgjit_gate_seconds``, ``pgjit_statements_total``) are :class:`FastHistogram`
and :class:`FastCounter`: a bucket count kept in a
plain list (the gateway's event loop is one thread), exported through a
collector, because prometheus-client's ``Histogram.observe`` (a lock and a
loop over the buckets, about 1.5-2.5 µs) would cost a visible share of a
40 µs round trip. Gauges about the gateway's state are computed when scraped
(:func:`watch_gateway`), so keeping them costs nothing on the data path.
"""

from __future__ import annotations

import bisect
from typing import Callable, Iterable

from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

SESSIONS_TOTAL = Counter(
    "pgjit_sessions_total",
    "Client sessions by target and how they ended",
    # outcome: ok | client_gone | client_error | refused | upstream_error | upstream_closed | timeout |
    # expired | shutdown | internal_error | cancel_request | too_many_starting
    ["target", "outcome"],
)
CONNECT_SECONDS = Histogram(
    "pgjit_connect_seconds",
    "Time from a client's startup packet to its first ReadyForQuery (token check, JIT role, upstream login)",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
JIT_CONNECT_SECONDS = Histogram(
    "pgjit_jit_role_create_seconds",
    "Time to create a session's just-in-time role",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
JIT_ROLE_EVENTS = Counter(
    "pgjit_jit_role_events_total", "Just-in-time roles created and revoked", ["event"]  # created | revoked | swept
)
CANCEL_REQUESTS = Counter("pgjit_cancel_requests_total", "CancelRequests received", ["result"])  # forwarded | unknown | withdrew
APPROVAL_OUTCOMES = Counter(
    "pgjit_approval_outcomes_total", "Statements held for approval, by how they ended",
    ["outcome"],  # approved | denied | timeout | withdrawn | reused | error
)
STATEMENTS_DENIED = Counter(
    "pgjit_statements_denied_total", "Statements the gate refused", ["action"]  # deny | require_approval
)


class FastCounter(Collector):
    """A counter with one label for the hot path: ``inc(value)`` is a dict
    update (prometheus-client's Counter takes a lock, about 1 µs). Only for
    code on the gateway's one event-loop thread."""

    def __init__(self, name: str, documentation: str, label: str) -> None:
        self.name, self.documentation, self.label = name, documentation, label
        self.counts: dict[str, int] = {}
        REGISTRY.register(self)

    def inc(self, value: str) -> None:
        counts = self.counts
        counts[value] = counts.get(value, 0) + 1

    def add(self, value: str, n: int) -> None:
        counts = self.counts
        counts[value] = counts.get(value, 0) + n

    def collect(self):  # type: ignore[no-untyped-def]
        family = CounterMetricFamily(self.name.removesuffix("_total"), self.documentation, labels=[self.label])
        for value, n in sorted(self.counts.copy().items()):
            family.add_metric([value], n)
        yield family

    def describe(self):  # type: ignore[no-untyped-def]
        return []


STATEMENTS = FastCounter(
    "pgjit_statements_total", "Statements recorded by the audit trail, by decision", "decision"  # allow | deny | approval | unrecorded
)
AUDIT_UNRECORDED = Counter(
    "pgjit_audit_unrecorded_total",
    "Statements whose record could not be queued: refused (fail_closed) or run unrecorded (fail_open)",
    ["policy"],
)
AUDIT_STORE_ERRORS = Counter("pgjit_audit_store_errors_total", "Failed writes to the audit store (each retried)")


class FastHistogram(Collector):
    """A histogram without labels for the hot path: ``observe`` is a
    bisect and two additions. Only for code on the gateway's one event-loop
    thread."""

    def __init__(self, name: str, documentation: str, buckets: Iterable[float]) -> None:
        self.name, self.documentation = name, documentation
        self.bounds = tuple(sorted(buckets))
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0
        REGISTRY.register(self)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def collect(self):  # type: ignore[no-untyped-def]
        cumulative, total = [], 0
        for bound, n in zip(self.bounds + (float("inf"),), self.counts):
            total += n
            cumulative.append(("+Inf" if bound == float("inf") else repr(float(bound)), total))
        yield HistogramMetricFamily(self.name, self.documentation, buckets=cumulative, sum_value=self.sum)

    def describe(self):  # type: ignore[no-untyped-def]
        return []


GATE_SECONDS = FastHistogram(
    "pgjit_gate_seconds",
    "Time the statement gate takes to decide one Query or Parse (cache hits included)",
    (0.000005, 0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.01, 0.05),
)


class _GatewayState(Collector):
    """Gauges read from the running gateway when scraped."""

    def __init__(self) -> None:
        self.source: Callable[[], dict[str, object]] | None = None
        REGISTRY.register(self)

    def collect(self):  # type: ignore[no-untyped-def]
        if self.source is None:
            return
        state = self.source()
        sessions = GaugeMetricFamily("pgjit_sessions_active", "Client sessions open now, by target", labels=["target"])
        for target, n in sorted(state["sessions"].items()):  # type: ignore[union-attr]
            sessions.add_metric([target], n)
        yield sessions
        roles = GaugeMetricFamily("pgjit_jit_roles_active", "Just-in-time roles this process holds now", labels=["target"])
        for target, n in sorted(state["jit_roles"].items()):  # type: ignore[union-attr]
            roles.add_metric([target], n)
        yield roles
        up = GaugeMetricFamily("pgjit_upstream_up", "1 when the target's server accepted a TCP connection at the last probe", labels=["target"])
        for target, ok in sorted(state["upstream_up"].items()):  # type: ignore[union-attr]
            up.add_metric([target], 1 if ok else 0)
        yield up
        if "approvals_held" in state:
            yield GaugeMetricFamily("pgjit_approvals_held", "Statements held on the wire for an approval now (this process)",
                                    value=state["approvals_held"])
        if "audit_queue" in state:
            yield GaugeMetricFamily("pgjit_audit_queue_depth", "Audit records queued, not yet in the store (the relay core's included)",
                                    value=state["audit_queue"])
        if "audit_store_up" in state:
            yield GaugeMetricFamily("pgjit_audit_store_up", "1 while the audit store takes writes; 0 while they fail or it has "
                                    "not answered for 5 s (pgjit.audit.writer.STALL_SECONDS)",
                                    value=1 if state["audit_store_up"] else 0)
        yield CounterMetricFamily(
            "pgjit_gate_reused",
            "Queries the relay core let through on the verdict the gate gave earlier in the session for their "
            "shape (literals aside); not timed in pgjit_gate_seconds", value=state.get("gate_reused", 0))
        yield GaugeMetricFamily("pgjit_buffered_bytes", "Bytes held in incomplete client messages, all sessions (limits.max_buffered)",
                                value=state["buffered"])

    def describe(self):  # type: ignore[no-untyped-def]
        return []


_STATE = _GatewayState()


def watch_gateway(source: Callable[[], dict[str, object]]) -> None:
    """Export the state ``source()`` returns: {"sessions": {target: n},
    "jit_roles": {target: n}, "upstream_up": {target: bool}, "buffered": n}."""
    _STATE.source = source
