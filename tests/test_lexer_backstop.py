"""The backstop against lexer divergence (pgjit.gateway.lexstate, issue 8).

The gate reads SQL as UTF-8 with standard_conforming_strings on. Routes the
gate cannot see (a function body made on the server by a DBA, UPDATE
pg_settings, ALTER ROLE ... SET) can still move the server's lexer state; the
server reports the change with a ParameterStatus, and the gated session must
end there: the client gets what came before, then a FATAL 0A000, and nothing
of the client's that reaches pgjit later goes upstream.

The live tests run through a pass-through gateway whose upstream user is a
superuser, with a permissive policy, over the C relay core, the Python relay
and (client TLS) the task pair.
"""

from __future__ import annotations

import socket
import time
import uuid

import psycopg
import pytest

from pgjit.gateway import reactor as reactor_mod
from pgjit.gateway.lexstate import MODELLED_ENCODINGS, lexer_state_problem
from pgjit.protocol import messages as m
from tests.gateway_fixtures import start_gateway, write_tls_files
from tests.rawclient import RawClient, errors

pytestmark = pytest.mark.pg

# ------------------------------------------------------------------- unit


@pytest.mark.parametrize("value", sorted(MODELLED_ENCODINGS) + ["utf8", "Latin1", "sql_ascii", "euc_jis_2004"])
def test_server_encodings_are_modelled(value):
    assert lexer_state_problem("client_encoding", value) is None


@pytest.mark.parametrize(
    "value", ["SJIS", "sjis", "SHIFT_JIS_2004", "BIG5", "GBK", "UHC", "GB18030", "JOHAB",
              "Shift_JIS", "UTF-8", "unicode", "LATIN11", "WIN932", "", "UTF8 ", "nonsense"]
)
def test_client_only_and_unknown_encodings_are_problems(value):
    reason = lexer_state_problem("client_encoding", value)
    assert reason is not None and "client_encoding" in reason


def test_standard_conforming_strings():
    assert lexer_state_problem("standard_conforming_strings", "on") is None
    assert lexer_state_problem("standard_conforming_strings", "ON") is None
    assert lexer_state_problem("Standard_Conforming_Strings", "on") is None
    for value in ("off", "OFF", "", "true", "1"):
        assert "standard_conforming_strings" in lexer_state_problem("standard_conforming_strings", value)


def test_other_settings_are_not_looked_at():
    for name, value in [("application_name", "SJIS"), ("TimeZone", "off"), ("server_encoding", "SQL_ASCII"),
                        ("DateStyle", "ISO, MDY"), ("integer_datetimes", "off")]:
        assert lexer_state_problem(name, value) is None


def test_lexstate_does_not_import_trio():
    import subprocess
    import sys

    code = "import sys, pgjit.gateway.lexstate; assert 'trio' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------- relay, without a server

from tests.test_relay_paths import _Gateway, frame, needs_core, relay_once  # noqa: E402


def _ps(name: str, value: str) -> bytes:
    return frame(b"S", name.encode() + b"\0" + value.encode() + b"\0")


def _q(sql: bytes) -> bytes:
    return frame(b"Q", sql + b"\0")


REPLY = frame(b"T", b"\0\0") + frame(b"C", b"SELECT 1\0")


@pytest.mark.parametrize("use_core", [pytest.param(True, marks=needs_core), False], ids=["c", "python"])
@pytest.mark.parametrize("gated", [True, False], ids=["gated", "ungated"])
@pytest.mark.parametrize("split", [False, True], ids=["whole", "split"])
def test_relay_halts_on_report(use_core, gated, split):
    """Bytes before the ParameterStatus reach the client, nothing after it;
    client bytes that come later never reach the upstream. Ungated sessions
    relay the report as any other message."""
    bad = _ps("client_encoding", "SJIS")
    server = REPLY + _ps("application_name", "x") + bad + frame(b"Z", b"I")
    if split:
        cut = len(REPLY) + 7
        steps = [("c", _q(b"select 1")), ("s", server[:cut]), ("s", server[cut:])]
    else:
        steps = [("c", _q(b"select 1")), ("s", server)]
    steps += [("drain", "cl"), ("c", _q(b"insert into t values (1)")), ("drain", "up")]
    out = relay_once(steps, use_core=use_core, gated=gated)
    if gated:
        assert out["to client"] == REPLY + _ps("application_name", "x")
        assert out["to upstream"] == _q(b"select 1")
        assert out["closed"] and out["error"] is None
        assert out["counters"][:2] == (1, 0)  # the ReadyForQuery after the report was not relayed
    else:
        assert out["to client"] == server
        assert out["to upstream"] == _q(b"select 1") + _q(b"insert into t values (1)")
        assert not out["closed"]


