"""Alembic through the gateway in JIT mode: upgrade, downgrade and upgrade
again, each in a new session (new token, new connection, new JIT role).

Before the stable owning role, a second session could not alter what the
first one created (objects were REASSIGNED to pgjit_owner when its role was
dropped: ``must be owner of index …``). Under policies/examples/migrations.yaml
the deployers' sessions run as ``app_migrator``, so everything the revisions
make belongs to it, and the next session — another JIT role, the same owner —
may drop and recreate it.

The Alembic project is tests/migrations/alembic_project; every name it makes
starts with a per-test prefix and is dropped (as superuser) at the end.
"""

from __future__ import annotations

import psycopg
import pytest

from tests.migrations.conftest import HERE, OWNER, PERSON, child_env, python, unique_prefix

pytestmark = pytest.mark.pg

PROJECT = HERE / "alembic_project"


@pytest.fixture
def prefix(mig_env):
    p = unique_prefix("alm")
    yield p
    names = [f"{p}_books", f"{p}_authors", f"{p}_alembic_version"]
    mig_env.pg.execute_many(
        [f'DROP TABLE IF EXISTS public."{n}" CASCADE' for n in names] + [f'DROP SEQUENCE IF EXISTS public."{p}_isbn_seq"'],
        dbname="appdb",
    )
    left = mig_env.relations_like(p)
    assert not left, f"left in appdb after cleanup: {left}"


def alembic(env, prefix: str, *args: str):
    """One ``alembic`` run as a subprocess: one session with a fresh token."""
    token = env.token()
    penv = child_env(
        PGJIT_MIG_USER=PERSON,
        PGJIT_MIG_TOKEN=token,
        PGJIT_MIG_HOST=env.gateway.host,
        PGJIT_MIG_PORT=str(env.gateway.port),
        PGJIT_MIG_PREFIX=prefix,
    )
    cmd = [python(), "-m", "alembic", "-c", str(PROJECT / "alembic.ini"), *args]
    step = env.check(env.run("alembic " + " ".join(args), cmd, penv, PROJECT))
    out = step.result.stdout
    assert f"current_user={OWNER}" in out, f"the session did not run as {OWNER}:\n{step.report()}"
    assert "session_user=pgjit_deployer_" in out, step.report()
    return step


def tables_at_head(p: str) -> dict[str, str]:
    return {
        f"{p}_authors": "r",
        f"{p}_authors_id_seq": "S",  # SERIAL
        f"{p}_authors_pkey": "i",
        f"{p}_authors_email": "i",
        f"{p}_isbn_seq": "S",
        f"{p}_books": "r",
        f"{p}_books_id_seq": "S",  # identity
        f"{p}_books_pkey": "i",
        f"{p}_books_title": "i",
        f"{p}_books_published_on": "i",
        f"{p}_alembic_version": "r",
        f"{p}_alembic_version_pkc": "i",
    }


def assert_at_head(env, p: str) -> None:
    rels = env.relations_like(p)
    expected = tables_at_head(p)
    assert {n: k for n, (k, _) in rels.items()} == expected
    wrong = {n: o for n, (_, o) in rels.items() if o != OWNER}
    assert not wrong, f"not owned by {OWNER}: {wrong}"
    rows = env.pg.execute(f'SELECT version_num FROM public."{p}_alembic_version"', dbname="appdb")
    assert rows == [("0002",)]
    cols = {}
    for t in (f"{p}_authors", f"{p}_books"):
        for name, typ in env.pg.execute(
            "SELECT attname, format_type(atttypid, atttypmod) || CASE WHEN attnotnull THEN ' not null' ELSE '' END"
            " FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped",
            (f'public."{t}"',),
            dbname="appdb",
        ):
            cols[f"{name}.{t}"] = typ
    assert cols[f"name.{p}_authors"] == "character varying(250) not null"
    assert cols[f"title.{p}_books"] == "character varying(200)"
    assert cols[f"published_on.{p}_books"] == "date"
    fk = env.pg.execute(
        "SELECT confrelid::regclass::text FROM pg_constraint WHERE contype = 'f' AND conrelid = %s::regclass",
        (f'public."{p}_books"',),
        dbname="appdb",
    )
    assert fk == [(f"{p}_authors",)]
    assert env.pg.execute(f'SELECT count(*) FROM public."{p}_books"', dbname="appdb") == [(1,)]


def test_session_runs_as_the_owner(mig_env):
    """The interface the migrations rely on: session_user is the session's JIT
    role, current_user the policy's owner."""
    env = mig_env
    with psycopg.connect(env.gateway.dsn(user=PERSON, password=env.token())) as conn:
        session_user, current_user = conn.execute("SELECT session_user, current_user").fetchone()
    assert session_user.startswith("pgjit_deployer_"), session_user
    assert current_user == OWNER
    env.assert_no_jit_roles("a plain session")


def test_upgrade_downgrade_upgrade_in_three_sessions(mig_env, prefix):
    env, p = mig_env, prefix

    s1 = alembic(env, p, "upgrade", "head")
    assert "Running upgrade  -> 0001" in s1.result.stderr and "Running upgrade 0001 -> 0002" in s1.result.stderr, s1.report()
    env.assert_no_jit_roles("session 1 (upgrade head)")
    assert_at_head(env, p)

    s2 = alembic(env, p, "downgrade", "base")
    assert "Running downgrade 0002 -> 0001" in s2.result.stderr and "Running downgrade 0001 -> , " in s2.result.stderr, s2.report()
    env.assert_no_jit_roles("session 2 (downgrade base)")
    rels = env.relations_like(p)
    assert {n: k for n, (k, _) in rels.items()} == {f"{p}_alembic_version": "r", f"{p}_alembic_version_pkc": "i"}
    assert all(o == OWNER for _, o in rels.values()), rels
    assert env.pg.execute(f'SELECT count(*) FROM public."{p}_alembic_version"', dbname="appdb") == [(0,)]

    s3 = alembic(env, p, "upgrade", "head")
    assert "Running upgrade  -> 0001" in s3.result.stderr and "Running upgrade 0001 -> 0002" in s3.result.stderr, s3.report()
    env.assert_no_jit_roles("session 3 (upgrade head)")
    assert_at_head(env, p)

    roles = s1.roles_created + s2.roles_created + s3.roles_created
    assert len(set(roles)) == 3, roles
