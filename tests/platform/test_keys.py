"""API key format: enough randomness, a checksum that refuses typos before any query."""

from __future__ import annotations

import math

from celeriac.platform.keys.tokens import KeyEnvironment, generate_key, key_digest, parse_key


def test_generated_key_parses_back_to_its_prefix() -> None:
    key, parsed = generate_key(KeyEnvironment.TEST)
    assert key.startswith(f"ck_test_{parsed.public_id}_")
    assert parse_key(key) == parsed
    secret_chars = len(key.split("_")[3]) - 6
    assert secret_chars * math.log2(62) >= 128


def test_changed_character_fails_the_checksum() -> None:
    key, _ = generate_key()
    index = len(key) - 10
    flipped = key[:index] + ("A" if key[index] != "A" else "B") + key[index + 1 :]
    assert parse_key(flipped) is None


def test_malformed_keys_are_refused() -> None:
    key, _ = generate_key()
    for bad in ["", "ck_live_", key + "x", key.replace("ck_live", "ck_prod"), "Bearer " + key]:
        assert parse_key(bad) is None


def test_digest_depends_on_the_pepper() -> None:
    key, _ = generate_key()
    assert key_digest(b"a" * 32, key) != key_digest(b"b" * 32, key)
    assert len(key_digest(b"a" * 32, key)) == 64
