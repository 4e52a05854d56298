"""The DBA's one-time setup SQL, read from ``SETUP.md`` beside this module.

``SETUP.md`` is the documentation a DBA follows; its SQL blocks are marked
``<!-- setup:<tag> -->`` (``cluster``, ``appdb``, ``pg16``). The tests and
``make demo`` run exactly those blocks, so the documentation cannot drift from
what is tested::

    from pgjit.jit.setupsql import statements
    for stmt in statements("cluster"):
        conn.execute(stmt)
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Final

__all__ = ["SETUP_MD", "TAGS", "statements"]

SETUP_MD: Final = Path(__file__).resolve().parent / "SETUP.md"
TAGS: Final = ("cluster", "appdb", "pg16")


def statements(tag: str, *, path: str | Path | None = None) -> list[str]:
    """The SQL statements of the ```sql block after ``<!-- setup:<tag> -->``.

    Lines that are ``--`` comments are dropped; the rest is split on ``;``
    (the setup SQL has no ``;`` inside literals). Raises :class:`LookupError`
    when ``SETUP.md`` has no such block.
    """
    text = Path(path or SETUP_MD).read_text(encoding="utf-8")
    mo = re.search(r"<!-- setup:%s -->\s*```sql\n(.*?)```" % re.escape(tag), text, re.S)
    if not mo:
        raise LookupError(f"no setup:{tag} block in {path or SETUP_MD}")
    sql = "\n".join(line for line in mo.group(1).splitlines() if not line.strip().startswith("--"))
    return [s.strip() for s in sql.split(";") if s.strip()]
