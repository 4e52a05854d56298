"""Realistic statements (psql, SQLAlchemy, pgJDBC, everyday SQL) pass the default policy."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from realistic import HAND, PGJDBC, PSQL, REALISTIC, SQLALCHEMY, Statement

from pgjit.policy.model import Policy

DEFAULT = Path(__file__).resolve().parents[2] / "policies" / "default.yaml"


@pytest.fixture(scope="module")
def policy() -> Policy:
    return Policy.load(DEFAULT)


def test_corpus_shape() -> None:
    assert len(REALISTIC) >= 40
    assert len(PSQL) >= 7 and len(SQLALCHEMY) >= 5 and len(PGJDBC) >= 3 and len(HAND) >= 20
    for name in ("\\d ", "\\dt", "\\d accounts", "\\df", "\\l", "\\dn", "\\du"):
        assert any(s.name.startswith(f"psql15 {name}") for s in PSQL), name


@pytest.mark.parametrize("statement", REALISTIC, ids=[s.name for s in REALISTIC])
def test_allowed(policy: Policy, statement: Statement) -> None:
    decision = policy.decide(statement.sql, ["agents"])
    assert decision.action == "allow", (
        f"false denial of {statement.name}: {decision.rule}: {decision.message}; facts: {decision.facts}"
    )


def test_prepared_select_then_execute(policy: Policy) -> None:
    from pgjit.policy.facts import analyze

    prepared = {"q": analyze("PREPARE q(int) AS SELECT * FROM accounts WHERE id = $1")}
    assert policy.decide("EXECUTE q(1)", ["agents"], prepared=prepared).allowed
