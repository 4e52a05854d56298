"""Which output columns of a statement derive from masked columns, and which
uses of a masked column are oracles.

``plan(sql, catalog, profile)`` walks the JSON parse tree pglast gives
(PostgreSQL's own parser) with a scope of FROM items per query level, and
gives every expression a *taint*: the masking rules of the columns its value
derives from, and whether it *is* one of them (``direct``: a plain column,
through aliases, subqueries, CTEs, views and UNION ALL branches) or is
computed from them (functions, operators, casts, CASE, aggregates,
whole-row references, ROW(…), scalar subqueries of such).

A statement is refused (:class:`Refusal`) when

* a masked value is used where its value decides something the client can
  observe — WHERE, JOIN ON/USING/NATURAL, GROUP BY, HAVING, ORDER BY,
  DISTINCT and DISTINCT ON, window PARTITION/ORDER, FILTER, LIMIT/OFFSET,
  IN/ANY/ALL sublinks, UNION/INTERSECT/EXCEPT (they compare rows), the WHERE
  of an UPDATE/DELETE (its row count) — an *oracle*;
* a computed output column derives from a masked column and the rule says
  ``computed: refuse`` (the default);
* a masked value would be copied somewhere (INSERT … SELECT, UPDATE … SET,
  CREATE TABLE AS, SELECT INTO, a view's definition);
* it reads a catalog view that exposes other values (pg_stats, pg_stats_ext,
  pg_stat_statements, pg_stat_activity …), or calls a function that reads
  tables by name (table_to_xml …) or a user function that may read a masked
  relation;
* pgjit cannot analyse it: an unknown relation that could hold masked
  columns, a FROM item or statement it does not model, a cursor or prepared
  statement it did not see declared — fail closed.

Otherwise :class:`Part` says, per output column, which rule masks it (the
wire filter, pgjit.masking.wire, checks it against the server's own
RowDescription). Pure: no I/O.
"""

from __future__ import annotations

import collections
import json
from dataclasses import dataclass
from typing import Any, Iterable

import pglast.parser as _pg

from pgjit.masking.rules import MaskProfile, MaskRule

#: Catalog relations that expose values of other tables or other sessions'
#: statements (by name, any schema: pg_stat_statements lives where its
#: extension was installed).
BLOCKED_RELATIONS = frozenset({
    "pg_stats", "pg_stats_ext", "pg_stats_ext_exprs", "pg_statistic", "pg_statistic_ext_data",
})
#: Catalog columns that hold other sessions' statement texts (their literals):
#: a masked group may not read them (refused wherever they appear; should one
#: reach the wire anyway, this rule masks it).
CATALOG_RULE = MaskRule(name="pgjit:catalog-texts", columns=("*.pg_stat_activity.query",), function="redact")
CATALOG_MASKED = {"pg_stat_activity": frozenset({"query"}), "pg_stat_statements": frozenset({"query"}),
                  "pg_stat_get_activity": frozenset({"query"})}
#: Functions that read tables, queries or other sessions' activity by name.
BLOCKED_FUNCTIONS = frozenset({
    "table_to_xml", "table_to_xmlschema", "table_to_xml_and_xmlschema", "query_to_xml", "query_to_xmlschema",
    "query_to_xml_and_xmlschema", "cursor_to_xml", "cursor_to_xmlschema", "schema_to_xml", "schema_to_xmlschema",
    "schema_to_xml_and_xmlschema", "database_to_xml", "database_to_xmlschema", "database_to_xml_and_xmlschema",
    "ts_stat", "pg_stat_get_activity", "pg_stat_statements", "dblink", "dblink_exec", "pg_get_backend_memory_contexts",
    "pg_stat_get_backend_activity", "current_query",
})

_DEPTH = 16  # views within views, subqueries within subqueries


def column_rule(catalog: Any, profile: MaskProfile, rel: Any, column: str, depth: int = 0) -> MaskRule | None:
    """The rule masking ``rel``'s ``column``: its own, or that of a relation
    it inherits from (a partition or child table holds its parent's values)."""
    if column in CATALOG_MASKED.get(rel.name, ()):
        return CATALOG_RULE
    rule = profile.column_rule(rel.schema, rel.name, column)
    if rule is not None or depth > _DEPTH or catalog is None:
        return rule
    for oid in rel.parents:
        parent = catalog.relations.get(oid)
        if parent is not None and column in parent.columns:
            rule = column_rule(catalog, profile, parent, column, depth + 1)
            if rule is not None:
                return rule
    return None


class Refusal(Exception):
    def __init__(self, rule: str, message: str) -> None:
        super().__init__(message)
        self.rule = rule
        self.message = message


@dataclass(frozen=True)
class Taint:
    rules: frozenset[MaskRule]
    source: str  # one masked column it derives from (for messages)
    direct: bool  # the value itself, not computed from it

    @property
    def rule(self) -> MaskRule:
        return next(iter(sorted(self.rules, key=lambda r: r.name)))


def combine(*taints: Taint | None) -> Taint | None:
    """The taint of a value computed from these."""
    present = [t for t in taints if t is not None]
    if not present:
        return None
    rules: frozenset[MaskRule] = frozenset().union(*(t.rules for t in present))
    return Taint(rules, present[0].source, False)


def _union_branch(a: Taint | None, b: Taint | None) -> Taint | None:
    """UNION ALL: a row comes from one branch or the other."""
    if a is None:
        return b
    if b is None:
        return a
    if a.direct and b.direct and a.rules == b.rules:
        return Taint(a.rules, a.source, True)
    return Taint(a.rules | b.rules, a.source, False)


@dataclass(frozen=True)
class Out:
    """One output column: the rule that masks it, or None."""

    name: str
    taint: Taint | None

    @property
    def masked(self) -> bool:
        return self.taint is not None


