"""SCRAM-SHA-256 maths against RFC 7677 and a server written here, plus md5."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgjit.protocol import scram
from pgjit.protocol.errors import ProtocolError
from pgjit.protocol.scram import ScramClient, make_verifier, md5_password

# RFC 7677, section 3
RFC_USER = "user"
RFC_PASSWORD = "pencil"
RFC_CLIENT_NONCE = "rOprNGfwEbeRWgbNEkqO"
RFC_CLIENT_FIRST = b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
RFC_SERVER_FIRST = b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
RFC_CLIENT_FINAL = b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
RFC_SERVER_FINAL = b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
RFC_SALT = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")

VERIFIER_RE = re.compile(r"^SCRAM-SHA-256\$(\d+):([A-Za-z0-9+/=]+)\$([A-Za-z0-9+/=]+):([A-Za-z0-9+/=]+)$")

FEW = settings(max_examples=25, deadline=None)


def _hmac(key: bytes, msg: bytes) -> bytes:
    return hmac.new(key, msg, hashlib.sha256).digest()


def _rfc_client() -> ScramClient:
    client = ScramClient(RFC_PASSWORD, nonce=RFC_CLIENT_NONCE)
    # PostgreSQL sends an empty user name ("n="); the RFC's vector uses "n=user".
    client._client_first_bare = f"n={RFC_USER},r={RFC_CLIENT_NONCE}"
    return client


# --------------------------------------------------------------------------
# a minimal PostgreSQL-like SCRAM server, from the stored verifier only
# --------------------------------------------------------------------------


def _parse_verifier(verifier: str) -> tuple[int, bytes, bytes, bytes]:
    match = VERIFIER_RE.match(verifier)
    assert match, verifier
    iterations, salt, stored_key, server_key = match.groups()
    return int(iterations), base64.b64decode(salt), base64.b64decode(stored_key), base64.b64decode(server_key)


class _Server:
    """Verifies a client the way PostgreSQL's auth-scram.c does."""

    def __init__(self, verifier: str, server_nonce: str = "3rfcNHYJY1ZVvWVs7j", channel_binding: bytes | None = None):
        self.iterations, self.salt, self.stored_key, self.server_key = _parse_verifier(verifier)
        self.server_nonce = server_nonce
        self.channel_binding = channel_binding

    def first(self, client_first: bytes) -> bytes:
        text = client_first.decode("ascii")
        gs2_cbind_flag, authzid, bare = text.split(",", 2)
        self.gs2_header = f"{gs2_cbind_flag},{authzid},"
        attrs = dict(part.split("=", 1) for part in bare.split(","))
        self.client_first_bare = bare
        self.nonce = attrs["r"] + self.server_nonce
        self.server_first = f"r={self.nonce},s={base64.b64encode(self.salt).decode()},i={self.iterations}"
        return self.server_first.encode()

    def final(self, client_final: bytes) -> bytes:
        text = client_final.decode("ascii")
        without_proof, proof_attr = text.rsplit(",", 1)
        assert proof_attr.startswith("p=")
        attrs = dict(part.split("=", 1) for part in without_proof.split(","))
        cbind = base64.b64decode(attrs["c"])
        assert cbind == self.gs2_header.encode() + (self.channel_binding or b"")
        assert attrs["r"] == self.nonce
        auth_message = f"{self.client_first_bare},{self.server_first},{without_proof}".encode()
        client_signature = _hmac(self.stored_key, auth_message)
        proof = base64.b64decode(proof_attr[2:])
        client_key = bytes(a ^ b for a, b in zip(proof, client_signature))
        if hashlib.sha256(client_key).digest() != self.stored_key:
            return b"e=invalid-proof"
        return b"v=" + base64.b64encode(_hmac(self.server_key, auth_message))


# --------------------------------------------------------------------------
# make_verifier
# --------------------------------------------------------------------------


def test_verifier_format():
    v = make_verifier("secret")
    match = VERIFIER_RE.match(v)
    assert match
    iterations, salt, stored, server = match.groups()
    assert iterations == "4096"
    assert len(base64.b64decode(salt, validate=True)) == 16
    assert len(base64.b64decode(stored, validate=True)) == 32
    assert len(base64.b64decode(server, validate=True)) == 32
    assert make_verifier("secret") != v  # random salt


