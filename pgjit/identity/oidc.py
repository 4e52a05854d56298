"""OIDC token verification for the gateway's password step.

A client sends an OIDC ID or access token as its PostgreSQL password. The
:class:`TokenVerifier` checks it against the issuer's published signing keys
(the JWKS) and returns an :class:`Identity`, or raises one of the client-visible
errors from :mod:`pgjit.errors` with a message a person can act on.

This module never opens a socket. Fetching the discovery document and the JWKS
is done by a ``fetch(url) -> bytes`` callable handed in by the caller (see
:mod:`pgjit.identity.http` for the default, urllib-based one). The verifier is
synchronous; the gateway runs it in a worker thread. It is thread-safe: the key
cache sits behind a lock, and fetches are serialised by a second lock so that
verifications whose key is already cached never wait for a slow identity
provider.

The token itself is never logged and never put into an exception message.
"""

from __future__ import annotations

import base64
import binascii
import copy
import json
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from jose import jwk, jws
from jose.exceptions import JOSEError

from pgjit.errors import InvalidAuthorization, InvalidPassword

__all__ = [
    "DEFAULT_ALGORITHMS",
    "SUPPORTED_ALGORITHMS",
    "FetchFn",
    "Identity",
    "JWKSFetchError",
    "OIDCConfig",
    "OIDCConfigError",
    "TokenVerifier",
    "format_timestamp",
]

log = logging.getLogger("pgjit.identity")

FetchFn = Callable[[str], bytes]
"""Fetches a URL (``https://``, loopback ``http://`` or ``file://``) and returns the body."""

DEFAULT_ALGORITHMS: Final[tuple[str, ...]] = ("RS256", "RS384", "RS512", "ES256", "ES384", "PS256")

# alg -> (JWK key type, required curve or None)
_ALG_KEY_TYPE: Final[Mapping[str, tuple[str, str | None]]] = {
    "RS256": ("RSA", None),
    "RS384": ("RSA", None),
    "RS512": ("RSA", None),
    "PS256": ("RSA", None),
    "PS384": ("RSA", None),
    "PS512": ("RSA", None),
    "ES256": ("EC", "P-256"),
    "ES384": ("EC", "P-384"),
    "ES512": ("EC", "P-521"),
}
SUPPORTED_ALGORITHMS: Final[frozenset[str]] = frozenset(_ALG_KEY_TYPE)

# python-jose has no RSASSA-PSS; those are verified with `cryptography` directly.
_PSS_HASHES: Final[Mapping[str, type[hashes.HashAlgorithm]]] = {
    "PS256": hashes.SHA256,
    "PS384": hashes.SHA384,
    "PS512": hashes.SHA512,
}

_EC_CURVES: Final[Mapping[str, type[ec.EllipticCurve]]] = {
    "P-256": ec.SECP256R1,
    "P-384": ec.SECP384R1,
    "P-521": ec.SECP521R1,
}

MAX_CLOCK_SKEW: Final = 300.0
MIN_RSA_BITS: Final = 2048
MAX_TOKEN_LENGTH: Final = 64 * 1024
# A cached JWKS is refreshed (best effort) once it is this fraction of its
# lifetime old; it stays usable until the full lifetime has passed.
_REFRESH_FRACTION: Final = 0.5
_MAX_SHOWN: Final = 120

_B64URL = re.compile(r"[A-Za-z0-9_-]*")
_GROUP_SPLIT = re.compile(r"[\s,]+")


# --------------------------------------------------------------------------- config