@dataclass
class CopyPlan:
    format: str  # text | csv | binary
    header: bool


@dataclass
class Part:
    """What one statement returns, for the wire filter."""

    outputs: list[Out] | None = None  # per result column; None: not known (then any_taint says)
    any_taint: bool = False
    touches: bool = False  # reads or writes a relation that holds masked columns (errors are scrubbed)
    copy: CopyPlan | None = None
    declares: str | None = None  # DECLARE name: FETCH from it returns these outputs
    fetches: str | None = None
    prepares: str | None = None
    executes: str | None = None


# ----------------------------------------------------------------- scope


@dataclass
class Item:
    """A FROM item: its name for qualification and its columns' taints."""

    alias: str
    schema: str | None = None
    relname: str | None = None
    columns: list[tuple[str, Taint | None]] | None = None  # None: unknown columns
    unknown_taint: Taint | None = None  # the taint of any column when the columns are unknown
    hidden: bool = False  # a JOIN's sides stay visible by their own aliases
    guess: Any = None  # offline (no catalog): column name -> its taint, from the rules alone
    star_unknown: bool = False  # columns known by name, not by position (a name in several schemas)
    may_hold: bool = False  # a catalog relation the rules could mask columns of

    def column(self, name: str) -> tuple[bool, Taint | None]:
        if self.columns is None:
            if self.guess is not None:
                return True, self.guess(name)
            return True, self.unknown_taint  # may have it
        found = False
        taint = None
        for n, t in self.columns:
            if n == name:
                found = True
                taint = _union_branch(taint, t) if taint is not None else t
        return found, taint

    def whole(self) -> Taint | None:
        if self.columns is None:
            return combine(self.unknown_taint)
        return combine(*(t for _, t in self.columns))


@dataclass
class Scope:
    items: list[Item]
    outer: "Scope | None" = None
    outputs: list[Out] | None = None  # this level's target list (ORDER BY 1, ORDER BY alias)


