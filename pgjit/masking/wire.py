"""The result filter: a masked session's server messages, masked.

The relay tells a :class:`Masker` each client message the server answers,
in order (``on_query``, ``on_parse``, ``on_bind``, ``on_describe``,
``on_execute``, ``on_sync``, ``on_close``, ``on_refused``), and hands it
every byte the server sends (``server_bytes``). Like the relay's statement
queue, it matches the server's replies to those messages in order, so it
knows which statement's :class:`pgjit.masking.lineage.Part` each
RowDescription, DataRow, CopyData and ErrorResponse belongs to:

* at RowDescription every result column is resolved twice — from the
  server's own (table OID, attribute number) through the catalog, and from
  pgjit's lineage of the statement — and masked when either says so; a
  computed column (OID 0) where the lineage cannot place its columns is
  masked whole (fail closed);
* DataRow values are masked in text and binary formats: a text-like value
  gets the rule's function (redact, partial, hash, email), a value of any
  other type becomes NULL (never bytes its type could not parse);
* COPY TO STDOUT rows (text and csv, default delimiters) are masked the
  same way, column by column;
* ErrorResponse and NoticeResponse of a statement that touches masked
  columns lose their message, DETAIL, WHERE, CONTEXT and HINT (cast errors
  and unique violations would show values), except for error classes that
  carry no values (syntax, undefined objects, permissions);
* content detectors scan every text value, error field and notification
  payload.

I/O-free: bytes in, bytes out.
"""

from __future__ import annotations

import collections
import functools
import json
import struct
from dataclasses import dataclass
from typing import Any, Callable

from pgjit.masking.lineage import Out, Part, Refusal, column_rule, plan_cached
from pgjit.masking.rules import MaskProfile, MaskRule
from pgjit.protocol import messages as m

try:  # the C loop (setup.py); the same results as rows_py, which is the reference
    from pgjit.masking._rows import rows
except ImportError:  # pragma: no cover - only where it could not be built
    rows = None  # type: ignore[assignment]

_U32 = struct.Struct("!I")
_I32 = struct.Struct("!i")
_U16 = struct.Struct("!H")

# Types whose text and binary forms are the text itself (UTF-8).
_TEXT_TYPES = frozenset({25, 1043, 1042, 19, 705, 18, 0})
_JSON, _JSONB = 114, 3802
# Types a detector never looks into (numbers, booleans, dates, uuids ...).
_NO_SCAN = frozenset({16, 20, 21, 23, 26, 700, 701, 1700, 1082, 1083, 1114, 1184, 1186, 1266, 2950, 790})
_SCANNED_BINARY = _TEXT_TYPES | {_JSON}
# Error classes whose messages carry names, not values.
_SAFE_CLASSES = ("42", "0A", "25", "26", "28", "34", "3D", "3F", "40", "53", "54", "55", "57", "08")
_HIDDEN = "pgjit hid this error's text: the statement reads or writes masked columns"


@dataclass
class Col:
    rule: MaskRule | None  # None: shown as it is
    whole: bool  # computed from masked values: the whole value goes
    type_oid: int
    format: int


#: A statement the masking rules refuse (the relay answers 42501).
Refused = Refusal

#: The plan of a statement pgjit did not see: anything in it may be masked.
UNKNOWN = Part(None, True, True)


