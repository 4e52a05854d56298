"""The gate's caches must never let a statement borrow another's decision.

pglast's fingerprint ignores constants, so statements that differ only in a
string constant share it. Each pair below shares a fingerprint (asserted), the
first is allowed and the second must still be denied after the first warmed
the caches."""

from __future__ import annotations

from pathlib import Path

import pglast.parser
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgjit.policy import ParseFailure, Policy
from pgjit.policy.facts import analyze_uncached
from pgjit.policy.gate import _SHAPE_LITERAL, Gate, shape_key

DEFAULT = Path(__file__).resolve().parents[2] / "policies" / "default.yaml"

CODE_POLICY = """
version: 1
rules:
  - name: no-dynamic-sql
    match: {dynamic_sql: true}
    action: deny
  - name: no-writes
    match: {kind: [delete, drop_table, insert, update]}
    action: deny
  - name: code-and-reads
    match: {kind: [select, create_function, do, set]}
    action: allow
default: deny
"""

GROUPS = frozenset({"agents"})


@pytest.mark.parametrize(
    "policy_text, allowed, denied",
    [
        (None, "select set_config('search_path', 'public', false)", "select set_config('role', 'postgres', false)"),
        (None, "set search_path = 'public'", "set search_path = 'public'; drop table t"),
        (CODE_POLICY, "do $$ begin perform 1; end $$", "do $$ begin execute 'drop table t'; end $$"),
        (
            CODE_POLICY,
            "create function f() returns int language plpgsql as $$ begin return 1; end $$",
            "create function f() returns int language plpgsql as $$ begin delete from t; return 1; end $$",
        ),
        (CODE_POLICY, "create function g() returns int language sql as 'select 1'",
         "create function g() returns int language sql as 'delete from t returning 1'"),
    ],
)
def test_literal_variants_do_not_share_decisions(policy_text, allowed, denied):
    policy = Policy.from_text(policy_text, "p.yaml") if policy_text else Policy.load(DEFAULT)
    gate = Gate(policy)
    assert gate.check(allowed, GROUPS)[1].allowed
    assert gate.check(allowed, GROUPS)[1].allowed  # now cached
    assert gate.check(denied, GROUPS)[1].denied


def test_same_fingerprint_pairs_really_collide():
    # Guard the premise of the test above for the pairs that matter most.
    for a, b in [
        ("select set_config('search_path', 'x', false)", "select set_config('role', 'x', false)"),
        ("do $$ begin perform 1; end $$", "do $$ begin execute 'drop table t'; end $$"),
        ("execute a", "execute b"),
    ]:
        assert pglast.parser.fingerprint(a) == pglast.parser.fingerprint(b)


def test_execute_is_decided_by_the_prepared_map_every_time():
    gate = Gate(Policy.load(DEFAULT))
    prepared = {"a": analyze_uncached("prepare a as select 1").statements[0]}
    assert gate.check("execute a", GROUPS, prepared)[1].allowed
    prepared["a"] = analyze_uncached("prepare a as delete from t").statements[0]
    assert gate.check("execute a", GROUPS, prepared)[1].denied
    assert gate.check("execute b", GROUPS, prepared)[1].denied  # unknown name: fail closed


def test_inlined_literals_hit_the_shape_and_fingerprint_caches():
    gate = Gate(Policy.load(DEFAULT))
    for i in range(50):
        assert gate.check(f"SELECT abalance FROM pgbench_accounts WHERE aid = {i}", GROUPS)[1].allowed
    assert gate.misses == 1 and gate.shape_hits == 49
    gate.check("SELECT abalance FROM pgbench_accounts WHERE aid = 0", GROUPS)  # the first one's bytes
    assert gate.hits == 1
    # Outside the shape key's alphabet (a comment), the fingerprint serves.
    for i in range(5):
        assert gate.check(f"SELECT abalance FROM pgbench_accounts WHERE aid = {i} -- c", GROUPS)[1].allowed
    assert gate.fingerprint_hits == 5  # same fingerprint as without the comment


# Soundness of the shape key, checked against PostgreSQL's own lexer: take a
# text, replace every literal the shape key's expression found by another
# literal of the same class, and PostgreSQL's fingerprint (which ignores only
# constants' values) must not change. If the expression ever took for a
# literal something PostgreSQL does not, the trees would differ.
_LITERALS = st.sampled_from(
    ["1", "42", "007", "3.5", "4.", ".5", "1e5", "1.5e-3", "0x1F", "'abc'", "'it''s'", "''", "'x'\n'y'",
     "'a' 'b'", "E'x'", "e'y'", "U&'d'", "b'01'", "B'1'", "x'ff'", "X'0A'", "n'z'", "N'w'", "int '5'",
     "date '2020-01-01'", "interval '1 day'", "'5'::int", "1::text", "-7", "+8", "'a'||'b'", "1.2.3"]
)
_NAMES = st.sampled_from(["t", "t1", "a.b", "x1", "e", "abs(1)", "lower('q')", "now()", "c2"])
_OPS = st.sampled_from([" + ", " - ", "*", " / ", " = ", "<>", " || ", " and ", " or ", ",", " < ", ">="])