@pytest.mark.parametrize("use_core", [pytest.param(True, marks=needs_core), False], ids=["c", "python"])
def test_relay_drops_client_bytes_held_back(use_core):
    """Client bytes already received but not yet sent upstream (an
    incomplete frame, here) are not sent once the session halted."""
    q = _q(b"select 2")
    steps = [("c", _q(b"select 1")), ("c", q[:4]), ("s", REPLY + _ps("standard_conforming_strings", "off")),
             ("c", q[4:])]
    out = relay_once(steps, use_core=use_core, gated=True)
    assert out["to upstream"] == _q(b"select 1")
    assert out["to client"] == REPLY and out["closed"]


@pytest.mark.parametrize("use_core", [pytest.param(True, marks=needs_core), False], ids=["c", "python"])
def test_relay_fine_reports_pass(use_core):
    server = REPLY + _ps("client_encoding", "LATIN1") + _ps("standard_conforming_strings", "on") + frame(b"Z", b"I")
    out = relay_once([("c", _q(b"select 1")), ("s", server), ("c", _q(b"select 2"))], use_core=use_core, gated=True)
    assert out["to client"] == server
    assert out["to upstream"] == _q(b"select 1") + _q(b"select 2")
    assert not out["closed"] and out["counters"][:2] == (2, 1)


def _conversation_with_reports():
    """tests/test_relay_paths.conversation, with ParameterStatus frames (fine
    and not) among the server's."""
    import itertools

    from hypothesis import strategies as st

    from tests.test_relay_paths import backend_frame, frontend_frame

    report = st.sampled_from([("client_encoding", "UTF8"), ("client_encoding", "SJIS"), ("application_name", "a"),
                              ("standard_conforming_strings", "off"), ("standard_conforming_strings", "on")])
    server_frame = st.one_of(backend_frame, report.map(lambda kv: _ps(*kv)))

    @st.composite
    def conversation(draw):
        frames = {"c": draw(st.lists(frontend_frame, max_size=15)), "s": draw(st.lists(server_frame, max_size=15))}
        streams = {side: b"".join(f) for side, f in frames.items()}
        bounds = {side: set(itertools.accumulate(len(x) for x in f)) for side, f in frames.items()}
        steps, pos = [], {"c": 0, "s": 0}
        while pos["c"] < len(streams["c"]) or pos["s"] < len(streams["s"]):
            kind = draw(st.sampled_from(["c", "s", "drain"]))
            if kind == "drain":
                steps.append(("drain", draw(st.sampled_from(["up", "cl"]))))
                continue
            data, at = streams[kind], pos[kind]
            if at >= len(data):
                continue
            if draw(st.booleans()):
                ahead = sorted(b for b in bounds[kind] if b > at)
                end = ahead[min(draw(st.integers(0, 3)), len(ahead) - 1)]
            else:
                end = at + draw(st.sampled_from([1, 3, 5, 6, 17, 64, 1000]))
            steps.append((kind, data[at:end]))
            pos[kind] = end
        return steps

    return conversation()


def test_c_and_python_relays_agree_on_reports():
    if reactor_mod._relaycore is None:
        pytest.skip("the C relay core is not built")
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(steps=_conversation_with_reports(), gated=st.booleans())
    def check(steps, gated):
        python = relay_once(steps, use_core=False, gated=gated)
        c = relay_once(steps, use_core=True, gated=gated)
        assert c == python

    check()


