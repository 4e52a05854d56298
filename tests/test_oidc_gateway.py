"""OIDC tokens and just-in-time roles, end to end: a real issuer over HTTP,
the real gateway, a real PostgreSQL."""

from __future__ import annotations

import base64
import json
import signal
import socket
import struct
import time
import uuid

import psycopg
import pytest
from cryptography.hazmat.primitives import serialization

from tests.gateway_fixtures import start_gateway
from tests.oidc_fixtures import DEFAULT_POLICY, apply_setup_sql, issuer, jit_roles, oidc_env, oidc_sections  # noqa: F401
from tests.clients._helpers import wait_for
from tests.rawclient import RawClient, errors

pytestmark = pytest.mark.pg


class Refusal:
    def __init__(self, err) -> None:
        self.sqlstate = err.sqlstate
        self.severity = err.severity
        self.text = " | ".join(v for k, v in err.fields if k in "MDH")

    def __str__(self) -> str:
        return self.text


def refused(env, token: str, user: str = "alice@example.com") -> Refusal:
    """Log in with ``token`` (as a real client would, also through psycopg)
    and return the FATAL error pgjit answered with."""
    with pytest.raises(psycopg.OperationalError):
        env.connect(token, user=user)
    with RawClient(env.gateway.port) as c:
        errs = errors(c.login(user=user, password=token))
    assert errs, "login succeeded"
    assert errs[0].severity == "FATAL"
    return Refusal(errs[0])


def refused_at(gw, token: str, user: str = "alice@example.com") -> Refusal:
    with RawClient(gw.port) as c:
        errs = errors(c.login(user=user, password=token))
    assert errs, "login succeeded"
    return Refusal(errs[0])


def b64(d: dict | bytes) -> str:
    raw = d if isinstance(d, bytes) else json.dumps(d).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


# ------------------------------------------------------------------ tokens


def test_valid_token_gets_a_jit_role(oidc_env):
    env = oidc_env
    token = env.issuer.token(ttl=600)
    with env.connect(token) as conn:
        role, app, member = conn.execute(
            "select current_user, current_setting('application_name'),"
            " pg_has_role(current_user, 'pgjit_read', 'member')"
        ).fetchone()
        assert role.startswith("pgjit_alice_") and member
        assert app.startswith("pgjit:alice@example.com:")
        row = env.pg.execute(
            "select rolcanlogin, rolconnlimit, extract(epoch from rolvaliduntil), rolsuper, rolcreaterole,"
            " shobj_description(oid, 'pg_authid') from pg_roles where rolname = %s",
            (role,),
        )[0]
        canlogin, connlimit, valid_until, superuser, createrole, comment = row
        assert canlogin and connlimit == 1 and not superuser and not createrole
        # VALID UNTIL is the earlier of the token's expiry and now + jit_lifetime (1h).
        assert abs(float(valid_until) - (time.time() + 600)) < 30
        assert "alice@example.com" in comment and app.split(":")[2] in comment
        verifier = env.pg.execute("select rolpassword from pg_authid where rolname = %s", (role,))[0][0]
        assert verifier.startswith("SCRAM-SHA-256$")
        # The policy's session settings are on the role.
        assert conn.execute("show default_transaction_read_only").fetchone() == ("on",)
        # Granted read-only: it can read, and the role itself cannot write.
        assert conn.execute("select count(*) from customers").fetchone()[0] > 0
        assert conn.execute("select has_table_privilege('customers', 'INSERT')").fetchone() == (False,)
    assert wait_for(lambda: role not in jit_roles(env.pg), 5)


@pytest.mark.parametrize(
    "case, make, reason",
    [
        ("expired", lambda i: i.token(ttl=60, now=time.time() - 3600), "token expired at"),
        ("not yet valid", lambda i: i.token(extra_claims={"nbf": int(time.time()) + 3600}), "not valid before"),
        ("issued in the future", lambda i: i.token(now=time.time() + 3600), "issued"),
        ("wrong audience", lambda i: i.token(audience="someone-else"), "audience"),
        ("wrong issuer", lambda i: i.token(issuer="https://evil.example.com"), "issuer"),
    ],
)
def test_bad_claims_are_refused(oidc_env, case, make, reason):
    err = refused(oidc_env, make(oidc_env.issuer))
    assert err.sqlstate == "28P01", (case, err)
    assert reason in str(err), (case, str(err))


