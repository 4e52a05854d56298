"""Policy files: loading, validation and the decision function.

A policy is a YAML file written by DBAs (format in ``policies/README.md``, JSON
Schema in ``pgjit/policy/schema.json``). Loading validates it and reports every
problem as ``file:line: key.path: message``.

Evaluation, per statement of a (possibly multi-statement) string:

1. an ``EXECUTE name`` is folded together with the facts of the ``PREPARE name``
   the session saw before; an unknown name is denied (``pgjit:unknown-prepared``);
2. a body pgjit cannot read (another language, unparsable) is denied
   (``pgjit:unreadable``), and so is a change of the settings that decide how
   the server tokenizes SQL (``pgjit:lexer-change``), whatever the policy says;
3. rules whose ``groups`` meet the caller's groups are tried top to bottom;
   ``audit`` rules that match are recorded in ``shadow`` and evaluation goes on;
   the first ``allow``/``deny``/``require_approval`` rule that matches decides;
4. otherwise ``default`` decides.

The string's decision is the most restrictive of its statements'
(deny > require_approval > allow).

Matching: all keys given under ``match`` must hold. List keys (kind, reads,
writes, relations, functions, settings, dangerous) are globs, and their meaning
depends on the action — an ``allow`` rule *covers*: every kind / relation /
function / … the statement reaches must match one of its globs; any other rule
*touches*: one of them matching is enough. So ``allow kind: [select]`` does not
let ``WITH d AS (DELETE …) SELECT …`` through, and ``deny kind: [delete]`` catches
it. Boolean keys must equal the fact.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase, translate
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Final

import yaml

from pgjit.policy.catalogue import CATEGORY_NAMES
from pgjit.policy.facts import KINDS, Analysis, Facts, analyze, merge_facts

__all__ = [
    "ACTIONS",
    "RULE_LEXER_CHANGE",
    "RULE_UNKNOWN_PREPARED",
    "RULE_UNREADABLE",
    "AccessGrant",
    "Decision",
    "Match",
    "Policy",
    "PolicyError",
    "Problem",
    "Rule",
    "TestCase",
    "load_schema",
    "parse_duration",
]

ACTIONS: Final = ("allow", "deny", "require_approval", "audit")
DECISIVE: Final = ("allow", "deny", "require_approval")
_SEVERITY: Final = {"allow": 0, "require_approval": 1, "deny": 2}

RULE_UNREADABLE: Final = "pgjit:unreadable"
RULE_UNKNOWN_PREPARED: Final = "pgjit:unknown-prepared"
RULE_LEXER_CHANGE: Final = "pgjit:lexer-change"

DEFAULT_JIT_LIFETIME: Final = 3600
DEFAULT_MAX_SESSION: Final = 8 * 3600

LIST_KEYS: Final = ("kind", "reads", "writes", "relations", "functions", "user_functions", "settings", "dangerous")
BOOL_KEYS: Final = (
    "write_without_where",
    "role_change",
    "dynamic_sql",
    "copy_program",
    "copy_file",
    "explain_analyze",
    "calls_user_function",
    "security_definer",
)


# --------------------------------------------------------------------------
# errors


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong (or suspicious) in a policy file."""

    filename: str
    line: int
    key: str
    message: str

    def __str__(self) -> str:
        where = f"{self.filename}:{self.line}" if self.line else self.filename
        return f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"


