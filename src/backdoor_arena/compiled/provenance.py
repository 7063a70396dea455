"""The provenance manifest of an exported ONNX file, and its Ed25519 signature.

`MODEL.onnx.provenance.json` (strict JSON, at most MAX_MANIFEST_BYTES) binds the exact ONNX bytes to the
model file they were exported from and to the exporter:

    format         "backdoor-arena-onnx-provenance"; version 1
    onnx           {"sha256", "bytes"}                    of the ONNX file
    source         {"file_sha256", "tensors_sha256", "manifest_sha256", "architecture", "dataset"}
    exporter       {"opset", "versions": {backdoor_arena, torch, onnx, ...}}
    signature      null, or {"algorithm": "ed25519", "key_id", "value"}: base64 of the Ed25519 signature of
                   the canonical JSON (sorted keys, no spaces, ASCII) of every other field

The key id is the first 16 hex digits of the sha256 of the raw public key. `keygen` writes the private key
(PKCS#8 PEM) with permissions 0600 and the public key (SubjectPublicKeyInfo PEM); keys live outside the
repository. A hash binds; only a signature by a key the user trusts says who made the file.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import stat
from pathlib import Path
from typing import Any

from ..errors import ConfigError, ModelFileError
from ..safeio import MiB, atomic_write_text, read_bytes, read_text, shown
from .deps import require

FORMAT = "backdoor-arena-onnx-provenance"
VERSION = 1
MAX_MANIFEST_BYTES = 1 * MiB
MAX_KEY_BYTES = 16 * 1024
PRIVATE_KEY_NAME = "backdoor-arena-signing.key"
PUBLIC_KEY_NAME = "backdoor-arena-signing.pub"
_HEX = set("0123456789abcdef")


def manifest_path(onnx_path: str | os.PathLike[str]) -> Path:
    p = Path(onnx_path)
    return p.with_name(p.name + ".provenance.json")


def canonical(fields: dict[str, Any]) -> bytes:
    body = {k: v for k, v in fields.items() if k != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def make_manifest(onnx_sha256: str, onnx_bytes: int, source: dict[str, Any], exporter: dict[str, Any]) -> dict[str, Any]:
    return {"format": FORMAT, "version": VERSION, "onnx": {"sha256": onnx_sha256, "bytes": onnx_bytes},
            "source": source, "exporter": exporter, "signature": None}


def sign(manifest: dict[str, Any], private_key: Any) -> dict[str, Any]:
    """The manifest with its signature field filled by `private_key` (an Ed25519PrivateKey)."""
    signature = private_key.sign(canonical(manifest))
    return {**manifest, "signature": {"algorithm": "ed25519", "key_id": key_id(private_key.public_key()),
                                      "value": base64.b64encode(signature).decode()}}


def write_manifest(path: str | os.PathLike[str], manifest: dict[str, Any]) -> Path:
    return atomic_write_text(path, json.dumps(manifest, indent=1, sort_keys=True, allow_nan=False) + "\n")


# ---- reading (hardened: every failure is one ModelFileError naming the file and the field) ----

def _strict_json(text: str, source: str) -> Any:
    def no_constants(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in pairs:
            if k in out:
                raise ValueError(f"duplicate key {k[:40]!r}")
            out[k] = v
        return out

    try:
        return json.loads(text, parse_constant=no_constants, object_pairs_hook=no_duplicates)
    except RecursionError:
        raise ModelFileError(f"{source} nests too deeply; the file is corrupt or hostile") from None
    except ValueError as exc:
        msg = " ".join(str(exc).split())[:160]
        raise ModelFileError(f"{source} is not valid JSON ({msg}); the file is corrupt") from None


def _field(obj: dict[str, Any], key: str, kind: type | tuple[type, ...], source: str, where: str = "") -> Any:
    if key not in obj:
        raise ModelFileError(f"{source}: the field {where}{key} is missing; the manifest is corrupt")
    value = obj[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise ModelFileError(f"{source}: the field {where}{key} has the wrong type ({type(value).__name__})")
    return value


def _hex(value: Any, source: str, field: str, length: int = 64) -> str:
    if not isinstance(value, str) or len(value) != length or not set(value) <= _HEX:
        raise ModelFileError(f"{source}: {field} must be {length} lowercase hex digits")
    return value


def parse_manifest(text: str, source: str) -> dict[str, Any]:
    """Check a provenance manifest's structure (not its signature); returns the manifest."""
    if len(text) > MAX_MANIFEST_BYTES:
        raise ModelFileError(f"{source} is more than {MAX_MANIFEST_BYTES} bytes; corrupt or hostile")
    raw = _strict_json(text, source)
    if not isinstance(raw, dict):
        raise ModelFileError(f"{source} must be a JSON object; the manifest is corrupt")
    allowed = {"format", "version", "onnx", "source", "exporter", "signature"}
    extra = sorted(set(raw) - allowed)
    if extra:
        raise ModelFileError(f"{source}: unknown field {extra[0][:40]!r}; the manifest is corrupt or from a newer "
                             "backdoor-arena")
    if _field(raw, "format", str, source) != FORMAT:
        raise ModelFileError(f"{source} is not a backdoor-arena provenance manifest (format {raw['format'][:40]!r})")
    if _field(raw, "version", int, source) != VERSION:
        raise ModelFileError(f"{source}: manifest version {raw['version']} is not supported (this release reads "
                             f"{VERSION})")
    onnx = _field(raw, "onnx", dict, source)
    _hex(_field(onnx, "sha256", str, source, "onnx."), source, "onnx.sha256")
    size = _field(onnx, "bytes", int, source, "onnx.")
    if not 0 < size < 1 << 40:
        raise ModelFileError(f"{source}: onnx.bytes must be a positive size, got {size}")
    src = _field(raw, "source", dict, source)
    for key in ("file_sha256", "tensors_sha256", "manifest_sha256"):
        _hex(_field(src, key, str, source, "source."), source, f"source.{key}")
    for key in ("architecture", "dataset"):
        if len(_field(src, key, str, source, "source.")) > 200:
            raise ModelFileError(f"{source}: source.{key} is too long; the manifest is corrupt")
    exporter = _field(raw, "exporter", dict, source)
    _field(exporter, "opset", int, source, "exporter.")
    versions = _field(exporter, "versions", dict, source, "exporter.")
    if len(versions) > 32 or not all(isinstance(k, str) and isinstance(v, str) and len(v) < 100
                                     for k, v in versions.items()):
        raise ModelFileError(f"{source}: exporter.versions must map library names to version strings")
    sig = raw.get("signature")
    if sig is not None:
        if not isinstance(sig, dict) or set(sig) != {"algorithm", "key_id", "value"}:
            raise ModelFileError(f"{source}: signature must be null or an object with algorithm, key_id and value")
        if sig["algorithm"] != "ed25519":
            raise ModelFileError(f"{source}: signature algorithm {str(sig['algorithm'])[:40]!r} is not supported "
                                 "(ed25519 only)")
        _hex(sig["key_id"], source, "signature.key_id", 16)
        if not isinstance(sig["value"], str) or len(sig["value"]) != 88:
            raise ModelFileError(f"{source}: signature.value must be the base64 of a 64-byte Ed25519 signature")
        try:
            if len(base64.b64decode(sig["value"], validate=True)) != 64:
                raise ValueError
        except (binascii.Error, ValueError):
            raise ModelFileError(f"{source}: signature.value is not the base64 of a 64-byte signature") from None
    return raw


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    text = read_text(path, "provenance manifest", ModelFileError, MAX_MANIFEST_BYTES)
    return parse_manifest(text, f"provenance manifest {shown(path)}")


