"""Sealing with AES-256-GCM: round trip, tamper evidence, one opaque error."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from launcher.errors import DecryptionFailed
from launcher.store import crypto

KEY = bytes(range(32))


@given(st.binary(max_size=4096), st.binary(max_size=256))
def test_seal_open_round_trip(plaintext: bytes, associated: bytes) -> None:
    """Whatever is sealed opens to exactly the same bytes with the same key and context."""
    assert crypto.open_sealed(KEY, crypto.seal(KEY, plaintext, associated), associated) == plaintext


def test_format_is_version_nonce_ciphertext() -> None:
    """A blob is the format byte, a 96-bit nonce, then ciphertext and a 16-byte tag."""
    sealed = crypto.seal(KEY, b"hello", b"ad", random_bytes=lambda n: b"\x07" * n)
    assert sealed[:1] == crypto.FORMAT_VERSION
    assert sealed[1:13] == b"\x07" * 12
    assert len(sealed) == 1 + 12 + len(b"hello") + 16


def test_nonces_are_fresh() -> None:
    """Sealing the same plaintext twice gives different blobs."""
    assert crypto.seal(KEY, b"same", b"") != crypto.seal(KEY, b"same", b"")


def test_every_flipped_bit_fails_to_open() -> None:
    """Any single changed bit of a blob is detected, including the version byte and nonce."""
    sealed = crypto.seal(KEY, b"value", b"context")
    for index in range(len(sealed)):
        for bit in range(8):
            damaged = bytearray(sealed)
            damaged[index] ^= 1 << bit
            with pytest.raises(DecryptionFailed):
                crypto.open_sealed(KEY, bytes(damaged), b"context")


@pytest.mark.parametrize(
    ("key", "associated"),
    [(bytes(32), b"context"), (KEY, b"other context"), (KEY, b"")],
)
def test_wrong_key_or_context_fails_the_same_way(key: bytes, associated: bytes) -> None:
    """A wrong key and a wrong context raise the same opaque error."""
    sealed = crypto.seal(KEY, b"value", b"context")
    with pytest.raises(DecryptionFailed, match="did not open"):
        crypto.open_sealed(key, sealed, associated)


@pytest.mark.parametrize("blob", [b"", b"\x01", b"\x02" + bytes(40), b"\x01" + bytes(27)])
def test_truncated_or_unknown_format_is_malformed(blob: bytes) -> None:
    """Too short, or another format version: refused before any decryption."""
    with pytest.raises(DecryptionFailed, match="malformed"):
        crypto.open_sealed(KEY, blob, b"")


def test_base64_must_be_canonical() -> None:
    """Non-canonical base64 (spare bits set, whitespace) is refused, so every character counts."""
    assert crypto.b64decode_strict(base64.b64encode(b"ab").decode()) == b"ab"
    for text in ("YWJ=", "YW Jj", "YWJj\n", "!!!!"):
        with pytest.raises(DecryptionFailed):
            crypto.b64decode_strict(text)


def test_key_id_is_a_stable_public_fingerprint() -> None:
    """Same key, same id; different keys, different ids; the id is not the key."""
    other = bytes(reversed(KEY))
    assert crypto.key_id(KEY) == crypto.key_id(KEY)
    assert crypto.key_id(KEY) != crypto.key_id(other)
    assert len(crypto.key_id(KEY)) == 16 and KEY.hex()[:16] != crypto.key_id(KEY)
