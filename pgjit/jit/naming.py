"""Names for just-in-time roles, and the only way text gets into admin SQL.

A JIT role is called ``<prefix><slug>_<random>``:

* ``slug`` is the person's identifier (an e-mail, a subject claim) lowercased
  and reduced to runs of ``[a-z0-9]`` joined by ``_`` — readable in
  ``pg_stat_activity`` and logs, and free of anything SQL could trip on. For
  an e-mail address only the local part is used (``Alice.O'Brien@example.com``
  -> ``alice_o_brien``); the full identifier is in the role's COMMENT;
* ``random`` is 16 characters of lowercase base32 from :mod:`secrets` (80
  bits), never truncated, so two sessions of the same person — or two people
  whose identifiers slug alike — never collide;
* the whole name fits PostgreSQL's NAMEDATALEN-1 (63 bytes), so the server
  never silently truncates it (a truncated name could collide).

Every identifier and literal pgjit puts into SQL goes through
:func:`quote_ident` / :func:`quote_literal`; claim data is never formatted
into SQL any other way.
"""

from __future__ import annotations

import base64
import re
import secrets

#: PostgreSQL's NAMEDATALEN - 1: the longest identifier it keeps untruncated.
MAX_NAME_BYTES = 63
#: Characters of base32 randomness at the end of every JIT role name.
RANDOM_CHARS = 16
_RANDOM_BYTES = 10  # 80 bits -> exactly 16 base32 characters, no padding

_SLUG_RUN = re.compile(r"[a-z0-9]+")
_PREFIX = re.compile(r"[a-z_][a-z0-9_]*\Z")


def _check_prefix(prefix: str) -> None:
    if not _PREFIX.match(prefix):
        raise ValueError(f"JIT role prefix must match [a-z_][a-z0-9_]*, got {prefix!r}")
    # Room for "anon" + "_" + the random part.
    if len(prefix) > MAX_NAME_BYTES - RANDOM_CHARS - 1 - 4:
        raise ValueError(f"JIT role prefix {prefix!r} is too long")


def slugify(person: str) -> str:
    """``Alice.O'Brien@example.com`` -> ``alice_o_brien``; ``"; drop`` -> ``drop``."""
    text = person.lower()
    local, at, _domain = text.rpartition("@")
    if at and _SLUG_RUN.search(local):
        text = local
    return "_".join(_SLUG_RUN.findall(text))


def random_part() -> str:
    return base64.b32encode(secrets.token_bytes(_RANDOM_BYTES)).decode("ascii").lower()


def role_name(person: str, prefix: str = "pgjit_") -> str:
    """A fresh, unique, SQL-safe role name for one session of ``person``."""
    _check_prefix(prefix)
    room = MAX_NAME_BYTES - len(prefix) - 1 - RANDOM_CHARS
    slug = slugify(person)[:room].strip("_") or "anon"
    name = f"{prefix}{slug}_{random_part()}"
    assert len(name.encode("ascii")) <= MAX_NAME_BYTES
    return name


def jit_name_pattern(prefix: str = "pgjit_") -> re.Pattern[str]:
    """What :func:`role_name` produces; the broker revokes nothing else."""
    _check_prefix(prefix)
    return re.compile(re.escape(prefix) + r"[a-z0-9_]+_[a-z2-7]{%d}\Z" % RANDOM_CHARS)


def is_jit_role_name(name: str, prefix: str = "pgjit_") -> bool:
    return len(name.encode("utf-8")) <= MAX_NAME_BYTES and bool(jit_name_pattern(prefix).match(name))


def _check_text(s: str, what: str) -> bytes:
    if not isinstance(s, str):
        raise TypeError(f"{what} must be str, got {type(s).__name__}")
    if "\x00" in s:
        raise ValueError(f"{what} must not contain NUL")
    try:
        return s.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{what} is not valid Unicode (lone surrogate)") from None


def quote_ident(s: str) -> str:
    """A double-quoted SQL identifier (``"`` doubled). Refuses NUL, empty
    names and names PostgreSQL would truncate (more than 63 bytes)."""
    raw = _check_text(s, "identifier")
    if not raw:
        raise ValueError("identifier must not be empty")
    if len(raw) > MAX_NAME_BYTES:
        raise ValueError(f"identifier longer than {MAX_NAME_BYTES} bytes would be truncated by PostgreSQL")
    return '"' + s.replace('"', '""') + '"'


def quote_literal(s: str) -> str:
    """A SQL string literal, safe whatever ``standard_conforming_strings`` is.

    Like PostgreSQL's own ``quote_literal``: ``'`` is doubled; if the text
    holds a backslash, the ``E'…'`` form is used with backslashes doubled, so
    a backslash can never escape the closing quote. NUL is refused (a
    PostgreSQL text value cannot hold it)."""
    _check_text(s, "literal")
    body = s.replace("'", "''")
    if "\\" in s:
        return "E'" + body.replace("\\", "\\\\") + "'"
    return "'" + body + "'"


def like_escape(s: str) -> str:
    """``s`` as a LIKE pattern that matches only itself (default escape ``\\``)."""
    return s.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


__all__ = [
    "MAX_NAME_BYTES",
    "RANDOM_CHARS",
    "is_jit_role_name",
    "jit_name_pattern",
    "like_escape",
    "quote_ident",
    "quote_literal",
    "role_name",
    "slugify",
]
