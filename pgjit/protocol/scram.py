"""SCRAM-SHA-256 (RFC 5802 / RFC 7677) as PostgreSQL uses it, sans-IO.

``ScramClient`` drives the client side of the exchange (pgjit logging in
upstream); ``make_verifier`` builds the ``SCRAM-SHA-256$…`` string PostgreSQL
stores, so a password can be set without ever sending it in clear.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import unicodedata

from pgjit.protocol.errors import ProtocolError

MECHANISM = "SCRAM-SHA-256"
MECHANISM_PLUS = "SCRAM-SHA-256-PLUS"
DEFAULT_ITERATIONS = 4096
# A hostile server could otherwise stall us in PBKDF2 with i=2000000000.
MAX_ITERATIONS = 1_000_000


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode("ascii")


def _unb64(s: str) -> bytes:
    try:
        return base64.b64decode(s.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError) as e:
        raise ProtocolError("bad base64 in SCRAM message") from e


def saslprep(password: str) -> str:
    """A light SASLprep: NFKC normalisation, as PostgreSQL falls back to the raw
    bytes when the password is not valid under the full profile."""
    try:
        return unicodedata.normalize("NFKC", password)
    except Exception:  # pragma: no cover - normalize does not raise for str
        return password


def salted_password(password: str, salt: bytes, iterations: int) -> bytes:
    return hashlib.pbkdf2_hmac("sha256", saslprep(password).encode("utf-8"), salt, iterations)


def _hmac(key: bytes, msg: bytes) -> bytes:
    return hmac.new(key, msg, hashlib.sha256).digest()


def make_verifier(password: str, salt: bytes | None = None, iterations: int = DEFAULT_ITERATIONS) -> str:
    """The verifier PostgreSQL stores in pg_authid.rolpassword."""
    salt = salt if salt is not None else secrets.token_bytes(16)
    sp = salted_password(password, salt, iterations)
    client_key = _hmac(sp, b"Client Key")
    stored_key = hashlib.sha256(client_key).digest()
    server_key = _hmac(sp, b"Server Key")
    return f"SCRAM-SHA-256${iterations}:{_b64(salt)}${_b64(stored_key)}:{_b64(server_key)}"


def _parse_attrs(msg: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in msg.split(","):
        if len(part) < 2 or part[1] != "=":
            raise ProtocolError("malformed SCRAM attribute")
        out[part[0]] = part[2:]
    return out


class ScramClient:
    """Client side of SCRAM-SHA-256, optionally with tls-server-end-point binding."""

    def __init__(
        self,
        password: str,
        *,
        channel_binding: bytes | None = None,
        nonce: str | None = None,
    ) -> None:
        self.password = password
        self.channel_binding = channel_binding
        self.nonce = nonce or _b64(secrets.token_bytes(18))
        self.mechanism = MECHANISM_PLUS if channel_binding is not None else MECHANISM
        self.gs2_header = "p=tls-server-end-point,," if channel_binding is not None else "n,,"
        self._client_first_bare = f"n=,r={self.nonce}"
        self._server_signature: bytes | None = None

    def client_first(self) -> bytes:
        return (self.gs2_header + self._client_first_bare).encode("ascii")

    def client_final(self, server_first: bytes) -> bytes:
        try:
            text = server_first.decode("ascii")
        except UnicodeDecodeError as e:
            raise ProtocolError("SCRAM server-first-message is not ASCII") from e
        attrs = _parse_attrs(text)
        try:
            nonce, salt, iterations = attrs["r"], _unb64(attrs["s"]), int(attrs["i"])
        except (KeyError, ValueError) as e:
            raise ProtocolError("SCRAM server-first-message lacks r, s or i") from e
        if not nonce.startswith(self.nonce) or len(nonce) <= len(self.nonce):
            raise ProtocolError("SCRAM server nonce does not extend the client nonce")
        if not 1 <= iterations <= MAX_ITERATIONS:
            raise ProtocolError(f"SCRAM iteration count {iterations} is outside 1..{MAX_ITERATIONS}")
        cbind = self.gs2_header.encode("ascii") + (self.channel_binding or b"")
        without_proof = f"c={_b64(cbind)},r={nonce}"
        auth_message = f"{self._client_first_bare},{text},{without_proof}".encode("ascii")
        sp = salted_password(self.password, salt, iterations)
        client_key = _hmac(sp, b"Client Key")
        stored_key = hashlib.sha256(client_key).digest()
        signature = _hmac(stored_key, auth_message)
        proof = bytes(a ^ b for a, b in zip(client_key, signature))
        self._server_signature = _hmac(_hmac(sp, b"Server Key"), auth_message)
        return f"{without_proof},p={_b64(proof)}".encode("ascii")

    def verify_server_final(self, server_final: bytes) -> None:
        if self._server_signature is None:
            raise ProtocolError("SCRAM server-final before server-first")
        try:
            attrs = _parse_attrs(server_final.decode("ascii"))
        except UnicodeDecodeError as e:
            raise ProtocolError("SCRAM server-final-message is not ASCII") from e
        if "e" in attrs:
            raise ProtocolError(f"SCRAM authentication failed: {attrs['e']}")
        if not hmac.compare_digest(_unb64(attrs.get("v", "")), self._server_signature):
            raise ProtocolError("SCRAM server signature does not verify")


def tls_server_end_point(cert_der: bytes) -> bytes:
    """Channel-binding data for tls-server-end-point (RFC 5929): the hash of
    the server certificate, with SHA-256 for MD5/SHA-1 signed certificates."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    cert = x509.load_der_x509_certificate(cert_der)
    algo = cert.signature_hash_algorithm
    if algo is None or isinstance(algo, (hashes.MD5, hashes.SHA1)):
        algo = hashes.SHA256()
    h = hashes.Hash(algo)
    h.update(cert_der)
    return h.finalize()


def md5_password(user: str, password: str, salt: bytes) -> str:
    """The response to AuthenticationMD5Password."""
    inner = hashlib.md5((password + user).encode("utf-8")).hexdigest()
    return "md5" + hashlib.md5(inner.encode("ascii") + salt).hexdigest()
