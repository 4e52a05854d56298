"""Fixtures shared by the audit tests: every store test runs on both backends."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from pgjit.audit import store as st

KEY = b"audit-test-key-" + b"x" * 17


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    if request.param == "sqlite":
        return st.sqlite_url(tmp_path / "data" / "audit.db")
    pg = request.getfixturevalue("pg")
    db = "audit_" + secrets.token_hex(4)
    pg.psql(f"create database {db}")
    return pg.url(dbname=db)


@pytest.fixture
def key_file(tmp_path) -> Path:
    p = tmp_path / "audit.key"
    p.write_bytes(KEY)
    return p
