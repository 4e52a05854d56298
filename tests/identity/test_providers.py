"""Tokens shaped as Keycloak, Okta, Microsoft Entra ID and Google issue them (issue 9).

Each token carries the claims its provider puts in it (and nothing of pgjit's own),
is signed with a developer issuer's key, and is verified by the real
:class:`~pgjit.identity.TokenVerifier` built from the ``oidc:`` section that
``docs/identity-providers.md`` recommends: the YAML is read out of the document
(the blocks after ``<!-- provider-config: NAME -->``) and goes through
``parse_config``, as ``pgjit check-config`` does. The keys are served, as the
provider serves them, at the discovery document and ``jwks_uri`` the provider
publishes, so the tests also pin down the URLs pgjit derives from each issuer.
The groups a token yields are then fed to a policy's ``access`` section.
"""

from __future__ import annotations

import base64
import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from jose import jwt

from pgjit.config import parse_config
from pgjit.errors import InvalidAuthorization, InvalidPassword, PgjitError
from pgjit.identity import Identity, TokenVerifier
from pgjit.identity.devissuer import IssuerPaths, init_issuer, mint_token
from pgjit.policy import Policy

DOC = Path(__file__).resolve().parents[2] / "docs" / "identity-providers.md"
NOW = 1_790_000_000  # 2026-09-21

KC_ISSUER = "https://sso.example.com/realms/acme"
OKTA_ISSUER = "https://acme.okta.com/oauth2/aus8f5k2x9QWbM0Nd5d7"
OKTA_ORG = "https://acme.okta.com"
OKTA_CLIENT = "0oa8f5j3ecb5w3dF35d7"
TENANT = "3f6a8e2c-91d4-4b7a-a0e5-6c2d9b1f4e87"
ENTRA_API = "b7c1e4d2-5a3f-4e8b-9c6d-1a2b3c4d5e6f"
AZURE_CLI = "04b07795-8ddb-461a-bbee-02f9e1bf7b46"
GOOGLE_CLIENT = "480215377961-q8v1t2m0l5c9kd3r7e4a6s2b1n0p9f8h.apps.googleusercontent.com"
GOOGLE_SA_AUD = "https://pgjit.acme.example"
GROUP_ANALYSTS = "4d2a1f0e-6b7c-4a8e-9d3f-2c1b0a9e8d7f"
GROUP_ONCALL = "9b8e7d6c-5a4f-4e3d-8c2b-1a0f9e8d7c6b"

# Where each provider publishes its discovery document and keys; None: no
# discovery (the config names jwks_url).
ENDPOINTS: dict[str, tuple[str | None, str]] = {
    "keycloak": (
        f"{KC_ISSUER}/.well-known/openid-configuration",
        f"{KC_ISSUER}/protocol/openid-connect/certs",
    ),
    "okta": (f"{OKTA_ISSUER}/.well-known/openid-configuration", f"{OKTA_ISSUER}/v1/keys"),
    "okta-org": (f"{OKTA_ORG}/.well-known/openid-configuration", f"{OKTA_ORG}/oauth2/v1/keys"),
    "entra": (
        f"https://login.microsoftonline.com/{TENANT}/v2.0/.well-known/openid-configuration",
        f"https://login.microsoftonline.com/{TENANT}/discovery/v2.0/keys",
    ),
    "entra-v1": (None, f"https://login.microsoftonline.com/{TENANT}/discovery/keys"),
    "google": (
        "https://accounts.google.com/.well-known/openid-configuration",
        "https://www.googleapis.com/oauth2/v3/certs",
    ),
}
ENDPOINTS["keycloak-roles"] = ENDPOINTS["keycloak"]


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> IssuerPaths:
    return init_issuer(tmp_path_factory.mktemp("dev-issuer"))


def doc_configs() -> dict[str, str]:
    text = DOC.read_text("utf-8")
    found = re.findall(r"<!-- provider-config: ([\w-]+) -->\n```yaml\n(.*?)```", text, re.S)
    return dict(found)


