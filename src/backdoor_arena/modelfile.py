"""The one model format: a `.safetensors` file whose header metadata carries a JSON manifest.

Layout (safetensors): 8-byte little-endian header length N, N bytes of JSON header, tensor bytes.
The header's `__metadata__` maps `"backdoor_arena"` to the manifest below, serialised as JSON:

    format_version   2
    architecture     registered model id, e.g. "badnet-mnist"
    arch_args        keyword arguments of the architecture (channels, classes, image size, normalisation)
    dataset          registered dataset name; input_shape [C, H, W]; pixel_range [0, 1]
    num_classes, class_names
    training         config, seed, epochs, metrics, history, versions, wall_time_s (free-form JSON)
    tensors_sha256   sha256 over every tensor's name, dtype, shape and bytes, in name order
    manifest_sha256  sha256 over the canonical JSON of every other manifest field (tensors_sha256 included),
                     so one hash covers the header and the weights

Loading parses the header within fixed bounds before allocating anything, checks every field's type, the
manifest against itself and against the network it builds, and both hashes; every failure is one
ModelFileError line. The hashes protect against accidents and against edits by anyone who does not
recompute them: they are integrity, not authenticity (anyone can write a valid file; signing is a
separate, later step). The attack spec never goes in here: a model file is what a defender receives.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from .errors import ConfigError, ModelFileError
from .models import MODELS, build_model
from .safeio import check_regular_file, shown
from .schemas import loads_json

FORMAT_VERSION = 2
METADATA_KEY = "backdoor_arena"
MAX_FILE_BYTES = 4 << 30  # 4 GiB: far above any model here, far below what would exhaust memory
MAX_HEADER_BYTES = 16 << 20
MAX_TENSORS = 4096
MAX_MANIFEST_BYTES = 4 << 20
# safetensors dtype codes -> bytes per element (the ones a network's state dict uses)
DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
_PICKLE_CONVERT_HINT = (
    "pickles can run arbitrary code, so backdoor-arena never loads them. If you trust the file, convert "
    "its state dict yourself: python -c \"import torch; from safetensors.torch import save_file; "
    "save_file(torch.load('{path}', weights_only=True), 'weights.safetensors')\" and then run "
    "`backdoor-arena wrap weights.safetensors --model ARCH --dataset DATASET --out model.safetensors`"
)


@dataclass(frozen=True)
class Manifest:
    architecture: str
    arch_args: dict[str, Any]
    dataset: str
    input_shape: list[int]
    num_classes: int
    class_names: list[str]
    training: dict[str, Any] = field(default_factory=dict)
    pixel_range: list[float] = field(default_factory=lambda: [0.0, 1.0])
    tensors_sha256: str = ""
    format_version: int = FORMAT_VERSION
    manifest_sha256: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, allow_nan=False)

    def canonical_sha256(self) -> str:
        """sha256 of the canonical JSON of every field but `manifest_sha256` (which it fills)."""
        fields = asdict(self)
        fields.pop("manifest_sha256")
        text = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
        return hashlib.sha256(text.encode()).hexdigest()

    def sealed(self, tensors_digest: str) -> Manifest:
        """This manifest with both hashes filled in."""
        with_tensors = Manifest(**{**asdict(self), "tensors_sha256": tensors_digest, "manifest_sha256": ""})
        return Manifest(**{**asdict(with_tensors), "manifest_sha256": with_tensors.canonical_sha256()})

    @classmethod
    def from_json(cls, text: str, source: str) -> Manifest:
        from .schemas import ManifestSchema, loads_json, validate

        if len(text) > MAX_MANIFEST_BYTES:
            raise ModelFileError(f"{source}: the manifest is {len(text)} bytes, more than {MAX_MANIFEST_BYTES}; "
                                 "the file is corrupt or hostile")
        raw = loads_json(text, f"{source}: the manifest", ModelFileError)
        if not isinstance(raw, dict):
            raise ModelFileError(f"{source}: the manifest must be a JSON object; the file is corrupt")
        version = raw.get("format_version")
        if version == 1:
            raise ModelFileError(
                f"{source}: model file format 1 (backdoor-arena 0.1) does not protect its manifest with a hash, so "
                "this release refuses it; if you trust the file, re-wrap its weights: `backdoor-arena wrap FILE "
                "--model ARCH --dataset DATASET --out new.safetensors`"
            )
        if version != FORMAT_VERSION:
            raise ModelFileError(
                f"{source}: model file format version {version!r} is not supported (this release reads "
                f"version {FORMAT_VERSION}); upgrade backdoor-arena or re-export the model"
            )
        return cls(**validate(ManifestSchema, raw, f"{source}: manifest", ModelFileError).model_dump())


@dataclass(frozen=True, eq=False)
class ModelFile:
    """A loaded model (in eval mode) and its manifest."""

    model: nn.Module
    manifest: Manifest
    path: Path | None = None


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        digest.update(f"{name}|{t.dtype}|{list(t.shape)}|".encode())
        digest.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def _state_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    # clone: safetensors refuses tensors that share storage, and we must not hand out views of live weights
    return {k: v.detach().cpu().clone().contiguous() for k, v in model.state_dict().items()}


def save_model(path: str | Path, model: nn.Module, manifest: Manifest) -> Manifest:
    """Write `model` with `manifest` atomically; returns the manifest with its tensor hash filled in."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ConfigError(f"model files end in .safetensors; got {str(path)!r}: rename the output path")
    if manifest.architecture not in MODELS:
        raise ConfigError(f"unknown architecture {manifest.architecture!r}; known: {', '.join(MODELS.names())}")
    tensors = _state_tensors(model)
    manifest = Manifest(**{**asdict(manifest), "format_version": FORMAT_VERSION}).sealed(tensors_sha256(tensors))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={METADATA_KEY: manifest.to_json()})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return manifest


