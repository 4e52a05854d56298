"""Connecting and logging in to the upstream PostgreSQL server.

``connect_upstream`` opens TCP (and TLS when the target asks for it), sends the
startup packet, answers the server's authentication request (SCRAM-SHA-256,
with tls-server-end-point channel binding over TLS; MD5; cleartext; trust) and
reads up to the first ReadyForQuery. What the client must see of that
(ParameterStatus, notices) is kept as raw frames for the session to forward.
"""

from __future__ import annotations

import errno
import ssl
from dataclasses import dataclass, field

import trio

from pgjit.errors import FatalError, UpstreamUnavailable
from pgjit.protocol import messages as m
from pgjit.protocol.errors import ProtocolError
from pgjit.protocol.framing import FrameBuffer
from pgjit.protocol.scram import MECHANISM, MECHANISM_PLUS, ScramClient, md5_password, tls_server_end_point
from pgjit.gateway.transport import Transport, open_tcp, start_tls


class MessageStream:
    """Typed reads and writes on a transport during handshakes (not the hot path)."""

    def __init__(self, transport: Transport, max_size: int, *, startup: bool = False) -> None:
        self.transport = transport
        self.buf = FrameBuffer(max_size, startup=startup)

    async def _fill(self) -> None:
        data = await self.transport.receive()
        if not data:
            raise EOFError("peer closed the connection")
        self.buf.feed(data)

    async def read_startup_packet(self) -> bytes:
        while (body := self.buf.next_startup_packet()) is None:
            await self._fill()
        return body

    async def read_frame(self) -> tuple[bytes, bytes]:
        while (f := self.buf.next_frame()) is None:
            await self._fill()
        return f

    async def read_byte(self) -> bytes:
        while self.buf.buffered < 1:
            await self._fill()
        raw = self.buf.take_raw()
        if len(raw) > 1:
            # Bytes after a one-byte answer to SSLRequest would be a
            # man-in-the-middle injection (CVE-2021-23214): refuse.
            raise ProtocolError("unexpected data after the TLS negotiation byte")
        return raw

    async def send(self, *msgs: m.Message | bytes) -> None:
        await self.transport.send_all(b"".join(x if isinstance(x, (bytes, bytearray)) else x.encode() for x in msgs))


@dataclass
class UpstreamConnection:
    stream: MessageStream
    backend_key: m.BackendKeyData | None
    # Raw frames the client must see after AuthenticationOk (ParameterStatus, notices).
    greeting: list[bytes] = field(default_factory=list)
    parameters: dict[str, str] = field(default_factory=dict)
    transaction_status: bytes = b"I"
    host: str = ""
    port: int = 0
    tls_mode: str = "disable"
    tls_ctx: ssl.SSLContext | None = None
    auth: str = ""  # how pgjit logged in (_authenticate): SCRAM-SHA-256-PLUS over TLS when the server offers it

    @property
    def transport(self) -> Transport:
        return self.stream.transport