def check_signature(manifest: dict[str, Any], public_key: Any, source: str) -> str:
    """'valid', or a one-line reason the signature does not verify with `public_key`."""
    crypto_exc = require("cryptography.exceptions")
    sig = manifest.get("signature")
    if sig is None:
        return "the manifest is not signed"
    if sig["key_id"] != key_id(public_key):
        return f"signed by key {sig['key_id']}, not by the given public key {key_id(public_key)}"
    try:
        public_key.verify(base64.b64decode(sig["value"]), canonical(manifest))
    except crypto_exc.InvalidSignature:
        return "the signature does not match the manifest (it was changed after signing, or forged)"
    return "valid"


# ---- keys ----

def key_id(public_key: Any) -> str:
    ser = require("cryptography.hazmat.primitives.serialization")
    raw = public_key.public_bytes(ser.Encoding.Raw, ser.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def generate_keys(folder: str | os.PathLike[str], overwrite: bool = False) -> tuple[Path, Path, str]:
    """Write a new Ed25519 key pair into `folder`: the private key with mode 0600, the public key beside it."""
    ed = require("cryptography.hazmat.primitives.asymmetric.ed25519")
    ser = require("cryptography.hazmat.primitives.serialization")
    folder = Path(folder)
    private_path, public_path = folder / PRIVATE_KEY_NAME, folder / PUBLIC_KEY_NAME
    for p in (private_path, public_path):
        if os.path.lexists(p) and not overwrite:
            raise ConfigError(f"{shown(p)} already exists; pass --overwrite to replace the key pair (files signed "
                              "with the old key will no longer verify with the new one)")
    key = ed.Ed25519PrivateKey.generate()
    pem = key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.NoEncryption())
    tmp = folder / f".{PRIVATE_KEY_NAME}.tmp"
    if os.path.lexists(tmp):
        os.unlink(tmp)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(pem)
        os.chmod(tmp, 0o600)
        os.replace(tmp, private_path)
    finally:
        if os.path.lexists(tmp):
            os.unlink(tmp)
    public = key.public_key()
    atomic_write_text(public_path, public.public_bytes(ser.Encoding.PEM, ser.PublicFormat.SubjectPublicKeyInfo).decode())
    return private_path, public_path, key_id(public)