class _Analyzer:
    def __init__(self, catalog: Any, profile: MaskProfile, resolver: Any = None, state: dict | None = None) -> None:
        self.catalog = catalog
        self.profile = profile
        self.resolver = resolver
        # "sensitive": the plan read a constant's value (ORDER BY 1, COPY's
        # options), so it may not be shared with statements of the same shape.
        self.state = state if state is not None else {}
        self.touches = False
        self._views: dict[int, list[tuple[str, Taint | None]]] = {}
        self._ctes: list[dict[str, Item]] = []

    # ------------------------------------------------------------ helpers

    def refuse(self, rule: str, message: str) -> None:
        raise Refusal(rule, message)

    def oracle(self, taint: Taint | None, where: str) -> None:
        if taint is not None:
            self.refuse(taint.rule.name, f"masked column {taint.source} is used in {where}, which would reveal its values")

    # --------------------------------------------------------- relations

    def relation(self, rv: dict[str, Any], depth: int) -> Item:
        schema = rv.get("schemaname")
        name = rv.get("relname") or ""
        alias = (rv.get("alias") or {}).get("aliasname") or name
        if schema is None:
            for level in reversed(self._ctes):
                cte = level.get(name)
                if cte is not None:
                    return Item(alias, None, name, None if cte.columns is None else list(cte.columns), cte.unknown_taint,
                                guess=cte.guess)
        if name in BLOCKED_RELATIONS:
            self.refuse("pgjit:masking", f"{name} exposes values of masked columns or other sessions' statements, "
                                         "and is not readable by a masked group")
        rels = []
        if self.catalog is not None:
            rels = list(self.catalog.relations_named(f"{schema}.{name}" if schema else name))
        if not rels and self.catalog is None:
            # Offline (pgjit policy explain / test): no catalog, so the
            # columns are unknown; a column the rules name is masked.
            s_ = schema or "public"

            def guess(col: str, s_: str = s_, name: str = name) -> Taint | None:
                if col in CATALOG_MASKED.get(name, ()):
                    return Taint(frozenset((CATALOG_RULE,)), f"{s_}.{name}.{col}", True)
                rule = self.profile.column_rule(s_, name, col)
                return Taint(frozenset((rule,)), f"{s_}.{name}.{col}", True) if rule else None

            whole = None
            if self.profile.may_hold(schema, name):
                self.touches = True
                rules = frozenset(r for r in self.profile.rules if r.columns or r.column_names)
                whole = Taint(rules, f"{s_}.{name}.*", False)
            return Item(alias, schema, name, None, whole, guess=guess)
        if not rels:
            if self.profile.has_columns and self.profile.may_hold(schema, name):
                self.refuse("pgjit:masking", f'relation "{name}" is not in pgjit\'s catalog snapshot, so pgjit cannot '
                                             "tell which of its columns are masked")
            return Item(alias, schema, name, None, None)
        columns: list[tuple[str, Taint | None]] | None = None
        star_unknown = False
        for rel in rels:
            cols = self._relation_columns(rel, depth)
            if columns is None:
                columns = cols
                continue
            # The same name in several schemas: the session's search_path
            # decides which one it is, so every column of each counts, with
            # the worst taint of any; where their columns differ, SELECT *
            # cannot be placed (the server's RowDescription then decides).
            if [n for n, _ in cols] != [n for n, _ in columns]:
                star_unknown = True
            merged = [(n, _union_branch(t, next((t2 for n2, t2 in cols if n2 == n), None))) for n, t in columns]
            names = {n for n, _ in columns}
            merged += [(n, t) for n, t in cols if n not in names]
            columns = merged
        if any(t is not None for _, t in columns or ()):
            self.touches = True
        item = Item(alias, rels[0].schema, rels[0].name, columns)
        item.star_unknown = star_unknown
        item.may_hold = any(self.profile.may_hold(r.schema, r.name) for r in rels)
        return item

    def _relation_columns(self, rel: Any, depth: int) -> list[tuple[str, Taint | None]]:
        own = []
        for c in rel.columns:
            rule = column_rule(self.catalog, self.profile, rel, c)
            own.append((c, Taint(frozenset((rule,)), f"{rel.schema}.{rel.name}.{c}", True) if rule else None))
        if rel.kind in ("v", "m") and rel.view_definition and rel.name not in CATALOG_MASKED:
            # (the catalog views above read other sessions' texts through functions
            # a masked group may not call itself; their text columns are masked by name)
            view = self._view(rel, depth)
            return [(n, t if t is not None else (view[i][1] if i < len(view) else None)) for i, (n, t) in enumerate(own)]
        return own

    def _view(self, rel: Any, depth: int) -> list[tuple[str, Taint | None]]:
        cached = self._views.get(rel.oid)
        if cached is not None:
            return cached
        if depth > _DEPTH:
            self.refuse("pgjit:masking", f"view {rel.schema}.{rel.name} nests too deep for pgjit to follow")
        try:
            tree = json.loads(_pg.parse_sql_json(rel.view_definition))
            stmt = tree["stmts"][0]["stmt"]
        except Exception:
            self.refuse("pgjit:masking", f"pgjit cannot read the definition of view {rel.schema}.{rel.name}")
        saved = self._ctes
        self._ctes = []
        try:
            outs = self.select(stmt, None, depth + 1)
        finally:
            self._ctes = saved
        result = [(o.name, o.taint) for o in outs] if outs is not None else []
        if outs is None:
            self.refuse("pgjit:masking", f"pgjit cannot follow the columns of view {rel.schema}.{rel.name}")
        self._views[rel.oid] = result
        return result

    # ------------------------------------------------------------ FROM

    def from_items(self, nodes: Iterable[Any], scope: Scope, depth: int) -> None:
        for node in nodes or ():
            scope.items.extend(self.from_item(node, scope, depth))

    def from_item(self, node: dict[str, Any], scope: Scope, depth: int) -> list[Item]:
        (kind, body), = node.items()
        if kind == "RangeVar":
            return [self.relation(body, depth)]
        if kind == "RangeSubselect":
            sub_scope = scope if body.get("lateral") else scope.outer
            outs = self.select(body["subquery"], sub_scope, depth + 1)
            alias = body.get("alias") or {}
            return [self._named(alias.get("aliasname") or "", outs, alias.get("colnames"))]
        if kind == "JoinExpr":
            left = self.from_item(body["larg"], scope, depth)
            right = self.from_item(body["rarg"], scope, depth)
            joined = Scope(left + right, scope.outer)
            if body.get("quals") is not None:
                self.oracle(self.expr(body["quals"], joined, depth), "a JOIN condition")
            using = [_s(n) for n in body.get("usingClause") or ()]
            if body.get("isNatural"):
                lc = {n for it in left for n, _ in (it.columns or ())}
                rc = {n for it in right for n, _ in (it.columns or ())}
                if any(it.columns is None for it in left + right):
                    if any(it.whole() is not None for it in left + right):
                        self.refuse("pgjit:masking", "a NATURAL JOIN over columns pgjit cannot list may compare masked columns")
                using = sorted(lc & rc)
            for name in using:
                for it in left + right:
                    found, t = it.column(name)
                    if found:
                        self.oracle(t, f"JOIN … USING ({name})")
            items = left + right
            if using and all(it.columns is not None for it in items):
                # SELECT * of a JOIN … USING: the merged columns first, then each side's others.
                def side(its: list[Item]) -> list[tuple[str, Taint | None]]:
                    return [c for it in its if not it.hidden for c in it.columns]  # type: ignore[union-attr]

                lcols, rcols = side(left), side(right)
                merged = []
                for name in using:
                    t = None
                    for n, t2 in lcols + rcols:
                        if n == name:
                            t = _union_branch(t, t2)
                    merged.append((name, t))
                merged += [c for c in lcols if c[0] not in using] + [c for c in rcols if c[0] not in using]
                for it in items:
                    it.hidden = True
                items = [Item("", None, None, merged)] + items
            alias = body.get("alias")
            if alias:
                cols: list[tuple[str, Taint | None]] | None = []
                for it in [it for it in items if not it.hidden]:
                    if it.columns is None:
                        cols = None
                        break
                    cols.extend(it.columns)  # type: ignore[union-attr]
                return [Item(alias.get("aliasname") or "", None, None, cols, combine(*(it.whole() for it in items)))]
            return items
        if kind == "RangeFunction":
            taint = None
            for fn in body.get("functions") or ():
                items_ = (fn.get("List") or {}).get("items") or [fn]
                call = items_[0] if items_ else None
                if call:
                    taint = combine(taint, self.expr(call, scope if body.get("lateral") or True else scope.outer, depth))
            alias = body.get("alias") or {}
            names = [_s(c) for c in alias.get("colnames") or ()]
            coldefs = body.get("coldeflist") or ()
            if coldefs:
                names = [c.get("ColumnDef", {}).get("colname", "") for c in coldefs]
            fname = alias.get("aliasname") or ""
            if names:
                return [Item(fname, None, None, [(n, taint) for n in names])]
            return [Item(fname, None, None, None, taint)]
        if kind == "RangeTableSample":
            return self.from_item(body["relation"], scope, depth)
        if kind == "RangeTableFunc":  # XMLTABLE: its columns are computed from its arguments
            taint = combine(self.expr(body.get("docexpr"), scope, depth), self.expr(body.get("rowexpr"), scope, depth),
                            *(self.expr((c.get("RangeTableFuncCol") or {}).get("colexpr"), scope, depth)
                              for c in body.get("columns") or ()))
            names = [(c.get("RangeTableFuncCol") or {}).get("colname", "") for c in body.get("columns") or ()]
            alias = body.get("alias") or {}
            return [Item(alias.get("aliasname") or "xmltable", None, None, [(n, taint) for n in names])]
        self.refuse("pgjit:masking", f"pgjit cannot follow masked columns through a {kind} in FROM")
        return []

    def _named(self, alias: str, outs: list[Out] | None, colnames: Any) -> Item:
        if outs is None:
            return Item(alias, None, None, None, None)
        names = [_s(c) for c in colnames or ()]
        cols = [(names[i] if i < len(names) else o.name, o.taint) for i, o in enumerate(outs)]
        return Item(alias, None, None, cols)

    # ------------------------------------------------------- SELECT

    def select(self, node: dict[str, Any], outer: Scope | None, depth: int) -> list[Out] | None:
        if depth > _DEPTH:
            self.refuse("pgjit:masking", "the statement nests too deep for pgjit to follow masked columns")
        (kind, body), = node.items()
        if kind != "SelectStmt":
            return self.dml(kind, body, outer, depth)
        with_ = body.get("withClause")
        if with_:
            self.with_clause(with_, outer, depth)
        try:
            return self._select_body(body, outer, depth)
        finally:
            if with_:
                self._ctes.pop()

    def with_clause(self, with_: dict[str, Any], outer: Scope | None, depth: int) -> None:
        level: dict[str, Item] = {}
        self._ctes.append(level)
        for cte_node in with_.get("ctes") or ():
            cte = cte_node["CommonTableExpr"]
            name = cte["ctename"]
            colnames = cte.get("aliascolnames")
            if with_.get("recursive"):
                level[name] = Item(name, None, name, None, None)
                outs = None
                for _ in range(3):  # until the taints stop growing (they only grow)
                    outs = self.select(cte["ctequery"], outer, depth + 1)
                    item = self._named(name, outs, colnames)
                    if item.columns == level[name].columns:
                        break
                    level[name] = item
                level[name] = self._named(name, outs, colnames)
            else:
                level[name] = self._named(name, self.select(cte["ctequery"], outer, depth + 1), colnames)

    def _select_body(self, body: dict[str, Any], outer: Scope | None, depth: int) -> list[Out] | None:
        op = body.get("op", "SETOP_NONE")
        if op != "SETOP_NONE":
            left = self.select({"SelectStmt": body["larg"]}, outer, depth + 1)
            right = self.select({"SelectStmt": body["rarg"]}, outer, depth + 1)
            outs: list[Out] | None
            if left is None or right is None or len(left) != len(right):
                outs = None
                any_t = any(o.masked for o in (left or []) + (right or []))
            else:
                outs = [Out(a.name, _union_branch(a.taint, b.taint)) for a, b in zip(left, right)]
                any_t = any(o.masked for o in outs)
            if any_t and not (op == "SETOP_UNION" and body.get("all")):
                word = {"SETOP_UNION": "UNION", "SETOP_INTERSECT": "INTERSECT", "SETOP_EXCEPT": "EXCEPT"}.get(op, op)
                t = next((o.taint for o in (outs or (left or []) + (right or [])) if o.taint is not None), None)
                self.oracle(t, f"{word} (it compares rows)")
            scope = Scope([], outer, outs)
            for s in body.get("sortClause") or ():
                self.oracle(self._sort_taint(s["SortBy"]["node"], scope, depth), "ORDER BY")
            self._limits(body, scope, depth)
            return outs
        if body.get("valuesLists"):
            scope = Scope([], outer)
            rows = [[self.expr(v, scope, depth) for v in (row.get("List") or {}).get("items") or ()]
                    for row in body["valuesLists"]]
            width = max((len(r) for r in rows), default=0)
            outs = []
            for i in range(width):
                t = None
                for r in rows:
                    if i < len(r):
                        t = _union_branch(t, r[i])
                outs.append(Out(f"column{i + 1}", t))
            return outs
        scope = Scope([], outer)
        self.from_items(body.get("fromClause"), scope, depth)
        if body.get("intoClause"):
            pass  # checked after the outputs are known
        outs = self.targets(body.get("targetList") or (), scope, depth)
        scope.outputs = outs
        if body.get("whereClause") is not None:
            self.oracle(self.expr(body["whereClause"], scope, depth), "WHERE")
        for g in body.get("groupClause") or ():
            self.oracle(self._sort_taint(g, scope, depth), "GROUP BY")
        if body.get("havingClause") is not None:
            self.oracle(self.expr(body["havingClause"], scope, depth), "HAVING")
        for w in body.get("windowClause") or ():
            self._window(w.get("WindowDef") or {}, scope, depth)
        distinct = body.get("distinctClause")
        if distinct:
            if distinct == [{}]:
                if outs is None:
                    if any(it.whole() is not None for it in scope.items):
                        self.refuse("pgjit:masking", "SELECT DISTINCT over masked columns would reveal how many distinct values they hold")
                else:
                    for o in outs:
                        self.oracle(o.taint, "SELECT DISTINCT")
            else:
                for d in distinct:
                    self.oracle(self._sort_taint(d, scope, depth), "DISTINCT ON")
        for s in body.get("sortClause") or ():
            self.oracle(self._sort_taint(s["SortBy"]["node"], scope, depth), "ORDER BY")
        self._limits(body, scope, depth)
        if body.get("intoClause") and (outs is None or any(o.masked for o in outs)):
            t = next((o.taint for o in outs or () if o.taint is not None), None)
            if t is None:
                self.refuse("pgjit:masking", "SELECT INTO from relations pgjit cannot list may copy masked values")
            self.oracle(t, "SELECT INTO (it copies the values into a table)")
        return outs

    def _limits(self, body: dict[str, Any], scope: Scope, depth: int) -> None:
        for k in ("limitCount", "limitOffset"):
            if body.get(k) is not None:
                self.oracle(self.expr(body[k], scope, depth), "LIMIT/OFFSET")

    def _window(self, w: dict[str, Any], scope: Scope, depth: int) -> None:
        for p in w.get("partitionClause") or ():
            self.oracle(self.expr(p, scope, depth), "a window's PARTITION BY")
        for s in w.get("orderClause") or ():
            self.oracle(self.expr(s["SortBy"]["node"], scope, depth), "a window's ORDER BY")

    def _sort_taint(self, node: dict[str, Any], scope: Scope, depth: int) -> Taint | None:
        """ORDER BY / GROUP BY / DISTINCT ON: a number is an output column's
        position; a bare name may be an output column's alias."""
        outs = scope.outputs
        if "A_Const" in node:
            self.state["sensitive"] = True
        if "A_Const" in node and "ival" in node["A_Const"] and outs is not None:
            pos = int(node["A_Const"]["ival"].get("ival", 0)) - 1
            if 0 <= pos < len(outs):
                return outs[pos].taint
            return None
        if "A_Const" in node and outs is None:
            return combine(*(it.whole() for it in scope.items))
        if "ColumnRef" in node and outs is not None:
            f = node["ColumnRef"]["fields"]
            if len(f) == 1 and "String" in f[0]:
                name = _s(f[0])
                hits = [o.taint for o in outs if o.name == name]
                if hits:
                    return combine(*hits) if any(hits) else None
        return self.expr(node, scope, depth)

    def targets(self, targets: Iterable[Any], scope: Scope, depth: int) -> list[Out] | None:
        outs: list[Out] | None = []
        for t in targets:
            rt = t["ResTarget"]
            val = rt.get("val")
            if val is not None and "ColumnRef" in val and any("A_Star" in f for f in val["ColumnRef"]["fields"]):
                expanded = self.star(val["ColumnRef"]["fields"], scope)
                if expanded is not None and any(o.taint is not None and CATALOG_RULE in o.taint.rules for o in expanded):
                    self._catalog_text()
                if expanded is None or outs is None:
                    outs = None
                    continue
                outs.extend(expanded)
                continue
            taint = self.expr(val, scope, depth) if val is not None else None
            if taint is not None and not taint.direct:
                self.computed(taint)
            if outs is not None:
                outs.append(Out(rt.get("name") or _derived_name(val), taint))
        if outs is None:
            # Positions unknown: what could be tainted is still decided.
            for it in scope.items:
                t = it.whole() if it.columns is None and it.guess is None else None
                if t is not None and not t.direct and self.profile.refuses_computed(t.rule):
                    self.computed(t)
        return outs

    def star(self, fields: list[Any], scope: Scope) -> list[Out] | None:
        if len(fields) == 1:
            items = [it for it in scope.items if not it.hidden]
        else:
            qual = _s(fields[-2])
            items = [it for it in _visible(scope) if it.alias == qual][:1]
        out: list[Out] = []
        for it in items:
            if it.columns is None or it.star_unknown:
                return None
            out.extend(Out(n, t) for n, t in it.columns)
        return out

    # ------------------------------------------------------------ expressions

    def computed(self, t: Taint) -> None:
        if self.profile.refuses_computed(t.rule):
            self.refuse(t.rule.name, f"a computed value derived from masked column {t.source} "
                                     "cannot be shown (the masking rule refuses computed columns)")

    def expr(self, node: Any, scope: Scope, depth: int) -> Taint | None:
        """The taint of an expression; oracles inside it refuse."""
        if node is None:
            return None
        if isinstance(node, list):
            return combine(*(self.expr(n, scope, depth) for n in node))
        if not isinstance(node, dict) or not node:
            return None
        if len(node) != 1 or not next(iter(node))[:1].isupper():
            # Not a node but a node's struct (a WindowDef, a TypeName …): what is in it.
            return combine(*(self.expr(v, scope, depth) for k, v in node.items()
                             if isinstance(v, (dict, list)) and k != "typeName"))
        (kind, body), = node.items()
        if kind == "ColumnRef":
            return self.column_ref(body["fields"], scope)
        if kind in ("A_Const", "ParamRef", "SQLValueFunction", "SetToDefault"):
            return None
        if kind == "SubLink":
            return self.sublink(body, scope, depth)
        if kind == "FuncCall":
            return self.func_call(body, scope, depth)
        if kind == "CaseExpr":
            parts = [self.expr(body.get("arg"), scope, depth), self.expr(body.get("defresult"), scope, depth)]
            for w in body.get("args") or ():
                cw = w["CaseWhen"]
                parts += [self.expr(cw.get("expr"), scope, depth), self.expr(cw.get("result"), scope, depth)]
            return combine(*parts)
        if kind in ("String", "TypeName", "Integer", "Float", "Boolean"):
            return None
        # Operators, casts, ROW(…), arrays, COALESCE, NULLIF, indirection … :
        # computed from everything below them.
        taints = []
        for k, v in body.items() if isinstance(body, dict) else ():
            if isinstance(v, (dict, list)) and k != "typeName":
                taints.append(self.expr(v, scope, depth))
        return combine(*taints)

    def column_ref(self, fields: list[Any], scope: Scope) -> Taint | None:
        t = self._column_ref(fields, scope)
        if t is not None and CATALOG_RULE in t.rules:
            self._catalog_text()
        return t

    def _catalog_text(self) -> None:
        self.refuse("pgjit:masking", "other sessions' statement texts (pg_stat_activity.query, pg_stat_statements.query) "
                                     "are not readable by a masked group: they hold those statements' literals")

    def _column_ref(self, fields: list[Any], scope: Scope) -> Taint | None:
        if any("A_Star" in f for f in fields):
            # t.* inside an expression (row_to_json(t.*), count(*) has no ColumnRef)
            items = [it for it in _visible(scope) if len(fields) == 1 or it.alias == _s(fields[-2])]
            return combine(*(it.whole() for it in items))
        names = [_s(f) for f in fields]
        level: Scope | None = scope
        while level is not None:
            items = _level_items(level)
            if len(names) == 1:
                name = names[0]
                guessed = [it for it in items if it.guess is not None and it.alias == name]
                if guessed and guessed[0].whole() is not None:
                    return combine(guessed[0].whole())  # offline: c in "SELECT c FROM customers c" is the row
                found = [(it, it.column(name)) for it in items]
                hits = [t for it, (ok, t) in found if ok and (it.columns is not None or it.guess is not None)]
                unknown = [t for it, (ok, t) in found if it.columns is None and it.guess is None]
                if hits or unknown:
                    if hits and not unknown:
                        t = hits[0]
                        for h in hits[1:]:
                            t = _union_branch(t, h)
                        return t
                    return combine(*hits, *unknown) if any(x is not None for x in hits + unknown) else None
                whole = [it for it in items if it.alias == name]
                if whole:
                    return combine(whole[0].whole())  # a whole-row reference: computed
            else:
                qual, col = names[-2], names[-1]
                schema = names[-3] if len(names) >= 3 else None
                for it in items:
                    if it.alias == qual and (schema is None or it.schema in (None, schema)):
                        ok, t = it.column(col)
                        if ok:
                            return t
                        if it.columns is None:
                            return combine(it.whole())
                        self._stale(it, col)
                        return None
            level = level.outer
        if len(names) == 1:
            for it in _visible(scope):
                if it.columns is not None and it.may_hold:
                    self._stale(it, names[0])
        return None

    def _stale(self, item: Item, column: str) -> None:
        """A column pgjit's catalog snapshot does not show, in a relation
        the rules could mask columns of: perhaps added since (the server
        would refuse a column that does not exist); fail closed."""
        if item.may_hold:
            self.refuse("pgjit:masking", f'column "{column}" is not in pgjit\'s catalog snapshot of '
                                         f"{item.schema}.{item.relname}, so pgjit cannot tell whether it is masked")

    def sublink(self, body: dict[str, Any], scope: Scope, depth: int) -> Taint | None:
        kind = body.get("subLinkType")
        outs = self.select(body["subselect"], scope, depth + 1)
        out_t = combine(*(o.taint for o in outs)) if outs else None
        if outs is None:
            out_t = None
        test = self.expr(body.get("testexpr"), scope, depth)
        if kind in ("ANY_SUBLINK", "ALL_SUBLINK", "ROWCOMPARE_SUBLINK"):
            self.oracle(out_t, "IN/ANY/ALL (a comparison)")
            self.oracle(test, "IN/ANY/ALL (a comparison)")
            return None
        if kind == "EXISTS_SUBLINK":
            return None
        if kind == "EXPR_SUBLINK" and outs is not None and len(outs) == 1:
            return outs[0].taint
        return combine(out_t, test)

    def func_call(self, body: dict[str, Any], scope: Scope, depth: int) -> Taint | None:
        names = [_s(n) for n in body.get("funcname") or ()]
        name = names[-1] if names else ""
        if name in BLOCKED_FUNCTIONS:
            self.refuse("pgjit:masking", f"{name}() reads tables or other sessions' statements by name, which a masked group may not")
        self._user_function(names)
        taint = combine(*(self.expr(a, scope, depth) for a in body.get("args") or ()))
        if body.get("agg_filter") is not None:
            self.oracle(self.expr(body["agg_filter"], scope, depth), "an aggregate's FILTER")
        for s in body.get("agg_order") or ():
            taint = combine(taint, self.expr(s["SortBy"]["node"], scope, depth))
        if body.get("over"):
            self._window(body["over"], scope, depth)
        return taint

    def _user_function(self, names: list[str]) -> None:
        if self.catalog is None:
            return
        qualified = ".".join(names[-2:])
        fns = self.catalog.functions_named(qualified)
        for fn in fns:
            if fn.system:
                continue
            reads = None
            if self.resolver is not None:
                try:
                    reads = self.resolver.function_facts(fn).reads
                except Exception:
                    reads = None
            if reads is None or "?" in reads or any(self._reads_masked(r) for r in reads):
                self.refuse("pgjit:masking", f"function {fn.qualified} may read masked columns, which pgjit cannot follow "
                                             "into a function")

    def _reads_masked(self, qualified: str) -> bool:
        schema, _, name = qualified.rpartition(".")
        if self.catalog is not None:
            for rel in self.catalog.relations_named(qualified):
                if any(column_rule(self.catalog, self.profile, rel, c) for c in rel.columns):
                    return True
                if rel.kind in ("v", "m"):
                    return True  # a view may carry masked columns: pgjit does not follow it into the function
        return self.profile.may_hold(schema or None, name)

    # ------------------------------------------------------------------ DML

    def dml(self, kind: str, body: dict[str, Any], outer: Scope | None, depth: int) -> list[Out] | None:
        if kind not in ("InsertStmt", "UpdateStmt", "DeleteStmt"):
            self.refuse("pgjit:masking", f"pgjit cannot follow masked columns through a {kind} here")
        with_ = body.get("withClause")
        if with_:
            self.with_clause(with_, outer, depth)
        try:
            scope = Scope([], outer)
            target = self.relation(body["relation"], depth)
            scope.items.append(target)
            if kind in ("InsertStmt", "UpdateStmt"):
                # Writing a masked column is an oracle too: a unique index
                # answers "already exists", ON CONFLICT counts the rows.
                named = [t["ResTarget"].get("name") for t in (body.get("cols") if kind == "InsertStmt" else body.get("targetList")) or ()]
                if kind == "InsertStmt" and not named:
                    named = [n for n, _ in target.columns or ()]
                for name in named:
                    ok, t = target.column(name or "")
                    if ok and t is not None:
                        self.refuse(t.rule.name, f"writing masked column {t.source} is not allowed for a masked group "
                                                 "(a unique index or ON CONFLICT would tell whether a value exists)")
            if kind == "InsertStmt":
                if body.get("selectStmt"):
                    src = self.select(body["selectStmt"], outer, depth + 1)
                    if src is None:
                        self.refuse("pgjit:masking", "INSERT … SELECT from relations pgjit cannot list may copy masked values")
                    for o in src or ():
                        self.oracle(o.taint, "INSERT … SELECT (it copies the values into a table)")
                occ = body.get("onConflictClause") or {}
                if occ.get("whereClause") is not None:
                    self.oracle(self.expr(occ["whereClause"], scope, depth), "ON CONFLICT … WHERE")
                for t in occ.get("targetList") or ():
                    self.oracle(self.expr(t["ResTarget"].get("val"), scope, depth), "ON CONFLICT … SET (it copies values)")
            else:
                self.from_items(body.get("fromClause") or body.get("usingClause"), scope, depth)
                for t in body.get("targetList") or ():
                    self.oracle(self.expr(t["ResTarget"].get("val"), scope, depth), "UPDATE … SET (it copies values)")
                if body.get("whereClause") is not None:
                    self.oracle(self.expr(body["whereClause"], scope, depth), "WHERE (the rows it counts)")
            if target.whole() is not None:
                self.touches = True
            returning = (body.get("returningClause") or {}).get("exprs") or body.get("returningList")
            if returning:
                return self.targets(returning, scope, depth)
            return []
        finally:
            if with_:
                self._ctes.pop()