@st.composite
def _expressions(draw, depth=0):
    parts = [draw(st.one_of(_LITERALS, _NAMES))]
    for _ in range(draw(st.integers(0, 3))):
        parts.append(draw(_OPS))
        parts.append(draw(st.one_of(_LITERALS, _NAMES)) if depth > 1 or draw(st.booleans()) else "(" + draw(_expressions(depth + 1)) + ")")
    return "".join(parts)


@st.composite
def _statements(draw):
    sql = "select " + draw(_expressions())
    if draw(st.booleans()):
        sql += " from t where " + draw(_expressions())
    if draw(st.booleans()):
        sql += " order by " + draw(st.sampled_from(["1", "2", "x1", "1 desc"]))
    if draw(st.booleans()):
        sql += " limit " + draw(st.sampled_from(["1", "10", "all", "'3'"]))
    return sql


@settings(max_examples=int(__import__("os").environ.get("PGJIT_SHAPE_EXAMPLES", "400")), deadline=None)
@given(_statements(), st.integers(0, 10_000))
def test_shape_key_agrees_with_postgresql_lexer(sql, seed):
    text = sql.encode()
    key = shape_key(text)
    if key is None:
        return
    try:
        fp = pglast.parser.fingerprint(text.decode())
    except Exception:
        return  # not SQL: never cached (the full analysis refuses it)
    counter = iter(range(seed, seed + 1000))

    def other(m):
        lit = m.group(0)
        return b"'v%d'" % next(counter) if lit.startswith(b"'") else b"%d" % next(counter)

    variant = _SHAPE_LITERAL.sub(other, text)
    assert shape_key(variant) == key
    assert pglast.parser.fingerprint(variant.decode()) == fp, (text, variant)


def test_groups_are_part_of_the_key():
    policy = Policy.from_text(
        """
version: 1
rules:
  - name: dba-only-deletes
    groups: [dba]
    match: {kind: [delete]}
    action: allow
default: deny
""",
        "g.yaml",
    )
    gate = Gate(policy)
    assert gate.check("delete from t where id = 1", {"dba"})[1].allowed
    assert gate.check("delete from t where id = 1", {"agents"})[1].denied
    assert gate.check("delete from t where id = 2", {"agents"})[1].denied


def test_nul_and_parse_errors_fail_closed():
    gate = Gate(Policy.load(DEFAULT))
    assert gate.check("select 1", GROUPS)[1].allowed
    with pytest.raises(ParseFailure):
        gate.check("select 1\x00; drop table t", GROUPS)
    with pytest.raises(ParseFailure):
        gate.check("selec 1", GROUPS)
    with pytest.raises(UnicodeDecodeError):
        gate.verdict(b"select '\xff'", GROUPS)


def test_bounded():
    gate = Gate(Policy.load(DEFAULT), cache_size=10)
    for i in range(100):
        gate.check(f"select {i}::text", GROUPS)
    assert len(gate._by_bytes) <= 10


def test_parameterised_text_is_remembered_by_bytes_after_a_fingerprint_hit():
    gate = Gate(Policy.load(DEFAULT))
    gate.check("SELECT abalance FROM pgbench_accounts WHERE aid = 5", GROUPS)  # warms the fingerprint
    q = "SELECT abalance FROM pgbench_accounts WHERE aid = $1"  # same fingerprint, no shape key
    assert gate.check(q, GROUPS)[1].allowed and gate.fingerprint_hits == 1
    assert gate.check(q, GROUPS)[1].allowed and gate.hits == 1


# The C shape key (pgjit/policy/_shape.c) must give exactly what the Python
# reference gives, on SQL-like text and on any bytes at all.
_SHAPE_BYTES = st.one_of(
    _statements().map(str.encode),
    st.lists(st.sampled_from([b"'", b"''", b"1", b"12", b".", b"1.5", b"a", b"_", b" ", b"x'", b"E'", b"e", b"-",
                              b"--", b"/*", b"?", b"$", b'"', b"\\", b"\xc3\xa9", b"\0", b"(", b")", b"=", b"1e5"]),
             max_size=30).map(b"".join),
    st.binary(max_size=40),
)


@settings(max_examples=int(__import__("os").environ.get("PGJIT_SHAPE_EXAMPLES", "400")) * 5, deadline=None)
@given(_SHAPE_BYTES)
def test_c_shape_key_equals_the_reference(raw):
    from pgjit.policy import gate as gate_mod

    assert gate_mod.shape_key(raw) == gate_mod._shape_key_py(raw)
    assert gate_mod.shape_key(bytearray(raw)) == gate_mod._shape_key_py(raw)


def test_c_shape_key_is_built_in_ci():
    from pgjit.policy import gate as gate_mod

    if __import__("os").environ.get("CI") == "true":
        assert gate_mod.shape_key is not gate_mod._shape_key_py


@pytest.mark.parametrize("raw, key", [
    (b"select 1", b"select ?"),
    (b"select 'a', 2.5 from t1 where x = 10", b"select ?, ? from t1 where x = ?"),
    (b"select 1.2.3", b"select 1.2.3"),
    (b"select 1e5", b"select 1e5"),
    (b"select x'ff'", None),
    (b"select 'a''b'", None),
    (b"select 'open", None),
    (b"select 1 -- c", None),
    (b"select \"T\"", None),
    (b"select $1", None),
    (b"", b""),
])
def test_shape_key_examples(raw, key):
    from pgjit.policy import gate as gate_mod

    assert gate_mod.shape_key(raw) == key
    assert gate_mod._shape_key_py(raw) == key