class ProviderEndpoints:
    """A fetch() that answers only at the provider's real discovery and JWKS URLs."""

    def __init__(self, issuer: str, discovery: str | None, jwks_uri: str, jwks: bytes) -> None:
        self.issuer, self.discovery, self.jwks_uri, self.jwks = issuer, discovery, jwks_uri, jwks
        self.requested: list[str] = []

    def __call__(self, url: str) -> bytes:
        self.requested.append(url)
        if self.discovery is not None and url == self.discovery:
            return json.dumps({"issuer": self.issuer, "jwks_uri": self.jwks_uri}).encode()
        if url == self.jwks_uri:
            return self.jwks
        raise OSError(f"HTTP Error 404: Not Found ({url})")


@dataclass
class Provider:
    name: str
    verifier: TokenVerifier
    endpoints: ProviderEndpoints

    def verify(self, token: str, user: str = "token") -> Identity:
        identity = self.verifier.verify(token, user, now=NOW)
        discovery, jwks_uri = ENDPOINTS[self.name]
        assert self.endpoints.requested == [u for u in (discovery, jwks_uri) if u]
        return identity

    def refused(self, token: str, user: str = "token") -> PgjitError:
        with pytest.raises(PgjitError) as info:
            self.verifier.verify(token, user, now=NOW)
        return info.value


def provider(name: str, dev: IssuerPaths, tmp_path: Path, **variant: Any) -> Provider:
    """The verifier of the documented config NAME, through the real config loader;
    ``variant`` changes settings the document names as alternatives."""
    policy = tmp_path / "policy.yaml"
    policy.write_text('version: 1\naccess:\n  - {group: "*", grant: [pgjit_read]}\nrules: []\n')
    text = doc_configs()[name] + (
        "targets:\n  appdb:\n    host: 127.0.0.1\n    user: pgjit_admin\n    policy: policy.yaml\n"
    )
    cfg = parse_config(text, f"{name}.yaml", base=tmp_path)
    assert cfg.oidc is not None and cfg.auth.mode == "oidc"
    discovery, jwks_uri = ENDPOINTS[name]
    config = replace(cfg.oidc.verifier, **variant)
    fetch = ProviderEndpoints(config.issuer, discovery, jwks_uri, dev.jwks.read_bytes())
    return Provider(name, TokenVerifier(config, fetch), fetch)


_MINT_DEFAULTS = ("iss", "sub", "aud", "iat", "exp", "jti", "email", "groups")


def sign(dev: IssuerPaths, claims: Mapping[str, Any]) -> str:
    """A token whose payload is exactly ``claims``, signed by the dev issuer's key."""
    extra = {name: None for name in _MINT_DEFAULTS if name not in claims}
    extra.update(claims)
    token = mint_token(
        dev.signing_key,
        sub=claims["sub"],
        groups=None,
        ttl_seconds=3600,
        audience=claims["aud"],
        issuer=claims["iss"],
        email=None,
        extra_claims=extra,
        now=NOW,
    )
    assert jwt.get_unverified_claims(token) == dict(claims)
    return token


def policy(text: str) -> Policy:
    return Policy.from_text("version: 1\nrules: []\naccess:\n" + text)


# ---------------------------------------------------------------------------- token shapes


def keycloak_access_token(**overrides: Any) -> dict[str, Any]:
    """An access token for client pgjit-cli with the Audience and Group Membership mappers."""
    claims: dict[str, Any] = {
        "exp": NOW + 300,
        "iat": NOW - 20,
        "auth_time": NOW - 25,
        "jti": "onrtdg:" + str(uuid.uuid4()),
        "iss": KC_ISSUER,
        "aud": ["pgjit", "account"],
        "sub": "f1c4f64e-2c0c-4cda-8c9f-9f3f8f3a2b0e",
        "typ": "Bearer",
        "azp": "pgjit-cli",
        "sid": "4c0a3a8a-3a47-4f2f-8e89-9e5f9b0a0a0a",
        "acr": "1",
        "realm_access": {"roles": ["default-roles-acme", "offline_access", "uma_authorization", "db-analyst"]},
        "resource_access": {"account": {"roles": ["manage-account", "manage-account-links", "view-profile"]}},
        "scope": "openid profile email",
        "email_verified": True,
        "name": "Alice Liddell",
        "preferred_username": "alice",
        "given_name": "Alice",
        "family_name": "Liddell",
        "email": "alice@example.com",
        "groups": ["/analysts", "/platform/oncall"],
    }
    return _apply(claims, overrides)


