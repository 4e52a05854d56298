"""Fixtures for the real-client matrix: every client talks to PostgreSQL
through the gateway (``gateway`` from tests/gateway_fixtures.py); results are
checked on the real database through a direct connection as ``app``."""

from __future__ import annotations

import os

import psycopg
import pytest

from ._helpers import require_executable, unique


@pytest.fixture
def direct(pg):
    """An autocommit psycopg connection straight to PostgreSQL (not through
    the gateway), to check what a client did on the real database."""
    with psycopg.connect(pg.dsn("app", "apppass", "appdb"), autocommit=True) as conn:
        yield conn


@pytest.fixture
def new_table(direct):
    """``new_table("a int, b text")`` creates a uniquely named table owned by
    ``app`` directly on the server and drops it after the test."""
    made: list[str] = []

    def make(columns: str, prefix: str = "t") -> str:
        name = unique(prefix)
        direct.execute(f"create table {name} ({columns})")
        made.append(name)
        return name

    yield make
    for name in made:
        direct.execute(f"drop table if exists {name}")


@pytest.fixture(scope="session")
def psql_bin(pg):
    bindir = getattr(pg, "bindir", None)
    return require_executable(
        "psql",
        "install the PostgreSQL client package, e.g. apt-get install postgresql-client",
        os.path.join(str(bindir), "psql") if bindir else "",
    )


@pytest.fixture(scope="session")
def pgbench_bin(pg):
    bindir = getattr(pg, "bindir", None)
    return require_executable(
        "pgbench",
        "install the PostgreSQL client package (pgbench ships with postgresql-contrib/postgresql-client)",
        os.path.join(str(bindir), "pgbench") if bindir else "",
    )

