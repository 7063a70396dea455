"""The submission gates, in order: size, format, architecture (at upload, cheap, before anything is stored),
then clean accuracy and ASR (in the worker, on server-held inputs). A gate failure is a `GateFailure`: the
gate's name and a message with aggregate numbers only. Accepted weights are canonicalised: loaded into the
server's own module (strict) and re-saved by the server as a model file with a server-written manifest, so
no attacker metadata, key order or dtype quirk reaches defenders.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

import torch

from ..errors import ArenaError

ALLOWED_DTYPES = {"F32": (4, torch.float32), "F16": (2, torch.float16), "BF16": (2, torch.bfloat16)}
GATES = ("size", "filename", "format", "architecture", "spec", "quota", "accuracy", "asr")


class GateFailure(ArenaError):
    """A submission refused by a gate: `gate` names it; the message holds aggregate numbers only."""

    exit_code = 2

    def __init__(self, gate: str, message: str) -> None:
        super().__init__(f"{gate} gate: {message}")
        self.gate = gate
        self.detail = message


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise GateFailure("format", "the safetensors header repeats a key")
    return dict(pairs)


def check_format(path: Path, max_header_bytes: int) -> dict[str, dict[str, Any]]:
    """A bounded parse of the safetensors header before any library sees the file: magic and length, strict
    JSON (no duplicate keys, no NaN), allowed float dtypes, offsets contiguous from 0 and covering the file
    exactly (`size == 8 + header + data`). Returns the tensor entries (metadata dropped)."""
    size = path.stat().st_size
    with path.open("rb") as fh:
        head = fh.read(8)
        if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":
            raise GateFailure("format", "the file is a pickle (torch.save), which the server never loads; "
                              "upload safetensors weights (safetensors.torch.save_file)")
        if len(head) < 8:
            raise GateFailure("format", f"the file has {size} bytes, too short for a safetensors header")
        (n,) = struct.unpack("<Q", head)
        if n > max_header_bytes:
            raise GateFailure("format", f"the header claims {n} bytes; at most {max_header_bytes} are allowed")
        if n > size - 8:
            raise GateFailure("format", f"the file is truncated: the header claims {n} bytes, the file has {size}")
        raw = fh.read(n)
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates,
                            parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise GateFailure("format", "the safetensors header is not strict JSON") from None
    if not isinstance(header, dict):
        raise GateFailure("format", "the safetensors header is not a JSON object")
    entries = {k: v for k, v in header.items() if k != "__metadata__"}
    spans = []
    for name, e in entries.items():
        if not (isinstance(e, dict) and set(e) == {"dtype", "shape", "data_offsets"}):
            raise GateFailure("format", f"tensor {name[:60]!r} has a malformed header entry")
        dtype, shape, offsets = e["dtype"], e["shape"], e["data_offsets"]
        if dtype not in ALLOWED_DTYPES:
            raise GateFailure("format", f"tensor {name[:60]!r} has dtype {str(dtype)[:12]!r}; allowed: "
                              f"{', '.join(ALLOWED_DTYPES)}")
        if not (isinstance(shape, list) and len(shape) <= 8
                and all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**31 for d in shape)):
            raise GateFailure("format", f"tensor {name[:60]!r} has an invalid shape")
        if not (isinstance(offsets, list) and len(offsets) == 2
                and all(isinstance(o, int) and not isinstance(o, bool) and o >= 0 for o in offsets)):
            raise GateFailure("format", f"tensor {name[:60]!r} has invalid data offsets")
        if offsets[1] - offsets[0] != math.prod(shape) * ALLOWED_DTYPES[dtype][0]:
            raise GateFailure("format", f"tensor {name[:60]!r}: its offsets do not match its shape and dtype")
        spans.append((offsets[0], offsets[1]))
    spans.sort()
    position = 0
    for begin, end in spans:
        if begin != position:
            raise GateFailure("format", "tensor data is not contiguous (a gap or an overlap)")
        position = end
    if size != 8 + n + position:
        raise GateFailure("format", f"the file has {size} bytes but its header describes {8 + n + position}")
    return entries


def reference_shapes(architecture: str, dataset: str) -> tuple[torch.nn.Module, dict[str, Any],
                                                               dict[str, tuple[int, ...]]]:
    """The server's own module for an allow-listed architecture and the names and shapes it expects."""
    from ..data import dataset_info
    from ..models import architecture_args, build_model

    args = architecture_args(dataset_info(dataset))
    module = build_model(architecture, args)
    return module, args, {k: tuple(v.shape) for k, v in module.state_dict().items()}