def okta_access_token(**overrides: Any) -> dict[str, Any]:
    """A custom authorization server's access token with a groups claim."""
    claims: dict[str, Any] = {
        "ver": 1,
        "jti": "AT.pQ3kqjXo1e7Wm0pYz5o2H9l7nVc4rT8sBd6fGh2JkLm",
        "iss": OKTA_ISSUER,
        "aud": "api://pgjit",
        "iat": NOW - 30,
        "exp": NOW + 3570,
        "cid": OKTA_CLIENT,
        "uid": "00u8f5h1kq8sKX6Rr5d7",
        "scp": ["openid", "profile"],
        "auth_time": NOW - 40,
        "sub": "alice@example.com",
        "groups": ["Everyone", "pgjit-analysts"],
    }
    return _apply(claims, overrides)


def okta_org_id_token(**overrides: Any) -> dict[str, Any]:
    """The org authorization server's ID token, groups claim set on the app."""
    claims: dict[str, Any] = {
        "sub": "00u8f5h1kq8sKX6Rr5d7",
        "name": "Alice Liddell",
        "ver": 1,
        "iss": OKTA_ORG,
        "aud": OKTA_CLIENT,
        "iat": NOW - 30,
        "exp": NOW + 3570,
        "jti": "ID.w9Xc2vB7nM4kL1qP8sR5tY3uI6oA0zE2dF4gH7jK9lZ",
        "amr": ["pwd"],
        "idp": "00o8f5g0abcDEF123d7",
        "preferred_username": "alice@example.com",
        "auth_time": NOW - 40,
        "at_hash": "Yx1Fq3mZ8v0Kp5Wc2Rb7Ng",
        "groups": ["Everyone", "pgjit-analysts"],
    }
    return _apply(claims, overrides)


def entra_v2_access_token(**overrides: Any) -> dict[str, Any]:
    """``az account get-access-token --scope api://<app>/.default`` for an API with v2 tokens."""
    claims: dict[str, Any] = {
        "aud": ENTRA_API,
        "iss": f"https://login.microsoftonline.com/{TENANT}/v2.0",
        "iat": NOW - 60,
        "nbf": NOW - 60,
        "exp": NOW + 4426,
        "aio": "AXQAi/8YAAAAq0zGm3kT9cR7pL2wX5vN1bH4jF6sD8aE0uY3iO9tQ2mZ",
        "azp": AZURE_CLI,
        "azpacr": "0",
        "name": "Alice Liddell",
        "oid": "6a1d2c3b-4e5f-4a6b-8c7d-9e0f1a2b3c4d",
        "preferred_username": "alice@contoso.com",
        "rh": "1.AVEAbxY2P9SRek-g5WwtmxT-h9LkwbcfWotOnG0aKzxNXm8AAFE.",
        "roles": ["pgjit.analyst"],
        "scp": "user_impersonation",
        "sid": "0a7d3e5f-2b1c-4d8e-9f6a-3c2b1a0f9e8d",
        "sub": "k3V8qZx2Lw9NfR4tYb6Hc1Jm5Pd7Gs0Ua8Xe2Oi4Tn",
        "tid": TENANT,
        "uti": "Zq4b7XmP2UeWk9Ls1RtCAA",
        "ver": "2.0",
    }
    return _apply(claims, overrides)


