"""What names mean: statement facts resolved through the upstream's catalog.

The facts walker (:mod:`pgjit.policy.facts`) knows only the text. This module
adds what the server will do with the names in it, from a
:class:`pgjit.catalog.Catalog` snapshot:

* a function that is not the system's (``user_functions``,
  ``calls_user_function``, ``security_definer``) brings the facts of its body
  (SQL and PL/pgSQL; a body in any other language cannot be read and fails
  closed), and so do the functions behind operators, casts and aggregates;
* reading a view reads what the view reads and calls what it calls, and so do
  row-security policies;
* writing a relation writes what its rules and triggers write, the tables its
  foreign keys cascade to and, for a view, the relations behind it, and runs
  its column defaults, generated columns, CHECK constraints and policies;
* renaming or moving a system function is a ``catalog_change``.

Names the catalog does not know are resolved through the session's overlay (the
functions it created itself) and otherwise fail closed: a function or operator
pgjit has not seen yet is refused with a reason, and the gateway reloads the
catalog. Resolution is done once per statement shape (the gate caches the
result) and per catalog object (memoised here). Pure: no I/O, no trio.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Final

from pgjit.catalog import SYSTEM_SCHEMAS, Catalog, Function, Relation
from pgjit.policy.catalogue import DYNAMIC_CATEGORIES, FOREIGN_OPTION_CATEGORIES, categories_for
from pgjit.policy.facts import Analysis, Facts, ParseFailure, analyze_uncached, merge_facts

__all__ = ["Resolver", "function_definition_facts"]

MAX_DEPTH: Final = 12
UNKNOWN: Final = "?"
_DDL_PREFIXES: Final = ("create_", "alter_", "drop_")
_CREATE_KINDS: Final = frozenset({"create_function", "create_procedure", "create_rule"})

_EMPTY = Facts(kind="select", kinds=frozenset())

# Operators the grammar writes for BETWEEN (it runs >= and <=).
_BETWEEN_OPERATORS: Final = ("<=", ">=")


def _strip_create(f: Facts) -> Facts:
    return dataclasses.replace(f, kinds=f.kinds - _CREATE_KINDS, prepares=None)


def function_definition_facts(definition: str) -> Facts | None:
    """The facts of running a function, from its CREATE FUNCTION text (None
    if the text cannot be read)."""
    try:
        analysis = analyze_uncached(definition)
    except ParseFailure:
        return None
    if len(analysis.statements) != 1:
        return None
    return _strip_create(analysis.statements[0])


class Resolver:
    """Facts resolution against one catalog snapshot (memoised per object)."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self._function: dict[int, Facts] = {}
        self._read: dict[int, Facts] = {}
        self._write: dict[int, Facts] = {}

    @property
    def generation(self) -> int:
        return self.catalog.generation

    # ---- entry points ---------------------------------------------------------

    def enrich(self, analysis: Analysis, overlay: Mapping[str, Facts] | None = None) -> Analysis:
        statements = tuple(self.enrich_facts(f, overlay) for f in analysis.statements)
        return Analysis(sql=analysis.sql, statements=statements)

    def enrich_facts(self, facts: Facts, overlay: Mapping[str, Facts] | None = None, depth: int = 0) -> Facts:
        extra: list[Facts] = []
        reasons: list[str] = []
        cat = self.catalog
        for name in facts.functions:
            found = cat.functions_named(name)
            if found:
                for fn in found:
                    # A system function called by its name was read by the
                    # walker already (set_config's arguments, the catalogue).
                    if not fn.system or fn.support:
                        extra.append(self.function_facts(fn, depth))
            elif overlay and name in overlay:
                extra.append(overlay[name])
            elif not categories_for(name.rsplit(".", 1)[-1]):
                reasons.append(f"function {name} is not in pgjit's copy of the catalog yet")
                extra.append(_user(name))
        for name in facts.operators:
            oids = cat.operators.get(name)
            if oids is None and name.upper() in ("BETWEEN", "NOT BETWEEN", "BETWEEN SYMMETRIC", "NOT BETWEEN SYMMETRIC"):
                oids = tuple(o for op in _BETWEEN_OPERATORS for o in cat.operators.get(op, ()))
            if oids is None:
                if overlay and ("operator " + name) in overlay:
                    extra.append(overlay["operator " + name])
                else:
                    reasons.append(f"operator {name} is not in pgjit's copy of the catalog yet")
                continue
            for oid in oids:
                fn = cat.functions.get(oid)
                if fn is not None:
                    extra.append(self.function_facts(fn, depth))
        for name in facts.casts:
            for oid in cat.casts.get(name, ()):
                fn = cat.functions.get(oid)
                if fn is not None:
                    extra.append(self.function_facts(fn, depth))
            for expr in cat.domain_checks.get(name, ()):
                f = _text_facts("SELECT " + expr, f"CHECK of domain {name}")
                extra.append(self.enrich_facts(f, None, depth + 1))
        if depth == 0 and cat.event_triggers and any(k.startswith(_DDL_PREFIXES) for k in facts.kinds):
            for oid in cat.event_triggers:  # DDL fires the event triggers
                fn = cat.functions.get(oid)
                if fn is not None:
                    extra.append(self.function_facts(fn, depth))
        for name in facts.reads:
            found = cat.relations_named(name)
            for rel in found:
                extra.append(self.read_facts(rel, depth))
            if not found and overlay and ("relation " + name) in overlay:
                extra.append(overlay["relation " + name])
        for name in facts.writes:
            if name == UNKNOWN or name.endswith(".*"):
                continue
            found = cat.relations_named(name)
            for rel in found:
                extra.append(self.write_facts(rel, depth))
            if not found and overlay and ("relation " + name) in overlay:
                view = overlay["relation " + name]  # a view this session created
                extra.append(dataclasses.replace(view, writes=view.writes | view.reads))
        unbounded = False
        for name, columns in facts.null_bounds:
            for rel in cat.relations_named(name):
                if columns and set(columns) <= set(rel.not_null):
                    unbounded = True  # `id IS NOT NULL` on a NOT NULL column holds for every row
        changed = False
        for name in facts.altered_functions:
            if any(fn.schema in ("pg_catalog", "information_schema") for fn in cat.functions_named(name)):
                changed = True
        if not extra and not reasons and not changed and not unbounded:
            return facts
        out = facts
        if unbounded:
            out = dataclasses.replace(out, write_without_where=True)
        for e in extra:
            if e is not _EMPTY:
                out = merge_facts(out, e)
        if changed:
            out = dataclasses.replace(out, dangerous=out.dangerous | {"catalog_change"})
        if reasons:
            out = dataclasses.replace(out, unknown_body=True, unknown_reasons=out.unknown_reasons + tuple(reasons))
        return out

    # ---- objects ----------------------------------------------------------------

    def function_facts(self, fn: Function, depth: int = 0) -> Facts:
        """What calling ``fn`` (by any route) does."""
        memo = self._function.get(fn.oid)
        if memo is not None:
            return memo
        if fn.system:
            cats = categories_for(fn.name) | categories_for(fn.qualified)
            if not cats and fn.name != "set_config" and not fn.support:
                result = _EMPTY
            else:
                result = self._with_support(fn, _system_function(fn, cats), depth)
            self._function[fn.oid] = result
            return result
        base = _user(fn.qualified, fn.security_definer)
        self._function[fn.oid] = base  # a recursive function sees itself as called, not again
        if depth >= MAX_DEPTH:
            result = dataclasses.replace(base, unknown_body=True,
                                         unknown_reasons=(f"function {fn.qualified}: calls nested too deeply",))
        elif fn.definition is not None:
            body = function_definition_facts(fn.definition)
            if body is None:
                result = dataclasses.replace(base, unknown_body=True,
                                             unknown_reasons=(f"function {fn.qualified}: its body cannot be read",))
            else:
                result = merge_facts(base, self.enrich_facts(body, None, depth + 1))
        elif fn.kind == "a":
            result = base
        else:
            result = dataclasses.replace(
                base, unknown_body=True,
                unknown_reasons=(f"function {fn.qualified} is written in {fn.language}, which pgjit cannot read",),
            )
        result = self._with_support(fn, result, depth)
        self._function[fn.oid] = result
        return result

    def _with_support(self, fn: Function, result: Facts, depth: int) -> Facts:
        """An aggregate runs its support functions (transition, final, …)."""
        for oid in fn.support:
            sub = self.catalog.functions.get(oid)
            if sub is not None and sub.oid != fn.oid:
                result = merge_facts(result, self.function_facts(sub, depth + 1))
        return result

    def read_facts(self, rel: Relation, depth: int = 0) -> Facts:
        """What reading ``rel`` does: a view's query, row-security policies."""
        memo = self._read.get(rel.oid)
        if memo is not None:
            return memo
        self._read[rel.oid] = _EMPTY
        result = _EMPTY
        if rel.kind == "f":
            result = _foreign(rel, result)
        if depth < MAX_DEPTH:
            texts = []
            if rel.view_definition:
                texts.append(rel.view_definition)
            texts.extend("SELECT " + p for p in rel.policies)
            for text in texts:
                f = _text_facts(text, f"view or policy of {rel.qualified}")
                f = self.enrich_facts(f, None, depth + 1)
                if rel.schema in SYSTEM_SCHEMAS:
                    # A system view is the server's own filter over its
                    # catalogs (pg_roles hides pg_authid's passwords): what it
                    # calls counts, the tables behind it do not.
                    f = dataclasses.replace(f, reads=frozenset())
                result = merge_facts(result, f)
        else:
            result = _unknown(f"relation {rel.qualified}: views nested too deeply")
        self._read[rel.oid] = result
        return result

    def write_facts(self, rel: Relation, depth: int = 0) -> Facts:
        """What writing ``rel`` does: its rules and triggers, the tables its
        foreign keys cascade to, and for a view the relations behind it."""
        memo = self._write.get(rel.oid)
        if memo is not None:
            return memo
        self._write[rel.oid] = _EMPTY
        if depth >= MAX_DEPTH:
            result = _unknown(f"relation {rel.qualified}: rules, triggers or cascades nested too deeply")
            self._write[rel.oid] = result
            return result
        result = Facts(kind="select", kinds=frozenset(), writes=frozenset({rel.qualified}))
        if rel.kind == "f":
            # A foreign table's rows live where its server points: maybe this
            # very database, under any name.
            result = _foreign(rel, dataclasses.replace(result, writes=result.writes | {UNKNOWN}))
        if rel.view_definition and rel.kind == "m":
            result = merge_facts(result, self.read_facts(rel, depth + 1))  # REFRESH runs the query
        if rel.view_definition and rel.kind == "v":
            view = self.read_facts(rel, depth + 1)
            # An auto-updatable view writes the relation behind it: count
            # everything it reads as written.
            result = merge_facts(result, dataclasses.replace(view, writes=view.writes | view.reads))
            for name in view.reads:
                for base in self.catalog.relations_named(name):
                    if base.oid != rel.oid:
                        result = merge_facts(result, self.write_facts(base, depth + 1))
        for ruledef in rel.rules:
            f = _strip_create(_text_facts(ruledef, f"rule on {rel.qualified}"))
            result = merge_facts(result, self.enrich_facts(f, None, depth + 1))
        for expr in rel.expressions + rel.policies:
            f = _text_facts("SELECT " + expr, f"default, check or policy of {rel.qualified}")
            result = merge_facts(result, self.enrich_facts(f, None, depth + 1))
        for oid in rel.triggers:
            fn = self.catalog.functions.get(oid)
            if fn is not None:
                result = merge_facts(result, self.function_facts(fn, depth + 1))
        for oid in rel.cascades_to:
            target = self.catalog.relations.get(oid)
            if target is not None and target.oid != rel.oid:
                result = merge_facts(result, self.write_facts(target, depth + 1))
        self._write[rel.oid] = result
        return result