def _sniff(path: Path) -> None:
    """Reject pickles and broken or hostile files before any parser sees them: the header is read within
    fixed bounds and every tensor entry is checked (dtype, shape, offsets inside the file, no overlaps)."""
    size = path.stat().st_size
    with path.open("rb") as fh:
        head = fh.read(8)
        if head[:4] == b"PK\x03\x04" or (head[:1] == b"\x80" and head[1:2] in {b"\x02", b"\x03", b"\x04", b"\x05"}):
            raise ModelFileError(
                f"{shown(path)} is a pickle (torch.save) file, not a safetensors model file; "
                + _PICKLE_CONVERT_HINT.format(path=path)
            )
        if len(head) < 8:
            raise ModelFileError(f"{shown(path)} is truncated ({size} bytes): too short to be a safetensors file")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER_BYTES:
            raise ModelFileError(f"{shown(path)}: its header claims {n} bytes, more than the {MAX_HEADER_BYTES} "
                                 "allowed; the file is corrupt or not a model file")
        if n > size - 8:
            raise ModelFileError(
                f"{shown(path)} is truncated or not a safetensors file: its header claims {n} bytes but the file "
                f"has {size}; copy or download it again"
            )
        header = fh.read(n)
    try:
        text = header.decode("utf-8")
    except UnicodeDecodeError:
        raise ModelFileError(f"{shown(path)} is not a safetensors file (unreadable header); is it the right file?") from None
    parsed = loads_json(text, f"{shown(path)}: the safetensors header", ModelFileError)
    if not isinstance(parsed, dict):
        raise ModelFileError(f"{shown(path)}: the safetensors header must be a JSON object; the file is corrupt")
    entries = {k: v for k, v in parsed.items() if k != "__metadata__"}
    if len(entries) > MAX_TENSORS:
        raise ModelFileError(f"{shown(path)} holds {len(entries)} tensors, more than {MAX_TENSORS}; not a model file")
    meta = parsed.get("__metadata__", {})
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise ModelFileError(f"{shown(path)}: the header's __metadata__ must map names to strings; the file is corrupt")
    data_size = size - 8 - n
    spans = []
    for name, entry in entries.items():
        where = f"{shown(path)}: tensor {name!r}"
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise ModelFileError(f"{where} has a malformed header entry; the file is corrupt")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if not isinstance(dtype, str) or dtype not in DTYPE_BYTES:
            raise ModelFileError(f"{where} has dtype {str(dtype)[:20]!r}; allowed: {', '.join(DTYPE_BYTES)}")
        if not isinstance(shape, list) or len(shape) > 8 or not all(
                isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**40 for d in shape):
            raise ModelFileError(f"{where} has an invalid shape {str(shape)[:40]}; the file is corrupt")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(
                isinstance(o, int) and not isinstance(o, bool) for o in offsets) and 0 <= offsets[0] <= offsets[1]):
            raise ModelFileError(f"{where} has invalid data offsets {str(offsets)[:40]}; the file is corrupt")
        numel = math.prod(shape)
        if offsets[1] - offsets[0] != numel * DTYPE_BYTES[dtype]:
            raise ModelFileError(f"{where}: its data offsets span {offsets[1] - offsets[0]} bytes but shape {shape} "
                                 f"of {dtype} needs {numel * DTYPE_BYTES[dtype]}; the file is corrupt")
        if offsets[1] > data_size:
            raise ModelFileError(f"{shown(path)} is truncated: tensor {name!r} needs {8 + n + offsets[1]} bytes but "
                                 f"the file has {size}; copy or download it again")
        spans.append((offsets[0], offsets[1], name))
    spans.sort()
    for (_, end, a), (begin, _, b) in zip(spans, spans[1:], strict=False):
        if begin < end:
            raise ModelFileError(f"{shown(path)}: tensors {a!r} and {b!r} overlap in the file; the file is corrupt")