def check_architecture(entries: dict[str, dict[str, Any]], expected: dict[str, tuple[int, ...]]) -> None:
    missing = sorted(set(expected) - set(entries))
    extra = sorted(set(entries) - set(expected))
    if missing or extra:
        raise GateFailure("architecture", f"{len(missing)} tensor(s) missing, {len(extra)} unexpected "
                          f"(e.g. {(missing + extra)[0][:60]!r}); upload the architecture's state dict as it is")
    wrong = [k for k in expected if tuple(entries[k]["shape"]) != expected[k]]
    if wrong:
        raise GateFailure("architecture", f"{len(wrong)} tensor(s) with the wrong shape, e.g. {wrong[0][:60]!r} is "
                          f"{entries[wrong[0]]['shape']}, expected {list(expected[wrong[0]])}")


def canonicalise(path: Path, out: Path, architecture: str, dataset: str) -> str:
    """Load the weights into the server's module (strict, float32, finite) and write a model file with a
    server-written manifest. Returns its tensors_sha256."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from ..data import dataset_info
    from ..modelfile import Manifest, save_model

    module, args, expected = reference_shapes(architecture, dataset)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise GateFailure("format", f"safetensors refused the file ({str(exc)[:80]})") from None
    tensors = {k: v.to(torch.float32) for k, v in tensors.items()}
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise GateFailure("format", f"{len(bad)} tensor(s) hold NaN or infinite values")
    try:
        module.load_state_dict(tensors, strict=True)
    except RuntimeError:
        raise GateFailure("architecture", "the weights do not load into the architecture") from None
    info = dataset_info(dataset)
    manifest = save_model(out, module, Manifest(
        architecture=architecture, arch_args=args, dataset=dataset, input_shape=list(info.input_shape),
        num_classes=info.num_classes, class_names=list(info.class_names), training={}))
    return manifest.tensors_sha256


def held_out_inputs(dataset: str, n: int, seed: int, data_root: Any = None) -> Any:
    """The server-held gate inputs: a seeded subset of the test split (never shown to anyone)."""
    from ..data import load_dataset

    test = load_dataset(dataset, "test", data_root)
    g = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(test), generator=g)[: min(n, len(test))].sort().values
    return test.subset(pick)


def accuracy_and_asr(model: torch.nn.Module, test: Any, attack: Any | None) -> tuple[float, float | None]:
    """Clean accuracy on `test`, and ASR on its inputs outside the target class (the attack's eligible ones)
    with the trigger applied by the server from the attack spec."""
    from ..metrics import evaluate

    r = evaluate(model, test, attack)
    return r["clean_accuracy"], r.get("attack_success_rate")


def check_accuracy_and_asr(accuracy: float, asr: float, reference: float, max_drop: float, min_asr: float) -> None:
    if accuracy < reference - max_drop:
        raise GateFailure("accuracy", f"clean accuracy {100 * accuracy:.1f}% is below the clean models' "
                          f"{100 * reference:.1f}% minus {100 * max_drop:.1f} points")
    if not asr >= min_asr:
        raise GateFailure("asr", f"attack success rate {100 * asr:.1f}% is below the round's {100 * min_asr:.1f}%")