def entra_v1_access_token(**overrides: Any) -> dict[str, Any]:
    """The same request against an API whose manifest asks for v1 tokens."""
    claims: dict[str, Any] = {
        "aud": f"api://{ENTRA_API}",
        "iss": f"https://sts.windows.net/{TENANT}/",
        "iat": NOW - 60,
        "nbf": NOW - 60,
        "exp": NOW + 4426,
        "acr": "1",
        "aio": "E2ZgYJj8cK9tR3mLp0xW7vB5nQ1sH4dF6gA8uY2iO5eT",
        "amr": ["pwd", "mfa"],
        "appid": AZURE_CLI,
        "appidacr": "0",
        "family_name": "Liddell",
        "given_name": "Alice",
        "ipaddr": "203.0.113.17",
        "name": "Alice Liddell",
        "oid": "6a1d2c3b-4e5f-4a6b-8c7d-9e0f1a2b3c4d",
        "rh": "1.AVEAbxY2P9SRek-g5WwtmxT-h9LkwbcfWotOnG0aKzxNXm8AAFE.",
        "roles": ["pgjit.analyst"],
        "scp": "user_impersonation",
        "sub": "k3V8qZx2Lw9NfR4tYb6Hc1Jm5Pd7Gs0Ua8Xe2Oi4Tn",
        "tid": TENANT,
        "unique_name": "alice@contoso.com",
        "upn": "alice@contoso.com",
        "uti": "Zq4b7XmP2UeWk9Ls1RtCAA",
        "ver": "1.0",
    }
    return _apply(claims, overrides)


def google_id_token(**overrides: Any) -> dict[str, Any]:
    """A Workspace user's ID token from the gateway's own OAuth client."""
    claims: dict[str, Any] = {
        "iss": "https://accounts.google.com",
        "azp": GOOGLE_CLIENT,
        "aud": GOOGLE_CLIENT,
        "sub": "110248495921238986420",
        "hd": "acme.example",
        "email": "alice@acme.example",
        "email_verified": True,
        "at_hash": "HK6E_P6Dh8Y93mRNtsDB1Q",
        "name": "Alice Liddell",
        "picture": "https://lh3.googleusercontent.com/a/ACg8ocJ2x",
        "given_name": "Alice",
        "family_name": "Liddell",
        "iat": NOW - 10,
        "exp": NOW + 3590,
    }
    return _apply(claims, overrides)


def google_service_account_token(email: str, sub: str) -> dict[str, Any]:
    """``gcloud auth print-identity-token --impersonate-service-account=… --audiences=… --include-email``."""
    return {
        "aud": GOOGLE_SA_AUD,
        "azp": sub,
        "email": email,
        "email_verified": True,
        "exp": NOW + 3590,
        "iat": NOW - 10,
        "iss": "https://accounts.google.com",
        "sub": sub,
    }


