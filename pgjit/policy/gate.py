"""The statement gate's per-statement entry point, with its caches.

``Gate.verdict(raw, groups, prepared)`` returns the facts and the
:class:`Decision` for a statement's bytes as they came off the wire. It runs
for every Query and Parse, so it is built around three caches, cheapest first:

1. the exact bytes (and the caller's groups): one dict lookup, no decoding;
2. the *shape key* (:func:`shape_key`: literals replaced by ``?``, only for
   text in an alphabet where a regular expression lexes literals exactly as
   PostgreSQL does) for the same literal-insensitive statements as 3;
3. pglast's fingerprint (about 3 µs, PostgreSQL's own parser in C). The
   fingerprint ignores the values of constants, so only *literal-insensitive*
   analyses are shared through it: plain queries and DML whose facts were
   derived from no constant's value (no SET, set_config, COPY,
   PREPARE/EXECUTE, function or DO bodies). This is what keeps clients that
   inline literals (pgbench's simple mode, most ORMs) off the slow path;
4. otherwise the full analysis (about 20 µs for a small statement).

Decisions that depend on the session's prepared statements (EXECUTE) are
never cached. The caches are bounded and evict oldest first; a statement
answered through its fingerprint is not also remembered by its bytes. Pure: no I/O, no
trio.
"""

from __future__ import annotations

import re
import weakref
from collections import OrderedDict
from typing import Any, Iterable, Mapping

import pglast.parser as _pg

from pgjit.catalog import Catalog
from pgjit.policy.facts import Analysis, Facts, analyze_uncached
from pgjit.policy.model import Decision, Policy
from pgjit.policy.resolve import Resolver

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


# The shape key: the statement with its numeric and string literals replaced
# by "?", computed only for text whose lexing a regular expression cannot get
# wrong. In that restricted alphabet — ASCII (PostgreSQL identifiers may hold
# other letters, which Python's \w does not know), no double quotes
# (quoted identifiers), no backslash (E'' escapes, standard_conforming_strings),
# no dollar sign (dollar quotes, $n parameters), no comments, no "?" (it is
# the placeholder), no quote preceded by a letter or digit (E'', B'', X'',
# N'' prefixes), no doubled quotes inside a string, no two literals touching —
# every single-quoted run is one string constant and every free-standing digit
# run is one numeric constant for PostgreSQL's own lexer, so two statements
# with the same key differ only in their constants' values, exactly as two
# statements with the same fingerprint do.
# A string not preceded by a letter or digit (so not E'', B'', X'', N''), or a
# free-standing run of digits (not part of a name, 1e5, 0x1F or 1.2.3).
_SHAPE_LITERAL = re.compile(rb"(?<!\w)'[^']*'|(?<![\w.])[0-9]+(?:\.[0-9]+)?(?![\w.])")


def _shape_key_py(raw: bytes) -> bytes | None:
    """``raw`` with its literals replaced by ``?``, or None when the text is
    outside the alphabet where that replacement is known to be exact.

    The reference: :func:`shape_key` is the C version (``_shape.c``) when it
    was built, property-tested equal to this."""
    if (
        not raw.isascii()
        or b'"' in raw
        or b"\\" in raw
        or b"$" in raw
        or b"?" in raw
        or b"--" in raw
        or b"/*" in raw
    ):
        return None
    key = _SHAPE_LITERAL.sub(b"?", raw)
    # A quote left over is a string the expression did not take (a prefix,
    # an odd quote); "??" is two literals touching ('a''b', 1'x').
    if b"'" in key or b"??" in key:
        return None
    return key


try:  # the optional C version (setup.py); identical results, about 20 times faster
    from pgjit.policy._shape import shape_key
except ImportError:  # pragma: no cover - only where it could not be built
    shape_key = _shape_key_py


def _uses_prepared(analysis: Analysis) -> bool:
    return any(f.executes_prepared for f in analysis.statements)


