"""The statement gate's decision layer: pure functions of (statement, policy, groups).

Nothing here does I/O on the hot path or imports trio, sockets or the store.

* :func:`analyze` turns a SQL string into :class:`Facts` per statement
  (raises :class:`ParseFailure` when PostgreSQL's grammar rejects it);
* :class:`Policy` loads and validates a policy file and :meth:`Policy.decide`
  returns a :class:`Decision`; :meth:`Policy.access_for` the :class:`AccessGrant`.
"""

from pgjit.policy.facts import Analysis, CopyInfo, Facts, ParseFailure, analyze
from pgjit.policy.model import (
    RULE_LEXER_CHANGE,
    RULE_UNKNOWN_PREPARED,
    RULE_UNREADABLE,
    AccessGrant,
    Decision,
    Policy,
    PolicyError,
)

__all__ = [
    "RULE_LEXER_CHANGE",
    "RULE_UNKNOWN_PREPARED",
    "RULE_UNREADABLE",
    "AccessGrant",
    "Analysis",
    "CopyInfo",
    "Decision",
    "Facts",
    "ParseFailure",
    "Policy",
    "PolicyError",
    "analyze",
]
