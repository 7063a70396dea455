"""The one model format: a `.safetensors` file whose header metadata carries a JSON manifest.

Layout (safetensors): 8-byte little-endian header length N, N bytes of JSON header, tensor bytes.
The header's `__metadata__` maps `"backdoor_arena"` to the manifest below, serialised as JSON:

    format_version   1
    architecture     registered model id, e.g. "badnet-mnist"
    arch_args        keyword arguments of the architecture
    dataset          dataset name; input_shape [C, H, W]; pixel_range [0, 1]
    num_classes, class_names
    training         config, seed, epochs, metrics, history, versions, wall_time_s (free-form JSON)
    tensors_sha256   sha256 over every tensor's name, dtype, shape and bytes, in name order

The attack spec never goes in here: a model file is what a defender receives.
"""

from __future__ import annotations

import hashlib
import json
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

FORMAT_VERSION = 1
METADATA_KEY = "backdoor_arena"
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

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str) -> Manifest:
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ModelFileError(f"{source}: the manifest is not valid JSON ({exc.msg}); the file is corrupt") from None
        if not isinstance(raw, dict):
            raise ModelFileError(f"{source}: the manifest must be a JSON object; the file is corrupt")
        version = raw.get("format_version")
        if version != FORMAT_VERSION:
            raise ModelFileError(
                f"{source}: model file format version {version!r} is not supported (this release reads "
                f"version {FORMAT_VERSION}); upgrade backdoor-arena or re-export the model"
            )
        required = {f for f in cls.__dataclass_fields__}
        missing = sorted(required - set(raw))
        unknown = sorted(set(raw) - required)
        if missing or unknown:
            raise ModelFileError(f"{source}: manifest has missing keys {missing} and unknown keys {unknown}")
        return cls(**raw)


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
    manifest = Manifest(**{**asdict(manifest), "tensors_sha256": tensors_sha256(tensors)})
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
    """Reject pickles and obviously broken files before any parser sees them."""
    size = path.stat().st_size
    with path.open("rb") as fh:
        head = fh.read(8)
        if head[:4] == b"PK\x03\x04" or (head[:1] == b"\x80" and head[1:2] in {b"\x02", b"\x03", b"\x04", b"\x05"}):
            raise ModelFileError(
                f"{path} is a pickle (torch.save) file, not a safetensors model file; "
                + _PICKLE_CONVERT_HINT.format(path=path)
            )
        if len(head) < 8:
            raise ModelFileError(f"{path} is truncated ({size} bytes): it is too short to be a safetensors file")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
            raise ModelFileError(
                f"{path} is truncated or not a safetensors file: its header claims {n} bytes but the file "
                f"has {size}; copy or download it again"
            )
        header = fh.read(n)
    try:
        parsed = json.loads(header)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ModelFileError(f"{path} is not a safetensors file (unreadable header); is it the right file?") from None
    ends = [v["data_offsets"][1] for k, v in parsed.items() if k != "__metadata__" and isinstance(v, dict)]
    if ends and max(ends) > size - 8 - n:
        raise ModelFileError(
            f"{path} is truncated: its tensors need {8 + n + max(ends)} bytes but the file has {size}; "
            "copy or download it again"
        )


def read_manifest(path: str | Path) -> Manifest:
    """The manifest alone (fast: reads only the header)."""
    path = _existing(path)
    _sniff(path)
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
    except SafetensorError as exc:
        raise ModelFileError(f"{path} is not a readable safetensors file ({exc})") from None
    if METADATA_KEY not in meta:
        raise ModelFileError(
            f"{path} is a safetensors file without a backdoor-arena manifest (bare weights?); wrap it with "
            "`backdoor-arena wrap FILE --model ARCH --dataset DATASET --out model.safetensors`"
        )
    return Manifest.from_json(meta[METADATA_KEY], str(path))


def read_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    path = _existing(path)
    _sniff(path)
    try:
        with safe_open(str(path), framework="pt") as fh:
            return {k: fh.get_tensor(k) for k in fh.keys()}
    except SafetensorError as exc:
        raise ModelFileError(f"{path} is not a readable safetensors file ({exc})") from None


def load_model(path: str | Path) -> ModelFile:
    """Load and check a model file; every inconsistency is a one-line ModelFileError."""
    path = _existing(path)
    manifest = read_manifest(path)
    tensors = read_tensors(path)
    if manifest.architecture not in MODELS:
        raise ModelFileError(
            f"{path}: unknown architecture {manifest.architecture!r}; this release knows "
            f"{', '.join(MODELS.names())}"
        )
    try:
        model = build_model(manifest.architecture, manifest.arch_args)
    except ConfigError as exc:
        raise ModelFileError(f"{path}: {exc}") from None
    check_tensors(model, tensors, str(path))
    actual = tensors_sha256(tensors)
    if actual != manifest.tensors_sha256:
        raise ModelFileError(
            f"{path}: tensor hash mismatch (manifest {manifest.tensors_sha256[:12]}..., tensors {actual[:12]}...): "
            "the weights were modified after the file was written; do not trust this file"
        )
    model.load_state_dict(tensors, strict=True)
    model.eval()
    return ModelFile(model=model, manifest=manifest, path=path)


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
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"model file {str(path)!r} does not exist; check the path")
    if path.is_dir():
        raise ModelFileError(f"{str(path)!r} is a folder, not a model file")
    return path
