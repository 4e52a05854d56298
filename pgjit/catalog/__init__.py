"""The upstream's catalog, as plain data, for the statement gate (and later masking).

What a name in a statement *means* is the server's business: ``SELECT purge_old()``
may delete from a protected table, ``DELETE FROM v`` may reach the table behind a
view, ``1 ### 2`` may call ``pg_read_file``. :func:`load` reads, once per target
and over a connection handed in (anything with ``async execute(sql) -> rows``),
the few catalogs that answer this:

* functions: schema, name, owner, SECURITY DEFINER, language, volatility,
  whether an extension owns it, and the definition of SQL and PL/pgSQL ones;
* aggregates: their support functions; operators and casts: their functions;
* relations: kind, and the definition of views;
* rules (other than views' own), triggers, foreign keys that cascade,
  column defaults, generated columns and CHECK constraints, and row-security
  policies.

The result, :class:`Catalog`, is immutable plain data: no pglast here (the
policy layer turns definitions into facts, :mod:`pgjit.policy.resolve`), no
trio, no session. The gateway refreshes it on a timer and after DDL it lets
through, and swaps the whole object.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Final

__all__ = ["Catalog", "Function", "Relation", "PROBE", "QUERIES", "load", "SYSTEM_SCHEMAS"]

SYSTEM_SCHEMAS: Final = frozenset({"pg_catalog", "information_schema"})

Row = Sequence[str | None]

QUERIES: Final[dict[str, str]] = {
    "functions": """
        SELECT p.oid, n.nspname, p.proname, pg_catalog.pg_get_userbyid(p.proowner), p.prosecdef,
               l.lanname, p.provolatile, p.prokind,
               EXISTS (SELECT 1 FROM pg_catalog.pg_depend d
                        WHERE d.classid = 'pg_catalog.pg_proc'::pg_catalog.regclass
                          AND d.objid = p.oid AND d.deptype = 'e'),
               CASE WHEN n.nspname NOT IN ('pg_catalog', 'information_schema')
                     AND l.lanname IN ('sql', 'plpgsql') AND p.prokind IN ('f', 'p')
                    THEN pg_catalog.pg_get_functiondef(p.oid) END
          FROM pg_catalog.pg_proc p
          JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
          JOIN pg_catalog.pg_language l ON l.oid = p.prolang""",
    "aggregates": """
        SELECT a.aggfnoid::pg_catalog.oid,
               pg_catalog.concat_ws(' ', NULLIF(a.aggtransfn::pg_catalog.oid, 0), NULLIF(a.aggfinalfn::pg_catalog.oid, 0),
                      NULLIF(a.aggcombinefn::pg_catalog.oid, 0), NULLIF(a.aggserialfn::pg_catalog.oid, 0),
                      NULLIF(a.aggdeserialfn::pg_catalog.oid, 0), NULLIF(a.aggmtransfn::pg_catalog.oid, 0),
                      NULLIF(a.aggminvtransfn::pg_catalog.oid, 0), NULLIF(a.aggmfinalfn::pg_catalog.oid, 0))
          FROM pg_catalog.pg_aggregate a""",
    "operators": """
        SELECT n.nspname, o.oprname,
               pg_catalog.concat_ws(' ', NULLIF(o.oprcode::pg_catalog.oid, 0), NULLIF(o.oprrest::pg_catalog.oid, 0),
                                    NULLIF(o.oprjoin::pg_catalog.oid, 0))
          FROM pg_catalog.pg_operator o JOIN pg_catalog.pg_namespace n ON n.oid = o.oprnamespace""",
    "casts": """
        SELECT n.nspname, t.typname, c.castfunc::pg_catalog.oid
          FROM pg_catalog.pg_cast c
          JOIN pg_catalog.pg_type t ON t.oid = c.casttarget
          JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace
         WHERE c.castfunc <> 0""",
    "relations": """
        SELECT c.oid, n.nspname, c.relname, c.relkind,
               CASE WHEN c.relkind IN ('v', 'm') THEN pg_catalog.pg_get_viewdef(c.oid) END,
               (SELECT pg_catalog.string_agg(a.attname::pg_catalog.text, pg_catalog.chr(31) ORDER BY a.attnum)
                  FROM pg_catalog.pg_attribute a
                 WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped),
               (SELECT pg_catalog.array_to_string(f.ftoptions, pg_catalog.chr(31))
                  FROM pg_catalog.pg_foreign_table f WHERE f.ftrelid = c.oid),
               (SELECT pg_catalog.string_agg(a.attname::pg_catalog.text, pg_catalog.chr(31))
                  FROM pg_catalog.pg_attribute a
                 WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attnotnull)
          FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
         WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f')""",
    "rules": """
        SELECT r.ev_class, pg_catalog.pg_get_ruledef(r.oid)
          FROM pg_catalog.pg_rewrite r WHERE r.rulename <> '_RETURN'""",
    "inherits": """
        SELECT i.inhrelid, i.inhparent FROM pg_catalog.pg_inherits i""",
    "triggers": """
        SELECT t.tgrelid, t.tgfoid FROM pg_catalog.pg_trigger t WHERE NOT t.tgisinternal""",
    "cascades": """
        SELECT c.confrelid, c.conrelid FROM pg_catalog.pg_constraint c
         WHERE c.contype = 'f' AND (c.confdeltype IN ('c', 'n', 'd') OR c.confupdtype IN ('c', 'n', 'd'))""",
    "expressions": """
        SELECT d.adrelid, pg_catalog.pg_get_expr(d.adbin, d.adrelid) FROM pg_catalog.pg_attrdef d
        UNION ALL
        SELECT c.conrelid, pg_catalog.pg_get_expr(c.conbin, c.conrelid) FROM pg_catalog.pg_constraint c
         WHERE c.contype = 'c' AND c.conrelid <> 0""",
    "event_triggers": """
        SELECT e.evtfoid FROM pg_catalog.pg_event_trigger e WHERE e.evtenabled <> 'D'""",
    "domain_checks": """
        SELECT n.nspname, t.typname, pg_catalog.pg_get_expr(c.conbin, 0)
          FROM pg_catalog.pg_constraint c
          JOIN pg_catalog.pg_type t ON t.oid = c.contypid
          JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace
         WHERE c.contype = 'c' AND c.contypid <> 0""",
    "policies": """
        SELECT p.polrelid, pg_catalog.concat_ws(' AND ', pg_catalog.pg_get_expr(p.polqual, p.polrelid),
                                              pg_catalog.pg_get_expr(p.polwithcheck, p.polrelid))
          FROM pg_catalog.pg_policy p""",
}