def _visible(scope: Scope) -> list[Item]:
    out: list[Item] = []
    level: Scope | None = scope
    while level is not None:
        out.extend(level.items)
        level = level.outer
    return out


def _level_items(scope: Scope) -> list[Item]:
    return scope.items


def _s(node: Any) -> str:
    if isinstance(node, dict):
        if "String" in node:
            return node["String"].get("sval", "")
        if "A_Star" in node:
            return "*"
    return ""


def _derived_name(val: Any) -> str:
    if isinstance(val, dict) and val:
        (kind, body), = val.items()
        if kind == "ColumnRef":
            return _s(body["fields"][-1])
        if kind == "FuncCall":
            return _s((body.get("funcname") or [{}])[-1])
        if kind == "TypeCast":
            return _derived_name(body.get("arg"))
    return "?column?"


# --------------------------------------------------------------- statements

_CLEAN_STATEMENTS = frozenset({
    "VariableSetStmt", "VariableShowStmt", "TransactionStmt", "ListenStmt", "UnlistenStmt", "NotifyStmt",
    "DiscardStmt", "DeallocateStmt", "ClosePortalStmt", "CheckPointStmt", "LoadStmt",
})


def _rangevars(node: Any) -> Iterable[dict[str, Any]]:
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "RangeVar":
                yield v
            yield from _rangevars(v)
    elif isinstance(node, list):
        for v in node:
            yield from _rangevars(v)


