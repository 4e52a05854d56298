"""The relay's half of a hold, without I/O (pgjit.gateway.relay): a Query or
an Execute a require_approval rule matches stops there — it and everything
after it wait — and ``release`` lets it run once or refuses it in its place;
what came before it went on."""

from __future__ import annotations

import struct
from types import SimpleNamespace

from pgjit.config import LimitsConfig
from pgjit.errors import InsufficientPrivilege
from pgjit.gateway.relay import Relay
from pgjit.policy.gate import Gate
from pgjit.devtools.bench import APPROVALS_POLICY
from pgjit.policy.model import Policy
from pgjit.protocol import messages as m

# The policy `make bench` holds DELETEs with (pgjit.devtools.bench): DELETEs
# need an approval by dba, everything else is allowed.
POLICY = Policy.from_text(APPROVALS_POLICY)


def _relay() -> Relay:
    r = Relay(LimitsConfig(), SimpleNamespace(buffered=0), session_id="s", gate=Gate(POLICY))
    r.enable_approvals()
    return r


def q(sql: str) -> bytes:
    return m.Query(sql).encode()


def test_query_waits_with_what_follows_then_runs_once():
    r = _relay()
    out, stop = r.from_client(q("SELECT 1") + q("DELETE FROM t WHERE id = 1") + q("SELECT 2"))
    assert out == q("SELECT 1") and not stop  # what came before goes
    assert r.hold is not None and r.hold.text == b"DELETE FROM t WHERE id = 1" and r.hold.rule == "deletes-need-approval"
    assert r.from_client(q("SELECT 3")) == (None, False)  # more waits behind it
    held = r.release(None)
    assert r.hold is None
    out, _ = r.from_client(held)
    assert out == q("DELETE FROM t WHERE id = 1") + q("SELECT 2") + q("SELECT 3")
    # approved once: the same statement again is held again
    r.from_client(q("DELETE FROM t WHERE id = 1"))
    assert r.hold is not None


def test_refused_in_its_place():
    r = _relay()
    r.from_client(q("DELETE FROM t") + q("SELECT 2"))
    out, _ = r.from_client(r.release(InsufficientPrivilege("denied by dana: no")))
    # a Bind to a missing statement and a Sync stand in for it; the next Query follows
    assert out.startswith(b"B") and out.endswith(q("SELECT 2")) and b"DELETE" not in out
    assert r.ctr.rfq_sent == 2


def test_extended_protocol_holds_the_execute_with_its_parameters():
    r = _relay()
    parse = m.Parse("s1", "DELETE FROM t WHERE id = $1", ()).encode()
    bind = m.Bind("", "s1", (), (b"7",), ()).encode()
    execute = m.Execute("", 0).encode()
    sync = m.Sync().encode()
    out, _ = r.from_client(parse + bind + execute + sync)
    assert out == parse + bind  # the Parse runs nothing; the Execute waits (and the Sync behind it)
    assert r.hold is not None and r.hold.params == (b"7",) and r.hold.protocol == "extended"
    out, _ = r.from_client(r.release(None))
    assert out == execute + sync
    # the same statement with other parameters: held again
    bind2 = m.Bind("", "s1", (), (b"8",), ()).encode()
    out, _ = r.from_client(bind2 + execute + sync)
    assert out == bind2 and r.hold is not None and r.hold.params == (b"8",)


def test_without_approvals_it_is_refused():
    r = Relay(LimitsConfig(), SimpleNamespace(buffered=0), session_id="s", gate=Gate(POLICY))
    out, _ = r.from_client(q("DELETE FROM t"))
    assert r.hold is None and out.startswith(b"B")  # the marker stand-in
    assert struct.unpack("!I", out[1:5])[0] > 4


def test_the_clients_statement_timeout_is_followed():
    r = _relay()
    assert r.client_statement_timeout is None
    for sql, seconds in (("SET statement_timeout = 5000", 5.0), ("set statement_timeout to '2s'", 2.0),
                         ("SET SESSION statement_timeout = '1min'", 60.0), ("SET LOCAL statement_timeout = 250", 0.25),
                         ("SET statement_timeout = 0", None), ("SET statement_timeout = '3s'", 3.0),
                         ("RESET statement_timeout", None)):
        r.from_client(q(sql))
        assert r.client_statement_timeout == seconds, sql