def test_verifier_with_given_salt_and_iterations_is_deterministic():
    v1 = make_verifier("secret", salt=b"0123456789abcdef", iterations=10)
    assert v1 == make_verifier("secret", salt=b"0123456789abcdef", iterations=10)
    assert v1.startswith("SCRAM-SHA-256$10:MDEyMzQ1Njc4OWFiY2RlZg==$")
    assert make_verifier("secret2", salt=b"0123456789abcdef", iterations=10) != v1


def test_verifier_matches_rfc7677_vector():
    """StoredKey/ServerKey from make_verifier reproduce the RFC's ServerSignature."""
    iterations, salt, stored_key, server_key = _parse_verifier(make_verifier(RFC_PASSWORD, RFC_SALT, 4096))
    assert (iterations, salt) == (4096, RFC_SALT)
    client_first_bare = RFC_CLIENT_FIRST[3:]
    without_proof = RFC_CLIENT_FINAL.rsplit(b",", 1)[0]
    auth_message = client_first_bare + b"," + RFC_SERVER_FIRST + b"," + without_proof
    assert b"v=" + base64.b64encode(_hmac(server_key, auth_message)) == RFC_SERVER_FINAL
    proof = base64.b64decode(RFC_CLIENT_FINAL.rsplit(b",p=", 1)[1])
    client_key = bytes(a ^ b for a, b in zip(proof, _hmac(stored_key, auth_message)))
    assert hashlib.sha256(client_key).digest() == stored_key


def test_verifier_known_value():
    # StoredKey = H(HMAC(SaltedPassword, "Client Key")), ServerKey = HMAC(SaltedPassword, "Server Key")
    v = make_verifier(RFC_PASSWORD, RFC_SALT, 4096)
    sp = hashlib.pbkdf2_hmac("sha256", b"pencil", RFC_SALT, 4096)
    stored = hashlib.sha256(_hmac(sp, b"Client Key")).digest()
    server = _hmac(sp, b"Server Key")
    assert v == f"SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==${base64.b64encode(stored).decode()}:{base64.b64encode(server).decode()}"


# --------------------------------------------------------------------------
# ScramClient
# --------------------------------------------------------------------------


def test_rfc7677_client_exchange():
    client = _rfc_client()
    assert client.mechanism == "SCRAM-SHA-256"
    assert client.client_first() == RFC_CLIENT_FIRST
    assert client.client_final(RFC_SERVER_FIRST) == RFC_CLIENT_FINAL
    client.verify_server_final(RFC_SERVER_FINAL)  # does not raise


def test_postgresql_client_first_has_empty_user():
    client = ScramClient("pw", nonce="abc")
    assert client.client_first() == b"n,,n=,r=abc"
    assert len(ScramClient("pw").nonce) >= 18
    assert ScramClient("pw").nonce != ScramClient("pw").nonce


@FEW
@given(
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=20),
    st.binary(min_size=1, max_size=32),
    st.integers(1, 64),
    st.one_of(st.none(), st.binary(min_size=32, max_size=64)),
)
def test_full_exchange_against_verifier(password, salt, iterations, channel_binding):
    server = _Server(make_verifier(password, salt, iterations), channel_binding=channel_binding)
    client = ScramClient(password, channel_binding=channel_binding)
    if channel_binding is None:
        assert client.mechanism == "SCRAM-SHA-256"
        assert client.client_first().startswith(b"n,,n=,r=")
    else:
        assert client.mechanism == "SCRAM-SHA-256-PLUS"
        assert client.client_first().startswith(b"p=tls-server-end-point,,n=,r=")
    server_final = server.final(client.client_final(server.first(client.client_first())))
    assert server_final.startswith(b"v=")
    client.verify_server_final(server_final)


def test_wrong_password_is_refused_by_server_and_client():
    server = _Server(make_verifier("right", b"salt", 8))
    client = ScramClient("wrong")
    assert server.final(client.client_final(server.first(client.client_first()))) == b"e=invalid-proof"
    with pytest.raises(ProtocolError, match="invalid-proof"):
        client.verify_server_final(b"e=invalid-proof")


def test_server_nonce_must_extend_client_nonce():
    client = ScramClient("pencil", nonce=RFC_CLIENT_NONCE)
    for bad_nonce in ("someoneelse" + RFC_CLIENT_NONCE, RFC_CLIENT_NONCE, RFC_CLIENT_NONCE[:-1], "x"):
        with pytest.raises(ProtocolError):
            client.client_final(f"r={bad_nonce},s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096".encode())