def make_upstream_tls_context(mode: str, ca: str | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca if mode == "verify-full" else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if mode == "verify-full":
        ctx.check_hostname = True
        ctx.verify_mode = ssl.CERT_REQUIRED
    else:  # require: encrypted, not authenticated (libpq's sslmode=require)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def fd_exhausted(e: BaseException | None) -> bool:
    """Whether ``e`` (or what it wraps: trio reports a failed connect as an
    OSError whose cause holds the attempts) is EMFILE/ENFILE."""
    for _ in range(8):
        if e is None:
            return False
        if isinstance(e, OSError) and e.errno in (errno.EMFILE, errno.ENFILE):
            return True
        if isinstance(e, BaseExceptionGroup):
            return any(fd_exhausted(x) for x in e.exceptions)
        e = e.__cause__ or e.__context__
    return False


async def _open(host: str, port: int, tls_mode: str, tls_ctx: ssl.SSLContext | None, server_name: str | None, max_size: int) -> MessageStream:
    try:
        raw = await open_tcp(host, port)
    except OSError as e:
        if fd_exhausted(e):
            # pgjit's own limit, not the upstream's: say so (PostgreSQL's
            # SQLSTATE for running out of file descriptors is 53000).
            raise FatalError(
                "pgjit has run out of file descriptors and cannot open the upstream connection",
                detail=str(e),
                hint="raise the gateway's open-file limit (LimitNOFILE / ulimit -n) or lower listen.max_clients",
                sqlstate="53000",
            ) from None
        raise UpstreamUnavailable(
            f"cannot connect to the upstream server at {host}:{port}",
            detail=str(e),
        ) from None
    transport: Transport = raw
    if tls_mode != "disable":
        stream = MessageStream(raw, max_size)
        await stream.send(m.SSLRequest())
        answer = await stream.read_byte()
        if answer != b"S":
            await raw.aclose()
            raise UpstreamUnavailable(f"the upstream server at {host}:{port} does not accept TLS")
        assert tls_ctx is not None
        try:
            transport = await start_tls(raw, tls_ctx, server_side=False, server_hostname=server_name or host)
        except (ssl.SSLError, trio.BrokenResourceError) as e:
            raise UpstreamUnavailable(
                f"TLS to the upstream server at {host}:{port} failed",
                detail=str(getattr(e, "__cause__", None) or e),
            ) from None
    return MessageStream(transport, max_size)


async def connect_upstream(
    *,
    host: str,
    port: int,
    database: str,
    user: str,
    password: str | None,
    parameters: dict[str, str],
    tls_mode: str = "disable",
    tls_ctx: ssl.SSLContext | None = None,
    server_name: str | None = None,
    max_size: int,
) -> UpstreamConnection:
    stream = await _open(host, port, tls_mode, tls_ctx, server_name, max_size)
    try:
        params = dict(parameters)
        params["user"] = user
        params["database"] = database
        await stream.send(m.StartupMessage(params))
        auth = await _authenticate(stream, user, password)
        conn = UpstreamConnection(stream, None, host=host, port=port, tls_mode=tls_mode, tls_ctx=tls_ctx, auth=auth)
        while True:
            tag, body = await stream.read_frame()
            if tag == b"Z":
                conn.transaction_status = m.ReadyForQuery.decode(body).status
                return conn
            if tag == b"K":
                conn.backend_key = m.BackendKeyData.decode(body)
            elif tag == b"S":
                ps = m.ParameterStatus.decode(body)
                conn.parameters[ps.name] = ps.value
                conn.greeting.append(m.frame(tag, body))
            elif tag == b"N":
                conn.greeting.append(m.frame(tag, body))
            elif tag == b"E":
                raise _upstream_refused(m.ErrorResponse.decode(body))
            elif tag == b"v":
                # We only ask for 3.0 and no _pq_ options, so nothing to act on.
                continue
            else:
                raise ProtocolError(f"unexpected message {tag!r} from the upstream server during startup")
    except BaseException:
        await stream.transport.aclose()
        raise


def _upstream_refused(err: m.ErrorResponse) -> UpstreamUnavailable:
    return UpstreamUnavailable(
        "the upstream server refused the login",
        detail=f"{err.sqlstate}: {err.message}",
    )


async def _authenticate(stream: MessageStream, user: str, password: str | None) -> str:
    """Log in as the server asks; the method used (trust, password, md5,
    or the SASL mechanism: SCRAM-SHA-256-PLUS binds it to the TLS channel)."""
    tag, body = await stream.read_frame()
    if tag == b"E":
        raise _upstream_refused(m.ErrorResponse.decode(body))
    if tag != b"R":
        raise ProtocolError(f"expected an authentication request, got {tag!r}")
    req = m.decode_backend(tag, body)
    if isinstance(req, m.AuthenticationOk):
        return "trust"
    if password is None:
        raise UpstreamUnavailable("the upstream server asks for a password and none is configured")
    if isinstance(req, m.AuthenticationCleartextPassword):
        await stream.send(m.PasswordMessage(password.encode("utf-8") + b"\x00"))
        method = "password"
    elif isinstance(req, m.AuthenticationMD5Password):
        await stream.send(m.PasswordMessage(md5_password(user, password, req.salt).encode("ascii") + b"\x00"))
        method = "md5"
    elif isinstance(req, m.AuthenticationSASL):
        binding = None
        if MECHANISM_PLUS in req.mechanisms and stream.transport.tls:
            der = stream.transport.peer_certificate_der()
            if der:
                binding = tls_server_end_point(der)
        if binding is None and MECHANISM not in req.mechanisms:
            raise UpstreamUnavailable(
                "the upstream server offers no SASL mechanism pgjit supports",
                detail=", ".join(req.mechanisms),
            )
        scram = ScramClient(password, channel_binding=binding)
        await stream.send(m.SASLInitialResponse(scram.mechanism, scram.client_first()))
        cont = await _expect_auth(stream)
        if not isinstance(cont, m.AuthenticationSASLContinue):
            raise ProtocolError("expected AuthenticationSASLContinue")
        await stream.send(m.SASLResponse(scram.client_final(cont.data)))
        final = await _expect_auth(stream)
        if not isinstance(final, m.AuthenticationSASLFinal):
            raise ProtocolError("expected AuthenticationSASLFinal")
        scram.verify_server_final(final.data)
        method = scram.mechanism
    else:
        raise UpstreamUnavailable(
            f"the upstream server asks for {type(req).__name__}, which pgjit does not support"
        )
    ok = await _expect_auth(stream)
    if not isinstance(ok, m.AuthenticationOk):
        raise ProtocolError("expected AuthenticationOk")
    return method


async def _expect_auth(stream: MessageStream) -> m.Message:
    tag, body = await stream.read_frame()
    if tag == b"E":
        raise _upstream_refused(m.ErrorResponse.decode(body))
    if tag != b"R":
        raise ProtocolError(f"expected an authentication message, got {tag!r}")
    return m.decode_backend(tag, body)


async def send_cancel(conn: UpstreamConnection, timeout: float = 5.0) -> None:
    """Send CancelRequest for ``conn``'s backend over a new connection."""
    key = conn.backend_key
    if key is None:
        return
    with trio.move_on_after(timeout):
        stream = await _open(conn.host, conn.port, conn.tls_mode, conn.tls_ctx, None, 1024)
        try:
            await stream.send(m.CancelRequest(key.process_id, key.secret_key))
            # The server closes without answering; wait for that so the
            # request is processed before we return.
            with trio.move_on_after(timeout):
                while await stream.transport.receive():
                    pass
        finally:
            await stream.transport.aclose()


__all__ = [
    "MessageStream",
    "UpstreamConnection",
    "connect_upstream",
    "make_upstream_tls_context",
    "send_cancel",
]
