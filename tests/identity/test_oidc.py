"""The OIDC verifier: the token matrix, the JWKS cache, config validation, and HTTP fetching."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from jose import jws

from pgjit.errors import InvalidAuthorization, InvalidPassword, PgjitError
from pgjit.identity import Identity, JWKSFetchError, OIDCConfig, OIDCConfigError, TokenVerifier
from pgjit.identity.http import FetchError, check_url, fetch_url, make_fetcher
from pgjit.identity.oidc import format_timestamp

ISSUER = "https://idp.example.com/realms/acme"
AUD = "pgjit"
NOW = 1_790_000_000.0  # 2026-09-21T…Z

# ---------------------------------------------------------------------------- keys


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _uint(value: int) -> str:
    return _b64(value.to_bytes((value.bit_length() + 7) // 8, "big"))


def _pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


RSA1 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RSA2 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC1 = ec.generate_private_key(ec.SECP256R1())


def rsa_jwk(key: rsa.RSAPrivateKey, kid: str | None, alg: str | None = "RS256") -> dict[str, str]:
    numbers = key.public_key().public_numbers()
    out = {"kty": "RSA", "use": "sig", "n": _uint(numbers.n), "e": _uint(numbers.e)}
    if kid is not None:
        out["kid"] = kid
    if alg is not None:
        out["alg"] = alg
    return out


def ec_jwk(key: ec.EllipticCurvePrivateKey, kid: str) -> dict[str, str]:
    numbers = key.public_key().public_numbers()
    return {
        "kty": "EC",
        "use": "sig",
        "crv": "P-256",
        "kid": kid,
        "x": _b64(numbers.x.to_bytes(32, "big")),
        "y": _b64(numbers.y.to_bytes(32, "big")),
    }


def claims(**overrides: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUD,
        "sub": "u-123",
        "email": "alice@example.com",
        "groups": ["analysts", "oncall"],
        "iat": int(NOW) - 10,
        "exp": int(NOW) + 600,
    }
    for name, value in overrides.items():
        if value is None:
            out.pop(name, None)
        else:
            out[name] = value
    return out


def sign(
    payload: Mapping[str, Any],
    key: Any = RSA1,
    *,
    alg: str = "RS256",
    kid: str | None = "k1",
) -> str:
    headers = {} if kid is None else {"kid": kid}
    if alg.startswith("PS"):
        header = {"alg": alg, "typ": "JWT", **headers}
        signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(payload).encode())}"
        signature = key.sign(
            signing_input.encode(),
            padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=32),
            hashes.SHA256(),
        )
        return f"{signing_input}.{_b64(signature)}"
    token = jws.sign(dict(payload), _pem(key).decode(), headers=headers, algorithm=alg)
    return token if isinstance(token, str) else token.decode()


def hand_made(header: Mapping[str, Any], payload: Mapping[str, Any], signature: bytes = b"") -> str:
    return f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(payload).encode())}.{_b64(signature)}"


# ---------------------------------------------------------------------------- fakes


class FakeIdP:
    """A fetch function serving a mutable JWKS, counting calls, optionally down."""

    def __init__(self, *keys: dict[str, str]) -> None:
        self.keys = list(keys)
        self.calls: list[str] = []
        self.down: Exception | None = None
        self.delay = 0.0
        self.raw_jwks: bytes | None = None
        self._lock = threading.Lock()

    def __call__(self, url: str) -> bytes:
        with self._lock:
            self.calls.append(url)
        if self.delay:
            time.sleep(self.delay)
        if self.down is not None:
            raise self.down
        if url.endswith("/.well-known/openid-configuration"):
            return json.dumps({"issuer": ISSUER, "jwks_uri": ISSUER + "/certs"}).encode()
        if self.raw_jwks is not None:
            return self.raw_jwks
        return json.dumps({"keys": self.keys}).encode()

    @property
    def jwks_calls(self) -> int:
        return sum(1 for url in self.calls if url.endswith("/certs"))


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def make(
    idp: FakeIdP | None = None, clock: FakeClock | None = None, **config: Any
) -> tuple[TokenVerifier, FakeIdP, FakeClock]:
    idp = idp if idp is not None else FakeIdP(rsa_jwk(RSA1, "k1"))
    clock = clock if clock is not None else FakeClock()
    cfg = OIDCConfig(issuer=config.pop("issuer", ISSUER), audience=config.pop("audience", AUD), **config)
    return TokenVerifier(cfg, idp, clock=clock), idp, clock


def refused(verifier: TokenVerifier, token: str, user: str = "token", now: float = NOW) -> PgjitError:
    with pytest.raises(PgjitError) as info:
        verifier.verify(token, user, now=now)
    err = info.value
    assert token not in _all_text(err)
    return err


def _all_text(err: BaseException) -> str:
    """Every piece of text the exception (and its chain) could show anyone."""
    parts: list[str] = []
    seen: BaseException | None = err
    while seen is not None:
        parts += [str(seen), repr(seen)]
        for attr in ("message", "detail", "hint"):
            value = getattr(seen, attr, None)
            if value:
                parts.append(str(value))
        seen = seen.__cause__ or seen.__context__
    return "\n".join(parts)


# ---------------------------------------------------------------------------- valid tokens


def test_valid_token_gives_identity() -> None:
    verifier, idp, _ = make()
    token = sign(claims())
    ident = verifier.verify(token, "alice@example.com", now=NOW)
    assert isinstance(ident, Identity)
    assert ident.subject == "u-123"
    assert ident.user == "alice@example.com"
    assert ident.groups == frozenset({"analysts", "oncall"})
    assert ident.issuer == ISSUER
    assert ident.expires_at == NOW + 600
    assert ident.issued_at == NOW - 10
    assert ident.claims["sub"] == "u-123"
    with pytest.raises(TypeError):
        ident.claims["sub"] = "mallory"  # type: ignore[index]
    hash(ident)  # usable as a dict key
    assert idp.calls == [ISSUER + "/.well-known/openid-configuration", ISSUER + "/certs"]


def test_discovery_is_done_once_and_jwks_cached() -> None:
    verifier, idp, _ = make()
    for _ in range(3):
        verifier.verify(sign(claims()), "token", now=NOW)
    assert len(idp.calls) == 2


def test_user_placeholder_accepted_and_configurable() -> None:
    verifier, _, _ = make()
    assert verifier.verify(sign(claims()), "token", now=NOW).user == "alice@example.com"
    verifier, _, _ = make(user_placeholder="oidc", user_claim="sub")
    assert verifier.verify(sign(claims()), "oidc", now=NOW).user == "u-123"
    assert verifier.verify(sign(claims()), "u-123", now=NOW).user == "u-123"


def test_bearer_prefix_and_whitespace_tolerated() -> None:
    verifier, _, _ = make()
    token = sign(claims())
    assert verifier.verify(f"  Bearer {token}\n", "token", now=NOW).subject == "u-123"


def test_audience_list_in_token_and_in_config() -> None:
    verifier, _, _ = make()
    assert verifier.verify(sign(claims(aud=["other", AUD])), "token", now=NOW)
    verifier, _, _ = make(audience=["gw-a", "gw-b"])
    assert verifier.verify(sign(claims(aud="gw-b")), "token", now=NOW)


def test_es256_and_ps256_tokens_verify() -> None:
    idp = FakeIdP(rsa_jwk(RSA1, "k1", alg=None), ec_jwk(EC1, "ec1"))
    verifier, _, _ = make(idp)
    assert verifier.verify(sign(claims(), EC1, alg="ES256", kid="ec1"), "token", now=NOW)
    assert verifier.verify(sign(claims(), RSA1, alg="PS256", kid="k1"), "token", now=NOW)
    assert verifier.verify(sign(claims(), RSA1, alg="RS384", kid="k1"), "token", now=NOW)


def test_skew_tolerated() -> None:
    verifier, _, _ = make(clock_skew=60)
    token = sign(claims(nbf=int(NOW) + 30, iat=int(NOW) + 30))
    assert verifier.verify(token, "token", now=NOW)


def test_expired_inside_the_skew_window_is_expired() -> None:
    # The skew forgives an issuer whose clock runs ahead (nbf, iat), never an
    # expired token: its JIT role would be past VALID UNTIL before it logs in.
    verifier, _, _ = make(clock_skew=60)
    err = refused(verifier, sign(claims(exp=int(NOW) - 30)))
    assert isinstance(err, InvalidPassword) and err.message.startswith("token expired at ")


# ---------------------------------------------------------------------------- refused tokens


@pytest.mark.parametrize("password", ["hunter2", "a.b", "a.b.c", "..", "eyJ.eyJ.", "x" * 70000])
def test_not_a_jwt(password: str) -> None:
    verifier, idp, _ = make()
    err = refused(verifier, password)
    assert isinstance(err, InvalidPassword)
    assert err.sqlstate == "28P01" and err.severity == "FATAL"
    assert err.message.startswith("password is not a JWT: expected an OIDC ID or access token")
    assert idp.calls == []


def test_jwe_is_named() -> None:
    verifier, _, _ = make()
    err = refused(verifier, "eyJhbGciOiJSU0EtT0FFUCJ9.a.b.c.d")
    assert "encrypted token (JWE)" in err.message


def test_expired() -> None:
    verifier, _, _ = make()
    exp = int(NOW) - 3600
    err = refused(verifier, sign(claims(exp=exp, iat=exp - 600)))
    assert isinstance(err, InvalidPassword)
    stamp = datetime.fromtimestamp(exp, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert err.message.startswith(f"token expired at {stamp}")
    assert err.hint and "fresh token" in err.hint


def test_format_timestamp() -> None:
    assert format_timestamp(0) == "1970-01-01T00:00:00Z"
    assert format_timestamp(1795936262) == "2026-11-29T07:11:02Z"


def test_missing_exp_refused() -> None:
    verifier, _, _ = make()
    err = refused(verifier, sign(claims(exp=None)))
    assert "no expiry ('exp')" in err.message


@pytest.mark.parametrize("bad", ["soon", True, [1]])
def test_exp_must_be_a_number(bad: object) -> None:
    verifier, _, _ = make()
    assert "not a number" in refused(verifier, sign(claims(exp=bad))).message


def test_not_yet_valid_nbf() -> None:
    verifier, _, _ = make()
    nbf = int(NOW) + 3600
    err = refused(verifier, sign(claims(nbf=nbf)))
    assert err.message.startswith(f"token not valid before {format_timestamp(nbf)}")


def test_iat_in_the_future() -> None:
    verifier, _, _ = make()
    iat = int(NOW) + 600
    err = refused(verifier, sign(claims(iat=iat)))
    assert err.message.startswith(f"token not valid before {format_timestamp(iat)}")
    assert "issued" in err.message


def test_wrong_audience() -> None:
    verifier, _, _ = make()
    err = refused(verifier, sign(claims(aud="grafana")))
    assert err.message == "token audience is 'grafana', expected 'pgjit'"
    err = refused(verifier, sign(claims(aud=None)))
    assert "no audience" in err.message


def test_wrong_issuer() -> None:
    verifier, _, _ = make()
    err = refused(verifier, sign(claims(iss="https://evil.example.com")))
    assert err.message == f"token issuer is 'https://evil.example.com', expected '{ISSUER}'"


def test_tampered_payload() -> None:
    verifier, _, _ = make()
    header, _, signature = sign(claims()).split(".")
    forged = _b64(json.dumps(claims(email="root@example.com")).encode())
    err = refused(verifier, f"{header}.{forged}.{signature}", user="root@example.com")
    assert err.message == "token signature does not verify"


def test_signed_by_another_key_with_a_known_kid() -> None:
    verifier, _, _ = make()
    assert refused(verifier, sign(claims(), RSA2, kid="k1")).message == "token signature does not verify"


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
def test_alg_none_refused(alg: str) -> None:
    verifier, idp, _ = make()
    token = hand_made({"alg": alg, "typ": "JWT"}, claims())
    err = refused(verifier, token)
    assert isinstance(err, InvalidPassword)
    assert "unsigned" in err.message
    assert idp.calls == []  # refused before any key is looked up


def test_hs256_with_public_key_as_secret_refused() -> None:
    """The classic key-confusion attack: HMAC keyed with the issuer's public key PEM."""
    verifier, idp, _ = make()
    public_pem = RSA1.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "k1"}).encode())
    payload = _b64(json.dumps(claims()).encode())
    mac = hmac.new(public_pem, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    token = f"{header}.{payload}.{_b64(mac)}"
    err = refused(verifier, token)
    assert "HMAC" in err.message
    assert idp.calls == []


def test_algorithm_outside_allow_list() -> None:
    verifier, _, _ = make(algorithms=["ES256"])
    err = refused(verifier, sign(claims()))
    assert "'RS256' is not allowed" in err.message


def test_alg_must_match_key_type() -> None:
    idp = FakeIdP(rsa_jwk(RSA1, "k1", alg=None), ec_jwk(EC1, "ec1"))
    verifier, _, _ = make(idp)
    # An ES256 header pointing at the RSA key, and an RS256 header pointing at the EC key.
    err = refused(verifier, sign(claims(), EC1, alg="ES256", kid="k1"))
    assert "cannot verify a token signed with ES256" in err.message
    err = refused(verifier, sign(claims(), RSA1, alg="RS256", kid="ec1"))
    assert "an EC key" in err.message and "cannot verify" in err.message


def test_jwk_alg_pins_the_algorithm() -> None:
    verifier, _, _ = make()  # k1 is published with alg RS256
    err = refused(verifier, sign(claims(), RSA1, alg="RS512", kid="k1"))
    assert "cannot verify a token signed with RS512" in err.message


def test_crit_header_refused() -> None:
    verifier, _, _ = make()
    token = jws.sign(claims(), _pem(RSA1).decode(), headers={"kid": "k1", "crit": ["exp"]}, algorithm="RS256")
    assert "crit" in refused(verifier, token).message


def test_missing_user_claim() -> None:
    verifier, _, _ = make()
    err = refused(verifier, sign(claims(email=None)))
    assert err.message.startswith("token has no 'email' claim")


def test_unverified_email_refused() -> None:
    verifier, _, _ = make()
    assert "not verified" in refused(verifier, sign(claims(email_verified=False))).message
    assert verifier.verify(sign(claims(email_verified=True)), "token", now=NOW)


def test_missing_sub_refused() -> None:
    verifier, _, _ = make()
    assert "subject" in refused(verifier, sign(claims(sub=None))).message


def test_user_mismatch_is_28000() -> None:
    verifier, _, _ = make()
    token = sign(claims())
    err = refused(verifier, token, user="bob")
    assert isinstance(err, InvalidAuthorization)
    assert err.sqlstate == "28000" and err.fatal
    assert err.message == (
        "database user 'bob' does not match the token's email 'alice@example.com'; "
        "use that or 'token' as the user name"
    )
    assert isinstance(refused(verifier, token, user=""), InvalidAuthorization)


# ---------------------------------------------------------------------------- groups


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (["a", "b"], {"a", "b"}),
        ("a b", {"a", "b"}),
        ("a,b, c", {"a", "b", "c"}),
        ("", set()),
        ([], set()),
        (None, set()),
    ],
)
def test_groups_claim_shapes(value: object, expected: set[str]) -> None:
    verifier, _, _ = make()
    assert verifier.verify(sign(claims(groups=value)), "token", now=NOW).groups == frozenset(expected)


