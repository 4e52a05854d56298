"""Does a setting the server reports leave the lexer state the gate models?

The gate reads SQL as UTF-8 text with ``standard_conforming_strings`` on. The
server tells its client about changes to ``client_encoding`` and
``standard_conforming_strings`` itself (both are GUC_REPORT: a ParameterStatus
message in the startup greeting and before the ReadyForQuery that follows a
change), whatever made the change: a SET the gate saw, or ``set_config()`` in a
function, ``UPDATE pg_settings``, ``ALTER ROLE ... SET`` and other routes it
cannot see. The session ends when a report leaves the modelled state (see
Relay.from_server): from then on the server could split statements where the
gate does not.

Every PostgreSQL *server* encoding is fine: each byte of one of their
multi-byte characters is >= 0x80, so quotes, backslashes and the rest of the
ASCII syntax are where the gate sees them (and the gate refuses text that is
not UTF-8 before it parses it, so e.g. LATIN1 is safe too). The client-only
encodings (SJIS, SHIFT_JIS_2004, BIG5, GBK, UHC, GB18030, JOHAB) have second
bytes in the ASCII range, backslash among them. The server reports canonical
names (``pg_encoding_to_char``); anything else is a problem (fail closed).

This module never imports trio.
"""

from __future__ import annotations

from typing import Final

#: Canonical names of the encodings whose lexing is the gate's (upper case).
MODELLED_ENCODINGS: Final = frozenset(
    {"UTF8", "SQL_ASCII", "MULE_INTERNAL", "KOI8R", "KOI8U", "WIN866", "WIN874"}
    | {f"LATIN{i}" for i in range(1, 11)}
    | {f"WIN{i}" for i in range(1250, 1259)}
    | {f"ISO_8859_{i}" for i in range(5, 9)}
    | {"EUC_JP", "EUC_CN", "EUC_KR", "EUC_TW", "EUC_JIS_2004"}
)

#: The settings the server reports that the gate's lexing depends on.
LEXER_SETTINGS: Final = frozenset({"client_encoding", "standard_conforming_strings"})


def lexer_state_problem(name: str, value: str) -> str | None:
    """Why the server's report ``name = value`` leaves the lexer state the
    gate models, or None when it does not (or ``name`` is another setting)."""
    key = name.lower()
    if key == "standard_conforming_strings":
        if value.lower() != "on":
            return f"the server's standard_conforming_strings is now {value!r}"
        return None
    if key == "client_encoding":
        if value.upper() not in MODELLED_ENCODINGS:
            return f"the server's client_encoding is now {value!r}"
        return None
    return None