#: Statements longer than this are decided afresh each time, never cached:
#: a cache of any size of entries would let one client fill memory with a
#: few large statements (denied ones included).
MAX_CACHED_STATEMENT = 16 * 1024

#: Each of the gate's caches holds at most this many bytes of statement text
#: (the entries' weights), besides at most ``cache_size`` entries.
CACHE_BYTES = 8 * 1024 * 1024


class _Bounded(OrderedDict):
    """A mapping that forgets its oldest entries beyond ``size`` entries or
    ``max_bytes`` of weight (each entry's weight: about the bytes of text it
    keeps alive). O(1) per put, amortised."""

    def __init__(self, size: int, max_bytes: int = CACHE_BYTES) -> None:
        super().__init__()
        self.size = size
        self.max_bytes = max_bytes
        self.bytes = 0
        self._weights: dict[Any, int] = {}

    def put(self, key: Any, value: Any, weight: int = 0) -> None:
        old = self._weights.pop(key, None)
        if old is not None:
            self.bytes -= old
        self[key] = value
        self._weights[key] = weight
        self.bytes += weight
        while len(self) > self.size or (self.bytes > self.max_bytes and len(self) > 1):
            gone, _ = self.popitem(last=False)
            self.bytes -= self._weights.pop(gone, 0)

    def clear(self) -> None:
        super().clear()
        self._weights.clear()
        self.bytes = 0


def statement_fingerprint(raw: bytes) -> str | None:
    """PostgreSQL's fingerprint of a statement (constants left out), for logs
    that must name a statement without its literals; None if it does not parse."""
    try:
        sql = raw.decode("utf-8")
        if "\x00" in sql:
            return None
        return _pg.fingerprint(sql)
    except Exception:
        return None


class ShapeVerdicts(dict):
    """One session's shape keys whose every statement the gate allows with
    nothing more to do (pgjit.gateway.relay.Relay.gate_allows): the relay
    core looks a Query's shape key up here before it calls into Python
    (_relaycore.c, gate_shapes). Only shapes whose analysis is
    literal-insensitive (the condition of the gate's own shape cache) go in,
    so every statement of a shape has its verdict. The gate empties every
    session's when its catalog changes; the session empties its own when
    its overlay or its approvals change what the gate would say."""

    __slots__ = ("__weakref__",)