def read_manifest(path: str | Path) -> Manifest:
    """The manifest alone (fast: reads only the header)."""
    path = _existing(path)
    _sniff(path)
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
    except (SafetensorError, RuntimeError, ValueError, OverflowError, MemoryError) as exc:
        raise ModelFileError(f"{shown(path)} is not a readable safetensors file ({_one(exc)})") from None
    if METADATA_KEY not in meta:
        raise ModelFileError(
            f"{shown(path)} is a safetensors file without a backdoor-arena manifest (bare weights?); wrap it with "
            "`backdoor-arena wrap FILE --model ARCH --dataset DATASET --out model.safetensors`"
        )
    return Manifest.from_json(meta[METADATA_KEY], shown(path))


def read_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    path = _existing(path)
    _sniff(path)
    try:
        with safe_open(str(path), framework="pt") as fh:
            return {k: fh.get_tensor(k) for k in fh.keys()}
    except (SafetensorError, RuntimeError, ValueError, OverflowError, MemoryError) as exc:
        raise ModelFileError(f"{shown(path)} is not a readable safetensors file ({_one(exc)})") from None


def load_model(path: str | Path) -> ModelFile:
    """Load and check a model file; every inconsistency is a one-line ModelFileError."""
    path = _existing(path)
    manifest = read_manifest(path)
    check_manifest(manifest, shown(path))
    tensors = read_tensors(path)
    try:
        model = build_model(manifest.architecture, manifest.arch_args)
    except ConfigError as exc:
        raise ModelFileError(f"{shown(path)}: {exc}") from None
    check_tensors(model, tensors, shown(path))
    actual = tensors_sha256(tensors)
    if actual != manifest.tensors_sha256:
        raise ModelFileError(
            f"{shown(path)}: tensor hash mismatch (manifest {manifest.tensors_sha256[:12]}..., tensors "
            f"{actual[:12]}...): the weights were modified after the file was written; do not trust this file"
        )
    model.load_state_dict(tensors, strict=True)
    model.eval()
    _check_outputs(model, manifest, path)
    return ModelFile(model=model, manifest=manifest, path=path)