def _apply(claims: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    for name, value in overrides.items():
        if value is None:
            claims.pop(name, None)
        else:
            claims[name] = value
    return claims


# ---------------------------------------------------------------------------- the document


def test_every_documented_config_is_valid_and_tested(dev: IssuerPaths, tmp_path: Path) -> None:
    configs = doc_configs()
    assert set(configs) == set(ENDPOINTS)
    for name in configs:
        assert provider(name, dev, tmp_path).verifier.config.issuer.startswith("https://")


# ---------------------------------------------------------------------------- Keycloak


def test_keycloak_access_token_with_group_membership_mapper(dev: IssuerPaths, tmp_path: Path) -> None:
    kc = provider("keycloak", dev, tmp_path)
    identity = kc.verify(sign(dev, keycloak_access_token()))
    assert identity.user == "alice"
    assert identity.subject == "f1c4f64e-2c0c-4cda-8c9f-9f3f8f3a2b0e"
    # "Full group path" on (the mapper's default): the policy names "/analysts".
    assert identity.groups == {"/analysts", "/platform/oncall"}
    grant = policy('  - {group: "/analysts", grant: [pgjit_read]}\n').access_for(identity.groups)
    assert grant is not None and grant.grant == ("pgjit_read",)


def test_keycloak_group_mapper_without_full_path(dev: IssuerPaths, tmp_path: Path) -> None:
    kc = provider("keycloak", dev, tmp_path)
    identity = kc.verify(sign(dev, keycloak_access_token(groups=["analysts", "oncall"])))
    assert identity.groups == {"analysts", "oncall"}


def test_keycloak_realm_roles_from_the_nested_claim(dev: IssuerPaths, tmp_path: Path) -> None:
    kc = provider("keycloak-roles", dev, tmp_path)
    identity = kc.verify(sign(dev, keycloak_access_token(groups=None)))
    # Every user holds the realm's default roles: only "db-analyst" is a real grant.
    assert identity.groups == {"default-roles-acme", "offline_access", "uma_authorization", "db-analyst"}
    p = policy("  - {group: db-analyst, grant: [pgjit_read]}\n")
    assert p.access_for(identity.groups) is not None
    roles_only_default = keycloak_access_token(groups=None, realm_access={"roles": ["default-roles-acme"]})
    assert p.access_for(kc.verify(sign(dev, roles_only_default)).groups) is None


def test_keycloak_token_without_realm_access_has_no_groups(dev: IssuerPaths, tmp_path: Path) -> None:
    kc = provider("keycloak-roles", dev, tmp_path)
    assert kc.verify(sign(dev, keycloak_access_token(realm_access=None))).groups == frozenset()


def test_keycloak_default_access_token_audience_is_refused(dev: IssuerPaths, tmp_path: Path) -> None:
    # Without the Audience mapper Keycloak's access token is for "account" only.
    kc = provider("keycloak", dev, tmp_path)
    err = kc.refused(sign(dev, keycloak_access_token(aud="account")))
    assert isinstance(err, InvalidPassword)
    assert err.message == "token audience is 'account', expected 'pgjit'"


def test_keycloak_id_token_is_not_for_the_access_token_audience(dev: IssuerPaths, tmp_path: Path) -> None:
    kc = provider("keycloak", dev, tmp_path)
    id_token = keycloak_access_token(typ="ID", aud="pgjit-cli", scope=None, realm_access=None, resource_access=None)
    assert "expected 'pgjit'" in kc.refused(sign(dev, id_token)).message


def test_keycloak_database_user_must_be_the_username_or_token(dev: IssuerPaths, tmp_path: Path) -> None:
    # pgjit dsn's default user is the token's email; with preferred_username the
    # documented `--user token` (or the username itself) is what logs in.
    kc = provider("keycloak", dev, tmp_path)
    token = sign(dev, keycloak_access_token())
    err = kc.refused(token, user="alice@example.com")
    assert isinstance(err, InvalidAuthorization) and "preferred_username 'alice'" in err.message
    assert kc.verifier.verify(token, "alice", now=NOW).user == "alice"


def test_keycloak_unverified_email_is_not_checked_when_the_user_is_the_username(
    dev: IssuerPaths, tmp_path: Path
) -> None:
    kc = provider("keycloak", dev, tmp_path)
    assert kc.verify(sign(dev, keycloak_access_token(email_verified=False))).user == "alice"


# ---------------------------------------------------------------------------- Okta


def test_okta_custom_server_access_token(dev: IssuerPaths, tmp_path: Path) -> None:
    okta = provider("okta", dev, tmp_path)
    identity = okta.verify(sign(dev, okta_access_token()))
    assert identity.user == "alice@example.com"  # sub is the Okta login
    assert identity.groups == {"Everyone", "pgjit-analysts"}
    p = policy("  - {group: pgjit-analysts, grant: [pgjit_read]}\n")
    grant = p.access_for(identity.groups)
    assert grant is not None and grant.groups == ("pgjit-analysts",)


def test_okta_access_token_without_groups_claim(dev: IssuerPaths, tmp_path: Path) -> None:
    # The groups claim was not added to the authorization server (or its filter matched nothing).
    okta = provider("okta", dev, tmp_path)
    identity = okta.verify(sign(dev, okta_access_token(groups=None)))
    assert identity.groups == frozenset()
    assert policy("  - {group: pgjit-analysts, grant: [pgjit_read]}\n").access_for(identity.groups) is None


def test_okta_client_credentials_token_names_the_client(dev: IssuerPaths, tmp_path: Path) -> None:
    # A service's token: sub is the client ID, no uid, no groups.
    okta = provider("okta", dev, tmp_path)
    claims = okta_access_token(sub=OKTA_CLIENT, uid=None, groups=None, auth_time=None, scp=["pgjit.connect"])
    identity = okta.verify(sign(dev, claims))
    assert identity.user == OKTA_CLIENT and identity.groups == frozenset()


def test_okta_org_server_id_token(dev: IssuerPaths, tmp_path: Path) -> None:
    okta = provider("okta-org", dev, tmp_path)
    identity = okta.verify(sign(dev, okta_org_id_token()))
    assert identity.user == "alice@example.com"
    assert identity.subject == "00u8f5h1kq8sKX6Rr5d7"
    assert identity.groups == {"Everyone", "pgjit-analysts"}


def test_okta_wrong_server_or_token_kind_is_refused(dev: IssuerPaths, tmp_path: Path) -> None:
    okta = provider("okta", dev, tmp_path)
    # An ID token from the same server: aud is the client ID, not the API.
    id_token = okta_org_id_token(iss=OKTA_ISSUER)
    assert okta.refused(sign(dev, id_token)).message == f"token audience is '{OKTA_CLIENT}', expected 'api://pgjit'"
    # An org-server access token (for Okta's own APIs).
    org_access = okta_access_token(iss=OKTA_ORG, aud=OKTA_ORG, groups=None)
    assert okta.refused(sign(dev, org_access)).message == f"token issuer is '{OKTA_ORG}', expected '{OKTA_ISSUER}'"


# ---------------------------------------------------------------------------- Entra ID


def test_entra_v2_access_token_with_app_roles(dev: IssuerPaths, tmp_path: Path) -> None:
    entra = provider("entra", dev, tmp_path)
    identity = entra.verify(sign(dev, entra_v2_access_token()))
    assert identity.user == "alice@contoso.com"
    assert identity.groups == {"pgjit.analyst"}
    assert policy("  - {group: pgjit.analyst, grant: [pgjit_read]}\n").access_for(identity.groups) is not None


def test_entra_groups_claim_holds_object_ids(dev: IssuerPaths, tmp_path: Path) -> None:
    entra = provider("entra", dev, tmp_path, groups_claim="groups")
    identity = entra.verify(sign(dev, entra_v2_access_token(roles=None, groups=[GROUP_ANALYSTS, GROUP_ONCALL])))
    assert identity.groups == {GROUP_ANALYSTS, GROUP_ONCALL}
    p = policy(f'  - {{group: "{GROUP_ANALYSTS}", grant: [pgjit_read]}}\n  - {{group: analysts, grant: [pgjit_write]}}\n')
    grant = p.access_for(identity.groups)
    # The GUID matches; the group's display name never appears in the token.
    assert grant is not None and grant.grant == ("pgjit_read",)


@pytest.mark.parametrize(
    "overage",
    [
        pytest.param(
            {
                "_claim_names": {"groups": "src1"},
                "_claim_sources": {
                    "src1": {
                        "endpoint": f"https://graph.windows.net/{TENANT}/users/"
                        "6a1d2c3b-4e5f-4a6b-8c7d-9e0f1a2b3c4d/getMemberObjects"
                    }
                },
            },
            id="claim-sources",
        ),
        pytest.param({"hasgroups": True}, id="implicit-flow-hasgroups"),
    ],
)
def test_entra_group_overage_is_refused_not_read_as_no_groups(dev: IssuerPaths, tmp_path: Path, overage: dict[str, Any]) -> None:
    """A user in more than 200 groups gets no ``groups`` claim but a pointer to
    Microsoft Graph. Read as "no groups", the policy's "*" entry would apply:
    pgjit refuses the token instead, and says why."""
    entra = provider("entra", dev, tmp_path, groups_claim="groups")
    err = entra.refused(sign(dev, entra_v2_access_token(roles=None, **overage)))
    assert "group overage" in err.message and "groups_claim: roles" in (err.hint or "")
    # A token that simply has no groups (nobody assigned any) still verifies.
    identity = entra.verify(sign(dev, entra_v2_access_token(roles=None)))
    assert identity.groups == frozenset()


def test_entra_v1_access_token(dev: IssuerPaths, tmp_path: Path) -> None:
    entra = provider("entra-v1", dev, tmp_path)
    identity = entra.verify(sign(dev, entra_v1_access_token()))
    assert identity.user == "alice@contoso.com" and identity.groups == {"pgjit.analyst"}
    # v1 tokens requested by client ID instead of the Application ID URI carry the GUID.
    assert entra.verifier.verify(sign(dev, entra_v1_access_token(aud=ENTRA_API)), "token", now=NOW)


def test_entra_v1_token_against_the_v2_config_is_refused(dev: IssuerPaths, tmp_path: Path) -> None:
    entra = provider("entra", dev, tmp_path)
    err = entra.refused(sign(dev, entra_v1_access_token(aud=ENTRA_API)))
    assert err.message.startswith(f"token issuer is 'https://sts.windows.net/{TENANT}/', expected ")


def test_entra_tokens_for_microsoft_apis_are_refused(dev: IssuerPaths, tmp_path: Path) -> None:
    entra = provider("entra", dev, tmp_path)
    graph = entra_v2_access_token(aud="https://graph.microsoft.com", scp="User.Read", roles=None)
    assert entra.refused(sign(dev, graph)).message == (
        f"token audience is 'https://graph.microsoft.com', expected '{ENTRA_API}'"
    )
    # An access token for another app registration of the same tenant.
    other_app = entra_v2_access_token(aud="1f0e9d8c-7b6a-4f5e-8d4c-3b2a1f0e9d8c", scp=None)
    assert "expected" in entra.refused(sign(dev, other_app)).message


def test_entra_token_of_another_tenant_is_refused(dev: IssuerPaths, tmp_path: Path) -> None:
    entra = provider("entra", dev, tmp_path)
    other = "72f9a8bf-86f1-41af-91ab-2d7cd011db47"
    claims = entra_v2_access_token(iss=f"https://login.microsoftonline.com/{other}/v2.0", tid=other)
    assert entra.refused(sign(dev, claims)).message.startswith(
        f"token issuer is 'https://login.microsoftonline.com/{other}/v2.0'"
    )


def test_entra_user_without_app_role_has_no_groups(dev: IssuerPaths, tmp_path: Path) -> None:
    entra = provider("entra", dev, tmp_path)
    identity = entra.verify(sign(dev, entra_v2_access_token(roles=None)))
    assert identity.groups == frozenset()


# ---------------------------------------------------------------------------- Google


def test_google_workspace_user_mapped_by_email(dev: IssuerPaths, tmp_path: Path) -> None:
    google = provider("google", dev, tmp_path)
    identity = google.verify(sign(dev, google_id_token()))
    assert identity.user == "alice@acme.example"
    # No groups claim exists: groups_claim: email makes the address the one "group".
    assert identity.groups == {"alice@acme.example"}
    p = policy("  - {group: alice@acme.example, grant: [pgjit_read]}\n")
    assert p.access_for(identity.groups) is not None


def test_google_mapped_by_hosted_domain(dev: IssuerPaths, tmp_path: Path) -> None:
    google = provider("google", dev, tmp_path, groups_claim="hd")
    p = policy("  - {group: acme.example, grant: [pgjit_read]}\n")
    workspace = google.verify(sign(dev, google_id_token()))
    assert workspace.groups == {"acme.example"} and p.access_for(workspace.groups) is not None
    # A consumer account has no hd: no groups, refused by a policy without "*".
    gmail = google_id_token(hd=None, email="mallory@gmail.com", sub="104729315620847362910")
    consumer = google.verifier.verify(sign(dev, gmail), "token", now=NOW)
    assert consumer.groups == frozenset() and p.access_for(consumer.groups) is None


def test_google_service_account_identity_token(dev: IssuerPaths, tmp_path: Path) -> None:
    google = provider("google", dev, tmp_path)
    sa = google_service_account_token("etl@acme-prod.iam.gserviceaccount.com", "117849261375840293651")
    identity = google.verify(sign(dev, sa))
    assert identity.user == "etl@acme-prod.iam.gserviceaccount.com"
    assert identity.groups == {"etl@acme-prod.iam.gserviceaccount.com"}


def test_google_any_service_account_can_mint_the_audience(dev: IssuerPaths, tmp_path: Path) -> None:
    # The audience does not keep strangers out: a service account of anyone's
    # project gets a valid token. The access entries (no "*") are what refuse it.
    google = provider("google", dev, tmp_path)
    stranger = google_service_account_token("x@attacker-proj.iam.gserviceaccount.com", "109876543210987654321")
    identity = google.verify(sign(dev, stranger))
    entries = "  - {group: etl@acme-prod.iam.gserviceaccount.com, grant: [pgjit_write]}\n"
    assert policy(entries).access_for(identity.groups) is None
    with_star = policy(entries + '  - {group: "*", grant: [pgjit_read]}\n').access_for(identity.groups)
    assert with_star is not None and with_star.groups == ("*",)


def test_google_unverified_email_is_refused(dev: IssuerPaths, tmp_path: Path) -> None:
    google = provider("google", dev, tmp_path)
    err = google.refused(sign(dev, google_id_token(email_verified=False)))
    assert err.message == "token's email address is not verified (email_verified is false)"


def test_google_token_from_gcloud_user_login_is_refused(dev: IssuerPaths, tmp_path: Path) -> None:
    # gcloud signs users in with its own OAuth client; its ID tokens are for that client.
    google = provider("google", dev, tmp_path)
    gcloud = "32555940559.apps.googleusercontent.com"
    err = google.refused(sign(dev, google_id_token(aud=gcloud, azp=gcloud)))
    assert err.message.startswith(f"token audience is '{gcloud}', expected one of ")


def test_google_legacy_issuer_without_scheme_is_refused(dev: IssuerPaths, tmp_path: Path) -> None:
    # Google documents iss as "https://accounts.google.com" or "accounts.google.com";
    # pgjit trusts exactly one issuer string, so the second form is refused.
    google = provider("google", dev, tmp_path)
    err = google.refused(sign(dev, google_id_token(iss="accounts.google.com")))
    assert err.message == "token issuer is 'accounts.google.com', expected 'https://accounts.google.com'"


# ---------------------------------------------------------------------------- signatures


@pytest.mark.parametrize(
    ("name", "claims"),
    [
        ("keycloak", keycloak_access_token),
        ("okta", okta_access_token),
        ("entra", entra_v2_access_token),
        ("google", google_id_token),
    ],
)
def test_provider_shaped_token_with_a_forged_claim_is_refused(
    dev: IssuerPaths, tmp_path: Path, name: str, claims: Any
) -> None:
    """The checks above are real: change one claim after signing and nothing verifies."""
    p = provider(name, dev, tmp_path)
    token = sign(dev, claims())
    header, payload, signature = token.split(".")
    forged = dict(jwt.get_unverified_claims(token))
    forged["exp"] = forged["exp"] + 86400
    body = base64.urlsafe_b64encode(json.dumps(forged).encode()).rstrip(b"=").decode()
    err = p.refused(f"{header}.{body}.{signature}")
    assert err.message == "token signature does not verify"
    assert p.verify(token).subject == claims()["sub"]

