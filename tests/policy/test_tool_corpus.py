"""Real tools' statements (tool_corpus.py) are not falsely denied.

* every statement parses (pglast);
* every read-only statement (all of pg_dump's; the catalog introspection,
  SET/SHOW and transaction control of Alembic and Django; pgAdmin's and
  DBeaver's catalog queries) is allowed by policies/default.yaml for a caller
  in ``agents``;
* every statement of every tool is allowed by policies/examples/guardrails.yaml,
  except the DROP statements of ``alembic downgrade`` listed in
  ``GUARDRAILS_DENIED``, which that policy's ``no-drop-truncate`` rule exists to stop.

``EXECUTE name(...)`` is decided the way the gateway decides it: with the
``PREPARE name`` statements the same tool sent (the session's prepared map).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pglast
import pytest
from pglast import ast

sys.path.insert(0, str(Path(__file__).parent))

from tool_corpus import ALEMBIC, DBEAVER, DJANGO, PG_DUMP, PGADMIN4, TOOL_CORPUS

from pgjit.policy.facts import analyze
from pgjit.policy.model import Policy

POLICIES = Path(__file__).resolve().parents[2] / "policies"
DEFAULT = POLICIES / "default.yaml"
GUARDRAILS = POLICIES / "examples" / "guardrails.yaml"
GROUPS = ["agents"]

# Statements guardrails.yaml denies on purpose: (rule, why).
GUARDRAILS_DENIED: dict[str, tuple[str, str]] = {
    "DROP INDEX ix_transfers_account_id": ("no-drop-truncate", "alembic downgrade base drops what revision 0001 created"),
    "DROP TABLE transfers": ("no-drop-truncate", "alembic downgrade base drops what revision 0001 created"),
    "DROP INDEX ix_accounts_name": ("no-drop-truncate", "alembic downgrade base drops what revision 0001 created"),
    "DROP TABLE accounts": ("no-drop-truncate", "alembic downgrade base drops what revision 0001 created"),
}


# ---------------------------------------------------------------- helpers


def _cases(tools: dict[str, list[str]]) -> list:
    return [pytest.param(tool, sql, id=f"{tool}-{i:03d}") for tool, stmts in tools.items() for i, sql in enumerate(stmts)]


def _read_only_node(node: ast.Node) -> bool:
    """Whether a parsed statement only reads (or sets session state): a SELECT
    without INTO / FOR UPDATE whose CTEs are SELECTs, SHOW, SET/RESET,
    transaction control, LOCK ... ACCESS SHARE, COPY ... TO STDOUT, EXPLAIN
    (without ANALYZE) of one of those, PREPARE of one, EXECUTE, DEALLOCATE."""
    if isinstance(node, ast.SelectStmt):
        if node.intoClause is not None or node.lockingClause:
            return False
        ctes = node.withClause.ctes if node.withClause is not None else ()
        if not all(_read_only_node(c.ctequery) for c in ctes):
            return False
        return all(_read_only_node(n) for n in (node.larg, node.rarg) if n is not None)
    if isinstance(node, (ast.VariableShowStmt, ast.VariableSetStmt, ast.TransactionStmt, ast.ExecuteStmt, ast.DeallocateStmt)):
        return True
    if isinstance(node, ast.LockStmt):
        return node.mode == 1  # AccessShareLock
    if isinstance(node, ast.CopyStmt):
        return not node.is_from and node.filename is None and not node.is_program
    if isinstance(node, ast.PrepareStmt):
        return _read_only_node(node.query)
    if isinstance(node, ast.ExplainStmt):
        analyze_opt = any(o.defname == "analyze" for o in node.options or ())
        return not analyze_opt and _read_only_node(node.query)
    return False


def read_only(sql: str) -> bool:
    return all(_read_only_node(raw.stmt) for raw in pglast.parse_sql(sql))


def prepared_map(tool: str) -> dict:
    """What the gateway's session would hold after the tool's PREPAREs."""
    prepared: dict = {}
    for sql in TOOL_CORPUS[tool]:
        if sql.lstrip()[:7].upper() != "PREPARE":
            continue
        for f in analyze(sql).statements:
            if f.prepares:
                prepared[f.prepares] = f
    return prepared


READ_ONLY = {tool: [s for s in stmts if read_only(s)] for tool, stmts in TOOL_CORPUS.items()}
WRITES = {tool: [s for s in stmts if not read_only(s)] for tool, stmts in TOOL_CORPUS.items()}


@pytest.fixture(scope="module")
def default_policy() -> Policy:
    return Policy.load(DEFAULT)


@pytest.fixture(scope="module")
def guardrails_policy() -> Policy:
    return Policy.load(GUARDRAILS)


def _explain(tool: str, sql: str, decision) -> str:
    return f"false denial of a {tool} statement by rule {decision.rule!r}: {decision.message}\n{sql[:400]}\nfacts: {decision.facts}"


# ------------------------------------------------------------------ shape


def test_corpus_shape() -> None:
    assert len(PG_DUMP) >= 100 and len(ALEMBIC) >= 20 and len(DJANGO) >= 50
    assert len(PGADMIN4) >= 40 and len(DBEAVER) >= 30
    for tool, stmts in TOOL_CORPUS.items():
        assert len(stmts) == len(set(stmts)), f"{tool}: duplicates"
        assert all(s == s.strip() and s for s in stmts), tool
    # what makes pg_dump pg_dump
    for needle in (
        "SELECT set_config(name, 'view, foreign-table', false) FROM pg_settings WHERE name = 'restrict_nonsystem_relation_kind'",
        "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY",
        "LOCK TABLE public.orders IN ACCESS SHARE MODE",
        "SELECT pg_catalog.pg_export_snapshot()",
    ):
        assert needle in PG_DUMP, needle
    assert any(s.startswith("COPY public.orders ") and s.endswith("TO stdout;") for s in PG_DUMP)
    assert any(s.startswith("PREPARE ") for s in PG_DUMP) and any(s.startswith("EXECUTE ") for s in PG_DUMP)
    assert any(s.startswith("SET TRANSACTION SNAPSHOT ") for s in PG_DUMP)
    # the migrations: DDL, DML and their introspection
    assert any("CREATE TABLE accounts" in s for s in ALEMBIC) and any(s.startswith("ALTER TABLE accounts ADD COLUMN") for s in ALEMBIC)
    assert any(s.startswith("select pg_catalog.version()") for s in ALEMBIC)
    assert any('CREATE TABLE "shop_product"' in s for s in DJANGO)
    assert len(READ_ONLY["alembic"]) >= 8 and len(WRITES["alembic"]) >= 8
    assert len(READ_ONLY["django"]) >= 8 and len(WRITES["django"]) >= 30
    assert set(GUARDRAILS_DENIED) <= set(ALEMBIC)


def test_pg_dump_is_read_only() -> None:
    assert WRITES["pg_dump"] == []
    assert WRITES["pgadmin4"] == [] and WRITES["dbeaver"] == []


# ------------------------------------------------------------------ parse


@pytest.mark.parametrize(("tool", "sql"), _cases(TOOL_CORPUS))
def test_parses(tool: str, sql: str) -> None:
    assert pglast.parse_sql(sql), sql


# ----------------------------------------------------- default: read-only


@pytest.mark.parametrize(("tool", "sql"), _cases(READ_ONLY))
def test_read_only_allowed_by_default(default_policy: Policy, tool: str, sql: str) -> None:
    decision = default_policy.decide(sql, GROUPS, prepared=prepared_map(tool))
    assert decision.action == "allow", _explain(tool, sql, decision)


# ------------------------------------------------------------- guardrails


@pytest.mark.parametrize(("tool", "sql"), _cases({t: [s for s in v if s not in GUARDRAILS_DENIED] for t, v in TOOL_CORPUS.items()}))
def test_allowed_by_guardrails(guardrails_policy: Policy, tool: str, sql: str) -> None:
    decision = guardrails_policy.decide(sql, GROUPS, prepared=prepared_map(tool))
    assert decision.action == "allow", _explain(tool, sql, decision)


@pytest.mark.parametrize("sql", list(GUARDRAILS_DENIED))
def test_guardrails_denies_the_drops(guardrails_policy: Policy, sql: str) -> None:
    rule, _why = GUARDRAILS_DENIED[sql]
    decision = guardrails_policy.decide(sql, GROUPS)
    assert decision.action == "deny" and decision.rule == rule, (decision.rule, decision.message)