def plan_statement(stmt: dict[str, Any], catalog: Any, profile: MaskProfile, resolver: Any = None,
                   state: dict | None = None) -> Part:
    """One parsed statement's Part (raises Refusal)."""
    a = _Analyzer(catalog, profile, resolver, state)
    (kind, body), = stmt.items()
    part = Part()
    if kind == "SelectStmt":
        part.outputs = a.select(stmt, None, 0)
    elif kind in ("InsertStmt", "UpdateStmt", "DeleteStmt"):
        part.outputs = a.dml(kind, body, None, 0)
    elif kind == "CopyStmt":
        a.state["sensitive"] = True  # its options are string constants
        part.outputs, part.copy = _copy(a, body)
        if part.copy is None:
            part.outputs = []
    elif kind == "DeclareCursorStmt":
        part.outputs = a.select(body["query"], None, 0)
        part.declares = body.get("portalname")
        inner = Part(part.outputs, touches=a.touches)
        part.any_taint = _any(inner)
        part.touches = a.touches
        return part
    elif kind == "FetchStmt":
        part.fetches = body.get("portalname") or ""
        if body.get("ismove"):
            part.fetches = None
        return part
    elif kind == "PrepareStmt":
        part.outputs = plan_statement(body["query"], catalog, profile, resolver, a.state).outputs
        part.prepares = body.get("name")
        part.touches = True
        return part
    elif kind == "ExecuteStmt":
        part.executes = body.get("name")
        return part
    elif kind == "ExplainStmt":
        inner = plan_statement(body["query"], catalog, profile, resolver, a.state)
        part.outputs = [Out("QUERY PLAN", None)]
        part.touches = inner.touches
        return part
    elif kind in _CLEAN_STATEMENTS:
        part.outputs = None
        return part
    else:
        # DDL and the rest: nothing of theirs is a result; what they read of a
        # relation with masked columns could be copied (CREATE TABLE AS,
        # CREATE VIEW, a function's body): refused.
        for rv in _rangevars(body):
            item = a.relation(rv, 0)
            t = item.whole()
            if t is not None or (item.columns is None and a.profile.may_hold(rv.get("schemaname"), rv.get("relname") or "")):
                a.refuse(t.rule.name if t else "pgjit:masking",
                         f"{kind.removesuffix('Stmt')} on relations with masked columns is not allowed for a masked group")
        if kind in ("DoStmt", "CreateFunctionStmt", "CallStmt") and profile.has_columns:
            a.refuse("pgjit:masking", "code pgjit cannot see into (DO, CALL, CREATE FUNCTION) may read masked columns")
        part.outputs = None
    part.touches = a.touches
    part.any_taint = _any(part)
    return part