class OIDCConfigError(ValueError):
    """An OIDC setting is invalid. ``key`` names the setting."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


def _check_algorithm(key: str, alg: object) -> str:
    if not isinstance(alg, str) or not alg:
        raise OIDCConfigError(key, f"algorithm names must be non-empty strings, got {alg!r}")
    if alg.lower() == "none":
        raise OIDCConfigError(
            key, "'none' means unsigned tokens, which anyone can forge; it cannot be allowed"
        )
    if alg.upper().startswith("HS"):
        raise OIDCConfigError(
            key,
            f"{alg!r} is a shared-secret (HMAC) algorithm; pgjit accepts only public-key "
            "signatures verified against the issuer's JWKS (RS*, PS*, ES*)",
        )
    if alg not in SUPPORTED_ALGORITHMS:
        raise OIDCConfigError(
            key,
            f"unsupported algorithm {alg!r}; choose from {', '.join(sorted(SUPPORTED_ALGORITHMS))}",
        )
    return alg


def _positive_number(key: str, value: object, *, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise OIDCConfigError(key, f"must be a number of seconds, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise OIDCConfigError(key, f"must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return float(value)


def _nonempty_str(key: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise OIDCConfigError(key, f"must be a non-empty string, got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class OIDCConfig:
    """How tokens from one OIDC issuer are verified.

    ``audience`` may be one string or a sequence (a token passes if any of its
    audiences is among them). Keys come from ``jwks_file``, else ``jwks_url``,
    else the ``jwks_uri`` in ``{issuer}/.well-known/openid-configuration``.
    """

    issuer: str
    audience: str | tuple[str, ...]
    jwks_url: str | None = None
    jwks_file: str | None = None
    algorithms: tuple[str, ...] = DEFAULT_ALGORITHMS
    clock_skew: float = 60.0
    user_claim: str = "email"
    user_placeholder: str = "token"
    groups_claim: str = "groups"
    jwks_cache_lifetime: float = 3600.0
    jwks_min_refetch_interval: float = 30.0

    def __post_init__(self) -> None:
        _nonempty_str("issuer", self.issuer)
        aud: object = self.audience
        if isinstance(aud, str):
            _nonempty_str("audience", aud)
        elif isinstance(aud, Sequence) and aud:
            object.__setattr__(self, "audience", tuple(_nonempty_str("audience", a) for a in aud))
        else:
            raise OIDCConfigError("audience", f"must be a string or a non-empty list, got {aud!r}")
        if self.jwks_url is not None:
            _nonempty_str("jwks_url", self.jwks_url)
        if self.jwks_file is not None:
            object.__setattr__(self, "jwks_file", _nonempty_str("jwks_file", str(self.jwks_file)))
        if self.jwks_url is not None and self.jwks_file is not None:
            raise OIDCConfigError("jwks_file", "set either jwks_url or jwks_file, not both")
        algs: object = self.algorithms
        if isinstance(algs, str):
            algs = (algs,)
        if not isinstance(algs, Sequence) or not algs:
            raise OIDCConfigError("algorithms", f"must be a non-empty list, got {algs!r}")
        object.__setattr__(
            self, "algorithms", tuple(dict.fromkeys(_check_algorithm("algorithms", a) for a in algs))
        )
        skew = _positive_number("clock_skew", self.clock_skew, allow_zero=True)
        if skew > MAX_CLOCK_SKEW:
            raise OIDCConfigError("clock_skew", f"must be at most {MAX_CLOCK_SKEW:g} seconds, got {skew:g}")
        object.__setattr__(self, "clock_skew", skew)
        _nonempty_str("user_claim", self.user_claim)
        _nonempty_str("user_placeholder", self.user_placeholder)
        _nonempty_str("groups_claim", self.groups_claim)
        lifetime = _positive_number("jwks_cache_lifetime", self.jwks_cache_lifetime)
        interval = _positive_number(
            "jwks_min_refetch_interval", self.jwks_min_refetch_interval, allow_zero=True
        )
        if interval > lifetime:
            raise OIDCConfigError(
                "jwks_min_refetch_interval",
                f"({interval:g}s) must not exceed jwks_cache_lifetime ({lifetime:g}s)",
            )
        object.__setattr__(self, "jwks_cache_lifetime", lifetime)
        object.__setattr__(self, "jwks_min_refetch_interval", interval)

    @property
    def audiences(self) -> frozenset[str]:
        aud = self.audience
        return frozenset((aud,) if isinstance(aud, str) else aud)

    @property
    def discovery_url(self) -> str:
        return self.issuer.rstrip("/") + "/.well-known/openid-configuration"

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, where: str = "oidc") -> OIDCConfig:
        """Build from a parsed config section; errors name ``where.key``."""
        if not isinstance(data, Mapping):
            raise OIDCConfigError(where, f"must be a mapping, got {type(data).__name__}")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(str(k) for k in data if k not in known)
        if unknown:
            raise OIDCConfigError(
                f"{where}.{unknown[0]}", f"unknown setting; known settings: {', '.join(sorted(known))}"
            )
        for required in ("issuer", "audience"):
            if required not in data:
                raise OIDCConfigError(f"{where}.{required}", "is required")
        try:
            return cls(**dict(data))
        except OIDCConfigError as exc:
            raise OIDCConfigError(f"{where}.{exc.key}", exc.message) from None


# --------------------------------------------------------------------------- identity


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a verified token says the client is."""

    subject: str
    user: str
    groups: frozenset[str]
    issuer: str
    expires_at: float
    issued_at: float | None
    claims: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}), hash=False)


