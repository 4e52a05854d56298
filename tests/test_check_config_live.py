"""``pgjit check-config --connect`` against a real PostgreSQL (issue 9, point 4).

The real CLI runs as a subprocess against the test cluster prepared with
SETUP.md. Policies are written into tmp_path so the tests do not depend on the
shipped policy files. Roles a test makes are dropped again (the cluster is
shared by the whole test session).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import trio

from pgjit.config import JitConfig
from pgjit.devtools.pgcluster import free_port
from pgjit.jit.admin import AdminConnection
from pgjit.jit.preflight import ERROR, WARNING, RoleFacts, ServerFacts, check_target, inspect, judge, preflight, role_names
from tests.gateway_fixtures import write_config
from tests.oidc_fixtures import apply_setup_sql, issuer, oidc_sections  # noqa: F401 (issuer is a fixture)

pytestmark = pytest.mark.pg

REPO = Path(__file__).resolve().parent.parent

POLICY = """\
version: 1
description: check-config test policy
access:
  - group: "*"
    grant: [{grants}]
    jit_lifetime: 1h
rules:
  - name: reads
    match: {{kind: [select, show]}}
    action: allow
default: deny
"""
ACCESS_LINE = 4  # the line of '- group: "*"' in POLICY


def write_policy(path: Path, *grants: str) -> Path:
    path.write_text(POLICY.format(grants=", ".join(grants)))
    return path


def run_check(config: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGJIT_")}
    return subprocess.run(
        [sys.executable, "-m", "pgjit", "check-config", "--connect", "-c", str(config), *args],
        capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env,
    )


@pytest.fixture(scope="module")
def prepared(pg):
    apply_setup_sql(pg)
    return pg


def oidc_config(tmp_path: Path, pg, issuer, policy: Path, **target) -> Path:  # noqa: F811
    sections = oidc_sections(pg, issuer, policy=policy)
    sections["targets"]["appdb"].update(target)
    return write_config(tmp_path / "pgjit.yaml", pg, **sections)


def assert_no_password(res: subprocess.CompletedProcess[str], *passwords: str) -> None:
    for pw in ("adminpass", "apppass", *passwords):
        assert pw not in res.stdout and pw not in res.stderr


# ---------------------------------------------------------------- the command


def test_policy_granting_a_missing_role_fails_naming_it(prepared, issuer, tmp_path):  # noqa: F811
    policy = write_policy(tmp_path / "policy.yaml", "pgjit_read", "pgjit_no_such_role")
    res = run_check(oidc_config(tmp_path, prepared, issuer, policy))
    assert res.returncode == 1, res.stdout + res.stderr
    out = res.stdout
    assert "error: role 'pgjit_no_such_role' does not exist" in out
    assert f"{policy}:{ACCESS_LINE}" in out
    assert 'fix: CREATE ROLE "pgjit_no_such_role" NOLOGIN;' in out
    assert "SETUP.md, section 1" in out
    assert "pgjit_read' does not exist" not in out
    assert_no_password(res)


def test_correct_setup_passes(prepared, issuer, tmp_path):  # noqa: F811
    policy = write_policy(tmp_path / "policy.yaml", "pgjit_read")
    res = run_check(oidc_config(tmp_path, prepared, issuer, policy))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "target appdb (" in res.stdout and ": OK" in res.stdout
    assert "0 errors, 0 warnings" in res.stdout
    assert_no_password(res)


def test_unreachable_target_is_an_error(prepared, issuer, tmp_path):  # noqa: F811
    policy = write_policy(tmp_path / "policy.yaml", "pgjit_read")
    res = run_check(oidc_config(tmp_path, prepared, issuer, policy, port=free_port()))
    assert res.returncode == 1, res.stdout + res.stderr
    assert "error: cannot connect" in res.stdout
    assert "pg_hba.conf" in res.stdout  # the fix says what to look at
    assert_no_password(res)


def test_wrong_password_is_an_error_that_does_not_show_it(prepared, issuer, tmp_path):  # noqa: F811
    policy = write_policy(tmp_path / "policy.yaml", "pgjit_read")
    res = run_check(oidc_config(tmp_path, prepared, issuer, policy, password="wrong-Pa55word"))
    assert res.returncode == 1, res.stdout + res.stderr
    assert "error: cannot connect: the upstream server refused the login" in res.stdout
    assert_no_password(res, "wrong-Pa55word")


def test_admin_without_createrole_or_owner_membership(prepared, issuer, tmp_path):  # noqa: F811
    prepared.psql("DROP ROLE IF EXISTS pgjit_chk_weak; CREATE ROLE pgjit_chk_weak LOGIN PASSWORD 'weakpass'")
    try:
        policy = write_policy(tmp_path / "policy.yaml", "pgjit_read")
        res = run_check(oidc_config(tmp_path, prepared, issuer, policy, user="pgjit_chk_weak", password="weakpass"))
        assert res.returncode == 1, res.stdout + res.stderr
        out = res.stdout
        assert "lacks CREATEROLE" in out and 'ALTER ROLE "pgjit_chk_weak" CREATEROLE;' in out
        assert "not a member of jit.owner_role 'pgjit_owner'" in out
        assert 'GRANT "pgjit_owner" TO "pgjit_chk_weak";' in out
        assert_no_password(res, "weakpass")
    finally:
        prepared.psql("DROP ROLE IF EXISTS pgjit_chk_weak")


def test_missing_owner_role_and_several_targets(prepared, issuer, tmp_path):  # noqa: F811
    policy = write_policy(tmp_path / "policy.yaml", "pgjit_read")
    sections = oidc_sections(prepared, issuer, policy=policy)
    good = sections["targets"]["appdb"]
    sections["targets"] = {
        "appdb": good,
        "other": {**good, "database": "appdb", "jit": {**good["jit"], "owner_role": 'pgjit_"no_owner'}},
    }
    res = run_check(write_config(tmp_path / "pgjit.yaml", prepared, **sections))
    assert res.returncode == 1, res.stdout + res.stderr
    out = res.stdout
    appdb, other = out.split("\ntarget other (")[0], out.split("\ntarget other (")[1]
    assert "target appdb (" in appdb and ": OK" in appdb.split("target appdb (")[1].splitlines()[0]
    assert "jit.owner_role 'pgjit_\"no_owner' does not exist" in other
    assert 'CREATE ROLE "pgjit_""no_owner" NOLOGIN;' in other  # quoted, never pasted
    assert "1 of 2 targets not ready" in out


def test_static_mode(pg, tmp_path):
    res = run_check(write_config(tmp_path / "pgjit.yaml", pg))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "static user" in res.stdout and "0 errors" in res.stdout
    res = run_check(write_config(tmp_path / "bad.yaml", pg, targets={"appdb": {
        "host": "127.0.0.1", "port": pg.port, "database": "appdb", "user": "app", "password": "not-Apppass"}}))
    assert res.returncode == 1 and "cannot connect" in res.stdout
    assert_no_password(res, "not-Apppass")


def test_config_error_still_exits_2(tmp_path):
    (tmp_path / "pgjit.yaml").write_text("targets:\n  appdb: {host: 127.0.0.1, user: app, port: abc}\n")
    res = run_check(tmp_path / "pgjit.yaml")
    assert res.returncode == 2 and "pgjit.yaml:2: targets.appdb.port" in res.stderr


# ---------------------------------------------------------------- the checks, called directly


def _target(pg, access, owner_role="pgjit_owner"):
    """A stand-in TargetConfig whose access entries may carry ``owner``
    (whether or not AccessEntry has that attribute yet)."""
    policy = SimpleNamespace(filename="/p/policy.yaml", access=tuple(access))
    return SimpleNamespace(name="appdb", user="pgjit_admin", database="appdb", policy=policy,
                           policy_path="/p/policy.yaml", jit=JitConfig(owner_role=owner_role))


def _entry(grant, owner=None, line=7, group="devs"):
    return SimpleNamespace(group=group, grant=tuple(grant), owner=owner, line=line)


def _admin_connect(pg):
    return functools.partial(AdminConnection.connect, "127.0.0.1", pg.port, "appdb", "pgjit_admin", "adminpass",
                             parameters={"application_name": "pgjit:test-preflight"})


def _facts(pg, target):
    async def go():
        conn = await _admin_connect(pg)()
        try:
            return await inspect(conn, role_names(target, jit=True))
        finally:
            await conn.aclose()

    return trio.run(go)


def test_owner_role_checks(prepared):
    pg = prepared
    pg.psql("DROP ROLE IF EXISTS pgjit_chk_owner; CREATE ROLE pgjit_chk_owner LOGIN")
    try:
        target = _target(pg, [_entry(["pgjit_read"], owner="pgjit_chk_owner"), _entry(["pgjit_read"], owner="pgjit_chk_nobody", line=12)])
        findings = trio.run(functools.partial(preflight, _admin_connect(pg), target, jit=True))
        text = "\n".join(f"{f.severity}: {f.message} | {f.fix}" for f in findings)
        assert any(f.severity == ERROR and "owner role 'pgjit_chk_nobody' does not exist" in f.message
                   and "/p/policy.yaml:12" in f.message and 'CREATE ROLE "pgjit_chk_nobody" NOLOGIN;' in f.fix
                   for f in findings), text
        assert any(f.severity == WARNING and "'pgjit_chk_owner'" in f.message and "can log in" in f.message
                   and f.fix == 'ALTER ROLE "pgjit_chk_owner" NOLOGIN;' for f in findings), text
        # PostgreSQL 15: PUBLIC has no CREATE on schema public any more.
        assert any(f.severity == WARNING and "no CREATE on schema public" in f.message
                   and 'GRANT USAGE, CREATE ON SCHEMA public TO "pgjit_chk_owner";' in f.fix for f in findings), text
        pg.psql("ALTER ROLE pgjit_chk_owner NOLOGIN; GRANT CREATE ON SCHEMA public TO pgjit_chk_owner", dbname="appdb")
        findings = trio.run(functools.partial(preflight, _admin_connect(pg), target, jit=True))
        assert not [f for f in findings if "pgjit_chk_owner" in f.message], findings
    finally:
        pg.psql("REVOKE ALL ON SCHEMA public FROM pgjit_chk_owner", dbname="appdb")
        pg.psql("DROP ROLE IF EXISTS pgjit_chk_owner")


def test_grant_roles_connect_and_superuser(prepared):
    pg = prepared
    pg.psql("DROP ROLE IF EXISTS pgjit_chk_super; CREATE ROLE pgjit_chk_super NOLOGIN SUPERUSER")
    try:
        pg.psql("REVOKE CONNECT ON DATABASE appdb FROM PUBLIC", dbname="appdb")
        pg.psql("REVOKE CONNECT ON DATABASE appdb FROM pgjit_read", dbname="appdb")
        target = _target(pg, [_entry(["pgjit_read"]), _entry(["pgjit_chk_super"], line=9, group="ops")])
        # The admin itself now may not connect: the fix says what to grant.
        (f,) = trio.run(functools.partial(preflight, _admin_connect(pg), target, jit=True))
        assert f.severity == ERROR and f.message.startswith("cannot connect:") and "42501" in f.message
        assert f.fix == 'GRANT CONNECT ON DATABASE "appdb" TO "pgjit_admin";'
        pg.psql("GRANT CONNECT ON DATABASE appdb TO pgjit_admin", dbname="appdb")
        findings = trio.run(functools.partial(preflight, _admin_connect(pg), target, jit=True))
        text = "\n".join(f"{f.severity}: {f.message} | {f.fix}" for f in findings)
        assert any(f.severity == ERROR and "'pgjit_chk_super'" in f.message and "superuser" in f.message for f in findings), text
        assert any(f.severity == ERROR and "access group 'devs'" in f.message and "cannot connect" in f.message
                   and f.fix == 'GRANT CONNECT ON DATABASE "appdb" TO "pgjit_read";' for f in findings), text
    finally:
        pg.psql("GRANT CONNECT ON DATABASE appdb TO PUBLIC; GRANT CONNECT ON DATABASE appdb TO pgjit_read; "
                "REVOKE CONNECT ON DATABASE appdb FROM pgjit_admin", dbname="appdb")
        pg.psql("DROP ROLE IF EXISTS pgjit_chk_super")


def test_pg16_rules_on_real_facts(prepared):
    # This cluster is 15; the 16+ judgement is applied to its real facts.
    target = _target(prepared, [_entry(["pgjit_read", "pgjit_write"], owner="pgjit_owner")])
    facts = _facts(prepared, target)
    assert facts.version_num // 10000 == prepared.version
    assert not any(f.severity == ERROR for f in judge(facts, target, jit=True))
    as16 = dataclasses.replace(facts, version_num=160004)
    findings = judge(as16, target, jit=True)
    admin_option = [f for f in findings if "ADMIN OPTION" in f.message]
    assert {f.severity for f in admin_option} == {ERROR}
    fixes = {f.fix for f in admin_option}
    assert 'GRANT "pgjit_read" TO "pgjit_admin" WITH ADMIN OPTION, INHERIT FALSE, SET FALSE;' in fixes
    assert 'GRANT "pgjit_write" TO "pgjit_admin" WITH ADMIN OPTION, INHERIT FALSE, SET FALSE;' in fixes
    assert all(f.see and "section 3" in f.see for f in admin_option)


def test_check_target_reads_the_catalog_only(prepared):
    # Nothing but catalog reads: the server log shows no DDL from this connection.
    target = _target(prepared, [_entry(["pgjit_read"])])

    async def go():
        conn = await _admin_connect(prepared)()
        try:
            return await check_target(conn, target, jit=True)
        finally:
            await conn.aclose()

    findings = trio.run(go)
    assert not [f for f in findings if f.severity in (ERROR, WARNING)], findings


# ---------------------------------------------------------------- judge alone (no server needed)


def _server(**kw):
    base = dict(version_num=150000, version="15.0", database="appdb", user="pgjit_admin", can_login=True,
                createrole=True, superuser=False, valid_until=None, user_connect=True, public_connect=True,
                public_schema=True, roles={})
    base.update(kw)
    return ServerFacts(**base)


def _role(name, **kw):
    base = dict(exists=True, can_login=False, superuser=False, connect=True, admin_uses=True, admin_option=False, create_on_public=True)
    base.update(kw)
    return RoleFacts(name, **base)


def test_judge_superuser_admin_is_a_warning_not_an_error():
    target = _target(None, [_entry(["r"])], owner_role="o")
    findings = judge(_server(superuser=True, roles={"r": _role("r"), "o": _role("o")}), target, jit=True)
    assert [f.severity for f in findings if "superuser" in f.message] == [WARNING]
    assert not [f for f in findings if f.severity == ERROR]


def test_judge_pg16_with_admin_option_is_clean():
    target = _target(None, [_entry(["r"], owner="w")], owner_role="o")
    roles = {n: _role(n, admin_option=True) for n in ("r", "w", "o")}
    findings = judge(_server(version_num=170002, roles=roles), target, jit=True)
    assert not [f for f in findings if f.severity in (ERROR, WARNING)], findings


def test_judge_names_that_cannot_be_roles():
    target = _target(None, [_entry(["x" * 64, "a\x00b"])], owner_role="o")
    findings = judge(_server(roles={"o": _role("o")}), target, jit=True)
    bad = [f for f in findings if "not a valid role name" in f.message]
    assert len(bad) == 2 and all(f.severity == ERROR for f in bad)


def test_judge_static_mode_checks_only_the_login():
    target = _target(None, [_entry(["nonexistent"])])
    findings = judge(_server(createrole=False), target, jit=False)
    assert [f.severity for f in findings] == ["info"]
    findings = judge(_server(superuser=True), target, jit=False)
    assert [f.severity for f in findings] == ["info", WARNING]
