"""Helpers shared by the real-client tests (no fixtures here: see conftest.py)."""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Callable

import pytest


def unique(prefix: str = "t") -> str:
    """A table/channel name no other test uses."""
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


def require_executable(name: str, hint: str, *candidates: str) -> str:
    """Path of a tool the test needs; FAIL (never skip) when it is missing."""
    for c in candidates:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return c
    found = shutil.which(name)
    if not found:
        pytest.fail(f"required tool {name!r} was not found on PATH ({hint})", pytrace=False)
    return found


def wait_for(pred: Callable[[], object], timeout: float = 5.0, step: float = 0.05) -> bool:
    """Poll ``pred`` until it is true or ``timeout`` seconds pass (bounded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return bool(pred())


def direct_env(pg, dbname: str = "appdb") -> dict[str, str]:
    """PG* variables for running psql/pgbench directly against PostgreSQL as app."""
    env = dict(os.environ)
    env.update(
        PGHOST="127.0.0.1",
        PGPORT=str(pg.port),
        PGUSER="app",
        PGPASSWORD="apppass",
        PGDATABASE=dbname,
        PGSSLMODE="disable",
    )
    return env