def test_bad_signature_alg_none_and_hmac_confusion(oidc_env):
    env = oidc_env
    good = env.issuer.token()
    header, payload, sig = good.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["groups"] = ["dba"]
    tampered = f"{header}.{b64(claims)}.{sig}"
    assert "signature" in str(refused(env, tampered))

    none_token = f"{b64({'alg': 'none', 'typ': 'JWT'})}.{payload}."
    err = refused(env, none_token)
    assert err.sqlstate == "28P01" and "none" in str(err)

    # HS256 signed with the issuer's public key as the HMAC secret (crafted
    # by hand: python-jose itself refuses to sign that way).
    import hashlib
    import hmac

    pub = serialization.load_pem_private_key((env.issuer.dir / "signing-key.pem").read_bytes(), None).public_key()
    pem = pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    kid = json.loads(base64.urlsafe_b64decode(header + "=="))["kid"]
    signing_input = f"{b64({'alg': 'HS256', 'typ': 'JWT', 'kid': kid})}.{b64(claims)}"
    mac = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
    hs = f"{signing_input}.{b64(mac)}"
    err = refused(env, hs)
    assert err.sqlstate == "28P01" and "HS256" in str(err)


def test_token_never_in_logs_or_errors(oidc_env):
    env = oidc_env
    token = env.issuer.token(audience="nope")
    err = refused(env, token)
    assert token not in str(err)
    sig = token.split(".")[2]
    assert sig not in env.gateway.log_path.read_text()


def test_user_must_match_the_token(oidc_env):
    env = oidc_env
    err = refused(env, env.issuer.token(), user="bob@example.com")
    assert err.sqlstate == "28000" and "does not match" in str(err)
    with env.connect(env.issuer.token(), user="token") as conn:  # the placeholder
        assert conn.execute("select 1").fetchone() == (1,)


def test_unknown_kid_then_rotation_and_idp_outage(oidc_env):
    env = oidc_env
    iss = env.issuer
    iss.rotate()  # a new key appears in the JWKS: the gateway refetches once
    with env.connect(iss.token()) as conn:
        assert conn.execute("select 1").fetchone() == (1,)
    # The IdP goes down: cached keys keep working ...
    iss.up = False
    try:
        with env.connect(iss.token()) as conn:
            assert conn.execute("select 1").fetchone() == (1,)
        # ... and a token signed with a key nobody has seen fails closed.
        iss.rotate()
        time.sleep(0.6)  # past jwks_min_refetch_interval
        err = refused(env, iss.token())
        assert err.sqlstate == "28P01" and "could not be fetched" in str(err)
    finally:
        iss.up = True
    time.sleep(0.6)
    with env.connect(iss.token()) as conn:
        assert conn.execute("select 1").fetchone() == (1,)


def test_nothing_reaches_upstream_before_verification(oidc_env):
    env = oidc_env
    before = env.pg.server_log()
    bad = [
        env.issuer.token(audience="x"),
        env.issuer.token(ttl=60, now=time.time() - 3600),
        "not-a-jwt",
        f"{b64({'alg': 'none'})}.{b64({'sub': 'a'})}.",
    ]
    for t in bad:
        refused(env, t)
    time.sleep(0.3)
    new = env.pg.server_log()[len(before):]
    received = new.count("connection received")
    admin = new.count("connection authorized: user=pgjit_admin")
    # Only the broker's own (re)connections may appear; no session role, no login attempt.
    assert received == admin, new
    # No role was created for them and nobody logged in as one.
    assert "CREATE ROLE" not in new and "connection authorized: user=pgjit_alice" not in new, new