class Masker:
    def __init__(self, profile: MaskProfile, catalog: Callable[[], Any], resolver: Callable[[], Any] = lambda: None,
                 on_stale: Callable[[], None] = lambda: None) -> None:
        self.profile = profile
        self.on_stale = on_stale  # the catalog snapshot is behind the server: ask for a fresh one
        self._catalog = catalog
        self._resolver = resolver
        self.prepared: dict[str, Part | None] = {}  # statement name (protocol and SQL PREPARE) -> its part
        self.portals: dict[str, tuple[Part | None, tuple[int, ...], str]] = {}  # portal -> part, result formats, statement
        self.cursors: dict[str, Part] = {}
        self.stmt_desc: dict[str, tuple[m.FieldDescription, ...]] = {}
        self.portal_desc: dict[str, tuple[m.FieldDescription, ...]] = {}
        # The replies the server owes, in order: [kind, data]
        #   Q [parts, index]   P   B   D (kind, name)   E (portal)   S   C   R (a refusal's stand-in)
        self._fifo: collections.deque[list[Any]] = collections.deque()
        # The result being relayed, as _rows.rows takes it (None: nothing in it
        # to mask), once known (its RowDescription, or its Execute's portal).
        self._spec: tuple[Any, ...] | None = None
        self._spec_set = False
        self._copy: tuple[Part, list[Col] | None, str, bool] | None = None  # part, cols, format, header still to come

    # ------------------------------------------------------------ client

    def _plan(self, sql: bytes) -> list[Part]:
        parts = plan_cached(sql, self._catalog(), self.profile, self._resolver())
        for i, p in enumerate(parts):
            if p.prepares is not None:
                self.prepared[p.prepares] = p
            if p.executes is not None:
                if p.executes not in self.prepared:
                    raise Refused("pgjit:masking", f'pgjit did not see prepared statement "{p.executes}" prepared, '
                                                   "so it cannot tell which of its columns to mask")
                parts[i] = self.prepared[p.executes] or UNKNOWN
            if p.declares is not None:
                self.cursors[p.declares] = p
            if p.fetches is not None:
                cur = self.cursors.get(p.fetches)
                if cur is None:
                    raise Refused("pgjit:masking", f'pgjit did not see cursor "{p.fetches}" declared, '
                                                   "so it cannot tell which of its columns to mask")
                parts[i] = Part(cur.outputs, cur.any_taint, cur.touches)
        return parts

    def on_query(self, sql: bytes) -> None:
        """A Query the gate allowed; raises Refused (then call on_refused)."""
        parts = self._plan(sql)
        self._fifo.append(["Q", [parts, 0]])

    def on_parse(self, name: str, sql: bytes) -> None:
        parts = self._plan(sql)
        self.prepared[name] = parts[0] if parts else Part([], False, False)
        self.stmt_desc.pop(name, None)
        self._fifo.append(["P", name])

    def on_refused(self, *, sync: bool, replaces: bool = False) -> None:
        """A refused message's stand-in went up (its error comes back as is):
        a Bind to a missing statement, and a Sync of its own with ``sync``."""
        if replaces and self._fifo and self._fifo[-1][0] in ("Q", "E"):
            self._fifo.pop()
        self._fifo.append(["R", None])
        if sync:
            self._fifo.append(["S", None])

    def on_bind(self, body: bytes) -> None:
        try:
            b = m.Bind.decode(body)
        except Exception:
            self._fifo.append(["B", None])
            return
        self.portals[b.portal] = (self.prepared.get(b.statement, UNKNOWN), b.result_formats, b.statement)
        self.portal_desc.pop(b.portal, None)
        self._fifo.append(["B", None])

    def on_describe(self, kind: str, name: str) -> None:
        self._fifo.append(["D", (kind, name)])

    def on_execute(self, portal: str) -> None:
        self._fifo.append(["E", portal])

    def on_sync(self) -> None:
        self._fifo.append(["S", None])

    def on_close(self) -> None:
        self._fifo.append(["C", None])

    # ------------------------------------------------------------ server

    def _part(self) -> Part | None:
        """The statement the head of the queue is answering (None: unknown)."""
        if not self._fifo:
            return None
        kind, data = self._fifo[0]
        if kind == "Q":
            parts, i = data
            return parts[i] if i < len(parts) else None
        if kind == "E":
            p = self.portals.get(data)
            return p[0] if p else None
        return None

    def server_bytes(self, data: bytes | bytearray | memoryview) -> bytes:
        """Complete backend frames -> the same, masked."""
        buf = bytes(data)
        out: list[bytes] = []
        pos, n = 0, len(buf)
        seg = 0
        while pos + 5 <= n:
            tag = buf[pos]
            if tag == 68:  # a run of DataRows, in C (_rows.rows)
                if not self._spec_set:
                    self._spec, self._spec_set = self._execute_spec(), True
                stop, new, _ = rows(buf, pos, self._spec)
                if stop == pos:
                    raise ValueError("malformed DataRow message from the server")
                if new is not None:
                    out.append(buf[seg:pos])
                    out.append(new)
                    seg = stop
                pos = stop
                continue
            stop = pos + 1 + _U32.unpack_from(buf, pos + 1)[0]
            body = buf[pos + 5 : stop]
            new = self._frame(tag, body)
            if new is not None:
                out.append(buf[seg:pos])
                out.append(new)
                seg = stop
            pos = stop
        if seg == 0:
            return buf
        out.append(buf[seg:])
        return b"".join(out)

    def _frame(self, tag: int, body: bytes) -> bytes | None:
        q = self._fifo
        if tag == 84:  # T RowDescription
            fields = m.RowDescription.decode(body).fields
            if q and q[0][0] == "D":
                kind, name = q.popleft()[1]
                if kind == "S":
                    self.stmt_desc[name] = fields
                else:
                    self.portal_desc[name] = fields
                self._spec_set = False
            else:
                self._spec, self._spec_set = self._make_spec(self._columns(self._part(), fields, None)), True
            return None
        if tag == 67 or tag == 73:  # C CommandComplete, I EmptyQueryResponse
            self._spec_set = False
            self._copy = None
            if q:
                if q[0][0] == "Q":
                    q[0][1][1] += 1
                elif q[0][0] == "E":
                    q.popleft()
            return None
        if tag == 115:  # s PortalSuspended
            self._spec_set = False
            if q and q[0][0] == "E":
                q.popleft()
            return None
        if tag == 90:  # Z
            self._spec_set = False
            self._copy = None
            while q:
                kind, _ = q.popleft()
                if kind in ("Q", "S"):
                    break
            return None
        if tag == 69 or tag == 78:  # E ErrorResponse, N NoticeResponse
            refused = bool(q) and q[0][0] == "R"
            part = self._part()
            new = self._scrub_fields(tag, body, part, refused)
            if tag == 69:
                self._spec_set = False
                self._copy = None
                if q and q[0][0] != "Q":
                    while q and q[0][0] != "S":
                        q.popleft()
            return new
        if tag == 110:  # n NoData
            if q and q[0][0] == "D":
                q.popleft()
            return None
        if tag in (49, 50, 51):  # 1 2 3
            if q and q[0][0] in ("P", "B", "C"):
                q.popleft()
            return None
        if tag == 72:  # H CopyOutResponse
            part = self._part()
            self._copy_start(part, body)
            return None
        if tag == 100:  # d CopyData
            if self._copy is not None:
                return self._copy_row(body)
            return None
        if tag == 99:  # c CopyDone
            self._copy = None
            return None
        if tag == 65:  # A NotificationResponse
            if self.profile.detects:
                n = m.NotificationResponse.decode(body)
                payload = self.profile.scrub(n.payload)
                if payload != n.payload:
                    return m.NotificationResponse(n.process_id, n.channel, payload).encode()
            return None
        return None

    # ---------------------------------------------------------- columns

    def _origin(self, f: m.FieldDescription) -> MaskRule | None:
        if not f.table_oid:
            return None
        cat = self._catalog()
        rel = cat.relations.get(f.table_oid) if cat is not None else None
        if rel is None:
            self.on_stale()
            # A relation created since the catalog snapshot: a column-name rule still applies.
            for r in self.profile.rules:
                if r.column_names and r.masks_column("", "", f.name):
                    return r
            return None
        if 0 < f.column <= len(rel.columns):
            return column_rule(cat, self.profile, rel, rel.columns[f.column - 1])
        # A column the catalog snapshot does not show (added since): masked
        # whole until a fresh snapshot says otherwise, if the rules could
        # mask a column of this relation.
        self.on_stale()
        if self.profile.may_hold(rel.schema, rel.name):
            return self.profile.rules[0]
        return None

    def _columns(self, part: Part | None, fields: tuple[m.FieldDescription, ...],
                 formats: tuple[int, ...] | None) -> list[Col] | None:
        outs: list[Out] | None = part.outputs if part is not None else None
        known = outs is not None and len(outs) == len(fields)
        suspect = part is None or part.any_taint or (outs is not None and not known and part.touches)
        fallback = self.profile.rules[0]
        cols: list[Col] = []
        anything = False
        for i, f in enumerate(fields):
            fmt = f.format
            if formats is not None:
                fmt = formats[i] if len(formats) > 1 else (formats[0] if formats else 0)
            rule = self._origin(f)
            whole = False
            if known:
                t = outs[i].taint  # type: ignore[index]
                if t is not None:
                    rule = rule or t.rule
                    whole = not t.direct
            elif suspect and not f.table_oid and self.profile.has_columns:
                rule, whole = rule or fallback, True  # a computed column pgjit cannot place: all of it goes
            if rule is not None or self.profile.detects:
                anything = True
            cols.append(Col(rule, whole, f.type_oid, fmt))
        return cols if anything else None

    def _execute_spec(self) -> tuple[Any, ...] | None:
        """The first DataRow of an Execute: its portal's description. Rows
        whose description pgjit did not see lose every value (``()``: the
        types are unknown, so NULL), unless nothing in them can be masked."""
        q = self._fifo
        entry = self.portals.get(q[0][1]) if q and q[0][0] == "E" else None
        if entry is None:
            return ()
        part, formats, stmt = entry
        fields = self.portal_desc.get(q[0][1])
        if fields is not None:
            return self._make_spec(self._columns(part, fields, None))
        fields = self.stmt_desc.get(stmt)
        if fields is not None:
            return self._make_spec(self._columns(part, fields, formats))
        if not part.any_taint and not part.touches and not self.profile.detects:
            return None
        return ()

    # ------------------------------------------------------------ values

    def _value(self, col: Col, raw: bytes) -> bytes | None:
        t, fmt = col.type_oid, col.format
        rule = col.rule
        if rule is not None:
            if t in _TEXT_TYPES or t in (_JSON, _JSONB):
                text = rule.text if col.whole else self._mask_str(rule, raw, t, fmt)
                if text is None:
                    return None
                if t in (_JSON, _JSONB):
                    enc = json.dumps(text).encode()
                    return b"\x01" + enc if (t == _JSONB and fmt == 1) else enc
                return text.encode("utf-8")
            return None
        if self.profile.detects and (fmt == 0 and t not in _NO_SCAN or fmt == 1 and t in _SCANNED_BINARY):
            s = raw.decode("utf-8", "surrogateescape")
            scrubbed = self.profile.scrub(s)
            if scrubbed != s:
                return scrubbed.encode("utf-8", "surrogateescape")
        return raw

    def _mask_str(self, rule: MaskRule, raw: bytes, t: int, fmt: int) -> str | None:
        if t == _JSONB and fmt == 1:
            raw = raw[1:]
        s = raw.decode("utf-8", "surrogateescape")
        if t in (_JSON, _JSONB):
            try:
                v = json.loads(s)
                s = v if isinstance(v, str) else s
            except ValueError:
                pass
        return self.profile.mask(rule, s)

    def _make_spec(self, cols: list[Col] | None) -> tuple[Any, ...] | None:
        """``cols`` as _rows.rows takes them (see _rows.c)."""
        if cols is None:
            return None
        spec: list[Any] = []
        for col in cols:
            rule, t = col.rule, col.type_oid
            if rule is None:
                if self.profile.detects and (col.format == 0 and t not in _NO_SCAN or col.format == 1 and t in _SCANNED_BINARY):
                    spec.append(functools.partial(self._value, col))
                else:
                    spec.append(None)
                continue
            if t in _TEXT_TYPES:
                if col.whole or rule.function == "redact":
                    spec.append(rule.text.encode("utf-8"))
                elif rule.function == "null":
                    spec.append(-1)
                elif rule.function == "partial":
                    spec.append(max(0, rule.keep))
                else:
                    spec.append(functools.partial(self._value, col))
            elif t in (_JSON, _JSONB):
                spec.append(functools.partial(self._value, col))
            else:
                spec.append(-1)
        return tuple(spec)

    # -------------------------------------------------------------- COPY

    def _copy_start(self, part: Part | None, body: bytes) -> None:
        fmt_code = body[0] if body else 0
        if part is None:
            part = UNKNOWN
        plan_ = part.copy
        fmt = "binary" if fmt_code == 1 else (plan_.format if plan_ is not None else "text")
        outs = part.outputs
        cols: list[Col] | None = None
        if outs is not None:
            cols = [Col(o.taint.rule if o.taint else None, bool(o.taint and not o.taint.direct), 25, 0) for o in outs]
            if not any(c.rule for c in cols) and not self.profile.detects:
                cols = None
                self._copy = None
                return
        elif not part.any_taint and not part.touches and not self.profile.detects:
            self._copy = None
            return
        self._copy = (part, cols, fmt, bool(plan_ and plan_.header))

    def _copy_row(self, body: bytes) -> bytes | None:
        part, cols, fmt, header = self._copy  # type: ignore[misc]
        if fmt == "binary":
            # The lineage refuses a binary COPY of masked columns; should one
            # come anyway, none of its bytes go to the client.
            return _copy_data(b"")
        if cols is None and not part.any_taint and not part.touches:
            text = body.decode("utf-8", "surrogateescape")  # detectors only
            return _copy_data(self.profile.scrub(text).encode("utf-8", "surrogateescape"))
        if header:
            self._copy = (part, cols, fmt, False)
            return None
        text = body.decode("utf-8", "surrogateescape")
        nl = text.endswith("\n")
        line = text[:-1] if nl else text
        if fmt == "csv":
            fields = _csv_split(line)
        else:
            fields = line.split("\t")
        out_fields = []
        whole = Col(self.profile.rules[0], True, 25, 0)  # a column pgjit cannot place: all of it goes
        for i, f in enumerate(fields):
            col = cols[i] if cols is not None and i < len(cols) else whole
            null = (f == "\\N") if fmt == "text" else (f == "")
            if null:
                out_fields.append(f)
                continue
            value = _copy_unescape(f) if fmt == "text" else _csv_unquote(f)
            if col.rule is not None:
                masked = col.rule.text if col.whole else self.profile.mask(col.rule, value)
            elif self.profile.detects:
                masked = self.profile.scrub(value)
            else:
                out_fields.append(f)
                continue
            if masked is None:
                out_fields.append("\\N" if fmt == "text" else "")
            else:
                out_fields.append(_copy_escape(masked) if fmt == "text" else _csv_quote(masked))
        sep = "," if fmt == "csv" else "\t"
        return _copy_data((sep.join(out_fields) + ("\n" if nl else "")).encode("utf-8", "surrogateescape"))

    # ----------------------------------------------------------- errors

    def _scrub_fields(self, tag: int, body: bytes, part: Part | None, refused: bool) -> bytes | None:
        if refused:
            return None
        try:
            fields = m.ErrorResponse.decode(body).fields
        except Exception:
            return None
        code = next((v for k, v in fields if k == "C"), "")
        touches = part is None or part.touches or part.any_taint
        hide = touches and self.profile.has_columns and not code.startswith(_SAFE_CLASSES)
        out = []
        changed = False
        for k, v in fields:
            if k in ("M", "D", "W", "H", "q", "s", "t", "c", "d", "n"):
                if hide:
                    changed = True
                    if k == "M":
                        out.append((k, _HIDDEN))
                    continue
                if self.profile.detects:
                    s = self.profile.scrub(v)
                    if s != v:
                        changed = True
                        v = s
            out.append((k, v))
        if not changed:
            return None
        cls = m.ErrorResponse if tag == 69 else m.NoticeResponse
        return cls(tuple(out)).encode()