# --------------------------------------------------------------------------- helpers


class JWKSFetchError(Exception):
    """The issuer's signing keys could not be fetched (raised by ``prefetch``)."""


def format_timestamp(ts: float) -> str:
    """``2026-11-29T07:31:02Z`` for an epoch time (UTC)."""
    try:
        return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, OSError, ValueError):
        return f"epoch {ts!r}"


def _format_span(seconds: float) -> str:
    seconds = abs(seconds)
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.0f}h"
    return f"{seconds / 86400:.0f}d"


def _show(value: object) -> str:
    """Quote a token-supplied value for a message, bounded in length."""
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    if len(text) > _MAX_SHOWN:
        text = text[:_MAX_SHOWN] + "…"
    return "'" + text.replace("'", "\\'") + "'"


def _show_expected(values: frozenset[str]) -> str:
    ordered = sorted(values)
    if len(ordered) == 1:
        return _show(ordered[0])
    return "one of " + ", ".join(_show(v) for v in ordered)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    if len(text) > 300:
        text = text[:300] + "…"
    return text


def _b64url_decode(segment: str) -> bytes:
    if not _B64URL.fullmatch(segment) or len(segment) % 4 == 1:
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _b64url_int(value: object) -> int:
    if not isinstance(value, str) or not value:
        raise ValueError("missing or non-string member")
    return int.from_bytes(_b64url_decode(value), "big")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-finite number {name}")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate member {key!r}")
        out[key] = value
    return out


def _strict_json(data: bytes) -> Any:
    return json.loads(data.decode("utf-8"), parse_constant=_reject_constant, object_pairs_hook=_no_duplicates)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _refuse(message: str, hint: str | None = None) -> InvalidPassword:
    return InvalidPassword(message, hint=hint)


# --------------------------------------------------------------------------- keys


@dataclass(slots=True)
class _SigningKey:
    kid: str | None
    kty: str
    crv: str | None
    alg: str | None
    public_key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey
    _jose_keys: dict[str, Any] = field(default_factory=dict, repr=False)

    def describe(self) -> str:
        return f"an {self.kty} key" + (f" on {self.crv}" if self.crv else "")

    def can_verify(self, alg: str) -> bool:
        kty, crv = _ALG_KEY_TYPE[alg]
        if self.kty != kty or (crv is not None and self.crv != crv):
            return False
        return self.alg is None or self.alg == alg

    def jose_key(self, alg: str) -> Any:
        key = self._jose_keys.get(alg)
        if key is None:
            key = jwk.construct(self.public_key, alg)
            self._jose_keys[alg] = key  # a benign race: both threads build the same key
        return key


def _parse_jwk(entry: Mapping[str, Any]) -> _SigningKey | None:
    """A public signing key from one JWK, or None if it is not one we may use."""
    kty = entry.get("kty")
    kid = entry.get("kid")
    use = entry.get("use")
    alg = entry.get("alg")
    key_ops = entry.get("key_ops")
    if kid is not None and not isinstance(kid, str):
        return None
    if use is not None and use != "sig":
        return None
    if key_ops is not None and (not isinstance(key_ops, list) or "verify" not in key_ops):
        return None
    if alg is not None and (not isinstance(alg, str) or alg not in SUPPORTED_ALGORITHMS):
        return None  # e.g. an HS256 "oct" key or RSA-OAEP: never used for verification
    if kty == "RSA":
        public = rsa.RSAPublicNumbers(_b64url_int(entry.get("e")), _b64url_int(entry.get("n"))).public_key()
        if public.key_size < MIN_RSA_BITS:
            log.warning("ignoring JWKS key %r: RSA key of %d bits is too short", kid, public.key_size)
            return None
        return _SigningKey(kid, "RSA", None, alg, public)
    if kty == "EC":
        crv = entry.get("crv")
        if not isinstance(crv, str) or crv not in _EC_CURVES:
            return None
        numbers = ec.EllipticCurvePublicNumbers(
            _b64url_int(entry.get("x")), _b64url_int(entry.get("y")), _EC_CURVES[crv]()
        )
        return _SigningKey(kid, "EC", crv, alg, numbers.public_key())
    return None  # "oct" (shared secrets), "OKP" and anything else