def test_groups_claim_bad_type_refused() -> None:
    verifier, _, _ = make()
    assert "list of strings" in refused(verifier, sign(claims(groups={"x": 1}))).message
    assert "list of strings" in refused(verifier, sign(claims(groups=["a", 2]))).message


def test_groups_claim_custom_and_nested() -> None:
    verifier, _, _ = make(groups_claim="roles")
    assert verifier.verify(sign(claims(roles="dba")), "token", now=NOW).groups == {"dba"}
    verifier, _, _ = make(groups_claim="realm_access.roles")
    token = sign(claims(realm_access={"roles": ["admin"]}))
    assert verifier.verify(token, "token", now=NOW).groups == {"admin"}


# ---------------------------------------------------------------------------- kid handling


def test_token_without_kid_with_single_key() -> None:
    verifier, _, _ = make()
    assert verifier.verify(sign(claims(), kid=None), "token", now=NOW)


def test_token_without_kid_with_two_keys_refused() -> None:
    verifier, _, _ = make(FakeIdP(rsa_jwk(RSA1, "k1"), rsa_jwk(RSA2, "k2")))
    err = refused(verifier, sign(claims(), kid=None))
    assert "no 'kid'" in err.message and "2 keys" in err.message


def test_token_without_kid_picks_the_only_key_of_its_type() -> None:
    verifier, _, _ = make(FakeIdP(rsa_jwk(RSA1, "k1"), ec_jwk(EC1, "ec1")))
    assert verifier.verify(sign(claims(), EC1, alg="ES256", kid=None), "token", now=NOW)


