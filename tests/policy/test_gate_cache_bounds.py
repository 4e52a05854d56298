"""The gate's caches are bounded in bytes, not only in entries: one client
sending large distinct statements (denied ones too) cannot grow the gateway's
memory by the product of the entry count and the message limit."""

from __future__ import annotations

from pgjit.policy import Policy
from pgjit.policy.gate import CACHE_BYTES, MAX_CACHED_STATEMENT, Gate

from tests.test_hardening_live import POLICY  # deny DROP TABLE, allow the rest


def gate(tmp_path) -> Gate:
    p = tmp_path / "p.yaml"
    p.write_text(POLICY)
    return Gate(Policy.load(str(p)))


def retained_text(g: Gate) -> int:
    """Bytes of statement text the caches keep alive (keys and analyses)."""
    total = 0
    for cache in (g._by_bytes, g._by_shape):
        for key, (analysis, _) in cache.items():
            total += len(key[0]) + len(analysis.sql)
    for analysis in g._analyses.values():
        total += len(analysis.sql)
    return total


def test_large_statements_are_not_cached(tmp_path):
    g = gate(tmp_path)
    for i in range(20):
        # A denied statement of 1 MiB, different each time (a comment).
        sql = f"drop table t{i} /* {'x' * (1 << 20)} */"
        _, decision = g.check(sql, ["analysts"])
        assert not decision.allowed and decision.rule == "no-drop"
    assert retained_text(g) < 1 << 20


def test_many_mid_sized_statements_stay_within_the_byte_budget(tmp_path):
    g = gate(tmp_path)
    filler = "y" * (MAX_CACHED_STATEMENT // 2)
    for i in range(3000):  # ~24 MiB of distinct text through caches of 8192 entries
        g.check(f"select {i} as n, '{filler}' as f", ["analysts"])
    assert retained_text(g) <= 3 * CACHE_BYTES + (1 << 20)
    for cache in (g._by_bytes, g._by_shape, g._analyses, g._fp_decisions):
        assert cache.bytes <= CACHE_BYTES


def test_small_statements_still_hit_the_cache(tmp_path):
    g = gate(tmp_path)
    g.check("select 1", ["a"])
    hits = g.hits
    g.check("select 1", ["a"])
    assert g.hits == hits + 1
