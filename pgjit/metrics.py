"""Every Prometheus metric pgjit exports, in one place, all prefixed ``pgjit_``.

Label values are bounded: outcomes and phases are fixed vocabularies, never
user names, SQL or database names supplied by clients.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

SESSIONS_ACTIVE = Gauge("pgjit_sessions_active", "Client sessions currently open")
SESSIONS_TOTAL = Counter(
    "pgjit_sessions_total",
    "Client sessions by how they ended",
    ["outcome"],  # ok | client_error | refused | upstream_error | shutdown | internal_error | cancel_request
)
CONNECT_SECONDS = Histogram(
    "pgjit_connect_seconds",
    "Time from a client's startup packet to its first ReadyForQuery",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
CANCEL_REQUESTS = Counter("pgjit_cancel_requests_total", "CancelRequests received", ["result"])  # forwarded | unknown
STATEMENTS_DENIED = Counter(
    "pgjit_statements_denied_total", "Statements the gate refused", ["action"]  # deny | require_approval
)
