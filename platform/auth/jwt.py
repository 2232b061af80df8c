"""The one place that mints and verifies admin and billing JWTs (python-jose).

Every verification key is pinned to one algorithm: the HS256 secret (key id ``hs256``) and
RS256 public keys from a PEM file and/or a JWKS file. A token picks its key by the header's
``kid`` (no ``kid`` means the HS256 key) and is verified only with that key's algorithm, so
``alg: none`` or an HS256 token signed with an RSA public key never verifies.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jose import JOSEError, JWTError, jwk, jwt
from jose.backends.base import Key

from celeriac.platform.settings import ENV_PREFIX, NESTED_DELIMITER, Settings, SettingsError

HS256 = "HS256"
RS256 = "RS256"
HS256_KEY_ID = "hs256"
# Registered claims jose must find; the private "role" claim is checked here.
REQUIRED_CLAIMS = ("exp", "iat", "iss", "aud", "sub")
MIN_HS256_SECRET_BYTES = 32
MIN_RSA_KEY_BITS = 2048

_SETTING = f"{ENV_PREFIX}AUTH{NESTED_DELIMITER}"
_BASE64URL = re.compile(r"^[A-Za-z0-9_-]+={0,2}$")


class Role(StrEnum):
    ADMIN = "admin"
    BILLING = "billing"


class InvalidToken(Exception):
    """The token is not one this platform issued, or no longer valid."""


@dataclass(frozen=True)
class AdminPrincipal:
    subject: str
    role: Role


@dataclass(frozen=True)
class VerificationKey:
    """One key and the only algorithm it may verify (or, for HS256, sign) with."""

    kid: str
    algorithm: str
    key: Key


@dataclass(frozen=True)
class JwtKeySet:
    """Every key a token may name, by key id; the HS256 key is also the one for no ``kid``."""

    hs256: VerificationKey
    by_kid: Mapping[str, VerificationKey]

    def for_header(self, header: Mapping[str, Any]) -> VerificationKey:
        """The key a token's header names, or :class:`InvalidToken`."""
        if "kid" not in header:
            return self.hs256
        kid = header["kid"]
        if not isinstance(kid, str) or kid not in self.by_kid:
            raise InvalidToken("unknown key id")
        return self.by_kid[kid]


@dataclass(frozen=True)
class _KeySource:
    """The settings a key set is built from; hashable so the built set can be cached."""

    hs256_secret: str | None
    public_key_file: Path | None
    public_key_id: str
    jwks_file: Path | None


def jwt_key_set(settings: Settings) -> JwtKeySet:
    """The verification keys ``settings`` configure, built once per distinct configuration.

    Raises :class:`SettingsError` (one line naming the setting) for a secret shorter than
    32 bytes, an unreadable or non-RSA key file, or a key id used twice. Call it at start-up
    to fail before the first request.
    """
    auth = settings.auth
    secret = auth.jwt_hs256_secret
    return _build_key_set(
        _KeySource(
            hs256_secret=None if secret is None else settings.jwt_secret(),
            public_key_file=auth.jwt_public_key_file,
            public_key_id=auth.jwt_public_key_id,
            jwks_file=auth.jwt_jwks_file,
        )
    )


# Keyed by the settings' values, not id(settings): ids are reused after garbage collection.
# A key file is read once; rotating it needs a restart, like any other setting.
@lru_cache(maxsize=8)
def _build_key_set(source: _KeySource) -> JwtKeySet:
    hs256 = VerificationKey(HS256_KEY_ID, HS256, _hs256_key(source.hs256_secret))
    by_kid = {HS256_KEY_ID: hs256}
    rsa_keys: list[tuple[str, str, rsa.RSAPublicKey]] = []
    if source.public_key_file is not None:
        setting = _SETTING + "JWT_PUBLIC_KEY_FILE"
        rsa_keys.append(
            (setting, source.public_key_id, _pem_public_key(setting, source.public_key_file))
        )
    if source.jwks_file is not None:
        setting = _SETTING + "JWT_JWKS_FILE"
        rsa_keys += [(setting, kid, key) for kid, key in _jwks_keys(setting, source.jwks_file)]
    for setting, kid, public_key in rsa_keys:
        if kid in by_kid:  # one key id, one key, one algorithm
            raise SettingsError(f"{setting}: key id {kid!r} is already used by another key")
        if public_key.key_size < MIN_RSA_KEY_BITS:
            raise SettingsError(
                f"{setting}: key {kid!r} is {public_key.key_size} bits, "
                f"need at least {MIN_RSA_KEY_BITS}"
            )
        pem = public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        by_kid[kid] = VerificationKey(kid, RS256, jwk.construct(pem, RS256))
    return JwtKeySet(hs256=hs256, by_kid=by_kid)


def _hs256_key(secret: str | None) -> Key:
    setting = _SETTING + "JWT_HS256_SECRET"
    if secret is None:
        raise SettingsError(f"{setting}: not configured")
    if len(secret.encode()) < MIN_HS256_SECRET_BYTES:
        raise SettingsError(f"{setting}: must be at least {MIN_HS256_SECRET_BYTES} bytes")
    try:
        return jwk.construct(secret, HS256)
    except JOSEError:  # jose refuses a PEM or SSH public key as an HMAC secret
        raise SettingsError(f"{setting}: must not be a public key") from None