def check_manifest(manifest: Manifest, source: str) -> None:
    """The manifest agrees with itself: its hash, registered names, shapes, classes and normalisation."""
    from .data import DATASETS

    if manifest.canonical_sha256() != manifest.manifest_sha256:
        raise ModelFileError(f"{source}: manifest hash mismatch: a field of the header (architecture arguments, "
                             "normalisation, classes, dataset, training record ...) was edited after the file was "
                             "written; do not trust this file")
    if manifest.architecture not in MODELS:
        raise ModelFileError(f"{source}: unknown architecture {manifest.architecture!r}; this release knows "
                             f"{', '.join(MODELS.names())}")
    if manifest.dataset not in DATASETS:
        raise ModelFileError(f"{source}: the manifest names dataset {manifest.dataset!r}, which this release does "
                             f"not know ({', '.join(DATASETS.names())})")
    args, (c, h, w) = manifest.arch_args, manifest.input_shape
    expected = {"in_channels": c, "image_size": h, "num_classes": manifest.num_classes}
    wrong = {k: (args.get(k), v) for k, v in expected.items() if args.get(k) != v}
    if h != w or wrong:
        detail = ", ".join(f"arch_args.{k} {got!r} vs {want!r}" for k, (got, want) in wrong.items()) or "non-square"
        raise ModelFileError(f"{source}: the manifest contradicts itself (input_shape {manifest.input_shape}, "
                             f"num_classes {manifest.num_classes}: {detail}); the file is corrupt")
    for key in ("mean", "std"):
        values = args.get(key)
        if not (isinstance(values, list) and len(values) == c and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)):
            raise ModelFileError(f"{source}: arch_args.{key} must be {c} finite numbers (one per channel)")
    if any(v <= 0 for v in args["std"]):
        raise ModelFileError(f"{source}: arch_args.std must be positive")
    if len(manifest.class_names) != manifest.num_classes:
        raise ModelFileError(f"{source}: {len(manifest.class_names)} class names for {manifest.num_classes} classes")


def _check_outputs(model: nn.Module, manifest: Manifest, path: Path) -> None:
    """The network built from the file maps an input of the manifest's shape to num_classes outputs."""
    try:
        with torch.no_grad():
            out = model(torch.zeros(1, *manifest.input_shape))
    except RuntimeError as exc:
        raise ModelFileError(f"{shown(path)}: the network does not accept the manifest's input shape "
                             f"{manifest.input_shape} ({str(exc).splitlines()[0][:80]})") from None
    if tuple(out.shape) != (1, manifest.num_classes):
        raise ModelFileError(f"{shown(path)}: the network has {tuple(out.shape)[1:]} outputs but the manifest says "
                             f"{manifest.num_classes} classes; the file is corrupt")


def check_tensors(model: nn.Module, tensors: dict[str, torch.Tensor], source: str) -> None:
    expected = {k: v for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing:
        raise ModelFileError(f"{source}: missing tensors {_short(missing)} for this architecture")
    if extra:
        raise ModelFileError(f"{source}: unexpected tensors {_short(extra)} for this architecture")
    for name, ref in expected.items():
        got = tensors[name]
        if tuple(got.shape) != tuple(ref.shape):
            raise ModelFileError(
                f"{source}: tensor {name!r} has shape {list(got.shape)}, the architecture needs {list(ref.shape)}"
            )
        if got.dtype != ref.dtype:
            raise ModelFileError(f"{source}: tensor {name!r} has dtype {got.dtype}, expected {ref.dtype}")


def _short(names: list[str]) -> str:
    return ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")


def _existing(path: str | Path) -> Path:
    return check_regular_file(path, "model file", ModelFileError, MAX_FILE_BYTES)


def _one(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:160]
