"""The HTTP API: /metrics, /healthz, /readyz (approvals later)."""