def test_symmetric_and_encryption_keys_in_jwks_are_ignored() -> None:
    oct_key = {"kty": "oct", "kid": "k1", "k": _b64(b"secret"), "alg": "HS256"}
    enc_key = {**rsa_jwk(RSA2, "k2", alg=None), "use": "enc"}
    verifier, _, _ = make(FakeIdP(oct_key, enc_key))
    assert "not in the issuer's JWKS" in refused(verifier, sign(claims(), kid="k1")).message
    assert "not in the issuer's JWKS" in refused(verifier, sign(claims(), RSA2, kid="k2")).message


def test_unknown_kid_then_rotation_accepted_after_refetch() -> None:
    verifier, idp, clock = make()
    assert verifier.prefetch() == 1
    token = sign(claims(), RSA2, kid="k2")
    clock.t += 31
    err = refused(verifier, token)
    assert err.message == "signing key 'k2' is not in the issuer's JWKS"
    assert idp.jwks_calls == 2
    idp.keys.append(rsa_jwk(RSA2, "k2"))  # the issuer rotates
    clock.t += 31
    assert verifier.verify(token, "token", now=NOW).subject == "u-123"
    assert idp.jwks_calls == 3
    # The old key still works, without another fetch.
    assert verifier.verify(sign(claims()), "token", now=NOW)
    assert idp.jwks_calls == 3


