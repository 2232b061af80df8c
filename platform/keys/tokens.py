"""The API key format: ``ck_<env>_<public id>_<secret><checksum>``.

The secret carries 190 bits of randomness; the 6-character checksum (CRC32 of the rest)
lets a mistyped or made-up key be refused before any database query, as GitHub's tokens do.
Only an HMAC-SHA256 of the whole key under a server pepper is stored.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import zlib
from dataclasses import dataclass
from enum import StrEnum

_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_PUBLIC_ID_LEN = 12
_SECRET_LEN = 32  # 32 base62 characters: log2(62) * 32 = 190 bits
_CHECKSUM_LEN = 6
_KEY_RE = re.compile(
    rf"^ck_(live|test)_([0-9a-z]{{{_PUBLIC_ID_LEN}}})_"
    rf"([0-9A-Za-z]{{{_SECRET_LEN}}})([0-9A-Za-z]{{{_CHECKSUM_LEN}}})$"
)


class KeyEnvironment(StrEnum):
    LIVE = "live"
    TEST = "test"


@dataclass(frozen=True)
class ParsedKey:
    environment: KeyEnvironment
    public_id: str

    @property
    def prefix(self) -> str:
        return f"ck_{self.environment.value}_{self.public_id}"


def _base62(value: int, width: int) -> str:
    chars = []
    for _ in range(width):
        value, rem = divmod(value, 62)
        chars.append(_ALPHABET[rem])
    return "".join(reversed(chars))


def _checksum(body: str) -> str:
    return _base62(zlib.crc32(body.encode()), _CHECKSUM_LEN)


def generate_key(environment: KeyEnvironment = KeyEnvironment.LIVE) -> tuple[str, ParsedKey]:
    """A new plaintext key (shown once) and its parsed public part."""
    public_id = "".join(secrets.choice(_ALPHABET[:36]) for _ in range(_PUBLIC_ID_LEN)).lower()
    secret = "".join(secrets.choice(_ALPHABET) for _ in range(_SECRET_LEN))
    body = f"ck_{environment.value}_{public_id}_{secret}"
    return body + _checksum(body), ParsedKey(environment, public_id)


def parse_key(key: str) -> ParsedKey | None:
    """The key's public part, or None when its shape or checksum is wrong."""
    match = _KEY_RE.match(key)
    if match is None:
        return None
    body = key[:-_CHECKSUM_LEN]
    if not hmac.compare_digest(_checksum(body), match.group(4)):
        return None
    return ParsedKey(KeyEnvironment(match.group(1)), match.group(2))


def key_digest(pepper: bytes, key: str) -> str:
    return hmac.new(pepper, key.encode(), hashlib.sha256).hexdigest()