def test_tls_required_unless_loopback_allowed(pg, issuer, tmp_path):
    apply_setup_sql(pg)
    sections = oidc_sections(pg, issuer)
    sections["oidc"] = {**sections["oidc"], "allow_insecure_loopback": False}
    gw = start_gateway(tmp_path / "gw", pg, **sections)
    try:
        err = refused_at(gw, issuer.token())
        assert err.sqlstate == "28000" and "TLS" in str(err)
    finally:
        gw.stop()


# -------------------------------------------------------------- groups


def test_no_matching_group_is_refused(pg, issuer, tmp_path):
    apply_setup_sql(pg)
    policy = tmp_path / "analysts-only.yaml"
    policy.write_text(DEFAULT_POLICY.read_text().replace('- group: "*"', "- group: analysts"))
    gw = start_gateway(tmp_path / "gw", pg, **oidc_sections(pg, issuer, policy=policy))
    try:
        err = refused_at(gw, issuer.token(groups=["marketing"]))
        assert err.sqlstate == "28000"
        assert 'no access to database "appdb" for alice@example.com' in str(err)
        with psycopg.connect(gw.dsn(password=issuer.token(groups=["analysts"]))) as conn:
            assert conn.execute("select 1").fetchone() == (1,)
    finally:
        gw.stop()


# ------------------------------------------------------------- lifecycle


def test_two_sessions_of_one_person_get_two_roles(oidc_env):
    env = oidc_env
    with env.connect(env.issuer.token()) as a, env.connect(env.issuer.token()) as b:
        ra = a.execute("select current_user").fetchone()[0]
        rb = b.execute("select current_user").fetchone()[0]
        assert ra != rb and {ra, rb} <= set(jit_roles(env.pg))


def test_client_crash_revokes_the_role(oidc_env):
    env = oidc_env
    name = f"crash-{uuid.uuid4().hex[:6]}"
    c = RawClient(env.gateway.port)
    c.login(password=env.issuer.token(), application_name=name)
    c.send(__import__("pgjit.protocol.messages", fromlist=["Query"]).Query("select current_user"))
    msgs = c.read_until_ready()
    role = [x.values[0].decode() for x in msgs if type(x).__name__ == "DataRow"][0]
    assert role in jit_roles(env.pg)
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()  # RST, no Terminate
    assert wait_for(lambda: role not in jit_roles(env.pg), 5)


def test_token_expiry_ends_the_session(oidc_env):
    env = oidc_env
    conn = env.connect(env.issuer.token(ttl=3))
    role = conn.execute("select current_user").fetchone()[0]
    time.sleep(4)
    with pytest.raises(psycopg.OperationalError) as exc:
        conn.execute("select 1")
    assert exc.value.sqlstate == "57P01" and "token expired" in str(exc.value)
    conn.close()
    assert wait_for(lambda: role not in jit_roles(env.pg), 5)


def test_gateway_killed_then_restarted_sweeps_the_role(pg, issuer, tmp_path):
    apply_setup_sql(pg)
    gw = start_gateway(tmp_path / "gw1", pg, **oidc_sections(pg, issuer))
    conn = psycopg.connect(gw.dsn(password=issuer.token()))
    role = conn.execute("select current_user").fetchone()[0]
    gw.stop(signal.SIGKILL)
    conn.close()
    assert role in jit_roles(pg)  # nobody revoked it: the gateway is dead
    # VALID UNTIL bounds it even if nothing else ran.
    vu = pg.execute("select extract(epoch from rolvaliduntil) from pg_roles where rolname = %s", (role,))[0][0]
    assert float(vu) <= time.time() + 600 + 30
    gw2 = start_gateway(tmp_path / "gw2", pg, **oidc_sections(pg, issuer))
    try:
        # sweep_interval 1 s, setup grace max(1, 2 * upstream_connect) = 4 s.
        assert wait_for(lambda: role not in jit_roles(pg), 10)
    finally:
        gw2.stop()
