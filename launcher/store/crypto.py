"""Sealing and opening bytes with AES-256-GCM; no file I/O, no knowledge of sets.

Envelope encryption: a set's values are sealed with the set's own random data key, and the
data key is sealed (wrapped) with the master key. Every sealed blob is
`FORMAT_VERSION || nonce (12 bytes) || ciphertext+tag`, with a fresh random nonce each time.
The caller binds context (set name, version, key names, the whole plaintext header) as
associated data, so a blob moved, replayed or altered anywhere fails to open.

Failures are deliberately opaque (one `DecryptionFailed`, as Fernet does): "wrong key" and
"tampered" look the same to an attacker. The caller adds which set and which key source.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from launcher.errors import DecryptionFailed

if TYPE_CHECKING:
    from typing import Any

FORMAT_VERSION = b"\x01"
KEY_BYTES = 32
NONCE_BYTES = 12

RandomBytes = Callable[[int], bytes]


def new_key(random_bytes: RandomBytes = os.urandom) -> bytes:
    return random_bytes(KEY_BYTES)


def key_id(key: bytes) -> str:
    """A short public fingerprint of a key, to tell keys apart in files and errors."""
    # The builtin SHA-256 module, not hashlib: hashlib loads OpenSSL (~3 ms) and this runs
    # on the launch critical path. (`_sha256` until Python 3.11, `_sha2` from 3.12.)
    try:
        from _sha256 import sha256  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        try:
            from _sha2 import sha256  # type: ignore[import-not-found, no-redef, unused-ignore]
        except ImportError:
            from hashlib import sha256  # type: ignore[assignment, unused-ignore]
    return str(sha256(b"agent-run key id\x00" + key).hexdigest()[:16])


def _aesgcm() -> Any:
    """cryptography's AESGCM class, loaded the cheap way.

    The public module (`cryptography.hazmat.primitives.ciphers.aead`) imports the whole
    ciphers package, ~14 ms on this machine, on the launch critical path; the class itself
    lives in the Rust bindings (~4 ms). Fall back to the public path if that ever moves.
    """
    try:
        from cryptography.hazmat.bindings._rust import openssl

        return openssl.aead.AESGCM
    except (ImportError, AttributeError):
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        return AESGCM


def seal(
    key: bytes, plaintext: bytes, associated: bytes, random_bytes: RandomBytes = os.urandom
) -> bytes:
    nonce = random_bytes(NONCE_BYTES)
    return FORMAT_VERSION + nonce + bytes(_aesgcm()(key).encrypt(nonce, plaintext, associated))


def open_sealed(key: bytes, sealed: bytes, associated: bytes) -> bytes:
    if len(sealed) < 1 + NONCE_BYTES + 16 or sealed[:1] != FORMAT_VERSION:
        raise DecryptionFailed("sealed data is malformed")
    nonce, body = sealed[1 : 1 + NONCE_BYTES], sealed[1 + NONCE_BYTES :]
    try:
        return bytes(_aesgcm()(key).decrypt(nonce, body, associated))
    except Exception as error:
        # cryptography.exceptions is imported only on failure: success stays on the fast path.
        from cryptography.exceptions import InvalidTag

        if isinstance(error, InvalidTag):
            raise DecryptionFailed("sealed data did not open") from None
        raise


def b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def b64decode(data: bytes | str) -> bytes:
    """Strict base64: characters outside the alphabet are an error, not skipped."""
    return base64.b64decode(data, validate=True)


def b64decode_strict(text: str) -> bytes:
    """Decode base64, refusing any non-canonical spelling.

    Plain b64decode ignores the spare bits of the last character, so two different files
    would decode to the same bytes; re-encoding and comparing makes every byte count.
    """
    try:
        data = b64decode(text)
    except (binascii.Error, ValueError):
        raise DecryptionFailed("sealed data is malformed") from None
    if b64encode(data) != text:
        raise DecryptionFailed("sealed data is malformed")
    return data
