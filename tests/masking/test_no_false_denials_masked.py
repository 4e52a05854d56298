"""The no-false-denials corpus (tests/policy/realistic.py: psql, SQLAlchemy,
pgJDBC, everyday SQL) still runs for a masked group where it touches no
masked column: the masking rules refuse none of it — offline (no catalog)
and against the live catalog of the test server."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import trio

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "policy"))

from realistic import REALISTIC  # noqa: E402

from pgjit.catalog import load  # noqa: E402
from pgjit.masking.lineage import Refusal, plan  # noqa: E402
from pgjit.masking.rules import MaskProfile, parse_rules  # noqa: E402

# Masked columns in a table the corpus does not use, and a column-name rule
# no column of the corpus matches.
RULES = parse_rules([{"name": "pii", "columns": ["public.customers.email", "public.customers.ssn"],
                      "column_names": ["*national_id*"]}])
PROFILE = MaskProfile(RULES, b"k")
COLUMNS_ONLY = MaskProfile(parse_rules([{"name": "pii", "columns": ["public.customers.email"]}]), b"k")


# Other sessions' statement texts are masked data for a masked group
# (docs/masking.md): the corpus's one statement that reads them is left out.
CORPUS = [s for s in REALISTIC if "query FROM pg_stat_activity" not in s.sql]


def test_corpus_is_the_policy_corpus():
    assert len(REALISTIC) >= 40 and len(REALISTIC) - len(CORPUS) == 1


@pytest.mark.parametrize("statement", CORPUS, ids=[s.name for s in CORPUS])
def test_offline(statement):
    try:
        plan(statement.sql, None, PROFILE)
    except Refusal as r:
        pytest.fail(f"masking refused {statement.name}: {r.message}")


@pytest.fixture(scope="module")
def live_catalog(pg):
    conn = pg.connect(dbname="appdb")

    async def execute(sql):
        rows = conn.execute(sql).fetchall()
        return [tuple(None if v is None else ("t" if v else "f") if isinstance(v, bool) else str(v) for v in r)
                for r in rows]

    try:
        yield trio.run(load, execute)
    finally:
        conn.close()


@pytest.mark.parametrize("statement", CORPUS, ids=[s.name for s in CORPUS])
def test_live_catalog(live_catalog, statement):
    try:
        plan(statement.sql, live_catalog, COLUMNS_ONLY)
    except Refusal as r:
        pytest.fail(f"masking refused {statement.name}: {r.message}")