def _any(part: Part) -> bool:
    if part.outputs is None:
        return part.touches
    return any(o.masked for o in part.outputs)


def _copy(a: _Analyzer, body: dict[str, Any]) -> tuple[list[Out] | None, CopyPlan | None]:
    opts = {}
    for o in body.get("options") or ():
        d = o["DefElem"]
        arg = d.get("arg")
        opts[d["defname"]] = _s(arg) if isinstance(arg, dict) and "String" in arg else (arg if arg is not None else True)
    if body.get("is_from"):
        if body.get("relation"):
            a.relation(body["relation"], 0)
        return [], None
    if body.get("query"):
        outs = a.select(body["query"], None, 0)
    else:
        item = a.relation(body["relation"], 0)
        if item.columns is None:
            outs = None
        else:
            wanted = [_s(c) for c in body.get("attlist") or ()]
            cols = dict(item.columns)
            outs = [Out(n, cols.get(n)) for n in wanted] if wanted else [Out(n, t) for n, t in item.columns]
    fmt = str(opts.get("format", "text")).lower()
    if body.get("filename") is not None or body.get("is_program"):
        if outs is None or any(o.masked for o in outs):
            a.refuse("pgjit:masking", "COPY of masked columns to a file or program is not allowed")
    tainted = outs is None or any(o.masked for o in outs)
    if tainted:
        if fmt == "binary":
            a.refuse("pgjit:masking", "binary COPY of masked columns is not allowed (use FORMAT text or csv)")
        odd = set(opts) - {"format", "header"}
        if odd:
            a.refuse("pgjit:masking", f"COPY of masked columns with option(s) {', '.join(sorted(odd))} is not allowed "
                                      "(pgjit masks text and csv COPY with their default delimiters and quoting)")
    header = opts.get("header", False)
    header = header is True or str(header).lower() in ("true", "on", "1", "match")
    return outs, CopyPlan(fmt, bool(header))


