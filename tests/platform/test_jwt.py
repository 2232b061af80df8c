"""Admin/billing JWTs: pinned algorithms per key, exact iss/aud, required claims, leeway."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jose import jwt
from pydantic import SecretStr

from celeriac.platform.auth.jwt import (
    AdminPrincipal,
    InvalidToken,
    Role,
    jwt_key_set,
    mint_token,
    verify_token,
)
from celeriac.platform.settings import AuthSettings, Settings, SettingsError

SECRET = "s" * 40
ISSUER = "celeriac"
AUDIENCE = "celeriac-api"
LEEWAY = 30


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("CELERIAC_"):
            monkeypatch.delenv(key)


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def jwks_rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def private_pem(key: rsa.RSAPrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def public_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_int(value: int) -> str:
    return b64url(value.to_bytes((value.bit_length() + 7) // 8, "big"))


def rsa_jwk(key: rsa.RSAPrivateKey, kid: str) -> dict[str, str]:
    numbers = key.public_key().public_numbers()
    return {
        "kty": "RSA",
        "kid": kid,
        "alg": "RS256",
        "use": "sig",
        "n": b64url_int(numbers.n),
        "e": b64url_int(numbers.e),
    }


def make_settings(tmp_path: Path, **auth: Any) -> Settings:
    auth.setdefault("jwt_hs256_secret", SecretStr(SECRET))
    auth.setdefault("jwt_leeway_seconds", LEEWAY)
    return Settings(var_dir=tmp_path, auth=AuthSettings(**auth))


def write_pem(tmp_path: Path, key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> Path:
    path = tmp_path / "jwt-public.pem"
    path.write_bytes(public_pem(key))
    return path


def write_jwks(tmp_path: Path, document: object) -> Path:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(document))
    return path


@pytest.fixture
def settings(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> Settings:
    """HS256 and an RS256 PEM key (kid "rs256") configured together, as in production."""
    return make_settings(tmp_path, jwt_public_key_file=write_pem(tmp_path, rsa_key))


def claims(**overrides: Any) -> dict[str, Any]:
    """Valid claims; an override of None removes the claim."""
    now = int(time.time())
    values: dict[str, Any] = {
        "sub": "ops@example.com",
        "role": "admin",
        "iss": ISSUER,
        "aud": AUDIENCE,
        "iat": now,
        "exp": now + 600,
    }
    values.update(overrides)
    return {k: v for k, v in values.items() if v is not None}


def hs256(payload: dict[str, Any], secret: str = SECRET, kid: str | None = "hs256") -> str:
    headers = {} if kid is None else {"kid": kid}
    return jwt.encode(payload, secret, algorithm="HS256", headers=headers)


def rs256(payload: dict[str, Any], key: rsa.RSAPrivateKey, kid: str | None = "rs256") -> str:
    headers = {} if kid is None else {"kid": kid}
    return jwt.encode(payload, private_pem(key), algorithm="RS256", headers=headers)


def handmade(
    header: dict[str, Any], payload: dict[str, Any], sign: Callable[[bytes], bytes]
) -> str:
    """A token built without jose, which refuses to sign the forgeries tested here."""
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(payload).encode())}"
    return f"{signing_input}.{b64url(sign(signing_input.encode()))}"


def rejected(settings: Settings, token: str) -> None:
    with pytest.raises(InvalidToken):
        verify_token(settings, token)


# --- tokens that verify ---------------------------------------------------------------


@pytest.mark.parametrize("role", list(Role))
def test_minted_token_verifies(settings: Settings, role: Role) -> None:
    token = mint_token(settings, "ops@example.com", role)
    header = jwt.get_unverified_header(token)
    assert (header["alg"], header["kid"]) == ("HS256", "hs256")
    assert verify_token(settings, token) == AdminPrincipal("ops@example.com", role)


def test_hs256_token_without_kid_uses_the_hs256_key(settings: Settings) -> None:
    principal = verify_token(settings, hs256(claims(role="billing"), kid=None))
    assert principal.role is Role.BILLING


def test_rs256_token_from_pem_file_verifies(settings: Settings, rsa_key: rsa.RSAPrivateKey) -> None:
    principal = verify_token(settings, rs256(claims(sub="idp-user"), rsa_key))
    assert principal == AdminPrincipal("idp-user", Role.ADMIN)


def test_rs256_token_from_jwks_file_verifies(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey, jwks_rsa_key: rsa.RSAPrivateKey
) -> None:
    jwks = write_jwks(
        tmp_path, {"keys": [rsa_jwk(jwks_rsa_key, "idp-1"), rsa_jwk(rsa_key, "idp-2")]}
    )
    settings = make_settings(tmp_path, jwt_jwks_file=jwks)
    assert verify_token(settings, rs256(claims(), jwks_rsa_key, kid="idp-1")).role is Role.ADMIN
    assert verify_token(settings, rs256(claims(), rsa_key, kid="idp-2")).role is Role.ADMIN
    # Each kid selects exactly its own key.
    rejected(settings, rs256(claims(), rsa_key, kid="idp-1"))


def test_pem_and_jwks_keys_work_side_by_side(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey, jwks_rsa_key: rsa.RSAPrivateKey
) -> None:
    settings = make_settings(
        tmp_path,
        jwt_public_key_file=write_pem(tmp_path, rsa_key),
        jwt_public_key_id="pem-key",
        jwt_jwks_file=write_jwks(tmp_path, {"keys": [rsa_jwk(jwks_rsa_key, "jwks-key")]}),
    )
    assert verify_token(settings, rs256(claims(), rsa_key, kid="pem-key"))
    assert verify_token(settings, rs256(claims(), jwks_rsa_key, kid="jwks-key"))
    assert verify_token(settings, mint_token(settings, "ops", Role.BILLING))


def test_clock_skew_within_leeway_is_tolerated(settings: Settings) -> None:
    now = int(time.time())
    assert verify_token(settings, hs256(claims(iat=now - 600, exp=now - LEEWAY + 5)))
    assert verify_token(settings, hs256(claims(iat=now + LEEWAY - 5)))


def test_aud_list_holding_the_audience_verifies(settings: Settings) -> None:
    # RFC 7519 allows several audiences; ours must be one of them, compared whole.
    assert verify_token(settings, hs256(claims(aud=["billing-ui", AUDIENCE])))


def test_key_set_is_built_once_per_settings(settings: Settings) -> None:
    first = jwt_key_set(settings)
    assert settings.auth.jwt_public_key_file is not None
    settings.auth.jwt_public_key_file.unlink()  # a rebuild would now fail
    assert jwt_key_set(settings) is first


# --- forged, mis-addressed or broken tokens -------------------------------------------


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
@pytest.mark.parametrize("kid", [None, "hs256", "rs256"])
def test_unsigned_token_is_rejected(settings: Settings, alg: str, kid: str | None) -> None:
    header = {"alg": alg, "typ": "JWT"} | ({} if kid is None else {"kid": kid})
    token = handmade(header, claims(), lambda _: b"")
    rejected(settings, token)
    rejected(settings, token.rstrip("."))


@pytest.mark.parametrize("kid", [None, "hs256", "rs256"])
def test_hs256_signed_with_the_rsa_public_key_is_rejected(
    settings: Settings, rsa_key: rsa.RSAPrivateKey, kid: str | None
) -> None:
    """The key-confusion attack: the public PEM used as an HMAC secret."""
    pem = public_pem(rsa_key)
    header = {"alg": "HS256", "typ": "JWT"} | ({} if kid is None else {"kid": kid})
    rejected(settings, handmade(header, claims(), lambda m: hmac.digest(pem, m, hashlib.sha256)))


@pytest.mark.parametrize("kid", [None, "hs256"])
def test_rs256_token_naming_the_hs256_key_is_rejected(
    settings: Settings, rsa_key: rsa.RSAPrivateKey, kid: str | None
) -> None:
    # A validly signed RS256 token still fails: the HS256 key only verifies HS256.
    rejected(settings, rs256(claims(), rsa_key, kid=kid))


def test_rs256_token_from_an_unconfigured_key_is_rejected(settings: Settings) -> None:
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rejected(settings, rs256(claims(), stranger))


def test_token_signed_with_another_secret_is_rejected(settings: Settings) -> None:
    rejected(settings, hs256(claims(), secret="o" * 40))
    rejected(settings, hs256(claims(), secret="o" * 40, kid=None))


def test_tampered_claims_are_rejected(settings: Settings) -> None:
    header, _, signature = mint_token(settings, "ops", Role.BILLING).split(".")
    forged_claims = b64url(json.dumps(claims(sub="ops")).encode())  # role: admin
    rejected(settings, f"{header}.{forged_claims}.{signature}")


@pytest.mark.parametrize(
    "aud",
    [
        "celeriac-ap",  # substring
        "celeriac",  # substring
        "celeriac-api-staging",  # superstring
        "xceleriac-api",  # superstring
        "CELERIAC-API",
        "",
        ["celeriac-ap", "celeriac-api-x"],
        [["celeriac-api"]],
        [],
        42,
    ],
)
def test_wrong_audience_is_rejected(settings: Settings, aud: object) -> None:
    rejected(settings, hs256(claims(aud=aud)))


@pytest.mark.parametrize(
    "iss", ["celeria", "c", "celeriacx", "https://celeriac", "Celeriac", "", ["celeriac"], 1]
)
def test_wrong_issuer_is_rejected(settings: Settings, iss: object) -> None:
    rejected(settings, hs256(claims(iss=iss)))


def test_substring_matching_settings_are_not_honoured(tmp_path: Path) -> None:
    # The configured value longer than the token's: a str "in" check would pass these.
    settings = make_settings(tmp_path, jwt_issuer="celeriac-prod", jwt_audience="celeriac-api-prod")
    rejected(settings, hs256(claims(iss="celeriac-prod", aud="celeriac-api")))
    rejected(settings, hs256(claims(iss="celeriac", aud="celeriac-api-prod")))
    assert verify_token(settings, hs256(claims(iss="celeriac-prod", aud="celeriac-api-prod")))


def test_expired_beyond_leeway_is_rejected(settings: Settings) -> None:
    now = int(time.time())
    rejected(settings, hs256(claims(iat=now - 600, exp=now - LEEWAY - 5)))


@pytest.mark.parametrize("claim", ["iat", "nbf"])
def test_token_from_the_future_beyond_leeway_is_rejected(settings: Settings, claim: str) -> None:
    rejected(settings, hs256(claims(**{claim: int(time.time()) + LEEWAY + 60})))


@pytest.mark.parametrize("claim", ["exp", "iat", "iss", "aud", "sub", "role"])
def test_missing_required_claim_is_rejected(settings: Settings, claim: str) -> None:
    payload = claims()
    del payload[claim]
    rejected(settings, hs256(payload))


@pytest.mark.parametrize("role", ["root", "ADMIN", "Admin", "", " admin", ["admin"], None, 1])
def test_unknown_role_is_rejected(settings: Settings, role: object) -> None:
    payload = claims()
    payload["role"] = role  # None kept on purpose: present but null
    rejected(settings, hs256(payload))


@pytest.mark.parametrize(
    "bad",
    [
        {"exp": None},
        {"exp": "99999999999"},
        {"exp": True},
        {"iat": True},
        {"exp": [1]},
        {"exp": float("inf")},
        {"iat": float("nan")},
        {"iat": {}},
        {"nbf": None},
        {"sub": ""},
        {"sub": 7},
    ],
)
def test_malformed_claim_values_are_rejected(settings: Settings, bad: dict[str, Any]) -> None:
    # Signed with the right key, so only claim validation stands in the way.
    rejected(settings, hs256(claims() | bad))


@pytest.mark.parametrize("kid", ["unknown", "", "HS256", "RS256", 7, None, ["hs256"]])
def test_unknown_kid_is_rejected(settings: Settings, kid: object) -> None:
    header = {"alg": "HS256", "typ": "JWT", "kid": kid}
    secret = SECRET.encode()
    rejected(settings, handmade(header, claims(), lambda m: hmac.digest(secret, m, hashlib.sha256)))


@pytest.mark.parametrize(
    "token",
    [
        "",
        "garbage",
        "a.b",
        "a.b.c",
        "...",
        "a.b.c.d.e",
        "eyJhbGciOiJIUzI1NiJ9",
        "eyJhbGciOiJIUzI1NiJ9..",
        "W10.e30.",  # header is a JSON list
        "e30.W10.",  # header without alg
        "\x00\xff.\u00e9.\u2603",
        "x" * 10_000,
    ],
)
def test_garbage_is_rejected(settings: Settings, token: str) -> None:
    rejected(settings, token)


def test_non_object_claims_signed_with_the_key_are_rejected(settings: Settings) -> None:
    secret = SECRET.encode()
    header = b64url(json.dumps({"alg": "HS256", "kid": "hs256"}).encode())
    for payload in (b"[]", b'"admin"', b"null", b"not json"):
        signing_input = f"{header}.{b64url(payload)}"
        signature = b64url(hmac.digest(secret, signing_input.encode(), hashlib.sha256))
        rejected(settings, f"{signing_input}.{signature}")


# --- settings Celeriac cannot use ------------------------------------------------------


def assert_settings_error(settings: Settings, variable: str, fragment: str) -> None:
    with pytest.raises(SettingsError) as caught:
        jwt_key_set(settings)
    message = str(caught.value)
    assert message.startswith(f"{variable}: "), message
    assert fragment in message
    assert "\n" not in message


def test_short_or_missing_hs256_secret_is_a_settings_error(tmp_path: Path) -> None:
    short = make_settings(tmp_path, jwt_hs256_secret=SecretStr("x" * 31))
    assert_settings_error(short, "CELERIAC_AUTH__JWT_HS256_SECRET", "at least 32 bytes")
    with pytest.raises(SettingsError):
        mint_token(short, "ops", Role.ADMIN)
    with pytest.raises(SettingsError):
        verify_token(short, hs256(claims(), secret="x" * 31))
    unset = make_settings(tmp_path, jwt_hs256_secret=None)
    assert_settings_error(unset, "CELERIAC_AUTH__JWT_HS256_SECRET", "not configured")


def test_public_key_as_hs256_secret_is_a_settings_error(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    settings = make_settings(tmp_path, jwt_hs256_secret=SecretStr(public_pem(rsa_key).decode()))
    assert_settings_error(settings, "CELERIAC_AUTH__JWT_HS256_SECRET", "public key")


def test_bad_public_key_file_is_a_settings_error(tmp_path: Path) -> None:
    variable = "CELERIAC_AUTH__JWT_PUBLIC_KEY_FILE"
    missing = make_settings(tmp_path, jwt_public_key_file=tmp_path / "absent.pem")
    assert_settings_error(missing, variable, "cannot read")
    assert_settings_error(make_settings(tmp_path, jwt_public_key_file=tmp_path), variable, "read")

    not_pem = tmp_path / "not.pem"
    not_pem.write_text("-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n")
    assert_settings_error(make_settings(tmp_path, jwt_public_key_file=not_pem), variable, "PEM")

    ec_key = ec.generate_private_key(ec.SECP256R1())
    ec_file = write_pem(tmp_path, ec_key)
    assert_settings_error(make_settings(tmp_path, jwt_public_key_file=ec_file), variable, "RSA")

    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    small_file = write_pem(tmp_path, small)
    settings = make_settings(tmp_path, jwt_public_key_file=small_file)
    assert_settings_error(settings, variable, "1024 bits")


def test_pem_key_id_clashing_with_hs256_is_a_settings_error(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    settings = make_settings(
        tmp_path, jwt_public_key_file=write_pem(tmp_path, rsa_key), jwt_public_key_id="hs256"
    )
    assert_settings_error(settings, "CELERIAC_AUTH__JWT_PUBLIC_KEY_FILE", "'hs256'")


def _ec_jwk() -> dict[str, str]:
    numbers = ec.generate_private_key(ec.SECP256R1()).public_key().public_numbers()
    return {
        "kty": "EC",
        "kid": "ec",
        "crv": "P-256",
        "x": b64url_int(numbers.x),
        "y": b64url_int(numbers.y),
    }


@pytest.mark.parametrize(
    ("document", "fragment"),
    [
        ("not json", "not JSON"),
        ({}, '"keys"'),
        ({"keys": []}, '"keys"'),
        ([], '"keys"'),
        ({"keys": ["rsa"]}, "RSA"),
        ({"keys": [_ec_jwk()]}, "RSA"),
        ({"keys": [{"kty": "oct", "kid": "sym", "k": b64url(b"k" * 40)}]}, "RSA"),
        ({"keys": [{"kty": "RSA", "n": "AQAB", "e": "AQAB"}]}, '"kid"'),
        ({"keys": [{"kty": "RSA", "kid": "", "n": "AQAB", "e": "AQAB"}]}, '"kid"'),
        ({"keys": [{"kty": "RSA", "kid": "k", "n": "!!", "e": "AQAB"}]}, '"n" and "e"'),
        ({"keys": [{"kty": "RSA", "kid": "k", "e": "AQAB"}]}, '"n" and "e"'),
        ({"keys": [{"kty": "RSA", "kid": "k", "n": "AQAB", "e": "AQAB"}]}, '"n" and "e"'),
    ],
)
def test_bad_jwks_file_is_a_settings_error(tmp_path: Path, document: object, fragment: str) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(document if isinstance(document, str) else json.dumps(document))
    settings = make_settings(tmp_path, jwt_jwks_file=path)
    assert_settings_error(settings, "CELERIAC_AUTH__JWT_JWKS_FILE", fragment)


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"alg": "HS256"}, "RS256"),
        ({"alg": "RS512"}, "RS256"),
        ({"use": "enc"}, "RS256"),
        ({"kid": "hs256"}, "already used"),
        ({"kid": "rs256"}, "already used"),  # the PEM key's id
    ],
)
def test_jwks_key_not_pinned_to_rs256_or_reusing_a_kid_is_a_settings_error(
    tmp_path: Path,
    rsa_key: rsa.RSAPrivateKey,
    jwks_rsa_key: rsa.RSAPrivateKey,
    change: dict[str, str],
    fragment: str,
) -> None:
    settings = make_settings(
        tmp_path,
        jwt_public_key_file=write_pem(tmp_path, rsa_key),
        jwt_jwks_file=write_jwks(tmp_path, {"keys": [rsa_jwk(jwks_rsa_key, "idp") | change]}),
    )
    assert_settings_error(settings, "CELERIAC_AUTH__JWT_JWKS_FILE", fragment)


def test_duplicate_kid_within_jwks_is_a_settings_error(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey, jwks_rsa_key: rsa.RSAPrivateKey
) -> None:
    jwks = write_jwks(tmp_path, {"keys": [rsa_jwk(rsa_key, "k"), rsa_jwk(jwks_rsa_key, "k")]})
    settings = make_settings(tmp_path, jwt_jwks_file=jwks)
    assert_settings_error(settings, "CELERIAC_AUTH__JWT_JWKS_FILE", "already used")