def test_refetch_is_rate_limited() -> None:
    verifier, idp, clock = make(jwks_min_refetch_interval=30)
    verifier.prefetch()
    clock.t += 31
    refused(verifier, sign(claims(), RSA2, kid="x1"))
    refused(verifier, sign(claims(), RSA2, kid="x2"))
    clock.t += 10
    refused(verifier, sign(claims(), RSA2, kid="x3"))
    assert idp.jwks_calls == 2  # the prefetch and one refetch
    clock.t += 30
    refused(verifier, sign(claims(), RSA2, kid="x4"))
    assert idp.jwks_calls == 3


def test_refetch_is_rate_limited_across_threads() -> None:
    verifier, idp, clock = make()
    verifier.prefetch()
    idp.keys.append(rsa_jwk(RSA2, "k2"))
    idp.delay = 0.05
    clock.t += 31
    token = sign(claims(), RSA2, kid="k2")
    results: list[object] = []

    def worker() -> None:
        try:
            results.append(verifier.verify(token, "token", now=NOW))
        except Exception as exc:  # pragma: no cover - reported below
            results.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(isinstance(r, Identity) for r in results), results
    assert idp.jwks_calls == 2


# ---------------------------------------------------------------------------- IdP outages


def test_idp_down_cached_keys_keep_working() -> None:
    verifier, idp, clock = make(jwks_cache_lifetime=3600)
    verifier.prefetch()
    idp.down = ConnectionRefusedError("connection refused")
    clock.t += 100
    assert verifier.verify(sign(claims()), "token", now=NOW)
    assert len(idp.calls) == 2  # a fresh cache is not refetched
    clock.t += 2000  # past half the lifetime: a refresh is tried, fails, keys still serve
    assert verifier.verify(sign(claims()), "token", now=NOW)
    assert len(idp.calls) == 3