@needs_core
def test_c_core_holds_client_reads_of_the_same_batch():
    """A server read with a ParameterStatus and a client read ready in the
    same epoll batch: the C core leaves the server read to Python and must
    not relay the client read before Python has seen it."""
    from pgjit.policy.gate import Gate
    from pgjit.gateway.reactor import Reactor
    from pgjit.gateway.relay import Relay
    from pgjit.gateway.session import Phase, Session
    from pgjit.gateway.transport import SocketTransport
    from tests.test_relay_paths import POLICY

    reactor = Reactor(use_core=True)
    c_app, c_gw = socket.socketpair()
    u_gw, u_app = socket.socketpair()
    client_t, up_t = SocketTransport(c_gw), SocketTransport(u_gw)
    session = Session(_Gateway(), client_t, None)
    session.phase = Phase.RELAY
    session.relay = Relay(session.config.limits, session.gateway, session_id=session.id, gate=Gate(POLICY))
    relay = reactor.attach(session, client_t, up_t)
    try:
        u_app.sendall(REPLY + _ps("client_encoding", "BIG5") + frame(b"Z", b"I"))
        c_app.sendall(_q(b"select 1"))
        time.sleep(0.05)
        for _ in range(5):
            reactor.poll()
        assert session.relay.halted and relay.closed
        u_app.setblocking(False)
        with pytest.raises(BlockingIOError):
            u_app.recv(100)
        c_app.setblocking(False)
        assert c_app.recv(1000) == REPLY
    finally:
        relay.close()
        for s in (c_app, c_gw, u_gw, u_app):
            s.close()


# ------------------------------------------------------------------- live

POLICY_YAML = "version: 1\nrules: []\ndefault: allow\n"

SETUP_ROLES = """
do $$ begin
  if not exists (select from pg_roles where rolname = 'pgjit_lex') then create role pgjit_lex; end if;
  if not exists (select from pg_roles where rolname = 'pgjit_lex_sjis') then create role pgjit_lex_sjis; end if;
  if not exists (select from pg_roles where rolname = 'pgjit_lex_scs') then create role pgjit_lex_scs; end if;
end $$;
alter role pgjit_lex login superuser password 'lexpass';
alter role pgjit_lex_sjis login password 'lexpass';
alter role pgjit_lex_scs login password 'lexpass';
alter role pgjit_lex_sjis set client_encoding = 'SJIS';
alter role pgjit_lex_scs set standard_conforming_strings = off;
"""

# What each effect runs on the server. The functions, tables and triggers are
# made on the server directly (as a DBA would): the gate only ever sees the
# calls. Each effect is reached by several routes, from plain to opaque (a
# function body, SQL kept in a table and run by EXECUTE, a trigger), so that
# one stays that the gate cannot see even when it learns to read the others
# from the catalog.
EFFECTS = {
    "enc": ("client_encoding", "select set_config('client_encoding', 'SJIS', false)"),
    "big5": ("client_encoding", "set client_encoding = 'BIG5'"),
    "scs": ("standard_conforming_strings", "update pg_settings set setting = 'off' where name = 'standard_conforming_strings'"),
    "local": ("client_encoding", "select set_config('client_encoding', 'SJIS', true)"),
}


def _setup_appdb() -> str:
    sql = [
        "create table if not exists lex_log(tag text)",
        "grant all on lex_log to public",
        "create table if not exists lex_stmts(name text primary key, stmt text)",
        "create or replace function lex_dyn(n text) returns text language plpgsql as "
        "$$ begin execute (select stmt from lex_stmts where name = n); return 'x'; end $$",
        "create or replace function lex_trg() returns trigger language plpgsql as "
        "$$ begin execute (select stmt from lex_stmts where name = tg_argv[0]); return new; end $$",
    ]
    for name, (_, stmt) in EFFECTS.items():
        sql += [
            f"insert into lex_stmts values ('{name}', $s${stmt}$s$) on conflict (name) do update set stmt = excluded.stmt",
            f"create or replace function lex_{name}() returns text language plpgsql as "
            f"$$ begin {stmt.replace('select ', 'perform ', 1)}; return 'x'; end $$",
            f"create table if not exists lex_trig_{name}(a int)",
            f"drop trigger if exists lex_trig on lex_trig_{name}",
            f"create trigger lex_trig before insert on lex_trig_{name} for each row execute function lex_trg('{name}')",
        ]
    return ";\n".join(sql) + ";"


