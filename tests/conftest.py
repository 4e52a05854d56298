"""Session-wide test fixtures.

``pg``          a started PostgreSQL (one per test session) with the test roles and
                ``appdb`` sample data (see pgjit/devtools/pgcluster.py), stopped at the end.
``pg_factory``  makes more clusters for one test (``pg_factory(ssl=True)``), stopped after it.

When PostgreSQL cannot be started the tests that need it are skipped with the
reason, except under ``CI=true``, where they fail. Under ``CI=true`` every
skipped test is reported as a failure too: a skip never counts as a pass.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from pgjit.devtools.pgcluster import PgCluster, make_temp_base

REPO = Path(__file__).resolve().parent.parent
CI = os.environ.get("CI", "").strip().lower() in {"1", "true", "yes", "on"}

# Settings for the shared test cluster on top of PgCluster's own: every
# statement that reaches the server is in pg.server_log(), so a test can show
# that a denied statement never got there.
PG_TEST_CONF: dict[str, Any] = {"log_statement": "all"}


def _cannot_start(what: str, exc: BaseException, cluster: PgCluster | None = None) -> None:
    detail = f"{type(exc).__name__}: {exc}"
    if cluster is not None:
        tail = "\n".join(cluster.server_log().splitlines()[-20:])
        if tail and tail not in detail:
            detail += f"\n--- server log (tail) ---\n{tail}"
    if CI:
        pytest.fail(f"{what} could not be started, and CI=true forbids skipping:\n{detail}", pytrace=False)
    pytest.skip(f"{what} could not be started (run `make sysdeps`, or see pgjit/devtools/pgcluster.py): {detail}")


def _start_cluster(*, ssl: bool = False, bootstrap: bool = True, extra_conf: dict[str, Any] | None = None) -> tuple[PgCluster, Path]:
    base = make_temp_base("pgjit-test-")
    cluster = PgCluster(base / "pgdata", ssl=ssl)
    try:
        cluster.init()
        cluster.start(extra_conf)
        if bootstrap:
            cluster.bootstrap_test_roles()
    except Exception as exc:  # noqa: BLE001 - reported below, then cleaned up
        try:
            _cannot_start("PostgreSQL" + (" (ssl=True)" if ssl else ""), exc, cluster)
        finally:
            cluster.stop()
            shutil.rmtree(base, ignore_errors=True)
    return cluster, base


@pytest.fixture(scope="session")
def pg() -> Iterator[PgCluster]:
    """A started PostgreSQL on 127.0.0.1 with the test roles and appdb sample data.

    Roles: pgjit_trust (trust), pgjit_md5/md5pass (md5), app/apppass (scram, owns
    appdb), pgjit_admin/adminpass (CREATEROLE). Connect with
    ``psycopg.connect(pg.dsn("app", "apppass", "appdb"))`` or ``pg.psql(sql, dbname="appdb")``.
    """
    cluster, base = _start_cluster(extra_conf=PG_TEST_CONF)
    try:
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def pg_factory() -> Iterator[Callable[..., PgCluster]]:
    """``pg_factory(ssl=False, bootstrap=True, extra_conf=None)`` starts another
    cluster for this test; all are stopped and deleted after it."""
    made: list[tuple[PgCluster, Path]] = []

    def make(*, ssl: bool = False, bootstrap: bool = True, extra_conf: dict[str, Any] | None = None) -> PgCluster:
        made.append(_start_cluster(ssl=ssl, bootstrap=bootstrap, extra_conf=extra_conf))
        return made[-1][0]

    yield make
    for cluster, base in made:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)


# gateway fixtures: see tests/gateway_fixtures.py
try:
    from tests.gateway_fixtures import *  # noqa: F401,F403,E402
except ModuleNotFoundError as _exc:  # only its absence is tolerated; a broken file must fail loudly
    if _exc.name != "tests.gateway_fixtures":
        raise


# --------------------------------------------------------------------------
# CI=true: a skipped test is a failed test
# --------------------------------------------------------------------------

_collection_skips: list[str] = []


def _skip_reason(longrepr: Any) -> str:
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])
    return str(longrepr)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    rep = yield
    if CI and rep.skipped and not hasattr(rep, "wasxfail"):
        rep.outcome = "failed"
        rep.longrepr = f"skipped under CI=true, which counts as a failure: {_skip_reason(rep.longrepr)}"
    return rep


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Any:
    # A module-level skip (pytest.importorskip, allow_module_level=True) is not
    # turned into a collection error, which would stop the whole run: it is
    # listed at the end and makes the run's exit status a failure.
    rep = yield
    if CI and rep.skipped:
        _collection_skips.append(f"{rep.nodeid}: {_skip_reason(rep.longrepr)}")
    return rep


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    if _collection_skips:
        terminalreporter.section("skipped at collection under CI=true (counted as failures)", red=True)
        for line in _collection_skips:
            terminalreporter.line(line)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _collection_skips and exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