def _parse_jwks(body: bytes, source: str) -> tuple[_SigningKey, ...]:
    try:
        doc = _strict_json(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"JWKS at {source} is not valid JSON: {exc}") from None
    if not isinstance(doc, Mapping) or not isinstance(doc.get("keys"), list):
        raise ValueError(f"JWKS at {source} has no 'keys' list")
    keys: list[_SigningKey] = []
    for entry in doc["keys"]:
        if not isinstance(entry, Mapping):
            continue
        try:
            key = _parse_jwk(entry)
        except (ValueError, TypeError) as exc:
            log.warning("ignoring unusable JWKS key %r from %s: %s", entry.get("kid"), source, exc)
            continue
        if key is not None:
            keys.append(key)
    return tuple(keys)


@dataclass(frozen=True, slots=True)
class _CacheState:
    keys: tuple[_SigningKey, ...] = ()
    fetched_at: float | None = None  # clock time of the last successful fetch
    attempted_at: float | None = None  # clock time of the last fetch attempt
    error: str | None = None  # why the last attempt failed, if it did


# --------------------------------------------------------------------------- verifier


@dataclass(frozen=True, slots=True)
class _ParsedToken:
    compact: str
    header: Mapping[str, Any]
    signing_input: bytes
    payload: bytes
    signature: bytes


