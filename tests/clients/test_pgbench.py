"""pgbench through the gateway: initialisation (COPY of 100 000 rows), the
select-only and TPC-B-like built-in scripts with 4 clients for 10 s, and the
extended and prepared query modes.

This module is the only user of the ``pgbench_*`` tables in ``appdb``; it
drops them at the end. No assertion is about speed: each run must succeed
with no failed transaction, and the database must be consistent afterwards
(checked directly, not through the gateway)."""

from __future__ import annotations

import re
import subprocess

import pytest

pytestmark = [pytest.mark.pg, pytest.mark.clients]

PGBENCH_TABLES = ("pgbench_accounts", "pgbench_branches", "pgbench_tellers", "pgbench_history")


def run_pgbench(pgbench: str, env: dict[str, str], *args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    try:
        return subprocess.run([pgbench, *args], env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"pgbench {' '.join(args)} did not finish within {timeout} s:\n{e.stdout}\n{e.stderr}", pytrace=False)


def summary(cp: subprocess.CompletedProcess) -> dict[str, int]:
    """The processed and failed transaction counts from pgbench's report."""
    report = f"stdout:\n{cp.stdout}\nstderr:\n{cp.stderr}"
    assert cp.returncode == 0, f"pgbench exited {cp.returncode}\n{report}"
    processed = re.search(r"^number of transactions actually processed: (\d+)", cp.stdout, re.M)
    failed = re.search(r"^number of failed transactions: (\d+)", cp.stdout, re.M)
    assert processed, f"no 'transactions actually processed' line\n{report}"
    assert failed, f"no 'number of failed transactions' line\n{report}"
    assert "number of failed transactions: 0" in cp.stdout, report
    return {"processed": int(processed.group(1)), "failed": int(failed.group(1))}


def consistency(direct) -> tuple[int, int, int, int, int]:
    """(history rows, sum of account, teller, branch balances, sum of history deltas)."""
    return direct.execute(
        "select (select count(*) from pgbench_history), (select sum(abalance) from pgbench_accounts), "
        "(select sum(tbalance) from pgbench_tellers), (select sum(bbalance) from pgbench_branches), "
        "(select coalesce(sum(delta), 0) from pgbench_history)"
    ).fetchone()


@pytest.fixture(scope="module")
def initialized(pg, gateway, pgbench_bin):
    import psycopg

    cp = run_pgbench(pgbench_bin, gateway.env(), "-i", "-s", "1", timeout=180)
    assert cp.returncode == 0, f"pgbench -i exited {cp.returncode}\nstdout:\n{cp.stdout}\nstderr:\n{cp.stderr}"
    yield cp
    with psycopg.connect(pg.dsn("app", "apppass", "appdb"), autocommit=True) as c:
        c.execute("drop table if exists " + ", ".join(PGBENCH_TABLES))


def test_init_through_gateway(initialized, direct):
    assert "done" in initialized.stderr
    counts = direct.execute(
        "select (select count(*) from pgbench_accounts), (select count(*) from pgbench_branches), "
        "(select count(*) from pgbench_tellers), (select count(*) from pgbench_history), "
        "(select count(distinct aid) from pgbench_accounts)"
    ).fetchone()
    assert counts == (100000, 1, 10, 0, 100000)
    # The primary keys were created (the last init step).
    pkeys = direct.execute(
        "select count(*) from pg_constraint where contype = 'p' and conrelid::regclass::text = any(%s)",
        (list(PGBENCH_TABLES[:3]),),
    ).fetchone()[0]
    assert pkeys == 3


def test_select_only(initialized, gateway, pgbench_bin, direct):
    before = consistency(direct)
    s = summary(run_pgbench(pgbench_bin, gateway.env(), "-S", "-T", "10", "-c", "4", "-j", "2"))
    assert s["processed"] > 0 and s["failed"] == 0
    # Reads only: the balances did not move.
    after = consistency(direct)
    assert after[1:4] == before[1:4]


def _check_tpcb(direct, before: tuple, processed: int) -> None:
    history, accounts, tellers, branches, deltas = consistency(direct)
    # pgbench truncates the history before each run; every processed
    # TPC-B transaction added exactly one history row and the same delta to
    # one account, one teller and one branch.
    assert history == processed
    assert accounts - before[1] == tellers - before[2] == branches - before[3] == deltas


def test_tpcb(initialized, gateway, pgbench_bin, direct):
    before = consistency(direct)
    s = summary(run_pgbench(pgbench_bin, gateway.env(), "-T", "10", "-c", "4", "-j", "2"))
    assert s["processed"] > 0 and s["failed"] == 0
    _check_tpcb(direct, before, s["processed"])


@pytest.mark.parametrize("mode", ["extended", "prepared"])
def test_query_modes(initialized, gateway, pgbench_bin, direct, mode):
    before = consistency(direct)
    s = summary(run_pgbench(pgbench_bin, gateway.env(), "-M", mode, "-T", "3", "-c", "4", "-j", "2"))
    assert s["processed"] > 0 and s["failed"] == 0
    _check_tpcb(direct, before, s["processed"])
    s = summary(run_pgbench(pgbench_bin, gateway.env(), "-M", mode, "-S", "-T", "3", "-c", "4", "-j", "2"))
    assert s["processed"] > 0 and s["failed"] == 0


def test_connect_per_transaction(initialized, gateway, pgbench_bin, direct):
    """-C: a new connection through the gateway for every transaction; none
    of the upstream connections may be left behind."""
    from ._helpers import unique, wait_for

    app = unique("pgbenchC")
    env = gateway.env()
    env["PGAPPNAME"] = app
    s = summary(run_pgbench(pgbench_bin, env, "-C", "-S", "-T", "3", "-c", "4", "-j", "2"))
    assert s["processed"] > 0 and s["failed"] == 0

    def leftovers() -> int:
        return direct.execute("select count(*) from pg_stat_activity where application_name = %s", (app,)).fetchone()[0]

    assert wait_for(lambda: leftovers() == 0, timeout=5), f"{leftovers()} upstream connections left behind"


@pytest.fixture(scope="module")
def python_relay_gateway(pg, tmp_path_factory):
    """A gateway whose reactor relays without the C core, as on an install
    where it could not be built."""
    from tests.gateway_fixtures import start_gateway

    gw = start_gateway(tmp_path_factory.mktemp("pyrelay"), pg, env={"PGJIT_RELAY_CORE": "python"})
    assert gw.relay == "python"
    yield gw
    gw.stop()


@pytest.mark.parametrize("mode", ["simple", "extended"])
def test_python_relay(initialized, python_relay_gateway, pgbench_bin, direct, mode):
    """The reactor's pure-Python relay (the C core's reference and fallback)
    runs TPC-B and select-only with no failure and a consistent database."""
    env = python_relay_gateway.env()
    before = consistency(direct)
    s = summary(run_pgbench(pgbench_bin, env, "-M", mode, "-T", "3", "-c", "4", "-j", "2"))
    assert s["processed"] > 0 and s["failed"] == 0
    _check_tpcb(direct, before, s["processed"])
    s = summary(run_pgbench(pgbench_bin, env, "-M", mode, "-S", "-T", "3", "-c", "4", "-j", "2"))
    assert s["processed"] > 0 and s["failed"] == 0
