"""Every role a shipped policy grants, or names as its owner, is created by
pgjit/jit/SETUP.md — so a DBA who follows SETUP.md can use every example."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pgjit.jit.setupsql import TAGS, statements
from pgjit.policy import Policy

REPO = Path(__file__).resolve().parents[2]
POLICIES = sorted(p for p in [*REPO.glob("policies/*.yaml"), *REPO.glob("policies/examples/*.yaml")] if not p.name.endswith(".tests.yaml"))


def created_roles() -> set[str]:
    names: set[str] = set()
    for tag in TAGS:
        for stmt in statements(tag):
            mo = re.match(r"CREATE ROLE\s+(\"[^\"]+\"|\w+)", stmt, re.I)
            if mo:
                names.add(mo.group(1).strip('"'))
    return names


def test_there_are_policies_to_check():
    assert len(POLICIES) >= 6, POLICIES


@pytest.mark.parametrize("path", POLICIES, ids=lambda p: p.name)
def test_every_granted_and_owner_role_is_created_by_setup(path: Path):
    policy = Policy.load(str(path))
    wanted = {g for e in policy.access for g in e.grant} | {e.owner for e in policy.access if e.owner}
    assert wanted, f"{path.name} grants nothing"
    missing = wanted - created_roles()
    assert not missing, f"{path.name} grants roles SETUP.md does not create: {sorted(missing)}"


def test_owner_roles_never_log_in():
    for stmt in statements("cluster"):
        mo = re.match(r"CREATE ROLE\s+(\w+)(.*)", stmt, re.I | re.S)
        if mo and mo.group(1) == "app_migrator":
            assert "NOLOGIN" in mo.group(2).upper()
            return
    raise AssertionError("SETUP.md does not create app_migrator")
