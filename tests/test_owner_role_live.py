"""Owner roles and the errors of a JIT session, end to end: a real issuer, the
real gateway, a real PostgreSQL set up by pgjit/jit/SETUP.md.

* An access entry's ``owner:`` makes every session of the group act as that
  stable role: what one session creates, the next (another JIT role) can
  change, and the client cannot switch away from it.
* A policy granting a role the server does not have: 28000 naming the role
  and the fix, not "could not prepare the database session".
* A token that expired inside the clock-skew window: "token expired", never a
  JIT role already past its VALID UNTIL.
* A refusal's log line names the session, the person, the rule and the
  statement's fingerprint, never its literals.
"""

from __future__ import annotations

import time
from pathlib import Path

import psycopg
import pytest

from tests.clients._helpers import wait_for
from tests.gateway_fixtures import start_gateway
from tests.oidc_fixtures import apply_setup_sql, issuer, jit_roles, oidc_sections  # noqa: F401
from tests.rawclient import RawClient, errors

pytestmark = pytest.mark.pg

REPO = Path(__file__).resolve().parent.parent
MIGRATIONS = REPO / "policies" / "examples" / "migrations.yaml"
TABLE = "pgjit_owner_probe"


@pytest.fixture(scope="module")
def env(pg, issuer, tmp_path_factory):  # noqa: F811
    apply_setup_sql(pg)
    gw = start_gateway(tmp_path_factory.mktemp("owner-gw"), pg, **oidc_sections(pg, issuer, policy=MIGRATIONS))
    yield gw
    gw.stop()
    pg.execute(f"drop table if exists {TABLE} cascade", dbname="appdb")


def deployer(gw, issuer, sub="ci@example.com", **kw) -> psycopg.Connection:  # noqa: F811
    token = issuer.token(sub=sub, groups=("deployers",))
    return psycopg.connect(gw.dsn(user=sub, password=token), **kw)


def owner_of(pg, relname: str) -> str | None:
    rows = pg.execute(
        "select pg_get_userbyid(relowner) from pg_class where relname = %s", (relname,), dbname="appdb"
    )
    return rows[0][0] if rows else None


def test_sessions_act_as_the_owner_and_later_sessions_can_change_its_objects(env, issuer, pg):  # noqa: F811
    with deployer(env, issuer, autocommit=True) as conn:
        cur, sess = conn.execute("select current_user, session_user").fetchone()
        assert cur == "app_migrator"
        assert sess.startswith("pgjit_ci_"), sess  # the person's own JIT role, for the server's logs
        conn.execute(f"create table {TABLE} (id serial primary key, name text)")
        conn.execute(f"create index {TABLE}_name on {TABLE} (name)")
        first_role = sess
    assert owner_of(pg, TABLE) == "app_migrator"
    assert owner_of(pg, f"{TABLE}_name") == "app_migrator"
    assert owner_of(pg, f"{TABLE}_id_seq") == "app_migrator"
    assert wait_for(lambda: first_role not in jit_roles(pg), timeout=10)
    # A new session, a new JIT role: it can alter and drop what the first made.
    with deployer(env, issuer, autocommit=True) as conn:
        assert conn.execute("select session_user").fetchone()[0] != first_role
        conn.execute(f"alter table {TABLE} add column size int")
        conn.execute(f"drop index {TABLE}_name")
        conn.execute(f"create index {TABLE}_size on {TABLE} (size)")
        conn.execute(f"insert into {TABLE} (name, size) values ('a', 1)")
    # ... and so can a concurrent session of another person of the group.
    with deployer(env, issuer, sub="bob@example.com", autocommit=True) as a, deployer(env, issuer, autocommit=True) as b:
        a.execute(f"alter table {TABLE} add column note text")
        b.execute(f"alter table {TABLE} drop column note")
    assert owner_of(pg, TABLE) == "app_migrator"
    assert wait_for(lambda: not jit_roles(pg), timeout=10), jit_roles(pg)


def test_the_client_cannot_switch_away_from_the_owner(env, issuer):  # noqa: F811
    with deployer(env, issuer, autocommit=True) as conn:
        for sql in ("set role none", "reset role", "set session authorization default",
                    "select set_config('role', 'none', false)", "set role pgjit_write"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege) as ei:
                conn.execute(sql)
            assert "no-role-change" in str(ei.value), sql
        assert conn.execute("select current_user").fetchone()[0] == "app_migrator"
    # Nor in the startup packet.
    token = issuer.token(sub="ci@example.com", groups=("deployers",))
    with RawClient(env.port) as c:
        errs = errors(c.login(user="ci@example.com", password=token, options="-c role=pgjit_read"))
    assert errs and errs[0].severity == "FATAL" and errs[0].sqlstate == "42501"