def _teardown_appdb() -> str:
    tables = ", ".join(["lex_log", "lex_stmts"] + [f"lex_trig_{n}" for n in EFFECTS])
    funcs = ", ".join(["lex_dyn(text)", "lex_trg()"] + [f"lex_{n}()" for n in EFFECTS])
    return f"drop table if exists {tables}; drop function if exists {funcs};"


def routes(effect: str) -> list[str]:
    """Statements that have the server run ``effect``, each with a result row."""
    return [f"select lex_{effect}()", f"select lex_dyn('{effect}')", f"insert into lex_trig_{effect} values (1) returning a"]


TEARDOWN_ROLES = "drop role if exists pgjit_lex_sjis; drop role if exists pgjit_lex_scs; drop role if exists pgjit_lex;"


@pytest.fixture(scope="module")
def lexdb(pg):
    pg.psql(SETUP_ROLES)
    pg.psql(_setup_appdb(), dbname="appdb")
    yield pg
    pg.psql(_teardown_appdb(), dbname="appdb")
    pg.psql(TEARDOWN_ROLES)


def _targets(pg, policy: str) -> dict:
    def target(user: str, **extra) -> dict:
        return {"host": "127.0.0.1", "port": pg.port, "database": "appdb", "user": user, "password": "lexpass", **extra}

    return {
        "appdb": target("pgjit_lex", policy=policy),
        "sjisdb": target("pgjit_lex_sjis", policy=policy),
        "scsdb": target("pgjit_lex_scs", policy=policy),
        "rawdb": target("pgjit_lex"),  # no policy: no gate, nothing to keep in step with
    }


def _tls_section(tmp_path) -> dict:
    files = write_tls_files(tmp_path)
    return {"cert": files["cert"], "key": files["key"]}


def _policy(work) -> str:
    policy = work / "policy.yaml"
    policy.write_text(POLICY_YAML)
    return str(policy)


@pytest.fixture(scope="module", params=[pytest.param("c", marks=needs_core), "python"])
def gw(request, lexdb, tmp_path_factory):
    """(e) The gateway over the C relay core and over the Python relay."""
    work = tmp_path_factory.mktemp(f"lexgw-{request.param}")
    g = start_gateway(work, lexdb, env={"PGJIT_RELAY_CORE": request.param}, targets=_targets(lexdb, _policy(work)))
    assert g.relay == request.param
    g.extra["pg"] = lexdb
    yield g
    g.stop()


@pytest.fixture(scope="module")
def tls_gw(lexdb, tmp_path_factory):
    """Client TLS: the session's task pair relays, not the reactor."""
    work = tmp_path_factory.mktemp("lexgw-tls")
    g = start_gateway(work, lexdb, targets=_targets(lexdb, _policy(work)), tls=_tls_section(work))
    yield g
    g.stop()


def _read_all(c: RawClient, timeout: float = 10) -> list[m.Message]:
    out: list[m.Message] = []
    try:
        while True:
            out.append(c.read_message(timeout))
    except (EOFError, ConnectionResetError):
        return out


def _is_backstop(e: m.ErrorResponse, setting: str) -> bool:
    text = e.message or ""
    return e.severity == "FATAL" and e.sqlstate == "0A000" and setting in text and "pgjit cannot check statements" in text


def _logged(pg, tag: str) -> int:
    return int(pg.psql(f"select count(*) from lex_log where tag = '{tag}'", dbname="appdb").strip())