class TokenVerifier:
    """Verifies OIDC tokens for one issuer.

    ``fetch`` fetches URLs (may raise; the reason ends up in error messages).
    ``clock`` is a monotonic clock used only for the JWKS cache's timing; token
    times are checked against ``now`` (wall-clock epoch seconds).
    """

    def __init__(
        self,
        config: OIDCConfig,
        fetch: FetchFn,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self._fetch = fetch
        self._clock = clock
        self._lock = threading.Lock()  # guards _state and _jwks_uri
        self._fetch_lock = threading.Lock()  # one fetch at a time
        self._state = _CacheState()
        self._jwks_uri: str | None = None

    # ---------------------------------------------------------------- public

    def prefetch(self) -> int:
        """Fetch the JWKS now (if the rate limit allows) and return how many usable keys are cached.

        Raises :class:`JWKSFetchError` if no usable key set is cached afterwards.
        """
        self._refresh()
        state = self._snapshot()
        if state.fetched_at is None or self._clock() - state.fetched_at >= self.config.jwks_cache_lifetime:
            raise JWKSFetchError(state.error or "the JWKS could not be fetched")
        return len(state.keys)

    def verify(self, token: str, startup_user: str, now: float | None = None) -> Identity:
        """Verify ``token`` (the client's password) for the database user ``startup_user``.

        Raises :class:`~pgjit.errors.InvalidPassword` (28P01) when the token is
        refused and :class:`~pgjit.errors.InvalidAuthorization` (28000) when it
        is valid but names a different user than ``startup_user``.
        """
        wall = time.time() if now is None else now
        parsed = self._parse(token)
        alg = self._check_alg(parsed.header)
        kid = parsed.header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise _refuse("token header 'kid' must be a string")
        candidates = self._keys_for(kid, alg)
        if not any(self._signature_ok(parsed, alg, key) for key in candidates):
            raise _refuse(
                "token signature does not verify",
                hint="the token was altered, or was not signed by the configured issuer",
            )
        try:
            claims = _strict_json(parsed.payload)
        except (UnicodeDecodeError, ValueError) as exc:
            raise _refuse(f"token payload is not valid JSON: {exc}") from None
        if not isinstance(claims, dict):
            raise _refuse("token payload is not a JSON object")
        return self._identity(claims, startup_user, wall)

    # ---------------------------------------------------------------- parsing

    def _parse(self, token: object) -> _ParsedToken:
        not_jwt = "password is not a JWT: expected an OIDC ID or access token"
        if not isinstance(token, str):
            raise _refuse(not_jwt)
        text = token.strip()
        if text[:7].lower() == "bearer ":
            text = text[7:].strip()
        if len(text) > MAX_TOKEN_LENGTH:
            raise _refuse(f"{not_jwt} (it is longer than {MAX_TOKEN_LENGTH} characters)")
        parts = text.split(".")
        if len(parts) == 5:
            raise _refuse(
                "password is an encrypted token (JWE); pgjit needs a signed JWT "
                "(an OIDC ID token or a JWT access token)"
            )
        if len(parts) != 3 or not parts[0] or not parts[1]:
            raise _refuse(not_jwt)  # (an empty signature is structurally fine: alg "none")
        try:
            header_bytes = _b64url_decode(parts[0])
            payload = _b64url_decode(parts[1])
            signature = _b64url_decode(parts[2])
            header = _strict_json(header_bytes)
        except (ValueError, UnicodeDecodeError, binascii.Error):
            raise _refuse(not_jwt) from None
        if not isinstance(header, dict):
            raise _refuse(not_jwt)
        return _ParsedToken(
            compact=text,
            header=header,
            signing_input=f"{parts[0]}.{parts[1]}".encode("ascii"),
            payload=payload,
            signature=signature,
        )

    def _check_alg(self, header: Mapping[str, Any]) -> str:
        alg = header.get("alg")
        allowed = ", ".join(self.config.algorithms)
        if not isinstance(alg, str) or not alg:
            raise _refuse("token header has no signing algorithm ('alg')")
        if alg.lower() == "none":
            raise _refuse("token is unsigned (alg 'none'); pgjit refuses unsigned tokens")
        if alg.upper().startswith("HS"):
            raise _refuse(
                f"token is signed with {_show(alg)}, a shared-secret (HMAC) algorithm; "
                f"pgjit accepts only the issuer's public-key signatures ({allowed})"
            )
        if alg not in self.config.algorithms:
            raise _refuse(f"token signing algorithm {_show(alg)} is not allowed; allowed: {allowed}")
        if "crit" in header:
            raise _refuse("token header has critical extensions ('crit') that pgjit does not understand")
        return alg

    # ---------------------------------------------------------------- keys

    def _snapshot(self) -> _CacheState:
        with self._lock:
            return self._state

    def _matching(self, state: _CacheState, kid: str | None, alg: str) -> list[_SigningKey]:
        if kid is not None:
            return [k for k in state.keys if k.kid == kid]
        return [k for k in state.keys if k.can_verify(alg)]

    def _keys_for(self, kid: str | None, alg: str) -> list[_SigningKey]:
        lifetime = self.config.jwks_cache_lifetime
        state = self._snapshot()
        now = self._clock()
        age = None if state.fetched_at is None else now - state.fetched_at
        found = self._matching(state, kid, alg)
        if age is None or age >= lifetime or not found or (kid is None and len(found) != 1):
            self._refresh()
        elif age >= lifetime * _REFRESH_FRACTION:
            self._refresh()  # best effort; the cached keys remain good until `lifetime`
        state = self._snapshot()
        now = self._clock()
        failed = state.error is not None
        if state.fetched_at is None:
            raise _refuse(
                "the issuer's signing keys (JWKS) could not be fetched"
                + (f": {state.error}" if failed else ""),
                hint="this is a problem between the gateway and the identity provider, not with your token",
            )
        if now - state.fetched_at >= lifetime:
            raise _refuse(
                f"the cached signing keys (JWKS) are older than {lifetime:g}s and could not be "
                f"refreshed: {state.error or 'the identity provider did not answer'}",
                hint="this is a problem between the gateway and the identity provider, not with your token",
            )
        found = self._matching(state, kid, alg)
        if kid is not None:
            if not found:
                if failed:
                    raise _refuse(
                        f"signing key {_show(kid)} is unknown and the JWKS could not be fetched: {state.error}"
                    )
                raise _refuse(
                    f"signing key {_show(kid)} is not in the issuer's JWKS",
                    hint="the token may come from a different issuer or from a key the issuer has retired",
                )
            usable = [k for k in found if k.can_verify(alg)]
            if not usable:
                raise _refuse(
                    f"signing key {_show(kid)} is {found[0].describe()}"
                    + (f" for {found[0].alg}" if found[0].alg else "")
                    + f" and cannot verify a token signed with {alg}"
                )
            return usable
        if len(found) == 1:
            return found
        if not found:
            raise _refuse(f"token header has no 'kid' and the issuer's JWKS has no key for {alg}")
        raise _refuse(
            f"token header has no 'kid' and the issuer's JWKS has {len(found)} keys for {alg}; "
            "cannot tell which one signed it"
        )

    def _refresh(self) -> None:
        """Fetch the JWKS unless a fetch was attempted within the minimum interval."""
        with self._fetch_lock:
            with self._lock:
                attempted = self._state.attempted_at
            now = self._clock()
            if attempted is not None and now - attempted < self.config.jwks_min_refetch_interval:
                return
            with self._lock:
                self._state = _CacheState(self._state.keys, self._state.fetched_at, now, self._state.error)
            try:
                keys = self._load_jwks()
            except Exception as exc:  # the fetcher may raise anything; fail closed
                reason = _reason(exc)
                log.warning("could not fetch the JWKS for issuer %s: %s", self.config.issuer, reason)
                with self._lock:
                    self._jwks_uri = None  # rediscover next time
                    self._state = _CacheState(self._state.keys, self._state.fetched_at, now, reason)
                return
            log.info("fetched %d signing key(s) for issuer %s", len(keys), self.config.issuer)
            with self._lock:
                self._state = _CacheState(keys, self._clock(), now, None)

    def _load_jwks(self) -> tuple[_SigningKey, ...]:
        cfg = self.config
        url: str | None
        if cfg.jwks_file is not None:
            url = _file_url(cfg.jwks_file)
        elif cfg.jwks_url is not None:
            url = cfg.jwks_url
        else:
            with self._lock:
                url = self._jwks_uri
            if url is None:
                url = self._discover()
                with self._lock:
                    self._jwks_uri = url
        return _parse_jwks(self._fetch(url), url)

    def _discover(self) -> str:
        url = self.config.discovery_url
        body = self._fetch(url)
        try:
            doc = _strict_json(body)
        except (UnicodeDecodeError, ValueError) as exc:
            raise ValueError(f"discovery document at {url} is not valid JSON: {exc}") from None
        if not isinstance(doc, Mapping):
            raise ValueError(f"discovery document at {url} is not a JSON object")
        if doc.get("issuer") != self.config.issuer:
            raise ValueError(
                f"discovery document at {url} names issuer {_show(doc.get('issuer'))}, "
                f"expected {_show(self.config.issuer)}"
            )
        jwks_uri = doc.get("jwks_uri")
        if not isinstance(jwks_uri, str) or not jwks_uri:
            raise ValueError(f"discovery document at {url} has no 'jwks_uri'")
        return jwks_uri

    # ---------------------------------------------------------------- signature

    def _signature_ok(self, parsed: _ParsedToken, alg: str, key: _SigningKey) -> bool:
        pss_hash = _PSS_HASHES.get(alg)
        if pss_hash is not None:
            public = key.public_key
            if not isinstance(public, rsa.RSAPublicKey):
                return False
            digest = pss_hash()
            try:
                public.verify(
                    parsed.signature,
                    parsed.signing_input,
                    padding.PSS(mgf=padding.MGF1(pss_hash()), salt_length=digest.digest_size),
                    digest,
                )
            except InvalidSignature:
                return False
            return True
        try:
            jws.verify(parsed.compact, key.jose_key(alg), algorithms=[alg])
        except JOSEError:
            return False
        return True

    # ---------------------------------------------------------------- claims

    def _identity(self, claims: dict[str, Any], startup_user: str, now: float) -> Identity:
        cfg = self.config
        skew = cfg.clock_skew
        stale_hint = "get a fresh token from your identity provider and reconnect"

        iss = claims.get("iss")
        if iss != cfg.issuer:
            if iss is None:
                raise _refuse(f"token has no issuer ('iss'), expected {_show(cfg.issuer)}")
            raise _refuse(f"token issuer is {_show(iss)}, expected {_show(cfg.issuer)}")

        aud = claims.get("aud")
        if aud is None:
            raise _refuse(f"token has no audience ('aud'), expected {_show_expected(cfg.audiences)}")
        token_auds = [aud] if isinstance(aud, str) else aud
        if not isinstance(token_auds, list) or not all(isinstance(a, str) for a in token_auds):
            raise _refuse("token audience ('aud') must be a string or a list of strings")
        if cfg.audiences.isdisjoint(token_auds):
            shown = _show(aud) if isinstance(aud, str) else "[" + ", ".join(_show(a) for a in aud) + "]"
            raise _refuse(
                f"token audience is {shown}, expected {_show_expected(cfg.audiences)}",
                hint="request a token for this gateway's audience (client id) from your identity provider",
            )

        exp = claims.get("exp")
        if exp is None:
            raise _refuse("token has no expiry ('exp'); pgjit refuses tokens that never expire")
        if not _is_number(exp):
            raise _refuse("token expiry ('exp') is not a number")
        # No skew on expiry: the session's JIT role is VALID UNTIL the token's
        # exp, so a token past it would log in as a role already dead (a
        # confusing "password authentication failed" from the server). The
        # skew only forgives an identity provider whose clock runs ahead
        # (nbf, iat below).
        if now >= exp:
            raise _refuse(
                f"token expired at {format_timestamp(exp)} ({_format_span(now - exp)} ago)",
                hint=stale_hint,
            )

        nbf = claims.get("nbf")
        if nbf is not None:
            if not _is_number(nbf):
                raise _refuse("token 'nbf' (not before) is not a number")
            if nbf > now + skew:
                raise _refuse(
                    f"token not valid before {format_timestamp(nbf)} (in {_format_span(nbf - now)})",
                    hint="check that the gateway's and the identity provider's clocks agree",
                )

        iat = claims.get("iat")
        if iat is not None:
            if not _is_number(iat):
                raise _refuse("token 'iat' (issued at) is not a number")
            if iat > now + skew:
                raise _refuse(
                    f"token not valid before {format_timestamp(iat)}: it claims to be issued "
                    f"{_format_span(iat - now)} in the future",
                    hint="check that the gateway's and the identity provider's clocks agree",
                )

        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            raise _refuse("token has no subject ('sub') claim")

        user = claims.get(cfg.user_claim)
        if user is None:
            raise _refuse(
                f"token has no {_show(cfg.user_claim)} claim, which the gateway uses as the user name",
                hint=f"ask your identity provider to include the {_show(cfg.user_claim)} claim (scope) in the token",
            )
        if not isinstance(user, str) or not user:
            raise _refuse(f"token's {_show(cfg.user_claim)} claim is not a non-empty string")
        if cfg.user_claim == "email" and claims.get("email_verified") is False:
            raise _refuse("token's email address is not verified (email_verified is false)")

        groups = self._groups(claims)

        if startup_user != cfg.user_placeholder and startup_user != user:
            raise InvalidAuthorization(
                f"database user {_show(startup_user)} does not match the token's {cfg.user_claim} "
                f"{_show(user)}; use that or {_show(cfg.user_placeholder)} as the user name"
            )

        return Identity(
            subject=sub,
            user=user,
            groups=groups,
            issuer=iss,
            expires_at=float(exp),
            issued_at=None if iat is None else float(iat),
            claims=MappingProxyType(copy.deepcopy(claims)),
        )

    def _groups(self, claims: Mapping[str, Any]) -> frozenset[str]:
        name = self.config.groups_claim
        value: Any = claims.get(name)
        if value is None and "." in name and name not in claims:
            # a nested claim such as Keycloak's "realm_access.roles"
            value = claims
            for part in name.split("."):
                value = value.get(part) if isinstance(value, Mapping) else None
        if value is None:
            # Microsoft Entra ID leaves the groups out of a token when there are
            # too many ("overage") and points at Graph instead. Reading that as
            # "no groups" would hand the caller the policy's "*" access: refuse.
            names = claims.get("_claim_names")
            if (isinstance(names, Mapping) and name in names) or claims.get("hasgroups") is True:
                raise _refuse(
                    f"token's {_show(name)} claim was left out by the identity provider (group overage: "
                    "the user is in too many groups for the token to carry them)",
                    hint="have the identity provider emit only the groups assigned to this application, "
                    "or use app roles (groups_claim: roles)",
                )
            return frozenset()
        if isinstance(value, str):
            return frozenset(g for g in _GROUP_SPLIT.split(value) if g)
        if isinstance(value, list) and all(isinstance(g, str) for g in value):
            return frozenset(g for g in value if g)
        raise _refuse(f"token's {_show(name)} claim must be a list of strings or a string")


def _file_url(path: str) -> str:
    return Path(path).expanduser().resolve().as_uri()
