"""Red team for GitHub issue 8 ("gate soundness"): tests/redteam/corpus.py.

(a) ``test_attack_works_on_bare_postgres``: each attack, sent straight to
    PostgreSQL as a superuser, takes effect. No attack in the corpus is a fake.
(b) ``test_attack_refused_through_gateway``: the same attack, through a gateway
    that logs in upstream as that superuser, under policies/default.yaml and
    (where it applies) policies/examples/guardrails.yaml, in the simple and the
    extended protocol: it has no effect on the real database, and the client got
    a refusal (SQLSTATE 42501/42601/0A000, or a FATAL that closed the session).

Each run starts from a fresh copy of a template database (victim and ledger
tables, contrib extensions, the rt_check helpers); the attack's setup runs on it
directly as the superuser, never through the gateway.
"""

from __future__ import annotations

import json
import os
import queue
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import psycopg
import pytest

from pgjit.protocol import messages as m
from tests.gateway_fixtures import start_gateway
from tests.redteam.corpus import ATTACKS, RECONNECT, TEMPLATE_SQL, RedTeamAttack
from tests.redteam.wire import StatementResult, WireClient

pytestmark = pytest.mark.pg

REPO = Path(__file__).resolve().parents[2]
POLICIES = {
    "default": REPO / "policies" / "default.yaml",
    "guardrails": REPO / "policies" / "examples" / "guardrails.yaml",
}
TEMPLATE = "rt_template"
# Attacks run in parallel slots, each with its own database and its own
# superuser (so ALTER ROLE CURRENT_USER / ALTER DATABASE stay in the slot);
# the `serial` ones (cluster-wide state) run alone afterwards, in slot 0.
SLOTS = int(os.environ.get("PGJIT_REDTEAM_SLOTS", "4"))
GATEWAY_USER, GATEWAY_PASSWORD = "alice@example.com", "x"
CATALOG_RETRIES = 100


@dataclass(frozen=True)
class Slot:
    k: int

    @property
    def db(self) -> str:
        return f"rtdb_{self.k}"

    @property
    def user(self) -> str:
        return f"rt_super_{self.k}"

    password = "rtpass"


@dataclass
class Outcome:
    results: list[StatementResult]
    effect: bool
    error: str | None = None


class RedTeamEnv:
    """The template database, fresh attack databases and the effect checks."""

    def __init__(self, pg) -> None:
        self.pg = pg

    def local(self, dbname: str) -> psycopg.Connection:
        """Over the unix socket (trust): no SCRAM round trips for the harness itself."""
        return psycopg.connect(host=str(self.pg.socket_dir), port=self.pg.port, user=self.pg.superuser,
                               dbname=dbname, autocommit=True)

    def ctx(self, text: str, slot: Slot) -> str:
        return (text.replace("@PORT@", str(self.pg.port)).replace("@USER@", slot.user)
                .replace("@PASSWORD@", slot.password).replace("@DB@", slot.db))

    def stmt(self, s: str | bytes, slot: Slot) -> bytes:
        if isinstance(s, bytes):
            return self.ctx(s.decode("utf-8"), slot).encode("utf-8")
        return self.ctx(s, slot).encode("utf-8")

    def build_template(self) -> None:
        with self.local("postgres") as a:
            for k in range(SLOTS):
                sl = Slot(k)
                if not a.execute("select 1 from pg_roles where rolname = %s", (sl.user,)).fetchone():
                    a.execute(f"create role {sl.user}")
                a.execute(f"alter role {sl.user} superuser login password '{sl.password}'")
                a.execute(f"drop database if exists {sl.db} with (force)")
            a.execute(f"drop database if exists {TEMPLATE} with (force)")
            a.execute(f"create database {TEMPLATE}")
        with self.local(TEMPLATE) as c:
            c.execute(TEMPLATE_SQL)

    def close(self) -> None:
        with self.local("postgres") as a:
            for k in range(SLOTS):
                a.execute(f"drop database if exists {Slot(k).db} with (force)")
            a.execute(f"drop database if exists {TEMPLATE} with (force)")
            for k in range(SLOTS):
                a.execute(f"drop role if exists {Slot(k).user}")

    def fresh(self, attack: RedTeamAttack, slot: Slot) -> None:
        with self.local("postgres") as a:
            a.execute(f"drop database if exists {slot.db} with (force)")
            a.execute(f"create database {slot.db} template {TEMPLATE} strategy file_copy")
        with self.local(slot.db) as c:
            if attack.setup:
                c.execute(self.ctx(attack.setup, slot))
            c.execute("select rt_check.snapshot()")

    def attempt(self, attack: RedTeamAttack, slot: Slot, port: int, user: str | None, password: str | None,
                protocol: str) -> Outcome:
        """The attack (as `user`, or the slot's superuser) on the slot's prepared database, then the effect check."""
        results = run_attack(self, slot, port, user or slot.user, password or slot.password, attack, protocol)
        hit = False
        if attack.leak is not None:
            hit = any(attack.leak.encode() in r.data for r in results)
        if attack.effect is not None:
            with self.local(slot.db) as c:
                hit = bool(c.execute(self.ctx(attack.effect, slot)).fetchone()[0]) or hit
        return Outcome(results, hit)

    def teardown(self, attack: RedTeamAttack, slot: Slot) -> None:
        with self.local(slot.db) as c:
            if attack.teardown:
                c.execute(self.ctx(attack.teardown, slot))
            c.execute(f"alter role {slot.user} reset all; alter role {slot.user} in database {slot.db} reset all")