def test_bad_server_signature():
    client = _rfc_client()
    client.client_final(RFC_SERVER_FIRST)
    sig = base64.b64decode(RFC_SERVER_FINAL[2:])
    tampered = bytes([sig[0] ^ 1]) + sig[1:]
    for bad in (
        b"v=" + base64.b64encode(tampered),
        b"v=" + base64.b64encode(sig[:-1]),
        b"v=",
        b"x=1",
        b"v=!!notbase64!!",
        b"v=\xff",
        b"",
        b"garbage",
    ):
        with pytest.raises(ProtocolError):
            client.verify_server_final(bad)
    client.verify_server_final(RFC_SERVER_FINAL)


def test_server_final_before_server_first():
    with pytest.raises(ProtocolError):
        ScramClient("pw").verify_server_final(RFC_SERVER_FINAL)


@pytest.mark.parametrize(
    "server_first",
    [
        b"",
        b"garbage",
        b"r=rOprNGfwEbeRWgbNEkqOxyz,i=4096",  # no salt
        b"r=rOprNGfwEbeRWgbNEkqOxyz,s=W22ZaJ0SNY7soEsUEjb6gQ==",  # no iterations
        b"s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",  # no nonce
        b"r=rOprNGfwEbeRWgbNEkqOxyz,s=***,i=4096",  # bad base64
        b"r=rOprNGfwEbeRWgbNEkqOxyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=many",
        b"r=rOprNGfwEbeRWgbNEkqOxyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=0",
        b"r=rOprNGfwEbeRWgbNEkqOxyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=-1",
        b"r=rOprNGfwEbeRWgbNEkqOxyz\xff,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=1",  # not ASCII
        b"r=rOprNGfwEbeRWgbNEkqOxyz,,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=1",  # empty attribute
    ],
)
def test_malformed_server_first(server_first):
    with pytest.raises(ProtocolError):
        ScramClient("pencil", nonce=RFC_CLIENT_NONCE).client_final(server_first)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=120))
def test_random_server_messages_only_raise_protocol_error(data):
    client = ScramClient("pencil", nonce=RFC_CLIENT_NONCE)
    with pytest.raises(ProtocolError):  # random bytes never carry our nonce
        client.client_final(data)
    rfc = _rfc_client()
    rfc.client_final(RFC_SERVER_FIRST)
    with pytest.raises(ProtocolError):
        rfc.verify_server_final(data)


@settings(max_examples=100, deadline=None)
@given(st.text(st.sampled_from("rsiv=,ABC+/0123456789%$"), max_size=60))
def test_structured_server_first_only_raises_protocol_error(tail):
    client = ScramClient("pencil", nonce="N")
    # keep the iteration count tiny so pbkdf2 stays fast
    text = f"r=Nx,s=AAAA,{tail}"
    if re.search(r"i=\d{3,}", text):
        return
    try:
        client.client_final(text.encode())
    except ProtocolError:
        pass


def test_tls_server_end_point_hash():
    pytest.importorskip("cryptography")
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("db.example")
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    der = x509.load_pem_x509_certificate(cert.cert_chain_pems[0].bytes()).public_bytes(Encoding.DER)
    # trustme signs with SHA-256, so the binding data is the SHA-256 of the DER certificate.
    assert scram.tls_server_end_point(der) == hashlib.sha256(der).digest()


# --------------------------------------------------------------------------
# md5
# --------------------------------------------------------------------------


def test_md5_password_known_values():
    # 'md5' + md5(md5(password + user).hexdigest() + salt)
    assert md5_password("postgres", "postgres", b"\x01\x02\x03\x04") == "md568be9ed08db75f318087ab337aaea044"
    assert md5_password("alice", "secret", b"abcd") == "md5" + hashlib.md5(
        hashlib.md5(b"secretalice").hexdigest().encode() + b"abcd"
    ).hexdigest()
    # the inner hash is the well-known pg_authid entry of an md5 role postgres/postgres
    assert hashlib.md5(b"postgrespostgres").hexdigest() == "3175bce1d3201d16594cebf9d7eb3f9d"


@FEW
@given(st.text(max_size=10), st.text(max_size=10), st.binary(min_size=4, max_size=4))
def test_md5_password_shape(user, password, salt):
    out = md5_password(user, password, salt)
    assert re.fullmatch(r"md5[0-9a-f]{32}", out)