def describe(parts: list[Part]) -> list[dict[str, Any]]:
    """The plan as data (pgjit policy explain)."""
    out = []
    for p in parts:
        cols = None
        if p.outputs is not None:
            cols = [{"column": o.name, "masked": o.masked,
                     "rule": o.taint.rule.name if o.taint else None,
                     "from": o.taint.source if o.taint else None,
                     "how": None if o.taint is None else ("value" if o.taint.direct else "computed (masked whole)")}
                    for o in p.outputs]
        out.append({"columns": cols, "masks_something": p.any_taint, "touches_masked": p.touches,
                    "copy": p.copy.format if p.copy else None})
    return out


def plan(sql: str, catalog: Any, profile: MaskProfile, resolver: Any = None) -> list[Part]:
    """One Part per statement of ``sql`` (raises Refusal; a parse failure is
    the gate's to report, so it refuses here too)."""
    try:
        tree = json.loads(_pg.parse_sql_json(sql))
    except Exception:
        raise Refusal("pgjit:masking", "pgjit could not parse the statement to follow masked columns") from None
    state: dict = {}
    return [plan_statement(s["stmt"], catalog, profile, resolver, state) for s in tree.get("stmts") or ()]


_CACHE: "collections.OrderedDict[Any, Any]" = collections.OrderedDict()
_CACHE_MAX = 4096