def _read(setting: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise SettingsError(f"{setting}: cannot read {path} ({exc.strerror})") from None


def _pem_public_key(setting: str, path: Path) -> rsa.RSAPublicKey:
    try:
        key = serialization.load_pem_public_key(_read(setting, path))
    except (ValueError, TypeError):  # cryptography's messages span lines; ours is one
        raise SettingsError(f"{setting}: {path} is not a PEM public key") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise SettingsError(f"{setting}: {path} is not an RSA public key")
    return key


def _jwks_keys(setting: str, path: Path) -> list[tuple[str, rsa.RSAPublicKey]]:
    try:
        document = json.loads(_read(setting, path))
    except ValueError:
        raise SettingsError(f"{setting}: {path} is not JSON") from None
    entries = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(entries, list) or not entries:
        raise SettingsError(f'{setting}: {path} has no "keys" list')
    keys = []
    for index, entry in enumerate(entries):
        where = f"{setting}: {path} key {index}"
        if not isinstance(entry, dict) or entry.get("kty") != "RSA":
            raise SettingsError(f'{where}: must be an RSA key ("kty": "RSA")')
        kid = entry.get("kid")
        if not isinstance(kid, str) or not kid:
            raise SettingsError(f'{where}: needs a "kid"')
        if entry.get("alg", RS256) != RS256 or entry.get("use", "sig") != "sig":
            raise SettingsError(f'{where}: must be for RS256 signatures ("alg", "use")')
        # Only the public numbers are read: a private part in the file is never used.
        try:
            numbers = rsa.RSAPublicNumbers(_jwk_int(entry.get("e")), _jwk_int(entry.get("n")))
            keys.append((kid, numbers.public_key()))
        except ValueError:
            raise SettingsError(f'{where}: "n" and "e" are not an RSA public key') from None
    return keys


def _jwk_int(value: object) -> int:
    if not isinstance(value, str) or not _BASE64URL.match(value):
        raise ValueError("not base64url")
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except binascii.Error as exc:
        raise ValueError("not base64url") from exc
    return int.from_bytes(raw, "big")


def mint_token(settings: Settings, subject: str, role: Role, ttl_seconds: int = 3600) -> str:
    """An HS256 token (key id ``hs256``) for ``subject`` with ``role``, valid ``ttl_seconds``."""
    if ttl_seconds <= 0:
        raise ValueError("ttl_seconds must be positive")
    key = jwt_key_set(settings).hs256
    now = int(time.time())
    claims = {
        "sub": subject,
        "role": role.value,
        "iss": settings.auth.jwt_issuer,
        "aud": settings.auth.jwt_audience,
        "iat": now,
        "nbf": now,
        "exp": now + ttl_seconds,
        "jti": uuid.uuid4().hex,
    }
    return jwt.encode(claims, key.key, algorithm=key.algorithm, headers={"kid": key.kid})


def verify_token(settings: Settings, token: str) -> AdminPrincipal:
    """The principal a valid token names, or :class:`InvalidToken`.

    The key comes from the header's ``kid`` and the algorithm from that key, never from the
    header's ``alg``. ``iss`` and ``aud`` must equal the configured values (an ``aud`` list
    must contain the configured audience as one element).
    """
    keys = jwt_key_set(settings)
    try:
        header = jwt.get_unverified_header(token)
    # jose parses with json.loads: a header nested thousands deep or a 5,000-digit number
    # raises these (before any signature is checked).
    except (JWTError, RecursionError, ValueError):
        raise InvalidToken("malformed token") from None
    key = keys.for_header(header)
    leeway = settings.auth.jwt_leeway_seconds
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            key.key,
            algorithms=[key.algorithm],
            audience=settings.auth.jwt_audience,
            issuer=settings.auth.jwt_issuer,
            options={"require_" + claim: True for claim in REQUIRED_CLAIMS} | {"leeway": leeway},
        )
    except JWTError as exc:
        raise InvalidToken(str(exc)) from None
    # jose calls int() on exp/iat/nbf, so a signed token with a null or infinite time claim
    # raises these instead of JWTError.
    except (TypeError, OverflowError):
        raise InvalidToken("exp, iat and nbf must be numbers") from None
    except (RecursionError, ValueError):  # claims too deep or a number too long for json
        raise InvalidToken("malformed claims") from None
    return _principal(claims, now=time.time(), leeway=leeway)


def _principal(claims: Mapping[str, Any], now: float, leeway: int) -> AdminPrincipal:
    """Checks jose leaves out: time claims are numbers, iat is not in the future, the role."""
    for name in ("exp", "iat", "nbf"):
        value = claims.get(name)
        if name in claims and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise InvalidToken(f"{name} must be a number")
    if claims["iat"] > now + leeway:
        raise InvalidToken("issued in the future")
    subject = claims["sub"]
    if not isinstance(subject, str) or not subject:
        raise InvalidToken("sub must be a non-empty string")
    role = claims.get("role")
    if not isinstance(role, str) or role not in {member.value for member in Role}:
        raise InvalidToken("missing or unknown role")
    return AdminPrincipal(subject=subject, role=Role(role))
