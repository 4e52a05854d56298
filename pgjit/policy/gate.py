"""The statement gate's per-statement entry point, with its caches.

``Gate.check(sql, groups, prepared)`` returns the :class:`Decision` for a SQL
string. The per-miss path must be the fast one, because clients that inline
literals (pgbench's simple mode, most ORMs' generated SQL) almost never repeat
a text exactly:

1. an LRU keyed on the exact text (a dict lookup);
2. on a miss, pglast's fingerprint (about 3 µs, computed by PostgreSQL's own
   parser in C) keys a second LRU of facts. The fingerprint ignores the values
   of constants, so only *literal-insensitive* analyses are stored there:
   plain queries and DML whose facts were derived from no constant's value
   (no SET, set_config, COPY, PREPARE/EXECUTE, function or DO bodies);
3. otherwise the full analysis (about 20 µs for a small statement).

Pure: no I/O, no trio.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Iterable, Mapping

import pglast.parser as _pg

from pgjit.policy.facts import Analysis, Facts, analyze_uncached
from pgjit.policy.model import Decision, Policy

# Statement kinds whose facts depend only on the parse tree's shape and names.
_SHAPE_KINDS = frozenset({"select", "insert", "update", "delete", "merge"})


def _fingerprint_safe(analysis: Analysis) -> bool:
    for f in analysis.statements:
        if (
            f.literal_sensitive
            or not f.kinds <= _SHAPE_KINDS
            or f.executes_prepared
            or f.prepares is not None
            or f.copies
            or f.bodies
            or f.unknown_body
        ):
            return False
    return bool(analysis.statements)


class _LRU(OrderedDict):
    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def put(self, key, value) -> None:
        self[key] = value
        if len(self) > self.size:
            self.popitem(last=False)


class Gate:
    """A policy plus the caches that make checking cheap."""

    def __init__(self, policy: Policy, cache_size: int = 8192) -> None:
        self.policy = policy
        self._by_text: _LRU = _LRU(cache_size)
        self._by_fingerprint: _LRU = _LRU(cache_size)
        self.hits = self.fingerprint_hits = self.misses = 0

    def analyze(self, sql: str) -> Analysis:
        """Facts of ``sql`` (raises ParseFailure when it does not parse)."""
        analysis = self._by_text.get(sql)
        if analysis is not None:
            self.hits += 1
            return analysis
        try:
            fp = _pg.fingerprint(sql)
        except Exception:
            fp = None  # let the full analysis report the parse error precisely
        analysis = self._by_fingerprint.get(fp) if fp is not None else None
        if analysis is not None:
            self.fingerprint_hits += 1
        else:
            self.misses += 1
            analysis = analyze_uncached(sql)
            if fp is not None and _fingerprint_safe(analysis):
                self._by_fingerprint.put(fp, analysis)
        self._by_text.put(sql, analysis)
        return analysis

    def check(
        self,
        sql: str,
        groups: frozenset[str] | Iterable[str],
        prepared: Mapping[str, Analysis | Facts] | None = None,
    ) -> tuple[Analysis, Decision]:
        analysis = self.analyze(sql)
        return analysis, self.policy.decide(analysis, groups, prepared=prepared)