def _copy_data(payload: bytes) -> bytes:
    return b"d" + _U32.pack(len(payload) + 4) + payload


_UNESCAPE = {"t": "\t", "n": "\n", "r": "\r", "\\": "\\", "b": "\b", "f": "\f", "v": "\v"}


def _copy_unescape(f: str) -> str:
    if "\\" not in f:
        return f
    out = []
    i = 0
    while i < len(f):
        ch = f[i]
        if ch == "\\" and i + 1 < len(f):
            out.append(_UNESCAPE.get(f[i + 1], f[i + 1]))
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


def _copy_escape(s: str) -> str:
    return s.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def _csv_split(line: str) -> list[str]:
    out, cur, quoted, i = [], [], False, 0
    while i < len(line):
        ch = line[i]
        if quoted:
            if ch == '"':
                if i + 1 < len(line) and line[i + 1] == '"':
                    cur.append('""')
                    i += 2
                    continue
                quoted = False
            cur.append(ch)
        elif ch == '"':
            quoted = True
            cur.append(ch)
        elif ch == ",":
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
        i += 1
    out.append("".join(cur))
    return out


def _csv_unquote(f: str) -> str:
    if len(f) >= 2 and f[0] == '"' and f[-1] == '"':
        return f[1:-1].replace('""', '"')
    return f