class PolicyError(ValueError):
    """A policy file is invalid; ``problems`` says where and why."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


# --------------------------------------------------------------------------
# durations

_DURATION = re.compile(r"^\s*(\d+)\s*(ms|s|m|min|h|d)?\s*$")
_UNIT_MS: Final = {None: 1000, "ms": 1, "s": 1000, "m": 60_000, "min": 60_000, "h": 3_600_000, "d": 86_400_000}


def _duration_ms(value: int | str) -> int:
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"negative duration: {value}")
        return value * 1000
    m = _DURATION.match(str(value))
    if not m:
        raise ValueError(f"not a duration: {value!r} (use e.g. 30s, 10m, 1h, 1d or seconds)")
    return int(m.group(1)) * _UNIT_MS[m.group(2)]


def parse_duration(value: int | str) -> int:
    """Seconds in ``30s``, ``10m``, ``1h``, ``1d``, ``500ms`` (rounded up) or an int of seconds."""
    ms = _duration_ms(value)
    return -(-ms // 1000)


# --------------------------------------------------------------------------
# matching


def _relation_forms(name: str) -> tuple[str, ...]:
    # Covering (allow rules): an unqualified relation name counts as
    # public.<name> and as the bare name.
    return (name,) if "." in name else (name, "public." + name)


def _relation_touch_forms(name: str) -> tuple[str, ...]:
    # Touching (deny, approval, audit rules): every name the relation may
    # have. A qualified one also counts under its bare name; an unqualified
    # one as public.<name> and pg_catalog.<name> (search_path may lead to either).
    if "." in name:
        return (name, name.rsplit(".", 1)[1])
    return (name, "public." + name, "pg_catalog." + name)


def _function_forms(name: str) -> tuple[str, ...]:
    # A qualified function also counts under its bare name.
    if "." in name:
        return (name, name.rsplit(".", 1)[1])
    return (name,)


def _plain_forms(name: str) -> tuple[str, ...]:
    return (name,)


_FORMS: Final = {
    "kind": _plain_forms,
    "reads": _relation_forms,
    "writes": _relation_forms,
    "relations": _relation_forms,
    "functions": _function_forms,
    "user_functions": _function_forms,
    "settings": _plain_forms,
    "dangerous": _plain_forms,
}
_TOUCH_FORMS: Final = {**_FORMS, "reads": _relation_touch_forms, "writes": _relation_touch_forms,
                       "relations": _relation_touch_forms}
_RELATION_KEYS: Final = frozenset({"reads", "writes", "relations"})


def _facts_values(facts: Facts, key: str) -> frozenset[str]:
    if key == "kind":
        return facts.kinds
    if key == "relations":
        return facts.reads | facts.writes
    value: frozenset[str] = getattr(facts, key)
    return value


@dataclass(frozen=True, slots=True)
class _Globs:
    """The globs of one match key, compiled; per-value results are memoised."""

    key: str
    patterns: tuple[str, ...]
    regex: re.Pattern[str]
    memo: dict[str, bool] = field(default_factory=dict, compare=False, repr=False)
    touch_memo: dict[str, bool] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def of(cls, key: str, patterns: Iterable[str]) -> _Globs:
        pats = tuple(patterns)
        rx = re.compile("|".join(f"(?:{translate(p)})" for p in pats), re.IGNORECASE)
        return cls(key, pats, rx)

    def touches(self, value: str) -> bool:
        """Might ``value`` be one of the names the globs match? For relations,
        the unknown relation ``?`` (dynamic SQL, a function acting on a table
        named in a string) may be any, and ``schema.*`` (a schema renamed or
        dropped) any relation of that schema."""
        found = self.touch_memo.get(value)
        if found is None:
            if self.key in _RELATION_KEYS and (value == "?" or value.endswith(".*")):
                found = value == "?" or any(_schema_may_hold(p, value[:-2]) for p in self.patterns)
            else:
                match = self.regex.match
                found = any(match(form) is not None for form in _TOUCH_FORMS[self.key](value))
            if len(self.touch_memo) < 4096:
                self.touch_memo[value] = found
        return found

    def hit(self, value: str) -> bool:
        found = self.memo.get(value)
        if found is None:
            match = self.regex.match
            found = any(match(form) is not None for form in _FORMS[self.key](value))
            if len(self.memo) < 4096:
                self.memo[value] = found
        return found


def _schema_may_hold(pattern: str, schema: str) -> bool:
    """Can a relation glob match a relation of ``schema``? A glob without a
    schema part names a relation in any schema."""
    if "." not in pattern:
        return True
    return fnmatchcase(schema.lower(), pattern.rsplit(".", 1)[0].lower())


@dataclass(frozen=True, slots=True)
class Match:
    """The ``match`` section of a rule, compiled."""

    globs: tuple[tuple[str, _Globs], ...] = ()
    flags: tuple[tuple[str, bool], ...] = ()

    @property
    def empty(self) -> bool:
        return not self.globs and not self.flags

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {key: list(g.patterns) for key, g in self.globs}
        out.update(dict(self.flags))
        return out

    def matches(self, facts: Facts, covering: bool) -> bool:
        """Do all keys hold? ``covering`` is the allow-rule reading of list keys."""
        for key, value in self.flags:
            if bool(getattr(facts, key)) is not value:
                return False
        for key, globs in self.globs:
            hit = globs.hit if covering else globs.touches
            if covering:
                for v in _facts_values(facts, key):
                    if not hit(v):
                        return False
            else:
                for v in _facts_values(facts, key):
                    if hit(v):
                        break
                else:
                    return False
        return True


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    action: str
    groups: tuple[str, ...] = ("*",)
    match: Match = Match()
    unless: Match | None = None  # the rule does not apply when this covers the statement
    message: str | None = None
    hint: str | None = None
    line: int = 0
    approvers: tuple[str, ...] = ()  # require_approval: the groups that may approve
    approvals: int = 1  # require_approval: from this many different people
    evidence: bool = False  # require_approval: a rolled-back dry run shown to the approver

    def applies_to(self, groups: frozenset[str]) -> bool:
        return "*" in self.groups or not groups.isdisjoint(self.groups)


@dataclass(frozen=True, slots=True)
class AccessEntry:
    group: str
    grant: tuple[str, ...]
    jit_lifetime: int
    max_session: int
    settings: tuple[tuple[str, str], ...]
    line: int = 0
    #: The stable role the session acts as (``ALTER ROLE … SET role``): what
    #: it creates is owned by this role, so later sessions can change it.
    owner: str | None = None


@dataclass(frozen=True)
class AccessGrant:
    """What the JIT broker gives a session (merged over the caller's groups).

    ``jit_lifetime`` and ``max_session`` are seconds; ``settings`` are values
    ready for ``ALTER ROLE … SET`` (timeouts in ``ms``, booleans ``on``/``off``).
    """

    grant: tuple[str, ...]
    jit_lifetime: int
    max_session: int
    settings: dict[str, str] = field(default_factory=dict)
    groups: tuple[str, ...] = ()
    owner: str | None = None  # the role every statement of the session runs as


@dataclass(frozen=True, slots=True)
class TestCase:
    sql: str
    expect: str  # allow | deny | require_approval
    groups: tuple[str, ...]
    rule: str | None = None
    check_rule: bool = False
    name: str = ""
    filename: str = ""
    line: int = 0
    masks: tuple[str, ...] | None = None  # output columns the case expects masked (None: not checked)


@dataclass(frozen=True, slots=True)
class Decision:
    """The gate's verdict on a SQL string (or one statement of it)."""

    action: str  # allow | deny | require_approval
    rule: str | None  # deciding rule's name; None when ``default`` decided
    message: str | None = None
    hint: str | None = None
    statement_index: int | None = None
    shadow: tuple[str, ...] = ()  # audit rules that matched ("would deny")
    facts: Facts | None = None
    statements: tuple[Decision, ...] = ()  # per-statement decisions

    @property
    def allowed(self) -> bool:
        return self.action == "allow"

    @property
    def denied(self) -> bool:
        return self.action == "deny"

    @property
    def needs_approval(self) -> bool:
        return self.action == "require_approval"


# --------------------------------------------------------------------------
# the policy


PreparedMap = Mapping[str, "Analysis | Facts"]


@dataclass(frozen=True)
class Policy:
    """A loaded, validated policy file."""

    filename: str
    version: int
    description: str
    access: tuple[AccessEntry, ...]
    rules: tuple[Rule, ...]
    default: str
    default_message: str | None = None
    default_hint: str | None = None
    tests: tuple[TestCase, ...] = ()
    masking: tuple[Any, ...] = ()  # pgjit.masking.rules.MaskRule
    _rules_for: dict[frozenset[str], tuple[Rule, ...]] = field(
        default_factory=dict, repr=False, compare=False
    )
    # (id(facts), id(rules)) -> (facts, rules, decision); the entry keeps both
    # objects alive, so their ids cannot be reused while it exists.
    _memo: dict[tuple[int, int], tuple[Facts, tuple[Rule, ...], Decision]] = field(
        default_factory=dict, repr=False, compare=False
    )

    # ---- loading ---------------------------------------------------------------

    @classmethod
    def load(cls, path: str | Path) -> Policy:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise PolicyError([Problem(str(path), 0, "", f"cannot read: {exc.strerror}")]) from None
        return cls.from_text(text, str(path))

    @classmethod
    def from_text(cls, text: str, filename: str = "<policy>") -> Policy:
        data, marks = load_yaml(text, filename)
        return _build(data, marks, filename)

    def rule_named(self, name: str | None) -> Rule | None:
        return next((r for r in self.rules if r.name == name), None)

    def masking_profile(self, groups: Iterable[str], key: bytes) -> Any:
        """The masking rules that apply to ``groups`` (a
        pgjit.masking.rules.MaskProfile), or None when nothing is masked for them."""
        if not self.masking:
            return None
        from pgjit.masking.rules import MaskProfile

        return MaskProfile.for_groups(self.masking, frozenset(groups), key)

    # ---- deciding --------------------------------------------------------------

    def rules_for(self, groups: Iterable[str]) -> tuple[Rule, ...]:
        key = groups if isinstance(groups, frozenset) else frozenset(groups)
        rules = self._rules_for.get(key)
        if rules is None:
            rules = tuple(r for r in self.rules if r.applies_to(key))
            if len(self._rules_for) < 1024:
                self._rules_for[key] = rules
        return rules

    def decide(
        self,
        analysis_or_sql: Analysis | str,
        groups: Iterable[str],
        prepared: PreparedMap | None = None,
    ) -> Decision:
        """Decide a SQL string (or its :class:`Analysis`) for a caller in ``groups``.

        Raises :class:`pgjit.policy.facts.ParseFailure` for a string that does not
        parse (the gateway answers 42601). ``prepared`` maps prepared-statement
        names the session created to the analysis (or facts) of their PREPARE, so
        ``EXECUTE name`` is judged by what it runs.
        """
        analysis = analyze(analysis_or_sql) if isinstance(analysis_or_sql, str) else analysis_or_sql
        rules = self.rules_for(groups)
        statements = analysis.statements
        if len(statements) == 1:
            return self.decide_facts(statements[0], rules, prepared, 0)
        if not statements:
            return Decision("allow", None, "empty query", statement_index=None)
        # A PREPARE earlier in the same string is there for a later EXECUTE.
        local: dict[str, Analysis | Facts] | None = None
        out: list[Decision] = []
        for index, facts in enumerate(statements):
            if facts.executes_prepared and local is not None:
                out.append(self.decide_facts(facts, rules, {**(prepared or {}), **local}, index))
            else:
                out.append(self.decide_facts(facts, rules, prepared, index))
            if facts.prepares:
                local = {} if local is None else local
                local[facts.prepares] = facts
            elif (facts.deallocates == "*" or facts.kind == "discard") and local is not None:
                local.clear()
            elif facts.deallocates and local is not None:
                local.pop(facts.deallocates, None)
        decisions = tuple(out)
        worst = decisions[0]
        shadow: list[str] = []
        for d in decisions:
            if _SEVERITY[d.action] > _SEVERITY[worst.action]:
                worst = d
            shadow.extend(s for s in d.shadow if s not in shadow)
        return dataclasses.replace(worst, shadow=tuple(shadow), statements=decisions)

    def decide_facts(
        self,
        facts: Facts,
        rules: tuple[Rule, ...],
        prepared: PreparedMap | None = None,
        index: int = 0,
    ) -> Decision:
        """Decide one statement's facts against already-filtered ``rules``."""
        if facts.executes_prepared:
            return self._decide_uncached(facts, rules, prepared, index)
        key = (id(facts), id(rules))
        entry = self._memo.get(key)
        if entry is not None and entry[0] is facts and entry[1] is rules and (
            entry[2].statement_index == index
        ):
            return entry[2]
        decision = self._decide_uncached(facts, rules, prepared, index)
        if len(self._memo) >= 4096:
            self._memo.clear()
        self._memo[key] = (facts, rules, decision)
        return decision

    def _decide_uncached(
        self,
        facts: Facts,
        rules: tuple[Rule, ...],
        prepared: PreparedMap | None,
        index: int,
    ) -> Decision:
        for name in sorted(facts.executes_prepared):
            target = _resolve_prepared(prepared, name)
            if target is None:
                return Decision(
                    "deny",
                    RULE_UNKNOWN_PREPARED,
                    f"EXECUTE of prepared statement {name!r} that pgjit has not seen",
                    "prepare the statement in this session before executing it",
                    index,
                    facts=facts,
                )
            facts = merge_facts(facts, target)
        if facts.changes_lexer:
            return Decision(
                "deny",
                RULE_LEXER_CHANGE,
                "changing standard_conforming_strings or client_encoding this way would let the "
                "server read statements differently from pgjit",
                "keep standard_conforming_strings on and use a UTF-8 compatible client_encoding",
                index,
                facts=facts,
            )
        if facts.unknown_body:
            reasons = "; ".join(facts.unknown_reasons)
            return Decision(
                "deny",
                RULE_UNREADABLE,
                f"pgjit cannot check this statement: {reasons}",
                "only SQL and PL/pgSQL bodies can be checked",
                index,
                facts=facts,
            )
        shadow: list[str] = []
        for rule in rules:
            if rule.match.matches(facts, rule.action == "allow") and not (
                rule.unless is not None and rule.unless.matches(facts, True)
            ):
                if rule.action == "audit":
                    shadow.append(rule.name)
                    continue
                return Decision(
                    rule.action,
                    rule.name,
                    rule.message or _default_text(rule.action, rule.name),
                    rule.hint,
                    index,
                    tuple(shadow),
                    facts,
                )
        return Decision(
            self.default,
            None,
            self.default_message or f"no rule of the policy allows this statement (default: {self.default})",
            self.default_hint,
            index,
            tuple(shadow),
            facts,
        )

    # ---- access ------------------------------------------------------------------

    def access_for(self, groups: Iterable[str]) -> AccessGrant | None:
        """The merged access of the caller's groups, or None if none may connect.

        Entries naming one of the caller's groups are used; only if there is
        none, the ``"*"`` entries. Merging several entries: the union of the
        grants (in file order), the shortest ``jit_lifetime`` and ``max_session``,
        and for each setting the strictest value (shortest non-zero timeout,
        ``default_transaction_read_only`` on if any entry says on).
        """
        wanted = frozenset(groups)
        entries = [e for e in self.access if e.group in wanted]
        if not entries:
            entries = [e for e in self.access if e.group == "*"]
        if not entries:
            return None
        grant: list[str] = []
        for e in entries:
            grant.extend(g for g in e.grant if g not in grant)
        settings: dict[str, str] = {}
        for e in entries:
            for key, value in e.settings:
                settings[key] = _stricter(key, settings.get(key), value)
        return AccessGrant(
            grant=tuple(grant),
            jit_lifetime=min(e.jit_lifetime for e in entries),
            max_session=min(e.max_session for e in entries),
            settings=settings,
            groups=tuple(dict.fromkeys(e.group for e in entries)),
            owner=next((e.owner for e in entries if e.owner), None),
        )


def _default_text(action: str, name: str) -> str:
    if action == "deny":
        return f"denied by policy rule {name}"
    if action == "require_approval":
        return f"policy rule {name} requires approval"
    return f"allowed by policy rule {name}"


def _stricter(key: str, old: str | None, new: str) -> str:
    if old is None:
        return new
    if key == "default_transaction_read_only":
        return "on" if "on" in (old, new) else "off"
    a, b = int(old.removesuffix("ms")), int(new.removesuffix("ms"))
    if a == 0:
        return new
    if b == 0:
        return old
    return old if a <= b else new


def prepared_facts(prepared: PreparedMap | None, name: str) -> Facts | None:
    """What EXECUTE ``name`` runs, as facts, or None when ``name`` is unknown."""
    return _resolve_prepared(prepared, name)


def _resolve_prepared(prepared: PreparedMap | None, name: str) -> Facts | None:
    if prepared is None or name not in prepared:
        return None
    target = prepared[name]
    if isinstance(target, Facts):
        facts = target
    else:
        chosen = [f for f in target.statements if f.prepares == name]
        if not chosen:
            chosen = list(target.statements)
        if not chosen:
            return None
        facts = chosen[0]
        for extra in chosen[1:]:
            facts = merge_facts(facts, extra)
    if facts.kind == "prepare":
        # Judge what EXECUTE runs, not the act of preparing it.
        facts = dataclasses.replace(facts, kinds=facts.kinds - {"prepare"}, prepares=None)
    return facts


# --------------------------------------------------------------------------
# YAML with line numbers

Path_ = tuple[str | int, ...]


def format_path(path: Iterable[str | int]) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


class _Marks:
    """Line numbers of every key and list item of a YAML document."""

    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.lines: dict[Path_, int] = {(): 1}

    def line(self, path: Iterable[str | int]) -> int:
        p = tuple(path)
        while p and p not in self.lines:
            p = p[:-1]
        return self.lines.get(p, 1)

    def problem(self, path: Iterable[str | int], message: str) -> Problem:
        p = tuple(path)
        return Problem(self.filename, self.line(p), format_path(p), message)


_CONSTRUCTOR = yaml.SafeLoader


def load_yaml(text: str, filename: str) -> tuple[Any, _Marks]:
    """Parse YAML into plain data plus the line of every key (duplicate keys are errors)."""
    marks = _Marks(filename)
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 0
        raise PolicyError([Problem(filename, line, "", f"invalid YAML: {exc.problem or exc}")]) from None
    except yaml.YAMLError as exc:
        raise PolicyError([Problem(filename, 0, "", f"invalid YAML: {exc}")]) from None
    if node is None:
        raise PolicyError([Problem(filename, 1, "", "empty file")])
    problems: list[Problem] = []
    data = _construct(node, (), marks, problems)
    if problems:
        raise PolicyError(problems)
    return data, marks


def _construct(node: yaml.Node, path: Path_, marks: _Marks, problems: list[Problem]) -> Any:
    if isinstance(node, yaml.MappingNode):
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = _scalar(key_node)
            if not isinstance(key, str):
                key = str(key)
            sub = path + (key,)
            if key in out:
                problems.append(
                    Problem(marks.filename, key_node.start_mark.line + 1, format_path(sub), "duplicate key")
                )
            marks.lines[sub] = key_node.start_mark.line + 1
            out[key] = _construct(value_node, sub, marks, problems)
        return out
    if isinstance(node, yaml.SequenceNode):
        items = []
        for i, item in enumerate(node.value):
            sub = path + (i,)
            marks.lines[sub] = item.start_mark.line + 1
            items.append(_construct(item, sub, marks, problems))
        return items
    return _scalar(node)


def _scalar(node: yaml.Node) -> Any:
    if not isinstance(node, yaml.ScalarNode):
        return repr(node)
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_object(node, deep=True)
    finally:
        loader.dispose()


# --------------------------------------------------------------------------
# schema validation and building


@lru_cache(maxsize=1)
def load_schema() -> dict[str, Any]:
    """The policy JSON Schema shipped as ``pgjit/policy/schema.json``."""
    text = resources.files("pgjit.policy").joinpath("schema.json").read_text(encoding="utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


def _schema_problems(data: Any, marks: _Marks, ref: str | None = None) -> list[Problem]:
    import jsonschema

    schema = load_schema()
    if ref is not None:
        schema = {"$ref": ref, "$defs": schema["$defs"]}
    validator = jsonschema.Draft202012Validator(schema)
    problems: list[Problem] = []
    for error in sorted(validator.iter_errors(data), key=lambda e: list(map(str, e.absolute_path))):
        for path, message in _describe(error):
            problem = marks.problem(path, message)
            if problem not in problems:
                problems.append(problem)
    return sorted(problems, key=lambda p: p.line)


def _describe(error: Any) -> list[tuple[Path_, str]]:
    """Turn a jsonschema error into (path, message) pairs a DBA can act on."""
    path: Path_ = tuple(error.absolute_path)
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = set(error.schema.get("properties", {}))
        return [
            (path + (extra,), f"unknown key (expected one of: {', '.join(sorted(allowed))})")
            for extra in sorted(k for k in error.instance if k not in allowed)
        ]
    if error.validator == "anyOf" and error.context:
        # Explain the alternative whose type fits the value; if none fits, say so.
        branches: dict[Any, list[Any]] = {}
        for sub in error.context:
            branches.setdefault(sub.schema_path[0], []).append(sub)
        def fails_at_root(subs: list[Any], validators: tuple[str, ...]) -> bool:
            return any(s.validator in validators and not s.relative_path for s in subs)

        fitting = [b for b in branches.values() if not fails_at_root(b, ("type", "const", "enum"))]
        if len(fitting) != 1:
            fitting = [b for b in branches.values() if not fails_at_root(b, ("type",))]
        if len(fitting) == 1:
            out: list[tuple[Path_, str]] = []
            for sub in fitting[0]:
                out.extend(_describe(sub))
            return out
        return [(path, f"invalid value {error.instance!r}")]
    if error.validator == "enum":
        return [(path, f"{error.instance!r} is not one of {', '.join(map(str, error.validator_value))}")]
    return [(path, error.message)]


def _globs(value: str | list[str]) -> tuple[str, ...]:
    return (value,) if isinstance(value, str) else tuple(value)


def _is_glob(pattern: str) -> bool:
    return any(ch in pattern for ch in "*?[")


def _build_match(match_raw: dict[str, Any], path: Path_, marks: _Marks, problems: list[Problem]) -> Match:
    globs: list[tuple[str, _Globs]] = []
    for key in LIST_KEYS:
        if key not in match_raw:
            continue
        patterns = _globs(match_raw[key])
        for j, pattern in enumerate(patterns):
            where = path + (key,) + ((j,) if isinstance(match_raw[key], list) else ())
            if key == "kind" and not _is_glob(pattern) and pattern.lower() not in KINDS:
                problems.append(marks.problem(where, f"unknown statement kind {pattern!r}"))
            if key == "dangerous" and pattern != "*" and pattern not in CATEGORY_NAMES:
                problems.append(marks.problem(where, f"unknown dangerous category {pattern!r}"))
        globs.append((key, _Globs.of(key, patterns)))
    flags = tuple((key, bool(match_raw[key])) for key in BOOL_KEYS if key in match_raw)
    return Match(tuple(globs), flags)


def _build(data: Any, marks: _Marks, filename: str) -> Policy:
    problems = _schema_problems(data, marks)
    if problems:
        raise PolicyError(problems)
    rules: list[Rule] = []
    seen: dict[str, int] = {}
    for i, raw in enumerate(data.get("rules", [])):
        path: Path_ = ("rules", i)
        name = raw["name"]
        if name.startswith("pgjit:"):
            problems.append(marks.problem(path + ("name",), "rule names starting with 'pgjit:' are reserved"))
        if name in seen:
            problems.append(marks.problem(path + ("name",), f"duplicate rule name {name!r} (first at rules[{seen[name]}])"))
        seen.setdefault(name, i)
        match = _build_match(raw.get("match") or {}, path + ("match",), marks, problems)
        unless = None
        if "unless" in raw:
            unless = _build_match(raw.get("unless") or {}, path + ("unless",), marks, problems)
        rules.append(
            Rule(
                name=name,
                action=raw["action"],
                groups=tuple(raw.get("groups", ["*"])),
                match=match,
                unless=unless,
                message=raw.get("message"),
                hint=raw.get("hint"),
                line=marks.line(path),
                approvers=tuple(raw.get("approvers", ())),
                approvals=int(raw.get("approvals", 1)),
                evidence=bool(raw.get("evidence", False)),
            )
        )

    access: list[AccessEntry] = []
    for i, raw in enumerate(data.get("access", [])):
        path = ("access", i)
        try:
            lifetime = parse_duration(raw.get("jit_lifetime", DEFAULT_JIT_LIFETIME))
        except ValueError as exc:
            problems.append(marks.problem(path + ("jit_lifetime",), str(exc)))
            lifetime = DEFAULT_JIT_LIFETIME
        try:
            max_session = parse_duration(raw.get("max_session", DEFAULT_MAX_SESSION))
        except ValueError as exc:
            problems.append(marks.problem(path + ("max_session",), str(exc)))
            max_session = DEFAULT_MAX_SESSION
        settings: list[tuple[str, str]] = []
        for key, value in (raw.get("settings") or {}).items():
            if key == "default_transaction_read_only":
                on = value is True or str(value).lower() in ("on", "true")
                settings.append((key, "on" if on else "off"))
            else:
                try:
                    settings.append((key, f"{_duration_ms(value)}ms"))
                except ValueError as exc:
                    problems.append(marks.problem(path + ("settings", key), str(exc)))
        access.append(
            AccessEntry(
                group=raw["group"],
                grant=tuple(raw["grant"]),
                jit_lifetime=lifetime,
                max_session=max_session,
                settings=tuple(settings),
                line=marks.line(path),
                owner=raw.get("owner"),
            )
        )
    tests = tuple(_test_cases(data.get("tests", []), ("tests",), marks))
    masking: tuple[Any, ...] = ()
    if data.get("masking"):
        from pgjit.masking.rules import MaskRuleError, parse_rules

        try:
            masking = parse_rules(data["masking"], lambda i: marks.line(("masking", i)))
        except MaskRuleError as exc:
            problems.append(marks.problem(("masking",), str(exc)))
    if problems:
        raise PolicyError(problems)
    return Policy(
        filename=filename,
        version=data["version"],
        description=data.get("description", ""),
        access=tuple(access),
        rules=tuple(rules),
        default=data.get("default", "deny"),
        default_message=data.get("default_message"),
        default_hint=data.get("default_hint"),
        tests=tests,
        masking=masking,
    )


def _test_cases(raw_cases: list[Any], base: Path_, marks: _Marks) -> list[TestCase]:
    out: list[TestCase] = []
    for i, raw in enumerate(raw_cases):
        groups: tuple[str, ...]
        if "groups" in raw:
            groups = tuple(raw["groups"])
        elif "group" in raw:
            groups = (raw["group"],)
        else:
            groups = ()
        expect = raw["expect"]
        out.append(
            TestCase(
                sql=raw["sql"],
                expect="require_approval" if expect == "approval" else expect,
                groups=groups,
                rule=raw.get("rule"),
                check_rule="rule" in raw,
                name=raw.get("name") or f"{format_path(base + (i,))}",
                filename=marks.filename,
                line=marks.line(base + (i,)),
                masks=tuple(raw["masks"]) if "masks" in raw else None,
            )
        )
    return out


def load_test_file(path: str | Path) -> tuple[str | None, list[TestCase]]:
    """Read a ``<policy>.tests.yaml`` file: (the policy path it names, if any; its cases)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyError([Problem(str(path), 0, "", f"cannot read: {exc.strerror}")]) from None
    data, marks = load_yaml(text, str(path))
    problems = _schema_problems(data, marks, ref="#/$defs/tests_file")
    if problems:
        raise PolicyError(problems)
    if isinstance(data, list):
        return None, _test_cases(data, (), marks)
    policy = data.get("policy")
    if policy is not None:
        policy = str(path.parent / policy)
    return policy, _test_cases(data["tests"], ("tests",), marks)


def kinds_matching(pattern: str) -> list[str]:
    """The known statement kinds a kind glob matches."""
    return sorted(k for k in KINDS if fnmatchcase(k, pattern.lower()))