def _call(gw, sql: str, setting: str, *, extended: bool = False, begin: bool = False, later: int = 1) -> str:
    """Run ``sql`` through the gateway (in a transaction block with
    ``begin``), then, once the server has answered, ``later`` INSERTs (and a
    ROLLBACK) in one write. Returns "refused" when the gate refused ``sql``
    (the session goes on), "halted" when the backstop ended the session; the
    INSERTs never reach the server."""
    tags = [uuid.uuid4().hex for _ in range(later)]
    pg = gw.extra["pg"]
    with RawClient(gw.port) as c:
        assert isinstance(c.login()[-1], m.ReadyForQuery)
        if begin:
            c.send(m.Query("begin"))
            assert c.read_until_ready()[-1].status == b"T"
        if extended:
            c.send(m.Parse("", sql), m.Bind("", ""), m.Execute(""), m.Sync())
        else:
            c.send(m.Query(sql))
        first = []
        while True:
            msg = c.read_message()
            first.append(msg)
            if isinstance(msg, (m.CommandComplete, m.ReadyForQuery, m.ErrorResponse)):
                break
        if isinstance(msg, m.ErrorResponse) and msg.sqlstate == "42501":
            assert isinstance(c.read_message(), m.ReadyForQuery)
            return "refused"
        assert isinstance(msg, m.CommandComplete), first
        assert any(isinstance(x, m.DataRow) for x in first)  # what came before the report
        time.sleep(0.2)  # the server's report has reached pgjit by now
        try:
            c.send(*[m.Query(f"insert into lex_log values ('{t}')") for t in tags], m.Query("rollback"))
        except OSError:
            pass
        rest = _read_all(c)
    assert not any(isinstance(x, (m.ReadyForQuery, m.ParameterStatus)) for x in rest), rest
    errs = errors(rest)
    assert len(errs) == 1 and _is_backstop(errs[0], setting), rest
    log = pg.server_log()
    assert not any(f"values ('{t}')" in log for t in tags)  # never reached the server
    assert all(_logged(pg, t) == 0 for t in tags)
    return "halted"


def _all_routes(gw, effect: str, **kw) -> dict[str, str]:
    setting = EFFECTS[effect][0]
    outcomes = {sql: _call(gw, sql, setting, **kw) for sql in routes(effect)}
    # Every route is refused by the gate or ends the session (none leaves
    # it going under the new state), and the backstop is shown at least once.
    assert "halted" in outcomes.values(), outcomes
    return outcomes


@pytest.mark.parametrize("effect", ["enc", "big5"])
@pytest.mark.parametrize("extended", [False, True], ids=["simple", "extended"])
def test_function_changing_client_encoding(gw, effect, extended):
    """(a) set_config('client_encoding', ...) / SET client_encoding in code
    made on the server, reached through calls the gate allows."""
    _all_routes(gw, effect, extended=extended)


@pytest.mark.parametrize("extended", [False, True], ids=["simple", "extended"])
def test_update_pg_settings_standard_conforming_strings(gw, extended):
    """(b) standard_conforming_strings off through UPDATE pg_settings in a DBA's function."""
    _all_routes(gw, "scs", extended=extended)


def test_role_setting_refused_at_startup(gw):
    """(c) ALTER ROLE <upstream user> SET client_encoding = 'SJIS' (or
    standard_conforming_strings = off): refused before AuthenticationOk."""
    for db, setting in (("sjisdb", "client_encoding"), ("scsdb", "standard_conforming_strings")):
        with RawClient(gw.port) as c:
            msgs = c.login(database=db)
            assert not any(isinstance(x, (m.AuthenticationOk, m.ReadyForQuery, m.ParameterStatus)) for x in msgs), msgs
            errs = errors(msgs)
            assert len(errs) == 1 and _is_backstop(errs[0], setting), msgs
            assert c.closed_by_peer()
    logs = [r for r in gw.logs() if r.get("msg") == "server lexer state not modelled"]
    assert any(r.get("phase") == "greeting" and r.get("value") == "SJIS" for r in logs)