#: One cheap query whose answer changes whenever a catalog the snapshot is
#: made of changes: row counts and the sum of row versions' transaction ids.
PROBE: Final = "SELECT " + ", ".join(
    f"(SELECT pg_catalog.count(*) || '/' || pg_catalog.sum(xmin::text::bigint) FROM pg_catalog.{t})"
    for t in ("pg_proc", "pg_class", "pg_inherits", "pg_rewrite", "pg_trigger", "pg_constraint", "pg_operator", "pg_cast",
              "pg_aggregate", "pg_policy", "pg_attrdef", "pg_namespace", "pg_event_trigger", "pg_foreign_table")
)


@dataclass(frozen=True, slots=True)
class Function:
    oid: int
    schema: str
    name: str
    owner: str
    security_definer: bool
    language: str
    volatility: str  # i, s, v
    kind: str  # f, p, a, w
    extension: bool  # a member of an extension
    definition: str | None  # CREATE FUNCTION text, for SQL and PL/pgSQL user functions
    support: tuple[int, ...] = ()  # an aggregate's support functions

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"

    @property
    def system(self) -> bool:
        """The system's own (pg_catalog, information_schema) or an extension's."""
        return self.schema in SYSTEM_SCHEMAS or self.extension


@dataclass(frozen=True, slots=True)
class Relation:
    oid: int
    schema: str
    name: str
    kind: str  # r, p, v, m, f
    view_definition: str | None = None
    columns: tuple[str, ...] = ()  # names, in order (for masking's column lineage)
    options: tuple[str, ...] = ()  # a foreign table's options, "name=value"
    not_null: tuple[str, ...] = ()  # columns declared NOT NULL
    rules: tuple[str, ...] = ()  # CREATE RULE texts
    triggers: tuple[int, ...] = ()  # function oids
    cascades_to: tuple[int, ...] = ()  # relation oids written by ON DELETE/UPDATE actions
    policies: tuple[str, ...] = ()  # row-security expressions
    expressions: tuple[str, ...] = ()  # column defaults, generated columns, CHECK constraints
    parents: tuple[int, ...] = ()  # relation oids it inherits from (a partition's parent; masking follows them)

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"


