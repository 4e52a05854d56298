"""Just-in-time PostgreSQL roles: one role per client session (see SETUP.md)."""

from pgjit.jit.admin import AdminConnection, AdminConnectionError, AdminSQLError
from pgjit.jit.broker import ALLOWED_SETTINGS, JitBroker, JitRole, JitRoleError, SweepReport
from pgjit.jit.naming import quote_ident, quote_literal, role_name

__all__ = [
    "ALLOWED_SETTINGS",
    "AdminConnection",
    "AdminConnectionError",
    "AdminSQLError",
    "JitBroker",
    "JitRole",
    "JitRoleError",
    "SweepReport",
    "quote_ident",
    "quote_literal",
    "role_name",
]