class Gate:
    """A policy plus the caches that make checking cheap. One per target,
    shared by its sessions so that they warm each other's caches."""

    def __init__(self, policy: Policy, cache_size: int = 8192) -> None:
        self.policy = policy
        # What names mean on the upstream (pgjit.policy.resolve); None until
        # the gateway has loaded the target's catalog (and for offline tools).
        self.resolver: Resolver | None = None
        self._by_bytes = _Bounded(cache_size)  # (raw, groups) -> (analysis, decision)
        self._analyses = _Bounded(cache_size)  # fingerprint -> analysis
        self._fp_decisions = _Bounded(cache_size)  # (fingerprint, groups) -> decision
        self._by_shape = _Bounded(cache_size)  # (shape key, groups) -> (analysis, decision)
        self.hits = self.shape_hits = self.fingerprint_hits = self.misses = 0
        self._sessions: weakref.WeakValueDictionary[int, ShapeVerdicts] = weakref.WeakValueDictionary()
        self._session_no = 0

    def shape_verdicts(self) -> ShapeVerdicts:
        """A session's own (empty) ShapeVerdicts, emptied with the caches."""
        verdicts = ShapeVerdicts()
        self._session_no += 1
        self._sessions[self._session_no] = verdicts
        return verdicts

    @staticmethod
    def shareable(analysis: Analysis) -> bool:
        """Whether every statement of ``analysis``'s shape key has its
        facts (literal-insensitive: what the shape cache keeps)."""
        return _fingerprint_safe(analysis)

    def set_catalog(self, catalog: Catalog | None) -> None:
        """Decide from now on with ``catalog`` (a fresh snapshot): every cached
        decision was made with the old one, so the caches start over."""
        self.resolver = Resolver(catalog) if catalog is not None else None
        for cache in (self._by_bytes, self._analyses, self._fp_decisions, self._by_shape):
            cache.clear()
        for verdicts in list(self._sessions.values()):
            verdicts.clear()

    @property
    def catalog(self) -> Catalog | None:
        return self.resolver.catalog if self.resolver is not None else None

    def analyze(self, sql: str, overlay: Mapping[str, Facts] | None = None) -> Analysis:
        """The facts of ``sql``, resolved through the catalog when there is one."""
        analysis = analyze_uncached(sql)
        if self.resolver is not None:
            analysis = self.resolver.enrich(analysis, overlay)
        return analysis

    def verdict(
        self,
        raw: bytes,
        groups: frozenset[str],
        prepared: Mapping[str, Analysis | Facts] | None = None,
        overlay: Mapping[str, Facts] | None = None,
    ) -> tuple[Analysis, Decision]:
        """Facts and decision for the UTF-8 bytes of a SQL string.

        ``overlay`` holds objects the session created itself that the catalog
        may not show yet (then nothing is cached).
        Raises UnicodeDecodeError for bytes that are not UTF-8 and
        ParseFailure for SQL that does not parse (both: fail closed)."""
        if overlay:
            self.misses += 1
            analysis = self.analyze(raw.decode("utf-8"), overlay)
            return analysis, self.policy.decide(analysis, groups, prepared=prepared)
        if len(raw) > MAX_CACHED_STATEMENT:
            self.misses += 1
            analysis = self.analyze(raw.decode("utf-8"))
            return analysis, self.policy.decide(analysis, groups, prepared=prepared)
        weight = 2 * len(raw) + 256  # the text, the analysis's copy of it, overhead
        key = (raw, groups)
        hit = self._by_bytes.get(key)
        if hit is not None:
            self.hits += 1
            return hit
        shape = shape_key(raw)
        if shape is not None:
            hit = self._by_shape.get((shape, groups))
            if hit is not None:
                self.shape_hits += 1
                return hit
        sql = raw.decode("utf-8")
        fp = None
        if "\x00" not in sql:  # the C parser would stop at a NUL: no shortcut for those
            try:
                fp = _pg.fingerprint(sql)
            except Exception:
                pass  # the full analysis reports the parse error precisely
        analysis = self._analyses.get(fp) if fp is not None else None
        if analysis is not None:
            self.fingerprint_hits += 1
            decision = self._fp_decisions.get((fp, groups))
            if decision is None:
                decision = self.policy.decide(analysis, groups)
                self._fp_decisions.put((fp, groups), decision, 256)
            if shape is not None:
                self._by_shape.put((shape, groups), (analysis, decision), weight)
            else:
                # No shape key (e.g. $1 parameters): such text usually comes
                # again verbatim, so remember it by its bytes.
                self._by_bytes.put(key, (analysis, decision), weight)
            return analysis, decision
        self.misses += 1
        analysis = self.analyze(sql)
        decision = self.policy.decide(analysis, groups, prepared=prepared)
        if fp is not None and _fingerprint_safe(analysis):
            self._analyses.put(fp, analysis, weight)
            if shape is not None:
                self._by_shape.put((shape, groups), (analysis, decision), weight)
        if not _uses_prepared(analysis):
            self._by_bytes.put(key, (analysis, decision), weight)
        return analysis, decision

    def check(
        self,
        sql: str,
        groups: frozenset[str] | Iterable[str],
        prepared: Mapping[str, Analysis | Facts] | None = None,
    ) -> tuple[Analysis, Decision]:
        """The same for a str (tools and tests)."""
        return self.verdict(sql.encode("utf-8"), frozenset(groups), prepared)
