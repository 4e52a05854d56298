"""Django ``migrate`` through the gateway in JIT mode, three times, each in a
new session (new token, new connection, new JIT role):

1. ``django-admin migrate``: contenttypes, auth and jitapp from nothing;
2. ``django-admin migrate`` again: "No migrations to apply" (before the stable
   owning role this failed with ``permission denied for table
   django_migrations``: the table belonged to pgjit_owner);
3. jitapp back to zero and forward again (tests/migrations/django_project/roundtrip.py).

After each, directly against PostgreSQL: every table, index and sequence
belongs to ``app_migrator`` and no JIT role is left. Django's tables and
jitapp's (names with a per-test prefix) are dropped, as superuser, before and
after the test.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.migrations.conftest import HERE, OWNER, PERSON, child_env, python, unique_prefix

pytestmark = pytest.mark.pg

PROJECT = HERE / "django_project"
DJANGO_TABLES = (
    "auth_group_permissions",
    "auth_user_groups",
    "auth_user_user_permissions",
    "auth_permission",
    "auth_group",
    "auth_user",
    "django_content_type",
    "django_migrations",
)


def drop_django_tables(pg, prefix: str) -> None:
    pg.execute_many(
        [f'DROP TABLE IF EXISTS public."{prefix}book", public."{prefix}author" CASCADE']
        + [f"DROP TABLE IF EXISTS public.{t} CASCADE" for t in DJANGO_TABLES],
        dbname="appdb",
    )


@pytest.fixture
def prefix(mig_env):
    p = unique_prefix("dj") + "_"
    # Django's own tables have fixed names: start from none.
    drop_django_tables(mig_env.pg, p)
    yield p
    drop_django_tables(mig_env.pg, p)
    left = {**mig_env.relations_like(p), **mig_env.relations_like("django_"), **mig_env.relations_like("auth_")}
    assert not left, f"left in appdb after cleanup: {left}"


def django_admin() -> list[str]:
    script = Path(python()).with_name("django-admin")
    return [str(script)] if script.is_file() else [python(), "-m", "django"]


def run_django(env, prefix: str, tmp_path: Path, what: str, args: list[str]):
    sql_log = tmp_path / f"sql-{len(list(tmp_path.glob('sql-*')))}.log"
    penv = child_env(
        DJANGO_SETTINGS_MODULE="jitproject.settings",
        PYTHONPATH=os.pathsep.join([str(PROJECT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        PGJIT_DJANGO_HOST=env.gateway.host,
        PGJIT_DJANGO_PORT=str(env.gateway.port),
        PGJIT_DJANGO_USER=PERSON,
        PGJIT_DJANGO_TOKEN=env.token(),
        PGJIT_DJANGO_PREFIX=prefix,
        PGJIT_DJANGO_SQL_LOG=str(sql_log),
    )
    step = env.run(what, args, penv, PROJECT)
    if step.result.returncode != 0 and sql_log.exists():
        # The last statements Django sent (a refused one included): the
        # gateway's log names the rule, not the SQL.
        tail = "\n".join(sql_log.read_text(errors="replace").splitlines()[-8:])
        step.result.stderr += f"\n--- last SQL Django sent ---\n{tail}"
    return env.check(step)


def expected_app_relations(p: str) -> set[str]:
    return {f"{p}author", f"{p}author_pkey", f"{p}book", f"{p}book_pkey", f"{p}pub_idx"}


def assert_owned(env, p: str, *, app_migrated: bool) -> dict[str, tuple[str, str]]:
    rels = {**env.relations_like(p), **env.relations_like("django_"), **env.relations_like("auth_")}
    tables = {n for n, (k, _) in rels.items() if k == "r"}
    assert set(DJANGO_TABLES) <= tables, sorted(tables)
    app = {n for n in rels if n.startswith(p)}
    if app_migrated:
        assert expected_app_relations(p) <= app, sorted(app)
        assert {f"{p}author_id_seq", f"{p}book_id_seq"} <= app, sorted(app)  # BigAutoField: identity
    else:
        assert not app, sorted(app)
    wrong = {n: o for n, (_, o) in rels.items() if o != OWNER}
    assert not wrong, f"not owned by {OWNER}: {wrong}"
    return rels


def applied(env, app: str) -> list[str]:
    rows = env.pg.execute("SELECT name FROM public.django_migrations WHERE app = %s ORDER BY id", (app,), dbname="appdb")
    return [r[0] for r in rows]


def test_migrate_twice_then_app_to_zero_and_back(mig_env, prefix, tmp_path):
    env, p = mig_env, prefix

    s1 = run_django(env, p, tmp_path, "django-admin migrate (session 1)", [*django_admin(), "migrate", "--no-input"])
    out = s1.result.stdout
    for m in ("contenttypes.0001_initial", "auth.0001_initial", "auth.0012_alter_user_first_name_max_length",
              "jitapp.0001_initial", "jitapp.0002_published_on"):
        assert f"Applying {m}... OK" in out, f"{m} not applied:\n{s1.report()}"
    env.assert_no_jit_roles("session 1 (migrate)")
    assert_owned(env, p, app_migrated=True)
    assert applied(env, "jitapp") == ["0001_initial", "0002_published_on"]
    name_type = env.pg.execute(
        "SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = %s::regclass AND attname = 'name'",
        (f'public."{p}author"',), dbname="appdb")
    assert name_type == [("character varying(200)",)]
    assert env.pg.execute(f'SELECT count(*) FROM public."{p}book"', dbname="appdb") == [(1,)]
    # post_migrate filled content types and permissions, through the gateway
    assert env.pg.execute("SELECT count(*) FROM public.auth_permission", dbname="appdb")[0][0] >= 4 * 6

    s2 = run_django(env, p, tmp_path, "django-admin migrate (session 2)", [*django_admin(), "migrate", "--no-input"])
    assert "No migrations to apply" in s2.result.stdout, s2.report()
    env.assert_no_jit_roles("session 2 (migrate again)")
    assert_owned(env, p, app_migrated=True)

    s3 = run_django(env, p, tmp_path, "roundtrip.py: migrate jitapp zero, migrate (session 3)", [python(), str(PROJECT / "roundtrip.py")])
    out = s3.result.stdout
    assert f"current_user={OWNER}" in out and "session_user=pgjit_deployer_" in out, s3.report()
    assert "Unapplying jitapp.0002_published_on... OK" in out and "Unapplying jitapp.0001_initial... OK" in out, s3.report()
    assert out.count("Applying jitapp.0001_initial... OK") == 1 and "Applying jitapp.0002_published_on... OK" in out, s3.report()
    env.assert_no_jit_roles("session 3 (jitapp to zero and back)")
    assert_owned(env, p, app_migrated=True)
    assert applied(env, "jitapp") == ["0001_initial", "0002_published_on"]
    assert env.pg.execute(f'SELECT count(*) FROM public."{p}book"', dbname="appdb") == [(1,)]

    roles = s1.roles_created + s2.roles_created + s3.roles_created
    assert len(set(roles)) == 3, roles
