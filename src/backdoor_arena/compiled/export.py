"""Export a model file to ONNX: one self-contained file (every tensor inside it, no external data), a fixed
opset, a dynamic batch dimension, input `input` (float pixels [N, C, H, W] in [0, 1]) and output `logits`.

The same model file always exports to the same bytes with the same library versions, which is what lets
`verify` compare a deployed graph with a trusted re-export.
"""

from __future__ import annotations

import inspect
import io
import warnings
from typing import Any

import torch
from torch import nn

from ..errors import ModelFileError
from ..modelfile import Manifest
from .deps import require

OPSET = 17
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
META_PREFIX = "backdoor_arena."


def export_bytes(model: nn.Module, manifest: Manifest) -> bytes:
    """The ONNX bytes of `model` (not modified: exported from eval mode, its mode restored)."""
    onnx = require("onnx")
    was_training = model.training
    model.eval()
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            # the TorchScript exporter (needs only onnx); torch < 2.5 has no `dynamo` keyword and uses it anyway
            legacy = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
            torch.onnx.export(model, (torch.zeros(1, *manifest.input_shape),), buf, **legacy,
                              input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], opset_version=OPSET,
                              dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                              do_constant_folding=True, export_params=True)
    except Exception as exc:
        text = " ".join(str(exc).split())[:240]
        raise ModelFileError(f"the {manifest.architecture} model cannot be exported to ONNX ({text})") from None
    finally:
        model.train(was_training)
    proto = onnx.load_from_string(buf.getvalue())
    set_metadata(proto, {"architecture": manifest.architecture, "dataset": manifest.dataset,
                         "num_classes": str(manifest.num_classes),
                         "source_tensors_sha256": manifest.tensors_sha256})
    return proto.SerializeToString()


def set_metadata(proto: Any, values: dict[str, str]) -> None:
    """Replace the backdoor_arena.* metadata entries of an ONNX model (informative only: not trusted)."""
    kept = [(p.key, p.value) for p in proto.metadata_props if not p.key.startswith(META_PREFIX)]
    del proto.metadata_props[:]
    for key, value in kept + [(META_PREFIX + k, v) for k, v in sorted(values.items())]:
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value


def metadata(proto: Any) -> dict[str, str]:
    return {p.key[len(META_PREFIX):]: p.value for p in proto.metadata_props if p.key.startswith(META_PREFIX)}
