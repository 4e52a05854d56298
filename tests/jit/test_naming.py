"""Role names and SQL quoting (pure, no server)."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgjit.jit.naming import (
    MAX_NAME_BYTES,
    RANDOM_CHARS,
    is_jit_role_name,
    like_escape,
    quote_ident,
    quote_literal,
    role_name,
    slugify,
)

NAME = re.compile(r"pgjit_[a-z0-9]+(?:_[a-z0-9]+)*_[a-z2-7]{%d}\Z" % RANDOM_CHARS)

NASTY = [
    "x'; drop table customers; --",
    '"',
    "\\",
    "'",
    "Ünïcødé 名前 🙂",
    "a" * 300,
    "",
    "@",
    "____",
    "Robert'); DROP ROLE pgjit_admin;--",
    "$$; select 1; $$",
    "x\x00y",
    "\ud800",
]


def test_examples():
    assert slugify("Alice.O'Brien@example.com") == "alice_o_brien"
    assert role_name("Alice.O'Brien@example.com").startswith("pgjit_alice_o_brien_")
    assert slugify("bob") == "bob"
    assert slugify("svc:ci/deploy-bot") == "svc_ci_deploy_bot"
    assert slugify("@example.com") == "example_com"
    assert role_name("").startswith("pgjit_anon_")
    assert role_name("!!!").startswith("pgjit_anon_")
    assert role_name("'\"\\;").startswith("pgjit_anon_")
    assert role_name("x", prefix="jit_").startswith("jit_x_")


@pytest.mark.parametrize("person", NASTY)
def test_nasty_people(person):
    name = role_name(person)
    assert NAME.match(name), name
    assert len(name.encode()) <= MAX_NAME_BYTES
    assert is_jit_role_name(name)


def test_long_identifier_keeps_random_part():
    name = role_name("a" * 300)
    assert len(name) == MAX_NAME_BYTES
    assert re.search(r"_[a-z2-7]{%d}\Z" % RANDOM_CHARS, name)
    # Truncation never leaves a trailing "_" before the random part.
    name = role_name("ab_" * 100)
    assert "__" not in name


@settings(max_examples=500)
@given(st.text(max_size=400))
def test_any_person_gives_a_safe_name(person):
    name = role_name(person)
    assert NAME.match(name), name
    assert len(name.encode("utf-8")) <= MAX_NAME_BYTES
    assert name == name.lower()
    assert quote_ident(name) == f'"{name}"'  # nothing to escape


@settings(max_examples=200)
@given(st.text(max_size=100))
def test_same_person_never_collides(person):
    names = {role_name(person) for _ in range(50)}
    assert len(names) == 50


@settings(max_examples=200)
@given(st.lists(st.text(max_size=80), min_size=2, max_size=30))
def test_different_people_never_collide(people):
    names = [role_name(p) for p in people]
    assert len(set(names)) == len(names)


def test_prefix_is_validated():
    for bad in ["", "Pgjit_", "pg jit", 'x"', "x" * 60, "1abc"]:
        with pytest.raises(ValueError):
            role_name("x", prefix=bad)


def test_is_jit_role_name():
    assert not is_jit_role_name("pgjit_read")
    assert not is_jit_role_name("pgjit_owner")
    assert not is_jit_role_name("pgjit_admin")
    assert not is_jit_role_name("postgres")
    assert not is_jit_role_name("other_alice_abcdefghijklmnop")
    assert is_jit_role_name("pgjit_alice_abcdefghijklmnop")
    assert not is_jit_role_name("pgjit_alice_abcdefghijklmnop", prefix="jit_")
    assert not is_jit_role_name("pgjit_alice_ABCDEFGHIJKLMNOP")
    assert not is_jit_role_name('pgjit_a"b_abcdefghijklmnop')


def test_quote_ident():
    assert quote_ident("abc") == '"abc"'
    assert quote_ident('a"b') == '"a""b"'
    assert quote_ident("x'; drop") == '"x\'; drop"'
    for bad in ["", "a\x00b", "x" * 64, "\ud800"]:
        with pytest.raises(ValueError):
            quote_ident(bad)
    assert quote_ident("é" * 31) == '"' + "é" * 31 + '"'  # 62 bytes
    with pytest.raises(ValueError):
        quote_ident("é" * 32)  # 64 bytes would be truncated


def test_quote_literal():
    assert quote_literal("abc") == "'abc'"
    assert quote_literal("it's") == "'it''s'"
    assert quote_literal("a\\b") == "E'a\\\\b'"
    assert quote_literal("\\'") == "E'\\\\'''"
    assert quote_literal("") == "''"
    for bad in ["a\x00", "\ud800"]:
        with pytest.raises(ValueError):
            quote_literal(bad)


def _unquote_literal(q: str) -> str:
    """A tiny model of PostgreSQL's lexer for the two forms quote_literal makes."""
    if q.startswith("E'"):
        body = q[2:-1]
        out, i = [], 0
        while i < len(body):
            c = body[i]
            if c == "\\":
                out.append(body[i + 1])
                i += 2
            elif c == "'":
                assert body[i + 1] == "'", q  # an unescaped quote would end the literal
                out.append("'")
                i += 2
            else:
                out.append(c)
                i += 1
        return "".join(out)
    assert q[0] == q[-1] == "'"
    body = q[1:-1]
    assert "'" not in body.replace("''", ""), q
    return body.replace("''", "'")


@settings(max_examples=500)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=200))
def test_quote_literal_round_trips(s):
    assert _unquote_literal(quote_literal(s)) == s


@settings(max_examples=300)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1, max_size=20))
def test_quote_ident_round_trips(s):
    q = quote_ident(s)
    body = q[1:-1]
    assert '"' not in body.replace('""', "")
    assert body.replace('""', '"') == s


def test_like_escape():
    assert like_escape("pgjit_") == "pgjit\\_"
    assert like_escape("a%b\\c") == "a\\%b\\\\c"
