"""pg_dump through the gateway, in a JIT session under the default policy.

pg_dump (the binary matching the server) connects to the gateway with an
OIDC token as its password and dumps ``appdb`` in the plain, custom and
directory formats; the plain dump is then restored, directly (not through
the gateway), into a fresh database and its row counts compared.

The JIT role is in ``pgjit_read`` (SETUP.md: SELECT on every table in
``public``). pg_dump also reads each sequence's state (``SELECT last_value,
is_called FROM <sequence>``), which needs SELECT on the sequences: the module
grants that to ``pgjit_read`` and revokes it afterwards.
"""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import pytest

from tests.oidc_fixtures import issuer, oidc_env  # noqa: F401

pytestmark = pytest.mark.pg

TABLES = ("customers", "orders")


@pytest.fixture(scope="module")
def dump_env(oidc_env):  # noqa: F811
    pg = oidc_env.pg
    with pg.connect(dbname="appdb") as conn:
        conn.execute("GRANT SELECT ON ALL SEQUENCES IN SCHEMA public TO pgjit_read")
    yield oidc_env
    with pg.connect(dbname="appdb") as conn:
        conn.execute("REVOKE SELECT ON ALL SEQUENCES IN SCHEMA public FROM pgjit_read")


def run_pg_dump(env, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run pg_dump against the gateway with a fresh token (one JIT session per run)."""
    token = env.issuer.token(sub="alice@example.com", groups=("agents",))
    gw = env.gateway
    cmd = [env.pg.tool("pg_dump"), "-h", gw.host, "-p", str(gw.port), "-U", "alice@example.com", "-d", "appdb",
           # other tests' schemas the JIT role has no USAGE on (tests/test_gate_live.py)
           "--exclude-schema=payroll", "--exclude-schema=res", *args]
    penv = gw.env(user="alice@example.com", password=token, dbname="appdb")
    penv["PGSSLMODE"] = "disable"
    penv["PGCONNECT_TIMEOUT"] = "10"
    return subprocess.run(cmd, env=penv, capture_output=True, text=True, timeout=timeout)


def _gateway_denials(env) -> list[str]:
    """Rules of the statements the gateway refused (its log has no SQL text)."""
    return [str(r.get("rule")) for r in env.gateway.logs() if r.get("action") == "deny"][-10:]


def _check(env, r: subprocess.CompletedProcess[str], what: str) -> None:
    assert r.returncode == 0, (
        f"pg_dump {what} through the gateway exited {r.returncode}:\n{r.stderr[-3000:]}\n"
        f"gateway denials (last 10): {_gateway_denials(env)}"
    )


def _row_counts(pg, dbname: str) -> dict[str, int]:
    return {t: pg.execute(f"SELECT count(*) FROM public.{t}", dbname=dbname)[0][0] for t in TABLES}


def _assert_dump_text(text: str) -> None:
    for t in TABLES:
        assert f"CREATE TABLE public.{t} (" in text, t
        assert f"COPY public.{t} (" in text, t
    assert "customer7@example.com" in text  # a data row of public.customers


def test_plain_dump_and_restore(dump_env, tmp_path: Path) -> None:
    env = dump_env
    out = tmp_path / "appdb.sql"
    r = run_pg_dump(env, "-f", str(out))
    _check(env, r, "-f (plain)")
    text = out.read_text()
    _assert_dump_text(text)

    # restore directly into a fresh database (superuser, not through the gateway)
    pg = env.pg
    target = f"restored_{uuid.uuid4().hex[:8]}"
    pg.execute(f'CREATE DATABASE "{target}"')
    try:
        if not pg.can_reach(out):
            out.chmod(0o644)
        psql = subprocess.run(
            [pg.tool("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", pg.dsn(dbname=target)],
            input=text, capture_output=True, text=True, timeout=120,
        )
        assert psql.returncode == 0, psql.stderr[-3000:]
        assert _row_counts(pg, target) == _row_counts(pg, "appdb")
        assert all(n > 0 for n in _row_counts(pg, target).values())
    finally:
        pg.execute(f'DROP DATABASE IF EXISTS "{target}" WITH (FORCE)')


def test_custom_format(dump_env, tmp_path: Path) -> None:
    env = dump_env
    out = tmp_path / "appdb.custom"
    r = run_pg_dump(env, "-Fc", "-f", str(out))
    _check(env, r, "-Fc")
    assert out.read_bytes()[:5] == b"PGDMP"
    sql = subprocess.run([env.pg.tool("pg_restore"), "-f", "-", str(out)], capture_output=True, text=True, timeout=60)
    assert sql.returncode == 0, sql.stderr
    _assert_dump_text(sql.stdout)


def test_directory_format(dump_env, tmp_path: Path) -> None:
    env = dump_env
    out = tmp_path / "appdb.dir"
    r = run_pg_dump(env, "-Fd", "-f", str(out))
    _check(env, r, "-Fd")
    assert (out / "toc.dat").is_file()
    listing = subprocess.run([env.pg.tool("pg_restore"), "-l", str(out)], capture_output=True, text=True, timeout=60)
    assert listing.returncode == 0, listing.stderr
    for t in TABLES:
        assert f"TABLE DATA public {t} " in listing.stdout, t
    sql = subprocess.run([env.pg.tool("pg_restore"), "-f", "-", str(out)], capture_output=True, text=True, timeout=60)
    assert sql.returncode == 0, sql.stderr
    _assert_dump_text(sql.stdout)


def test_schema_only_and_one_table(dump_env, tmp_path: Path) -> None:
    env = dump_env
    schema = tmp_path / "schema.sql"
    _check(env, run_pg_dump(env, "--schema-only", "-f", str(schema)), "--schema-only")
    text = schema.read_text()
    assert "CREATE TABLE public.customers (" in text and "COPY public." not in text
    one = tmp_path / "orders.sql"
    _check(env, run_pg_dump(env, "-t", "public.orders", "-f", str(one)), "-t public.orders")
    text = one.read_text()
    assert "CREATE TABLE public.orders (" in text and "COPY public.orders (" in text
    assert "CREATE TABLE public.customers (" not in text
