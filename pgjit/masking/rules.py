"""The ``masking:`` rules of a policy file, mask functions and content detectors.

A rule names what is sensitive — columns (``schema.table.column`` globs),
column names in any table (globs), and content (detectors: email, payment
card with a Luhn check, US SSN, IBAN with its checksum, phone, JWT, API
keys, private keys, custom regular expressions) — whom it masks (groups,
minus ``except_groups``), how (``function``), and what happens to a computed
output column derived from a masked one (``computed: refuse | mask``).

A session's :class:`MaskProfile` is the rules that apply to its groups. Pure
data and functions: no I/O.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

FUNCTIONS = ("redact", "partial", "hash", "null", "email")
COMPUTED = ("refuse", "mask")
DEFAULT_TEXT = "****"


class MaskRuleError(ValueError):
    """A masking rule that cannot be used (bad regex, unknown detector ...)."""


def _luhn(digits: str) -> bool:
    total, alt = 0, False
    for ch in reversed(digits):
        d = ord(ch) - 48
        if alt:
            d *= 2
            if d > 9:
                d -= 9
        total += d
        alt = not alt
    return total % 10 == 0


def _card_ok(match: str) -> bool:
    digits = re.sub(r"[ -]", "", match)
    return 13 <= len(digits) <= 19 and _luhn(digits)


def _iban_ok(match: str) -> bool:
    s = match.replace(" ", "").upper()
    s = s[4:] + s[:4]
    try:
        return int("".join(str(int(c, 36)) for c in s)) % 97 == 1
    except ValueError:
        return False


def _always(match: str) -> bool:
    return True


#: name -> (pattern, check of a match)
DETECTORS: dict[str, tuple[str, Callable[[str], bool]]] = {
    "email": (r"[A-Za-z0-9._%+'-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}", _always),
    "payment_card": (r"(?<![0-9])[0-9](?:[ -]?[0-9]){12,18}(?![0-9])", _card_ok),
    "us_ssn": (r"(?<![0-9])[0-9]{3}-[0-9]{2}-[0-9]{4}(?![0-9])", _always),
    "iban": (r"(?<![A-Za-z0-9])[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]){11,30}(?![A-Za-z0-9])", _iban_ok),
    "phone": (r"(?<![0-9A-Za-z])\+?[0-9]{1,3}?[ .-]?\(?[0-9]{3}\)?[ .-]?[0-9]{3}[ .-]?[0-9]{4}(?![0-9])", _always),
    "jwt": (r"eyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*", _always),
    "api_key": (r"(?:\b(?:sk|pk|rk)_(?:live|test)_[A-Za-z0-9]{16,}|\bAKIA[0-9A-Z]{16}\b|\bgh[pousr]_[A-Za-z0-9]{36,}"
                r"|\bxox[abprs]-[A-Za-z0-9-]{10,}|\bAIza[0-9A-Za-z_-]{35})", _always),
    "private_key": (r"-----BEGIN [A-Z ]*PRIVATE KEY-----(?:[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----|[\s\S]*)", _always),
}


@dataclass(frozen=True)
class MaskRule:
    name: str
    groups: tuple[str, ...] = ("*",)
    except_groups: tuple[str, ...] = ()
    columns: tuple[str, ...] = ()  # schema.table.column globs
    column_names: tuple[str, ...] = ()  # column-name globs, any table
    detect: tuple[str, ...] = ()
    regex: tuple[str, ...] = ()
    function: str = "redact"
    keep: int = 4
    text: str = DEFAULT_TEXT
    computed: str = "refuse"
    line: int = 0

    def applies_to(self, groups: frozenset[str]) -> bool:
        if any(g in groups for g in self.except_groups):
            return False
        return "*" in self.groups or any(g in groups for g in self.groups)

    def masks_column(self, schema: str, table: str, column: str) -> bool:
        if any(fnmatch.fnmatchcase(column, p) for p in self.column_names):
            return True
        q = f"{schema}.{table}.{column}"
        return any(fnmatch.fnmatchcase(q, p) for p in self.columns)

    def may_hold(self, schema: str | None, table: str) -> bool:
        """Could a column of this relation be masked by this rule (its
        columns unknown)? Column-name rules may match any relation; a
        schema of None is any schema (an unqualified name not resolved)."""
        if self.column_names:
            return True
        for p in self.columns:
            s, t, _ = p.split(".")
            if fnmatch.fnmatchcase(table, t) and (schema is None or fnmatch.fnmatchcase(schema, s)):
                return True
        return False


def parse_rules(raw: Iterable[dict[str, Any]], line_of: Callable[[int], int] | None = None) -> tuple[MaskRule, ...]:
    """Rules from a policy file's ``masking:`` list (already schema-checked)."""
    out: list[MaskRule] = []
    seen: set[str] = set()
    for i, r in enumerate(raw):
        name = str(r["name"])
        if name in seen:
            raise MaskRuleError(f"masking[{i}]: duplicate masking rule name {name!r}")
        seen.add(name)
        detect = tuple(r.get("detect", ()))
        for d in detect:
            if d not in DETECTORS:
                raise MaskRuleError(f"masking[{i}] ({name}): unknown detector {d!r}; known: {', '.join(DETECTORS)}")
        regex = tuple(r.get("regex", ()))
        for x in regex:
            try:
                re.compile(x)
            except re.error as e:
                raise MaskRuleError(f"masking[{i}] ({name}): bad regex {x!r}: {e}") from None
        cols = tuple(r.get("columns", ()))
        for c in cols:
            if c.count(".") != 2:
                raise MaskRuleError(f"masking[{i}] ({name}): column {c!r} is not schema.table.column (globs allowed)")
        function = r.get("function", "redact")
        if function not in FUNCTIONS:
            raise MaskRuleError(f"masking[{i}] ({name}): unknown function {function!r}; known: {', '.join(FUNCTIONS)}")
        computed = r.get("computed", "refuse")
        if computed not in COMPUTED:
            raise MaskRuleError(f"masking[{i}] ({name}): computed must be refuse or mask")
        if not (cols or r.get("column_names") or detect or regex):
            raise MaskRuleError(f"masking[{i}] ({name}): names no columns, column_names, detect or regex")
        out.append(MaskRule(
            name=name, groups=tuple(r.get("groups", ("*",))), except_groups=tuple(r.get("except_groups", ())),
            columns=cols, column_names=tuple(r.get("column_names", ())), detect=detect, regex=regex,
            function=function, keep=int(r.get("keep", 4)), text=str(r.get("text", DEFAULT_TEXT)), computed=computed,
            line=line_of(i) if line_of else 0))
    return tuple(out)


