"""Secrets of the game: argon2id password hashes, API tokens stored as sha256, attack specs sealed to the
evaluator's public key, and the spec commitment published at sealing.

Specs are sealed with X25519 + HKDF-SHA256 + AES-256-GCM (an ephemeral key per spec): the server that
receives uploads holds only the public key (`spec.pub`), so only a process holding `spec.key` (the worker)
can read a spec; the round id and submission id are the AEAD's associated data, so a sealed spec cannot be
moved onto another submission.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from pathlib import Path
from typing import Any

from ..errors import ConfigError

TOKEN_PREFIX = "bag_"
SEAL_VERSION = b"\x01"


def hash_password(password: str) -> str:
    from argon2 import PasswordHasher

    return PasswordHasher().hash(password)


def verify_password(stored: str, password: str) -> bool:
    from argon2 import PasswordHasher
    from argon2.exceptions import InvalidHashError, VerificationError

    try:
        return PasswordHasher().verify(stored, password)
    except (VerificationError, InvalidHashError):
        return False


def new_token() -> str:
    """A 256-bit random API token; shown once, stored only as `token_hash`."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def canonical_json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def commitment(salt: bytes, spec: Any) -> str:
    """sha256(salt || canonical JSON of the spec): published at sealing, checkable by anyone after reveal."""
    return "sha256:" + hashlib.sha256(salt + canonical_json(spec)).hexdigest()


def keygen(folder: str | Path) -> tuple[Path, Path]:
    """Write the evaluator's key pair (spec.key private, 0600; spec.pub public) unless they exist."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    priv, pub = folder / "spec.key", folder / "spec.pub"
    if priv.exists() and pub.exists():
        return priv, pub
    key = X25519PrivateKey.generate()
    raw = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())
    fd = os.open(priv, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(raw)
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))
    return priv, pub


def _hkdf(shared: bytes, info: bytes) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"backdoor-arena spec seal|" + info).derive(shared)


def seal(public_key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    eph = X25519PrivateKey.generate()
    eph_pub = eph.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    key = _hkdf(eph.exchange(X25519PublicKey.from_public_bytes(public_key)), eph_pub)
    nonce = os.urandom(12)
    return SEAL_VERSION + eph_pub + nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def unseal(private_key: bytes, sealed: bytes, aad: bytes) -> bytes:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    if len(sealed) < 1 + 32 + 12 + 16 or sealed[:1] != SEAL_VERSION:
        raise ConfigError("sealed spec: unknown format")
    eph_pub, nonce, body = sealed[1:33], sealed[33:45], sealed[45:]
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

    key = _hkdf(X25519PrivateKey.from_private_bytes(private_key).exchange(X25519PublicKey.from_public_bytes(eph_pub)),
                eph_pub)
    try:
        return AESGCM(key).decrypt(nonce, body, aad)
    except InvalidTag:
        raise ConfigError("sealed spec: authentication failed (wrong key, or the record was altered)") from None


def sign(secret: bytes, message: str) -> str:
    """HMAC-SHA256 of a message (session cookies and CSRF tokens of the HTML pages)."""
    return hmac.new(secret, message.encode(), hashlib.sha256).hexdigest()
