"""``pgjit dsn``: run as a developer would (``python -m pgjit dsn …``), the
outputs parsed the way their consumers parse them, and the token inside
verified against the developer issuer's JWKS."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from pgjit.identity.devissuer import init_issuer, mint_token
from pgjit.identity.oidc import OIDCConfig, TokenVerifier
from tests.oidc_fixtures import issuer, jit_roles, oidc_env  # noqa: F401

REPO = Path(__file__).resolve().parent.parent
ISSUER_URL = "http://127.0.0.1/dev-issuer"
ALICE = "alice@example.com"


@pytest.fixture(scope="module")
def dev_issuer(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("dsn-issuer")
    init_issuer(d, issuer=ISSUER_URL)
    return d


def pgjit(*args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    return subprocess.run(
        [sys.executable, "-m", "pgjit", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env=env,
        input=input,
        stdin=None if input is not None else subprocess.DEVNULL,
    )


def dsn(dev_issuer: Path, *args: str, sub: str = ALICE, groups: str | None = "analysts") -> subprocess.CompletedProcess[str]:
    extra = ["--groups", groups] if groups is not None else []
    r = pgjit("dsn", "--key", str(dev_issuer / "signing-key.pem"), "--sub", sub, *extra, *args)
    assert r.returncode == 0, r.stderr
    return r


def verify(dev_issuer: Path, token: str, user: str = ALICE):
    jwks = dev_issuer / "jwks.json"
    fetched: list[str] = []

    def fetch(url: str) -> bytes:
        fetched.append(url)
        return jwks.read_bytes()

    cfg = OIDCConfig(issuer=ISSUER_URL, audience="pgjit", jwks_file=str(jwks))
    ident = TokenVerifier(cfg, fetch).verify(token, user)
    assert fetched, "the verifier read the issuer's JWKS"
    return ident


# ------------------------------------------------------------------ formats


def test_url_format_is_the_default(dev_issuer):
    before = time.time()
    r = dsn(dev_issuer, "--ttl", "10m")
    url = r.stdout.strip()
    assert r.stdout.count("\n") == 1
    assert url.startswith("postgresql://alice%40example.com:")
    parts = urlsplit(url)
    assert parts.scheme == "postgresql"
    assert unquote(parts.username) == ALICE
    assert (parts.hostname, parts.port, parts.path) == ("127.0.0.1", 6432, "/appdb")
    assert parse_qs(parts.query) == {"sslmode": ["require"]}
    token = unquote(parts.password)
    ident = verify(dev_issuer, token)
    assert ident.user == ALICE and ident.subject == ALICE
    assert ident.groups == frozenset({"analysts"})
    assert abs(ident.expires_at - (before + 600)) < 30
    # The note on stderr says when it expires; the token itself is only on stdout.
    assert "expires at" in r.stderr and token not in r.stderr


def test_keyword_format(dev_issuer):
    r = dsn(dev_issuer, "--format", "keyword", "--host", "db.example.com", "--port", "7432", "--dbname", "sales", "--sslmode", "verify-full")
    d = conninfo_to_dict(r.stdout.strip())
    token = d.pop("password")
    assert d == {"host": "db.example.com", "port": "7432", "dbname": "sales", "user": ALICE, "sslmode": "verify-full"}
    verify(dev_issuer, token)


def test_psql_format_is_correct_shell(dev_issuer, tmp_path):
    r = dsn(dev_issuer, "--format", "psql", "--sslmode", "disable", "--user", "token")
    line = r.stdout.strip()
    assert line.startswith("PGPASSWORD='") and ' psql "host=127.0.0.1 port=6432 dbname=appdb user=token sslmode=disable"' in line
    words = shlex.split(line)
    assert words[1] == "psql" and words[0].startswith("PGPASSWORD=")
    token = words[0].split("=", 1)[1]
    verify(dev_issuer, token, user="token")  # the gateway's user placeholder
    # Run the very line with a stand-in psql on PATH: the shell hands psql what we meant.
    fake = tmp_path / "psql"
    fake.write_text('#!/bin/sh\nprintf "%s\\n" "$PGPASSWORD" "$#" "$1"\n')
    fake.chmod(0o755)
    out = subprocess.run(["bash", "-c", line], capture_output=True, text=True, timeout=30, env={"PATH": f"{tmp_path}:/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [token, "1", "host=127.0.0.1 port=6432 dbname=appdb user=token sslmode=disable"]


def test_psql_format_quotes_awkward_values(dev_issuer, tmp_path):
    user = "o'brien \"$HOME\" `x` \\"
    r = dsn(dev_issuer, "--format", "psql", "--user", user, "--dbname", "my db")
    fake = tmp_path / "psql"
    fake.write_text('#!/bin/sh\nprintf "%s\\n" "$1"\n')
    fake.chmod(0o755)
    out = subprocess.run(["bash", "-c", r.stdout.strip()], capture_output=True, text=True, timeout=30, env={"PATH": f"{tmp_path}:/usr/bin:/bin", "HOME": "/nowhere"})
    assert out.returncode == 0, out.stderr
    d = conninfo_to_dict(out.stdout.rstrip("\n"))
    assert d["user"] == user and d["dbname"] == "my db"


def test_env_format_sourced_by_a_shell(dev_issuer):
    r = dsn(dev_issuer, "--format", "env", "--port", "6543")
    lines = r.stdout.strip().splitlines()
    assert all(ln.startswith("export PG") for ln in lines)
    script = r.stdout + 'printf "%s\\n" "$PGHOST" "$PGPORT" "$PGDATABASE" "$PGUSER" "$PGSSLMODE" "$PGPASSWORD"\n'
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    host, port, db, user, sslmode, token = out.stdout.splitlines()
    assert (host, port, db, user, sslmode) == ("127.0.0.1", "6543", "appdb", ALICE, "require")
    verify(dev_issuer, token)


def test_mcp_format(dev_issuer):
    r = dsn(dev_issuer, "--format", "mcp", "--sslmode", "disable", "--dbname", "appdb")
    doc = json.loads(r.stdout)
    server = doc["mcpServers"]["pgjit-appdb"]
    assert server["command"] == "npx"
    assert server["args"][:2] == ["-y", "@modelcontextprotocol/server-postgres"]
    parts = urlsplit(server["args"][2])
    assert unquote(parts.username) == ALICE and parts.path == "/appdb" and parts.query == "sslmode=disable"
    verify(dev_issuer, unquote(parts.password))


# ------------------------------------------------------------------ tokens


def test_every_run_mints_a_fresh_token(dev_issuer):
    a = urlsplit(dsn(dev_issuer).stdout.strip()).password
    b = urlsplit(dsn(dev_issuer).stdout.strip()).password
    assert a != b


def test_ttl_and_groups(dev_issuer):
    before = time.time()
    r = dsn(dev_issuer, "--ttl", "2h", groups="analysts,oncall")
    ident = verify(dev_issuer, unquote(urlsplit(r.stdout.strip()).password))
    assert ident.groups == frozenset({"analysts", "oncall"})
    assert abs(ident.expires_at - (before + 7200)) < 30


def test_user_defaults_to_the_tokens_email_then_sub(dev_issuer):
    r = dsn(dev_issuer, "--format", "keyword", sub="svc-ci", groups=None)
    assert conninfo_to_dict(r.stdout)["user"] == "svc-ci"
    r = pgjit("dsn", "--key", str(dev_issuer / "signing-key.pem"), "--sub", "u123", "--email", "bob@example.com", "--format", "keyword")
    assert r.returncode == 0, r.stderr
    assert conninfo_to_dict(r.stdout)["user"] == "bob@example.com"


def test_given_token_and_token_file(dev_issuer, tmp_path):
    token = mint_token(dev_issuer / "signing-key.pem", "carol@example.com", ["dba"], 300)
    r = pgjit("dsn", "--token", token, "--format", "keyword")
    assert r.returncode == 0, r.stderr
    d = conninfo_to_dict(r.stdout)
    assert d["password"] == token and d["user"] == "carol@example.com"
    f = tmp_path / "token"
    f.write_text(token + "\n")
    r = pgjit("dsn", "--token-file", str(f), "-q")
    assert r.returncode == 0 and r.stderr == ""
    assert unquote(urlsplit(r.stdout.strip()).password) == token
    r = pgjit("dsn", "--token-file", "-", "--format", "keyword", input=token + "\n")
    assert r.returncode == 0, r.stderr
    assert conninfo_to_dict(r.stdout)["password"] == token
    # An expired token still prints, with a warning.
    old = mint_token(dev_issuer / "signing-key.pem", ALICE, None, 60, now=time.time() - 3600)
    r = pgjit("dsn", "--token", old)
    assert r.returncode == 0 and "expired" in r.stderr


def test_usage_errors(dev_issuer, tmp_path):
    key = str(dev_issuer / "signing-key.pem")
    r = pgjit("dsn", "--key", key)
    assert r.returncode == 2 and "--sub is required" in r.stderr
    r = pgjit("dsn", "--sub", ALICE)
    assert r.returncode == 2 and "one of the arguments --key --token --token-file is required" in r.stderr
    r = pgjit("dsn", "--key", key, "--token", "x", "--sub", ALICE)
    assert r.returncode == 2 and "not allowed with" in r.stderr
    r = pgjit("dsn", "--key", key, "--sub", ALICE, "--ttl", "soon")
    assert r.returncode == 2 and "invalid duration" in r.stderr
    r = pgjit("dsn", "--key", key, "--sub", ALICE, "--sslmode", "prefer")
    assert r.returncode == 2
    r = pgjit("dsn", "--key", str(tmp_path / "missing.pem"), "--sub", ALICE)
    assert r.returncode == 1 and "missing.pem" in r.stderr and r.stdout == ""


def test_help_explains_tokens(dev_issuer):
    r = pgjit("dsn", "--help")
    assert r.returncode == 0
    text = " ".join(r.stdout.split())
    assert "The password IS the token, and tokens expire" in text
    for fmt in ("url", "keyword", "psql", "env", "mcp"):
        assert fmt in text
    top = pgjit("--help")
    assert "dsn" in top.stdout


# ------------------------------------------------------------------ end to end


@pytest.mark.pg
def test_dsn_logs_in_through_the_gateway(oidc_env):
    env = oidc_env
    key = str(env.issuer.dir / "signing-key.pem")
    base = ["dsn", "--key", key, "--sub", ALICE, "--groups", "analysts", "--port", str(env.gateway.port), "--sslmode", "disable"]
    r = pgjit(*base, "--format", "url")
    assert r.returncode == 0, r.stderr
    with psycopg.connect(r.stdout.strip()) as conn:
        role, n = conn.execute("select current_user, (select count(*) from customers)").fetchone()
    assert role.startswith("pgjit_alice_") and n > 0
    psql = shutil.which("psql") or str(Path(env.pg.bindir) / "psql")
    r = pgjit(*base, "--format", "psql")
    assert r.returncode == 0, r.stderr
    line = r.stdout.strip().replace(" psql ", f" {shlex.quote(psql)} -X -A -t -c 'select current_user' ", 1)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    out = subprocess.run(["bash", "-c", line], capture_output=True, text=True, timeout=60, env=clean)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().startswith("pgjit_alice_")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(n.startswith("pgjit_alice_") for n in jit_roles(env.pg)):
        time.sleep(0.1)
    assert not [n for n in jit_roles(env.pg) if n.startswith("pgjit_alice_")]
