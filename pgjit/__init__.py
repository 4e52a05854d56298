"""pgjit: a just-in-time, policy-enforcing PostgreSQL gateway."""

__version__ = "0.1.0"