def load_private_key(path: str | os.PathLike[str]) -> Any:
    ed = require("cryptography.hazmat.primitives.asymmetric.ed25519")
    ser = require("cryptography.hazmat.primitives.serialization")
    data = read_bytes(path, "private key", ConfigError, MAX_KEY_BYTES)
    mode = os.stat(path).st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"private key {shown(path)} can be read by other users (mode {oct(mode & 0o777)}); "
                          f"run `chmod 600 {path}` first")
    try:
        key = ser.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"private key {shown(path)} is not an unencrypted PEM private key "
                          f"({' '.join(str(exc).split())[:120]}); make one with `backdoor-arena keygen`") from None
    except Exception:  # cryptography raises UnsupportedAlgorithm and others for odd PEM content
        raise ConfigError(f"private key {shown(path)} cannot be read; make one with `backdoor-arena keygen`") from None
    if not isinstance(key, ed.Ed25519PrivateKey):
        raise ConfigError(f"private key {shown(path)} is not an Ed25519 key; make one with `backdoor-arena keygen`")
    return key


def load_public_key(path: str | os.PathLike[str]) -> Any:
    ed = require("cryptography.hazmat.primitives.asymmetric.ed25519")
    ser = require("cryptography.hazmat.primitives.serialization")
    data = read_bytes(path, "public key", ConfigError, MAX_KEY_BYTES)
    try:
        key = ser.load_pem_public_key(data)
    except Exception:
        raise ConfigError(f"public key {shown(path)} is not a PEM public key; use the .pub file that "
                          "`backdoor-arena keygen` wrote") from None
    if not isinstance(key, ed.Ed25519PublicKey):
        raise ConfigError(f"public key {shown(path)} is not an Ed25519 key; use the .pub file of `backdoor-arena keygen`")
    return key


def source_facts(model_path: str | os.PathLike[str], manifest: Any, max_bytes: int) -> dict[str, Any]:
    """The `source` entry for a model file (its bytes' sha256 and its manifest's hashes)."""
    data = read_bytes(model_path, "model file", ModelFileError, max_bytes)
    return {"file_sha256": hashlib.sha256(data).hexdigest(), "tensors_sha256": manifest.tensors_sha256,
            "manifest_sha256": manifest.manifest_sha256, "architecture": manifest.architecture,
            "dataset": manifest.dataset}
