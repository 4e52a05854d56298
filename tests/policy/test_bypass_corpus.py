"""Every attack in the corpus is denied by the shipped default policy."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from attacks import ATTACKS, Attack

from pgjit.policy.facts import ParseFailure
from pgjit.policy.model import Policy

DEFAULT = Path(__file__).resolve().parents[2] / "policies" / "default.yaml"
GROUPS = ["agents"]


@pytest.fixture(scope="module")
def policy() -> Policy:
    return Policy.load(DEFAULT)


def test_corpus_is_big_and_names_are_unique() -> None:
    assert len(ATTACKS) >= 70
    assert len({a.name for a in ATTACKS}) == len(ATTACKS)


@pytest.mark.parametrize("attack", ATTACKS, ids=[a.name for a in ATTACKS])
def test_attack_is_denied(policy: Policy, attack: Attack) -> None:
    try:
        decision = policy.decide(attack.sql, GROUPS)
    except ParseFailure:
        return  # the gateway answers 42601 and never forwards
    assert decision.action == "deny", (
        f"{attack.name}: {attack.forbids} got through "
        f"({decision.action} by {decision.rule}); facts: {decision.facts}"
    )
    assert decision.rule is not None or decision.message


@pytest.mark.parametrize("attack", ATTACKS, ids=[a.name for a in ATTACKS])
def test_attack_is_denied_with_a_prepared_map(policy: Policy, attack: Attack) -> None:
    """Even if the session had prepared harmless statements, nothing changes."""
    harmless = {"p": "PREPARE p AS SELECT 1", "p3": "PREPARE p3 AS SELECT 1"}
    from pgjit.policy.facts import analyze

    prepared = {name: analyze(sql) for name, sql in harmless.items()}
    try:
        decision = policy.decide(attack.sql, GROUPS, prepared=prepared)
    except ParseFailure:
        return
    if attack.name in ("execute unknown prepared", "explain execute"):
        # EXECUTE of a harmless prepared SELECT is fine: that is the point of the map.
        return
    assert decision.action == "deny", attack.name