def run_attack(env: RedTeamEnv, slot: Slot, port: int, user: str, password: str, attack: RedTeamAttack,
               protocol: str) -> list[StatementResult]:
    """Send the attack's statements one by one; a closed session is reopened (the
    attacker would), a refused login ends the attack."""
    results: list[StatementResult] = []
    client: WireClient | None = None
    startup = {k: env.ctx(v, slot) for k, v in attack.startup.items()}

    def connect(params: dict[str, str]) -> WireClient | None:
        for attempt in range(CATALOG_RETRIES):
            c = WireClient(port)
            msgs = c.login_any(user, slot.db, password, **params)
            errs = [x for x in msgs if isinstance(x, m.ErrorResponse)]
            # The harness recreates the slot's database between runs; a catalog probe of
            # the gateway that ran while it was missing makes it refuse logins for a
            # moment. That refusal says nothing about the attack: wait and log in again.
            if errs and errs[0].sqlstate == "08006" and "catalog" in (errs[0].message or ""):
                c.close()
                if attempt == CATALOG_RETRIES - 1:
                    raise RuntimeError(f"the gateway could not read the catalog of {slot.db}: {errs[0].message}")
                time.sleep(0.1)
                continue
            break
        if errs:
            results.append(StatementResult(b"<login " + repr(params).encode() + b">", errors=errs, closed=True))
            c.close()
            return None
        return c

    try:
        client = connect(startup)
        if client is None:
            return results
        for s in attack.attack:
            if s == RECONNECT:
                client.close()
                client = connect({})
                if client is None:
                    return results
                continue
            stmt = env.stmt(s, slot)
            r = client.simple(stmt) if protocol == "simple" else client.extended(stmt)
            results.append(r)
            if r.closed:
                client.close()
                client = connect(startup)
                if client is None:
                    return results
        return results
    finally:
        if client is not None:
            client.close()


def run_jobs(env: RedTeamEnv, jobs: list[tuple[RedTeamAttack, list[Any]]], target) -> dict[Any, Outcome]:
    """Each job is one attack and its cases (keys), run in one slot in order;
    `target(key, slot)` gives (port, user, password, protocol). The database is
    made afresh before a case unless every statement of the case before was
    refused by pgjit itself (then nothing reached the server)."""
    out: dict[Any, Outcome] = {}
    slots: queue.Queue[Slot] = queue.Queue()
    for k in range(SLOTS):
        slots.put(Slot(k))

    def job(attack: RedTeamAttack, keys: list[Any]) -> None:
        slot = slots.get()
        try:
            dirty, made = True, False
            for key in keys:
                try:
                    if dirty:
                        if made:
                            env.teardown(attack, slot)
                        env.fresh(attack, slot)
                        made = True
                    port, user, password, protocol = target(key, slot)
                    o = env.attempt(attack, slot, port, user, password, protocol)
                    out[key] = o
                    dirty = o.effect or not o.results or not all(r.denied_before_server for r in o.results)
                except Exception as exc:  # noqa: BLE001 - reported by the test of this case
                    out[key] = Outcome([], False, f"{type(exc).__name__}: {exc}")
                    dirty = True
            if made:
                env.teardown(attack, slot)
        finally:
            slots.put(slot)

    with ThreadPoolExecutor(SLOTS) as pool:
        list(pool.map(lambda j: job(*j), [j for j in jobs if not j[0].serial]))
    for j in jobs:
        if j[0].serial:
            job(*j)
    return out