@dataclass(frozen=True)
class Catalog:
    """One snapshot of a target's catalog. ``generation`` grows with each load."""

    functions: dict[int, Function]
    relations: dict[int, Relation]
    operators: dict[str, tuple[int, ...]]  # "name" and "schema.name" -> function oids
    casts: dict[str, tuple[int, ...]]  # target type "name" and "schema.name" -> function oids
    domain_checks: dict[str, tuple[str, ...]] = field(default_factory=dict)  # domain name -> CHECK expressions
    event_triggers: tuple[int, ...] = ()  # function oids of enabled event triggers (run on DDL)
    generation: int = 0
    loaded_at: float = 0.0
    load_seconds: float = 0.0
    _functions_by_name: dict[str, tuple[int, ...]] = field(default_factory=dict, repr=False)
    _relations_by_name: dict[str, tuple[int, ...]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        fbn: dict[str, list[int]] = {}
        for f in self.functions.values():
            fbn.setdefault(f.name, []).append(f.oid)
            fbn.setdefault(f.qualified, []).append(f.oid)
        self._functions_by_name.update({k: tuple(v) for k, v in fbn.items()})
        rbn: dict[str, list[int]] = {}
        for r in self.relations.values():
            rbn.setdefault(r.name, []).append(r.oid)
            rbn.setdefault(r.qualified, []).append(r.oid)
        self._relations_by_name.update({k: tuple(v) for k, v in rbn.items()})

    def functions_named(self, name: str) -> tuple[Function, ...]:
        """Every function a name written in SQL may mean: ``s.f`` exactly;
        ``f`` in any schema (the session's search_path is not known)."""
        return tuple(self.functions[o] for o in self._functions_by_name.get(name, ()))

    def relations_named(self, name: str) -> tuple[Relation, ...]:
        return tuple(self.relations[o] for o in self._relations_by_name.get(name, ()))

    def knows_function(self, name: str) -> bool:
        return name in self._functions_by_name

    def knows_operator(self, name: str) -> bool:
        return name in self.operators

    @property
    def size(self) -> dict[str, int]:
        return {"functions": len(self.functions), "relations": len(self.relations),
                "operators": len(self.operators), "casts": len(self.casts)}

    @classmethod
    def from_rows(cls, rows: dict[str, list[Row]], generation: int = 0, load_seconds: float = 0.0) -> Catalog:
        """Build a catalog from the rows of :data:`QUERIES` (text values, as
        the simple protocol returns them)."""
        support: dict[int, tuple[int, ...]] = {}
        for agg, fns in rows.get("aggregates", ()):
            support[int(agg or 0)] = tuple(int(x) for x in (fns or "").split())
        functions: dict[int, Function] = {}
        for oid, schema, name, owner, secdef, lang, vol, kind, ext, definition in rows.get("functions", ()):
            o = int(oid or 0)
            functions[o] = Function(o, schema or "", name or "", owner or "", secdef == "t", lang or "",
                                    vol or "v", kind or "f", ext == "t", definition, support.get(o, ()))
        operators: dict[str, list[int]] = {}
        for schema, name, fns in rows.get("operators", ()):
            oids = [int(x) for x in (fns or "").split()]
            operators.setdefault(name or "", []).extend(oids)
            operators.setdefault(f"{schema}.{name}", []).extend(oids)
        casts: dict[str, list[int]] = {}
        for schema, typname, fn in rows.get("casts", ()):
            casts.setdefault(typname or "", []).append(int(fn or 0))
            casts.setdefault(f"{schema}.{typname}", []).append(int(fn or 0))
        extra: dict[int, dict[str, list]] = {}
        for rel, ruledef in rows.get("rules", ()):
            extra.setdefault(int(rel or 0), {}).setdefault("rules", []).append(ruledef or "")
        for rel, parent in rows.get("inherits", ()):
            extra.setdefault(int(rel or 0), {}).setdefault("parents", []).append(int(parent or 0))
        for rel, fn in rows.get("triggers", ()):
            extra.setdefault(int(rel or 0), {}).setdefault("triggers", []).append(int(fn or 0))
        for referenced, referencing in rows.get("cascades", ()):
            extra.setdefault(int(referenced or 0), {}).setdefault("cascades_to", []).append(int(referencing or 0))
        for rel, expr in rows.get("expressions", ()):
            if expr:
                extra.setdefault(int(rel or 0), {}).setdefault("expressions", []).append(expr)
        for rel, expr in rows.get("policies", ()):
            if expr:
                extra.setdefault(int(rel or 0), {}).setdefault("policies", []).append(expr)
        relations: dict[int, Relation] = {}
        for oid, schema, name, kind, viewdef, columns, options, not_null in rows.get("relations", ()):
            o = int(oid or 0)
            more = {k: tuple(v) for k, v in extra.get(o, {}).items()}
            cols = tuple(columns.split("\x1f")) if columns else ()
            opts = tuple(options.split("\x1f")) if options else ()
            nn = tuple(not_null.split("\x1f")) if not_null else ()
            relations[o] = Relation(o, schema or "", name or "", kind or "r", viewdef, cols, opts, nn, **more)
        domains: dict[str, list[str]] = {}
        for schema, typname, expr in rows.get("domain_checks", ()):
            if expr:
                domains.setdefault(typname or "", []).append(expr)
                domains.setdefault(f"{schema}.{typname}", []).append(expr)
        return cls(
            functions=functions,
            relations=relations,
            operators={k: tuple(v) for k, v in operators.items()},
            casts={k: tuple(v) for k, v in casts.items()},
            domain_checks={k: tuple(v) for k, v in domains.items()},
            event_triggers=tuple(int(r[0] or 0) for r in rows.get("event_triggers", ())),
            generation=generation,
            loaded_at=time.time(),
            load_seconds=load_seconds,
        )


async def load(execute: Callable[[str], Awaitable[list[Row]]], generation: int = 0) -> Catalog:
    """Read a target's catalog through ``execute`` (e.g. the admin connection's)."""
    started = time.perf_counter()
    rows: dict[str, list[Row]] = {}
    for name, sql in QUERIES.items():
        rows[name] = await execute(sql)
    return Catalog.from_rows(rows, generation, time.perf_counter() - started)