def test_idp_down_new_kid_fails_closed_with_reason() -> None:
    verifier, idp, clock = make()
    verifier.prefetch()
    idp.down = ConnectionRefusedError("connection refused")
    clock.t += 31
    token = sign(claims(), RSA2, kid="k2")
    err = refused(verifier, token)
    assert err.message == (
        "signing key 'k2' is unknown and the JWKS could not be fetched: connection refused"
    )
    # Within the rate-limit window the reason is remembered, without another attempt.
    calls = len(idp.calls)
    assert "could not be fetched: connection refused" in refused(verifier, token).message
    assert len(idp.calls) == calls


def test_cache_lifetime_expiry_while_idp_down_fails_closed() -> None:
    verifier, idp, clock = make(jwks_cache_lifetime=600)
    verifier.prefetch()
    idp.down = TimeoutError("timed out")
    clock.t += 599
    assert verifier.verify(sign(claims()), "token", now=NOW)
    clock.t += 2
    err = refused(verifier, sign(claims()))
    assert "could not be refreshed: timed out" in err.message
    # Once the IdP is back, the next attempt after the rate limit restores service.
    idp.down = None
    clock.t += 31
    assert verifier.verify(sign(claims()), "token", now=NOW)


def test_idp_down_from_the_start() -> None:
    verifier, idp, _ = make()
    idp.down = OSError("network is unreachable")
    with pytest.raises(JWKSFetchError, match="network is unreachable"):
        verifier.prefetch()
    err = refused(verifier, sign(claims()))
    assert "could not be fetched: network is unreachable" in err.message