def _selected(request, test_name: str) -> list[dict[str, Any]]:
    return [item.callspec.params for item in request.session.items
            if getattr(item, "originalname", None) == test_name and hasattr(item, "callspec")]


@pytest.fixture(scope="module")
def rt_env(pg) -> Iterator[RedTeamEnv]:
    env = RedTeamEnv(pg)
    env.build_template()
    yield env
    env.close()


@pytest.fixture(scope="module")
def outcomes(rt_env, pg, request, tmp_path_factory) -> Iterator[dict[tuple, Outcome]]:
    """Every selected case of this module, run once: keys ("bare", name) and (policy, protocol, name)."""
    bare = {p["attack"].name for p in _selected(request, "test_attack_works_on_bare_postgres")}
    params = _selected(request, "test_attack_refused_through_gateway")
    gws = {}
    for policy in sorted({p["policy"] for p in params}):
        gws[policy] = start_gateway(
            tmp_path_factory.mktemp(f"redteam-{policy}"), pg,
            targets={Slot(k).db: {"host": "127.0.0.1", "port": pg.port, "database": Slot(k).db, "user": Slot(k).user,
                                  "password": Slot(k).password, "policy": str(POLICIES[policy])}
                     for k in range(SLOTS)},
        )
    try:
        jobs: list[tuple[RedTeamAttack, list[Any]]] = []
        for a in ATTACKS:
            keys: list[Any] = [(p["policy"], p["protocol"], a.name) for p in params if p["attack"].name == a.name]
            if a.name in bare:
                keys.append(("bare", a.name))  # last: it always changes the database
            if keys:
                jobs.append((a, keys))

        def target(key, slot):
            if key[0] == "bare":
                return pg.port, None, None, "simple"
            return gws[key[0]].port, GATEWAY_USER, GATEWAY_PASSWORD, key[1]

        out = run_jobs(rt_env, jobs, target)
        if os.environ.get("PGJIT_REDTEAM_REPORT"):
            _write_report(Path(os.environ["PGJIT_REDTEAM_REPORT"]), out)
        yield out
    finally:
        for gw in gws.values():
            gw.stop()


def _write_report(path: Path, out: dict[tuple, Outcome]) -> None:
    """PGJIT_REDTEAM_REPORT=file.json: every case's outcome, and whether its refusal came from pgjit."""
    rows = []
    for key, o in out.items():
        rows.append({
            "case": "-".join(key), "effect": o.effect, "error": o.error,
            "refused": any(r.refused for r in o.results),
            "refused_by_pgjit": any(r.refused and r.by_pgjit for r in o.results),
            "statements": [r.describe() for r in o.results],
        })
    path.write_text(json.dumps(rows, indent=1))


def _report(results: list[StatementResult]) -> str:
    return "\n".join("  " + r.describe() for r in results)


@pytest.mark.parametrize("attack", ATTACKS, ids=[a.name for a in ATTACKS])
def test_attack_works_on_bare_postgres(outcomes, attack):
    o = outcomes[("bare", attack.name)]
    assert o.error is None, o.error
    assert o.effect, f"attack {attack.name} had no effect on bare PostgreSQL:\n{_report(o.results)}"


GATEWAY_CASES = [
    pytest.param(policy, protocol, a, id=f"{policy}-{protocol}-{a.name}")
    for policy in POLICIES
    for protocol in ("simple", "extended")
    for a in ATTACKS
    if policy in a.policies
]


@pytest.mark.parametrize("policy,protocol,attack", GATEWAY_CASES)
def test_attack_refused_through_gateway(outcomes, policy, protocol, attack):
    o = outcomes[(policy, protocol, attack.name)]
    assert o.error is None, o.error
    assert not o.effect, f"attack {attack.name} took effect through the gateway ({policy}, {protocol}):\n{_report(o.results)}"
    assert any(r.refused for r in o.results), (
        f"attack {attack.name}: no statement was refused ({policy}, {protocol}):\n{_report(o.results)}")
