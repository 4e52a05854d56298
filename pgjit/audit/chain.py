"""The audit trail's integrity: a hash chain with signed checkpoints.

Every record a gateway process writes belongs to that process's chain (a
random id chosen at start) and has the next sequence number in it, starting
at 1. Its hash covers its own content and the previous record's hash:

    hash(n) = SHA-256( hash(n-1) || canonical(record n) )     hash(0) = 32 zero bytes

``canonical`` is the record's fields as JSON with sorted keys and no spaces,
so the same record hashes the same from the store, from an export, in any
language. Every ``checkpoint_every`` records (and when the process stops) the
writer appends a checkpoint record whose body holds an HMAC-SHA256, under
the key from the config, of (chain, seq, hash) of the record before it.
Without the key nobody can re-hash a chain after changing it: the next
checkpoint no longer matches.

``verify`` walks the records of each chain in sequence order and names every
record that was edited (its hash is not what its content gives), inserted (a
sequence number twice, or one that does not follow), deleted (a gap) or moved
(its predecessor's hash is not the one it was chained to), and every
checkpoint whose signature does not hold. It takes plain dicts, so it checks
the store and an export file alike.

What it cannot see: the tail of a chain after its last checkpoint removed
together with that checkpoint. The writer checkpoints often (by count and by
time) and at shutdown to keep that window small; an export kept elsewhere,
or a store the gateway can append to but not delete from, closes it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

GENESIS = "0" * 64

#: The fields of a record that its hash covers, in the order an export writes them.
FIELDS = ("chain", "seq", "kind", "at", "session_id", "person", "target", "decision", "body")


_encoder = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)
_encode_str = json.encoder.encode_basestring  # what _encoder does with a str (C)


def _make_encode():  # type: ignore[no-untyped-def]
    """``_encoder.encode``, minus the encoder object JSONEncoder.iterencode
    builds on every call: the C encoder made once (same output; CPython's
    json.encoder.c_make_encoder), else the plain method."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # pragma: no cover - no C accelerator
        return _encoder.encode
    enc = _encoder
    c = make(None, enc.default, _encode_str, None, enc.key_separator, enc.item_separator, True, False, True)
    join = "".join

    def encode(o: Any) -> str:
        return join(c(o, 0))

    return encode


_encode = _make_encode()


def canonical(record: dict[str, Any]) -> bytes:
    """The reference form (verify, exports): FIELDS as sorted-key JSON."""
    return _encode({k: record.get(k) for k in FIELDS}).encode("utf-8")


_SURROGATE = re.compile("[\ud800-\udfff]")


def scrub(value: Any) -> Any:
    """``value`` with every lone surrogate in its strings (text that was
    not UTF-8: a token's claim may hold one as a JSON escape) made U+FFFD,
    as statement texts are: what the store can hold and the hash covers."""
    t = type(value)
    if t is str:
        return _SURROGATE.sub("\ufffd", value)
    if t is dict:
        return {scrub(k): scrub(v) for k, v in value.items()}
    if t is list or t is tuple:
        return [scrub(v) for v in value]
    return value


def body_json(body: Any) -> str:
    """A record's body as canonical JSON: what the store keeps and what the
    record's hash covers."""
    return _encode(body)


def _js(v: Any) -> str:
    if v is None:
        return "null"
    t = type(v)
    if t is str:
        return _encode_str(v)
    if t is int:
        return int.__repr__(v)
    return _encode(v)


def canonical_with(record: dict[str, Any], body: str) -> bytes:
    """``canonical(record)`` built around its body's JSON, made once (the
    writer's path: the store keeps the same text). The keys in sorted
    order: at, body, chain, decision, kind, person, seq, session_id, target."""
    return (f'{{"at":{_js(record.get("at"))},"body":{body},"chain":{_js(record.get("chain"))},'
            f'"decision":{_js(record.get("decision"))},"kind":{_js(record.get("kind"))},'
            f'"person":{_js(record.get("person"))},"seq":{_js(record.get("seq"))},'
            f'"session_id":{_js(record.get("session_id"))},"target":{_js(record.get("target"))}}}').encode("utf-8")


def link(prev: str, record: dict[str, Any]) -> str:
    return hashlib.sha256(bytes.fromhex(prev) + canonical(record)).hexdigest()


def sign(key: bytes, chain: str, seq: int, digest: str, final: bool = False) -> str:
    msg = f"{chain}:{seq}:{digest}" + (":final" if final else "")
    return hmac.new(key, msg.encode(), hashlib.sha256).hexdigest()


class Chainer:
    """Gives each record of one chain its sequence number and hashes."""

    def __init__(self, chain: str) -> None:
        self.chain = chain
        self.seq = 0
        self.last = GENESIS
        self._last = bytes(32)

    def seal(self, record: dict[str, Any]) -> dict[str, Any]:
        """Number and hash ``record``; its body's canonical JSON is left in
        ``record["body_json"]`` for the store (or taken from there when the
        writer made it already and left ``body`` None: pgjit.audit.writer)."""
        record["chain"], record["seq"] = self.chain, self.seq + 1
        record["prev"] = self.last
        body = record.get("body_json") if record.get("body") is None else None
        if body is None:
            body = record["body_json"] = _encode(record.get("body"))
        digest = hashlib.sha256(self._last + canonical_with(record, body))  # UnicodeEncodeError: nothing sealed
        self.seq += 1
        self._last = digest.digest()
        record["hash"] = self.last = digest.hexdigest()
        return record

    def checkpoint(self, key: bytes, at: str, *, final: bool = False) -> dict[str, Any]:
        """A checkpoint record signing the chain up to its last record;
        ``final`` when the chain ends with it (the writer closed)."""
        body = {"covers": self.seq, "covers_hash": self.last, "signature": sign(key, self.chain, self.seq, self.last, final),
                "final": final}
        return self.seal({"kind": "checkpoint", "at": at, "session_id": None, "person": None, "target": None,
                          "decision": None, "body": body})


