"""A minimal blocking protocol client built on pgjit's codec, for tests that
need to send exact bytes (FunctionCall, bad frames, protocol 3.2 ...)."""

from __future__ import annotations

import socket
import time

from pgjit.protocol import messages as m
from pgjit.protocol.framing import FrameBuffer


class RawClient:
    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 10) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buf = FrameBuffer(1 << 30)

    def send(self, *msgs: m.Message | bytes) -> None:
        self.sock.sendall(b"".join(x if isinstance(x, (bytes, bytearray)) else x.encode() for x in msgs))

    def read_frame(self, timeout: float = 10) -> tuple[bytes, bytes]:
        deadline = time.monotonic() + timeout
        while (f := self.buf.next_frame()) is None:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            data = self.sock.recv(65536)
            if not data:
                raise EOFError("server closed the connection")
            self.buf.feed(data)
        return f

    def read_message(self, timeout: float = 10) -> m.Message:
        tag, body = self.read_frame(timeout)
        return m.decode_backend(tag, body)

    def read_until_ready(self, timeout: float = 10) -> list[m.Message]:
        out = []
        while True:
            msg = self.read_message(timeout)
            out.append(msg)
            if isinstance(msg, m.ReadyForQuery):
                return out

    def closed_by_peer(self, timeout: float = 5) -> bool:
        self.sock.settimeout(timeout)
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    return True
                self.buf.feed(data)
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False

    def login(self, user: str = "alice@example.com", database: str = "appdb", password: str = "x", protocol: int = m.PROTOCOL_3_0, **params: str) -> list[m.Message]:
        self.send(m.StartupMessage({"user": user, "database": database, **params}, protocol))
        out = []
        while True:
            msg = self.read_message()
            out.append(msg)
            if isinstance(msg, m.AuthenticationCleartextPassword):
                self.send(m.PasswordMessage(password.encode() + b"\x00"))
            elif isinstance(msg, (m.ReadyForQuery, m.ErrorResponse)):
                return out

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> "RawClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def errors(msgs: list[m.Message]) -> list[m.ErrorResponse]:
    return [x for x in msgs if isinstance(x, m.ErrorResponse)]