# --------------------------------------------------------------- functions

def mask_text(rule: MaskRule, value: str, key: bytes) -> str | None:
    """``value`` masked by ``rule``'s function (None: SQL NULL)."""
    f = rule.function
    if f == "null":
        return None
    if f == "partial":
        keep = max(0, rule.keep)
        if len(value) <= keep * 2:  # a short value would be mostly shown: hide it all
            return "*" * len(value)
        return "*" * (len(value) - keep) + value[-keep:] if keep else "*" * len(value)
    if f == "hash":
        return "h_" + hmac.new(key, value.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()[:24]
    if f == "email":
        local, at, domain = value.partition("@")
        if at and local and domain:
            return f"{local[0]}***@{domain}"
        return rule.text
    return rule.text


@dataclass
class MaskProfile:
    """The masking rules that apply to one session's groups."""

    rules: tuple[MaskRule, ...]
    key: bytes = field(repr=False, default=b"")
    _detectors: list[tuple[MaskRule, re.Pattern[str], Callable[[str], bool]]] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        for r in self.rules:
            for d in r.detect:
                pattern, check = DETECTORS[d]
                self._detectors.append((r, re.compile(pattern), check))
            for x in r.regex:
                self._detectors.append((r, re.compile(x), _always))

    @classmethod
    def for_groups(cls, rules: Iterable[MaskRule], groups: frozenset[str], key: bytes) -> "MaskProfile | None":
        mine = tuple(r for r in rules if r.applies_to(groups))
        return cls(mine, key) if mine else None

    @property
    def detects(self) -> bool:
        return bool(self._detectors)

    @property
    def has_columns(self) -> bool:
        return any(r.columns or r.column_names for r in self.rules)

    def column_rule(self, schema: str, table: str, column: str) -> MaskRule | None:
        for r in self.rules:
            if (r.columns or r.column_names) and r.masks_column(schema, table, column):
                return r
        return None

    def may_hold(self, schema: str | None, table: str) -> bool:
        return any(r.may_hold(schema, table) for r in self.rules)

    def refuses_computed(self, rule: MaskRule | None) -> bool:
        if rule is not None:
            return rule.computed == "refuse"
        return any(r.computed == "refuse" for r in self.rules)

    def mask(self, rule: MaskRule, value: str) -> str | None:
        return mask_text(rule, value, self.key)

    def scrub(self, text: str) -> str:
        """``text`` with every detector's match masked."""
        for rule, pattern, check in self._detectors:
            if pattern.search(text) is None:
                continue

            def sub(m: re.Match[str], rule: MaskRule = rule, check: Callable[[str], bool] = check) -> str:
                s = m.group(0)
                if not check(s):
                    return s
                masked = mask_text(rule, s, self.key)
                return rule.text if masked is None else masked

            text = pattern.sub(sub, text)
        return text