def test_bad_jwks_response_keeps_old_keys() -> None:
    verifier, idp, clock = make()
    verifier.prefetch()
    idp.raw_jwks = b"<html>oops</html>"
    clock.t += 31
    err = refused(verifier, sign(claims(), RSA2, kid="k2"))
    assert "not valid JSON" in err.message
    assert idp.jwks_calls == 2
    assert verifier.verify(sign(claims()), "token", now=NOW)


def test_discovery_issuer_mismatch_fails_closed() -> None:
    def fetch(url: str) -> bytes:
        return json.dumps({"issuer": "https://other.example.com", "jwks_uri": "https://x/certs"}).encode()

    verifier = TokenVerifier(OIDCConfig(issuer=ISSUER, audience=AUD), fetch)
    err = refused(verifier, sign(claims()))
    assert "names issuer 'https://other.example.com'" in err.message


def test_explicit_jwks_url_skips_discovery() -> None:
    verifier, idp, _ = make(jwks_url="https://keys.example.com/jwks")
    verifier.verify(sign(claims()), "token", now=NOW)
    assert idp.calls == ["https://keys.example.com/jwks"]


# ---------------------------------------------------------------------------- no token in errors


def test_token_never_appears_in_any_error() -> None:
    verifier, idp, clock = make()
    verifier.prefetch()
    exp = int(NOW) - 100
    header, _, signature = sign(claims()).split(".")
    bad_tokens = [
        sign(claims(exp=exp)),
        sign(claims(aud="x")),
        sign(claims(iss="x")),
        sign(claims(nbf=int(NOW) + 999)),
        sign(claims(email=None)),
        sign(claims(), RSA2, kid="k9"),
        f"{header}.{_b64(b'{}')}.{signature}",
        f"{header}.{_b64(b'not json')}.{signature}",
        hand_made({"alg": "none"}, claims()),
        hand_made({"alg": "HS256", "kid": "k1"}, claims(), b"x" * 32),
        sign(claims()) + "x",
    ]
    for token in bad_tokens:
        refused(verifier, token)  # asserts the token is absent from all text
        for part in token.split("."):
            if len(part) > 20:
                err = refused(verifier, token)
                assert part not in _all_text(err)
    refused(verifier, sign(claims()), user="bob")