def test_role_setting_overridden_by_client_is_fine(gw):
    """A client that asks for UTF8 in its startup packet overrides the role's
    setting: the server reports UTF8 and the session goes on."""
    with psycopg.connect(gw.dsn(dbname="sjisdb", client_encoding="UTF8")) as conn:
        assert conn.execute("show client_encoding").fetchone() == ("UTF8",)


def test_set_local_in_transaction_block(gw):
    """(d) SET LOCAL (set_config(..., true)) in a function inside a
    transaction block: reported at that statement's ReadyForQuery, so the
    session ends there, before the INSERT or the ROLLBACK sent after it run."""
    _all_routes(gw, "local", begin=True)


def test_set_local_reverted_in_the_same_statement_is_not_reported(gw):
    """SET LOCAL in an implicit transaction is undone at its end: the server
    reports nothing (no later message was read under it) and the session goes on."""
    allowed = 0
    for sql in routes("local"):
        with RawClient(gw.port) as c:
            c.login()
            c.send(m.Query(sql))
            msgs = c.read_until_ready()
            if errors(msgs) and errors(msgs)[0].sqlstate == "42501":
                continue
            allowed += 1
            assert not errors(msgs) and not any(isinstance(x, m.ParameterStatus) for x in msgs)
            c.send(m.Query("show client_encoding"))
            assert [x.values for x in c.read_until_ready() if isinstance(x, m.DataRow)] == [(b"UTF8",)]
    assert allowed


def test_later_statements_not_forwarded(gw):
    """Many statements the client keeps sending after the report: none is forwarded."""
    outcomes = {sql: _call(gw, sql, "client_encoding", later=30) for sql in routes("enc")}
    assert "halted" in outcomes.values(), outcomes


def test_modelled_encoding_change_is_fine(gw):
    """A server encoding (LATIN1) is reported and relayed; the session goes on
    (the gate may also refuse the SET itself: then nothing changed)."""
    with RawClient(gw.port) as c:
        c.login()
        c.send(m.Query("set client_encoding = 'LATIN1'"))
        msgs = c.read_until_ready()
        if not errors(msgs):
            assert m.ParameterStatus("client_encoding", "LATIN1") in msgs
        c.send(m.Query("select 1"))
        assert [x.values for x in c.read_until_ready() if isinstance(x, m.DataRow)] == [(b"1",)]


def test_ungated_target_relays_reports(gw):
    """No policy, no gate: nothing to keep in step with, the report is relayed."""
    with RawClient(gw.port) as c:
        c.login(database="rawdb")
        c.send(m.Query("select lex_enc()"))
        msgs = c.read_until_ready()
        assert m.ParameterStatus("client_encoding", "SJIS") in msgs and not errors(msgs)


# ------------------------------------------------- the task pair (client TLS)


def test_tls_session_halts(tls_gw, lexdb):
    dsn = tls_gw.dsn(sslmode="require")
    outcomes = {}
    for sql in routes("enc"):
        tag = uuid.uuid4().hex
        with psycopg.connect(dsn, autocommit=True) as conn:
            assert conn.pgconn.ssl_in_use
            try:
                conn.execute(sql)
                conn.execute(f"insert into lex_log values ('{tag}')")
                outcomes[sql] = "went on"
            except psycopg.Error as e:
                if e.sqlstate == "42501":
                    outcomes[sql] = "refused"
                    continue
                assert e.sqlstate == "0A000" and "pgjit cannot check statements" in str(e), e
                outcomes[sql] = "halted"
                assert conn.closed or conn.broken
        assert _logged(lexdb, tag) == 0
    assert "went on" not in outcomes.values() and "halted" in outcomes.values(), outcomes
    with psycopg.connect(dsn) as conn:  # the gateway goes on
        assert conn.execute("select 1").fetchone() == (1,)
    with pytest.raises(psycopg.Error, match="pgjit cannot check statements"):
        psycopg.connect(tls_gw.dsn(sslmode="require", dbname="scsdb"))
