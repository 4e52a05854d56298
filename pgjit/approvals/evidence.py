"""Evidence for the approver: a held DML statement, run first in a
transaction pgjit rolls back (rule ``evidence: true``).

On a connection of its own (the target's admin login), inside ``BEGIN …
ROLLBACK``, as the session's role (``GRANT`` of it to the admin and ``SET
LOCAL ROLE``, both rolled back with the rest), with a 5 s
statement timeout: ``EXPLAIN`` of the statement, up to 5 rows it would
touch before (UPDATE, DELETE: the same relation and WHERE), the statement
itself with ``RETURNING *`` (its row count, and up to 5 rows after), then
ROLLBACK — nothing it did stays. Statements other than one INSERT, UPDATE or
DELETE get no dry run (the evidence says so).
"""

from __future__ import annotations

from typing import Any

SAMPLE = 5


def plan(text: str) -> dict[str, Any]:
    """What to run for ``text``: {"kind", "before" (SQL or None), "run" (SQL)} or {"skip": why}."""
    import pglast
    from pglast.stream import RawStream

    try:
        stmts = pglast.parse_sql(text)
    except Exception:
        return {"skip": "the statement does not parse"}
    if len(stmts) != 1:
        return {"skip": "a dry run is made for one statement at a time"}
    st = stmts[0].stmt
    kind = type(st).__name__
    if kind not in ("InsertStmt", "UpdateStmt", "DeleteStmt"):
        return {"skip": f"no dry run for a {kind.removesuffix('Stmt')} statement"}
    if getattr(st, "withClause", None) is not None:
        return {"skip": "no dry run for a statement with WITH"}
    before = None
    if kind in ("UpdateStmt", "DeleteStmt") and not getattr(st, "fromClause", None) and not getattr(st, "usingClause", None):
        where = f" WHERE {RawStream()(st.whereClause)}" if st.whereClause is not None else ""
        before = f"SELECT * FROM {RawStream()(st.relation)}{where} LIMIT {SAMPLE}"
    run = text.rstrip().rstrip(";")
    returning = getattr(st, "returningList", None) or getattr(st, "returningClause", None)
    if not returning:
        run = f"{run}\nRETURNING *"
    return {"kind": kind.removesuffix("Stmt").lower(), "before": before, "run": run}


async def collect(session: Any, req: Any) -> dict[str, Any]:
    """Run the dry run for the held request ``req`` of ``session``."""
    from pgjit.jit.naming import quote_ident

    what = plan(req.text)
    if "skip" in what:
        return {"dry_run": False, "reason": what["skip"]}
    target = session.config.targets[req.target]
    conn = await session.gateway._catalog_connect(target)()
    try:
        await conn.execute("BEGIN")
        try:
            role = session.jit_role.name if getattr(session, "jit_role", None) is not None else None
            if role:
                # The admin created the role and may grant it (PostgreSQL 16+:
                # ADMIN OPTION on the roles it creates); inside this transaction
                # only: the ROLLBACK takes the membership back too.
                await conn.execute(f"GRANT {quote_ident(role)} TO CURRENT_USER")
                await conn.execute(f"SET LOCAL ROLE {quote_ident(role)}")
            await conn.execute("SET LOCAL statement_timeout = '5s'")
            explain = [r[0] for r in await conn.execute(f"EXPLAIN {req.text.rstrip().rstrip(';')}")]
            before = await conn.execute(what["before"]) if what["before"] else None
            rows = await conn.execute(what["run"])
        finally:
            await conn.execute("ROLLBACK")
    finally:
        await conn.aclose()
    out: dict[str, Any] = {"dry_run": True, "kind": what["kind"], "rows_affected": len(rows),
                           "explain": explain, "rolled_back": True}
    if what["kind"] == "delete":
        out["sample_before"] = [list(r) for r in rows[:SAMPLE]]
    else:
        if before is not None:
            out["sample_before"] = [list(r) for r in before[:SAMPLE]]
        out["sample_after"] = [list(r) for r in rows[:SAMPLE]]
    return out