# ---------------------------------------------------------------------------- config


@pytest.mark.parametrize("alg", ["none", "None", "HS256", "HS384", "HS512", "hs256"])
def test_config_refuses_none_and_hmac(alg: str) -> None:
    with pytest.raises(OIDCConfigError) as info:
        OIDCConfig(issuer=ISSUER, audience=AUD, algorithms=("RS256", alg))
    assert info.value.key == "algorithms"
    assert ("unsigned" in str(info.value)) or ("HMAC" in str(info.value))


def test_config_defaults() -> None:
    cfg = OIDCConfig(issuer=ISSUER, audience="pgjit")
    assert cfg.algorithms == ("RS256", "RS384", "RS512", "ES256", "ES384", "PS256")
    assert cfg.clock_skew == 60 and cfg.user_claim == "email" and cfg.user_placeholder == "token"
    assert cfg.groups_claim == "groups" and cfg.jwks_cache_lifetime == 3600
    assert cfg.jwks_min_refetch_interval == 30
    assert cfg.discovery_url == ISSUER + "/.well-known/openid-configuration"


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"algorithms": ["EdDSA"]}, "algorithms"),
        ({"algorithms": []}, "algorithms"),
        ({"clock_skew": 301}, "clock_skew"),
        ({"clock_skew": -1}, "clock_skew"),
        ({"audience": []}, "audience"),
        ({"audience": ""}, "audience"),
        ({"issuer": ""}, "issuer"),
        ({"user_placeholder": ""}, "user_placeholder"),
        ({"jwks_url": "https://a/jwks", "jwks_file": "/tmp/jwks.json"}, "jwks_file"),
        ({"jwks_cache_lifetime": 0}, "jwks_cache_lifetime"),
        ({"jwks_min_refetch_interval": 7200}, "jwks_min_refetch_interval"),
    ],
)
def test_config_validation(kwargs: dict[str, Any], key: str) -> None:
    base: dict[str, Any] = {"issuer": ISSUER, "audience": AUD}
    with pytest.raises(OIDCConfigError) as info:
        OIDCConfig(**{**base, **kwargs})
    assert info.value.key == key


def test_config_from_mapping_names_the_key() -> None:
    cfg = OIDCConfig.from_mapping({"issuer": ISSUER, "audience": ["a", "b"], "algorithms": "ES256"})
    assert cfg.audience == ("a", "b") and cfg.algorithms == ("ES256",)
    with pytest.raises(OIDCConfigError, match=r"^oidc\.algorithms: .*unsigned"):
        OIDCConfig.from_mapping({"issuer": ISSUER, "audience": AUD, "algorithms": ["none"]})
    with pytest.raises(OIDCConfigError, match=r"^oidc\.algorithm: unknown setting"):
        OIDCConfig.from_mapping({"issuer": ISSUER, "audience": AUD, "algorithm": "RS256"})
    with pytest.raises(OIDCConfigError, match=r"^oidc\.audience: is required"):
        OIDCConfig.from_mapping({"issuer": ISSUER})


# ---------------------------------------------------------------------------- over HTTP