def plan_cached(raw: bytes, catalog: Any, profile: MaskProfile, resolver: Any = None) -> list[Part]:
    """``plan`` of the UTF-8 bytes ``raw``, remembered per catalog snapshot
    and rule set: by the statement's shape key (literals replaced) when its
    plan read no constant's value — a client that inlines literals analyses
    each shape once — else by its exact bytes. Refusals are remembered too."""
    from pgjit.policy.gate import shape_key

    snap = (id(catalog), getattr(catalog, "generation", None), getattr(catalog, "loaded_at", None), profile.rules)
    shape = shape_key(raw) if len(raw) <= 16384 else None
    keys = [(snap, b"s", shape)] if shape is not None else []
    if len(raw) <= 16384:
        keys.append((snap, b"b", raw))
    for key in keys:
        hit = _CACHE.get(key)
        if hit is not None:
            _CACHE.move_to_end(key)
            if isinstance(hit, Refusal):
                raise Refusal(hit.rule, hit.message)
            return list(hit)
    state: dict = {}
    try:
        tree = json.loads(_pg.parse_sql_json(raw.decode("utf-8")))
    except Exception:
        raise Refusal("pgjit:masking", "pgjit could not parse the statement to follow masked columns") from None
    try:
        result: Any = [plan_statement(s["stmt"], catalog, profile, resolver, state) for s in tree.get("stmts") or ()]
    except Refusal as r:
        result = r
    if keys:
        key = keys[-1] if state.get("sensitive") or shape is None else keys[0]
        _CACHE[key] = result
        while len(_CACHE) > _CACHE_MAX:
            _CACHE.popitem(last=False)
    if isinstance(result, Refusal):
        raise Refusal(result.rule, result.message)
    return list(result)