@dataclass(frozen=True)
class Problem:
    chain: str
    seq: int | None
    what: str  # edited, inserted, deleted, moved, bad-checkpoint, unchecked-tail
    detail: str

    def __str__(self) -> str:
        where = f"chain {self.chain} record {self.seq}" if self.seq is not None else f"chain {self.chain}"
        return f"{where}: {self.what}: {self.detail}"


@dataclass
class Report:
    records: int = 0
    chains: int = 0
    checkpoints: int = 0
    problems: list[Problem] = None  # type: ignore[assignment]
    unchecked: int = 0  # records after their chain's last checkpoint

    def __post_init__(self) -> None:
        if self.problems is None:
            self.problems = []

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(records: Iterable[dict[str, Any]], key: bytes | None) -> Report:
    """Check every chain in ``records`` (any order; each record a dict with
    FIELDS plus ``prev`` and ``hash``). Without ``key`` the checkpoints'
    signatures cannot be checked, which is itself reported as a problem: a
    chain re-hashed from some record on is only caught by them."""
    chains: dict[str, dict[int, list[dict[str, Any]]]] = {}
    report = Report()
    for r in records:
        report.records += 1
        chains.setdefault(str(r.get("chain")), {}).setdefault(int(r["seq"]), []).append(r)
    report.chains = len(chains)
    for chain, by_seq in sorted(chains.items()):
        _verify_chain(chain, by_seq, key, report)
    return report


def _verify_chain(chain: str, by_seq: dict[int, list[dict[str, Any]]], key: bytes | None, report: Report) -> None:
    out = report.problems
    expected = 1  # the sequence number the next record should have
    prev_hash = GENESIS  # the hash it should be chained to
    good_checkpoint = 0  # the last checkpoint whose signature holds
    closed_at = 0  # the chain's final checkpoint, when it has one
    for seq in sorted(by_seq):
        group = by_seq[seq]
        # Of several records with one number, the one chained to its
        # predecessor is taken as the chain's; the others were inserted.
        group.sort(key=lambda r: (r.get("prev") != prev_hash, link(str(r.get("prev")), r) != r.get("hash")))
        r = group[0]
        for extra in group[1:]:
            out.append(Problem(chain, seq, "inserted", "a second record with this sequence number"))
        if closed_at:
            out.append(Problem(chain, seq, "inserted", f"after the chain's final checkpoint (record {closed_at})"))
        if seq > expected:
            gap = f"{expected}" if seq == expected + 1 else f"{expected}..{seq - 1}"
            out.append(Problem(chain, expected, "deleted", f"record(s) {gap} missing before record {seq}"))
        elif r.get("prev") != prev_hash:
            if seq == 1:
                out.append(Problem(chain, seq, "edited", "the first record of a chain must be chained to the genesis hash"))
            else:
                out.append(Problem(chain, seq - 1, "edited",
                                   f"replaced or re-hashed: record {seq} is chained to a different record {seq - 1} (or was moved here)"))
        if link(str(r.get("prev")), r) != r.get("hash"):
            out.append(Problem(chain, seq, "edited", "its content does not give its stored hash"))
        if r.get("kind") == "checkpoint":
            report.checkpoints += 1
            body = r.get("body") if isinstance(r.get("body"), dict) else {}
            covers, covers_hash = body.get("covers"), body.get("covers_hash")
            if key is None:
                out.append(Problem(chain, seq, "unverified-checkpoint", "no checkpoint key given, so a re-hashed chain would pass"))
            elif (covers != seq - 1 or covers_hash != prev_hash
                  or not hmac.compare_digest(str(body.get("signature", "")),
                                             sign(key, chain, seq - 1, str(covers_hash), body.get("final") is True))):
                out.append(Problem(chain, seq, "bad-checkpoint",
                                   f"its signature does not hold: records {good_checkpoint + 1}..{seq - 1} were changed, "
                                   "or the key is not the one they were written with"))
            else:
                good_checkpoint = seq
                if body.get("final") is True:
                    closed_at = seq
        expected = seq + 1
        # Chain on the stored hash: an edited record is named once, not again
        # for every record after it.
        prev_hash = str(r.get("hash"))
    report.unchecked += (expected - 1) - good_checkpoint


#: An export line's fields, in order (docs/audit.md): what the hash covers, then the chain links.
EXPORT_FIELDS = FIELDS + ("prev", "hash")


def write_jsonl(records: Iterable[dict[str, Any]], out: Any) -> int:
    """Write records as JSON lines (the export's and the live sink's format)."""
    n = 0
    for r in records:
        out.write(json.dumps({k: r.get(k) for k in EXPORT_FIELDS}, ensure_ascii=False, separators=(",", ":")) + "\n")
        n += 1
    return n


def iter_jsonl(lines: Iterable[str]) -> Iterator[dict[str, Any]]:
    for n, line in enumerate(lines, 1):
        line = line.strip()
        if not line:
            continue
        try:
            yield json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"line {n}: not JSON: {e.msg}") from None