class _IdPServer:
    """A tiny OIDC provider on 127.0.0.1: discovery and a mutable JWKS."""

    def __init__(self) -> None:
        self.keys: list[dict[str, str]] = []
        self.hits: list[str] = []
        state = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                state.hits.append(self.path)
                body: object
                if self.path == "/.well-known/openid-configuration":
                    body = {"issuer": state.issuer, "jwks_uri": state.issuer + "/jwks"}
                elif self.path == "/jwks":
                    body = {"keys": state.keys}
                elif self.path == "/redirect-out":
                    self.send_response(302)
                    self.send_header("Location", "http://example.com/jwks")
                    self.end_headers()
                    return
                else:
                    self.send_error(404)
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.issuer = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.closed = False

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def idp_server() -> Iterator[_IdPServer]:
    server = _IdPServer()
    try:
        yield server
    finally:
        server.close()


def test_over_http_discovery_jwks_and_rotation(idp_server: _IdPServer) -> None:
    idp_server.keys = [rsa_jwk(RSA1, "k1")]
    clock = FakeClock()
    cfg = OIDCConfig(issuer=idp_server.issuer, audience=AUD)
    verifier = TokenVerifier(cfg, make_fetcher(timeout=5), clock=clock)

    def tok(key: rsa.RSAPrivateKey, kid: str) -> str:
        return sign(claims(iss=idp_server.issuer), key, kid=kid)

    assert verifier.verify(tok(RSA1, "k1"), "alice@example.com", now=NOW).user == "alice@example.com"
    assert idp_server.hits == ["/.well-known/openid-configuration", "/jwks"]

    idp_server.keys = [rsa_jwk(RSA2, "k2"), rsa_jwk(RSA1, "k1")]  # rotation
    clock.t += 31
    assert verifier.verify(tok(RSA2, "k2"), "token", now=NOW)
    assert idp_server.hits[-1] == "/jwks"

    idp_server.close()  # the IdP goes away: cached keys still work …
    clock.t += 31
    assert verifier.verify(tok(RSA1, "k1"), "token", now=NOW)
    # … but a key it never saw fails closed, saying why.
    err = refused(verifier, tok(RSA2, "k3"))
    assert err.message.startswith("signing key 'k3' is unknown and the JWKS could not be fetched: ")
    assert "127.0.0.1" in err.message


def test_http_fetcher_refuses_redirect_off_loopback(idp_server: _IdPServer) -> None:
    with pytest.raises(FetchError, match="plain http"):
        fetch_url(idp_server.issuer + "/redirect-out", timeout=5)
    with pytest.raises(FetchError, match="HTTP 404"):
        fetch_url(idp_server.issuer + "/nope", timeout=5)


@pytest.mark.parametrize(
    "url",
    ["http://idp.example.com/jwks", "ftp://127.0.0.1/jwks", "gopher://x", "file://remote-host/etc/jwks"],
)
def test_http_fetcher_refuses_unsafe_urls(url: str) -> None:
    with pytest.raises(FetchError):
        check_url(url)


@pytest.mark.parametrize(
    "url", ["https://idp.example.com/jwks", "http://localhost:8080/x", "http://[::1]/x", "http://127.0.0.1/x"]
)
def test_http_fetcher_accepts_safe_urls(url: str) -> None:
    check_url(url)


def test_file_fetcher_and_size_limit(tmp_path: Any) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [rsa_jwk(RSA1, "k1")]}))
    assert json.loads(fetch_url(path.as_uri()))["keys"][0]["kid"] == "k1"
    with pytest.raises(FetchError, match="more than 10 bytes"):
        fetch_url(path.as_uri(), max_bytes=10)
    with pytest.raises(FetchError, match="could not read"):
        fetch_url((tmp_path / "missing.json").as_uri())
    verifier = TokenVerifier(OIDCConfig(issuer=ISSUER, audience=AUD, jwks_file=str(path)), make_fetcher())
    assert verifier.verify(sign(claims()), "token", now=NOW)