def _foreign(rel: Relation, facts: Facts) -> Facts:
    """A foreign table's options (file_fdw's filename/program …) reach files,
    programs or the network whenever the table is read or written."""
    cats: set[str] = set()
    for opt in rel.options:
        cats |= FOREIGN_OPTION_CATEGORIES.get(opt.split("=", 1)[0].lower(), frozenset())
    if not cats:
        return facts
    return dataclasses.replace(facts, dangerous=facts.dangerous | cats)


def _user(name: str, security_definer: bool = False) -> Facts:
    return Facts(kind="select", kinds=frozenset(), functions=frozenset({name}),
                 user_functions=frozenset({name}), calls_user_function=True,
                 security_definer=security_definer)


def _unknown(reason: str) -> Facts:
    return Facts(kind="select", kinds=frozenset(), unknown_body=True, unknown_reasons=(reason,))


def _system_function(fn: Function, cats: frozenset[str]) -> Facts:
    """A system function reached by any route (an operator, a cast, an
    aggregate, a trigger): its dangerous categories, as if called by name."""
    dynamic = bool(cats & DYNAMIC_CATEGORIES)
    setconf = fn.name == "set_config"
    return Facts(
        kind="select",
        kinds=frozenset(),
        functions=frozenset({fn.qualified}),
        dangerous=cats | ({"server_control"} if setconf else frozenset()),
        dynamic_sql=dynamic,
        reads=frozenset({UNKNOWN}) if dynamic else frozenset(),
        writes=frozenset({UNKNOWN}) if dynamic else frozenset(),
        settings=frozenset({UNKNOWN}) if setconf else frozenset(),
        role_change=setconf,
        changes_lexer=setconf,
    )


def _text_facts(text: str, what: str) -> Facts:
    try:
        analysis = analyze_uncached(text)
    except ParseFailure as e:
        return _unknown(f"{what}: cannot parse: {e.message}")
    out = _EMPTY
    for f in analysis.statements:
        out = merge_facts(out, f)
    return out