def test_a_group_without_owner_keeps_its_own_role(pg, issuer, tmp_path):  # noqa: F811
    apply_setup_sql(pg)
    gw = start_gateway(tmp_path / "gw", pg, **oidc_sections(pg, issuer))
    try:
        token = issuer.token(sub="alice@example.com", groups=("analysts",))
        with psycopg.connect(gw.dsn(user="alice@example.com", password=token)) as conn:
            cur, sess = conn.execute("select current_user, session_user").fetchone()
            assert cur == sess and sess.startswith("pgjit_alice_")
    finally:
        gw.stop()


def refused_under(pg, issuer, tmp_path, old: str, new: str):  # noqa: F811
    """Start a gateway whose policy is migrations.yaml with ``old`` replaced by
    ``new``; log in as a deployer; return (the gateway, the token, the errors)."""
    apply_setup_sql(pg)
    policy = tmp_path / "policy.yaml"
    policy.write_text(MIGRATIONS.read_text().replace(old, new))
    gw = start_gateway(tmp_path / "gw", pg, **oidc_sections(pg, issuer, policy=policy))
    try:
        token = issuer.token(sub="ci@example.com", groups=("deployers",))
        with RawClient(gw.port) as c:
            errs = errors(c.login(user="ci@example.com", password=token))
    except BaseException:
        gw.stop()
        raise
    return gw, token, errs


def test_missing_granted_role_is_28000_naming_it(pg, issuer, tmp_path):  # noqa: F811
    gw, token, errs = refused_under(pg, issuer, tmp_path, "grant: [pgjit_write]", "grant: [pgjit_write, reporting_ro]")
    try:
        assert errs and errs[0].severity == "FATAL" and errs[0].sqlstate == "28000"
        text = " | ".join(v for k, v in errs[0].fields if k in "MDH")
        assert '"reporting_ro"' in text and "does not exist" in text
        assert 'CREATE ROLE "reporting_ro" NOLOGIN' in text and "check-config --connect" in text
        # psycopg shows the same reason.
        with pytest.raises(psycopg.OperationalError, match="reporting_ro"):
            psycopg.connect(gw.dsn(user="ci@example.com", password=token))
    finally:
        gw.stop()
    assert not jit_roles(pg)


def test_missing_owner_role_is_named_as_such(pg, issuer, tmp_path):  # noqa: F811
    gw, _, errs = refused_under(pg, issuer, tmp_path, "owner: app_migrator", "owner: schema_owner_missing")
    try:
        assert errs[0].sqlstate == "28000"
        assert 'owner role "schema_owner_missing"' in errs[0].message
    finally:
        gw.stop()


def test_token_expired_inside_the_skew_window_says_token_expired(env, issuer):  # noqa: F811
    # clock_skew is 60 s by default; this token expired 20 s ago.
    token = issuer.token(sub="ci@example.com", groups=("deployers",), ttl=600, now=time.time() - 620)
    with RawClient(env.port) as c:
        errs = errors(c.login(user="ci@example.com", password=token))
    assert errs[0].severity == "FATAL" and errs[0].sqlstate == "28P01"
    assert errs[0].message.startswith("token expired at"), errs[0].message
    # A token with under a second left is refused the same way, not handed a
    # role that dies before it logs in.
    token = issuer.token(sub="ci@example.com", groups=("deployers",), extra_claims={"exp": int(time.time()) + 1})
    if int(time.time()) + 1 - time.time() >= 0.9:  # only just minted in a new second: wait a little
        time.sleep(0.2)
    with RawClient(env.port) as c:
        errs = errors(c.login(user="ci@example.com", password=token))
    assert errs[0].sqlstate == "28P01" and "expire" in errs[0].message


def test_refusal_log_names_session_person_rule_and_fingerprint_not_literals(env, issuer):  # noqa: F811
    secret = "s3cr3t-literal-9071"
    with deployer(env, issuer, sub="carol@example.com", autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(f"grant select on {TABLE} to \"{secret}\"")
        with pytest.raises(psycopg.errors.SyntaxError):
            conn.execute(f"selec '{secret}' frm nowhere")
    assert wait_for(lambda: sum(1 for r in env.logs() if r.get("msg") == "statement refused" and r.get("user") == "carol@example.com") >= 2)
    refused = [r for r in env.logs() if r.get("msg") == "statement refused" and r.get("user") == "carol@example.com"]
    by_rule = {r["rule"]: r for r in refused}
    assert set(by_rule) >= {"no-privileges", "pgjit:unparsable"}, refused
    for r in refused:
        assert len(r["session"]) == 16 and r["database"] == "appdb"
    assert len(by_rule["no-privileges"]["fingerprint"]) == 16  # PostgreSQL's fingerprint, hex
    assert by_rule["pgjit:unparsable"]["fingerprint"] == "unparsable"
    assert secret not in env.log_path.read_text()