def _csv_quote(s: str) -> str:
    return '"' + s.replace('"', '""') + '"'


def rows_py(buf: bytes, pos: int, spec: tuple[Any, ...] | None) -> tuple[int, bytes | None, int]:
    """The reference for _rows.rows (same arguments, same result)."""
    n, count = len(buf), 0
    out: list[bytes] = []
    while pos + 5 <= n and buf[pos] == 68:
        stop = pos + 1 + _U32.unpack_from(buf, pos + 1)[0]
        if stop > n or stop < pos + (5 if spec is None else 7):
            break
        if spec is not None:
            ncols = _U16.unpack_from(buf, pos + 5)[0]
            p = pos + 7
            vals = [buf[pos + 5 : pos + 7]]
            for c in range(ncols):
                if p + 4 > stop:
                    raise ValueError("malformed DataRow message from the server")
                ln = _I32.unpack_from(buf, p)[0]
                p += 4
                raw = b""
                if ln >= 0:
                    if p + ln > stop:
                        raise ValueError("malformed DataRow message from the server")
                    raw = buf[p : p + ln]
                    p += ln
                op = spec[c] if c < len(spec) else -1
                v: bytes | None
                if ln < 0 or (type(op) is int and op == -1):
                    v = None
                elif op is None:
                    v = raw
                elif isinstance(op, bytes):
                    v = op
                elif type(op) is int:
                    # Characters are counted as UTF-8 lead bytes (what the server sends is UTF-8).
                    starts = [i for i, byte in enumerate(raw) if byte & 0xC0 != 0x80]
                    keep = op
                    if keep <= 0 or len(starts) <= 2 * keep:
                        v = b"*" * len(starts)
                    else:
                        v = b"*" * (len(starts) - keep) + raw[starts[-keep]:]
                else:
                    v = op(raw)
                vals.append(b"\xff\xff\xff\xff" if v is None else _I32.pack(len(v)) + v)
            if p != stop:
                raise ValueError("malformed DataRow message from the server")
            body = b"".join(vals)
            out.append(b"D" + _U32.pack(len(body) + 4) + body)
        pos = stop
        count += 1
    return pos, (None if spec is None else b"".join(out)), count


if rows is None:  # pragma: no cover
    rows = rows_py  # noqa: F811
