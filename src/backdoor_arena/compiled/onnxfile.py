"""Bounded, hardened reading of ONNX files.

An ONNX file is a protobuf: it has no magic number, no integrity hash and may point at external files (its
tensors' `external_data`), hold sub-graphs, custom-domain operators and tensors whose declared shape allocates
gigabytes. Before ONNX Runtime sees a file, `parse_onnx` checks, within fixed bounds and in one-line
ModelFileErrors: the size, that it parses, the IR and opset versions, the default domain only (no custom
operators, no local functions), no sub-graphs, at most MAX_NODES nodes and MAX_TENSORS tensors, every tensor
stored inside the file (external data refused) with a sane shape whose bytes match it, one float image input
[N, C, H, W] and one float output [N, K], and finally the ONNX checker.
"""

from __future__ import annotations

import hashlib
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ModelFileError
from ..safeio import MiB, read_bytes, shown
from .deps import require

MAX_ONNX_BYTES = 256 * MiB
MAX_NODES = 5000
MAX_TENSORS = 4096
MAX_TENSOR_ELEMENTS = 1 << 28
MAX_RANK = 8
MAX_ATTRIBUTES = 64
MAX_NAME = 4096
ALLOWED_DOMAINS = ("", "ai.onnx")
MIN_OPSET = 7
# TensorProto data types -> bytes per element (fixed-size types only; strings are refused)
_ELEM_BYTES = {1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8, 16: 2}
_FLOAT = 1


@dataclass(frozen=True, eq=False)
class OnnxFile:
    """A checked ONNX model: its protobuf, its bytes, their sha256 and where it was read from."""

    model: Any  # onnx.ModelProto
    data: bytes
    sha256: str
    source: str

    @property
    def input_shape(self) -> list[int | str]:
        dims = self.model.graph.input[0].type.tensor_type.shape.dim
        return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in dims]

    @property
    def num_outputs(self) -> int:
        dims = self.model.graph.output[0].type.tensor_type.shape.dim
        return dims[1].dim_value if len(dims) == 2 and dims[1].HasField("dim_value") else 0

    def metadata(self) -> dict[str, str]:
        return {p.key: p.value for p in self.model.metadata_props}


def _one(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return (text[:240] + "...") if len(text) > 240 else (text or type(exc).__name__)


def read_onnx(path: str | os.PathLike[str], what: str = "ONNX file") -> OnnxFile:
    """Read and check an ONNX file (see the module docstring); every failure is one ModelFileError."""
    require("onnx")  # before any reading: a missing dependency is said first
    data = read_bytes(path, what, ModelFileError, MAX_ONNX_BYTES)
    return parse_onnx(data, f"{what} {shown(path)}")


def parse_onnx(data: bytes, source: str) -> OnnxFile:
    """Check ONNX bytes (already read within the size bound); `source` names them in errors."""
    onnx = require("onnx")
    _sniff(data, source)
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception as exc:  # protobuf DecodeError, or a RuntimeWarning turned error: hostile bytes
        raise ModelFileError(f"{source} is not a valid ONNX protobuf ({_one(exc)}); the file is corrupt or not ONNX") \
            from None
    _check_model(model, source, onnx)
    try:
        onnx.checker.check_model(model)
    except Exception as exc:
        raise ModelFileError(f"{source} fails the ONNX checker: {_one(exc)}") from None
    return OnnxFile(model, bytes(data), hashlib.sha256(data).hexdigest(), source)


def _sniff(data: bytes, source: str) -> None:
    if not data:
        raise ModelFileError(f"{source} is empty; the file is truncated or not ONNX")
    if data[:2] == b"PK" or data[:1] == b"\x80":
        raise ModelFileError(f"{source} looks like a PyTorch pickle or zip, not ONNX; backdoor-arena never unpickles: "
                             "export a model file with `backdoor-arena export MODEL.safetensors --out MODEL.onnx`")
    if len(data) >= 9:
        (n,) = struct.unpack("<Q", data[:8])
        if 0 < n < len(data) and data[8:9] == b"{":
            raise ModelFileError(f"{source} is a safetensors model file, not ONNX; export it first with "
                                 "`backdoor-arena export MODEL.safetensors --out MODEL.onnx`")


def _check_model(model: Any, source: str, onnx: Any) -> None:
    if not model.HasField("graph"):
        raise ModelFileError(f"{source} has no graph; the file is truncated or not ONNX")
    if not 3 <= model.ir_version <= onnx.IR_VERSION:
        raise ModelFileError(f"{source} has IR version {model.ir_version}; this onnx {onnx.__version__} reads 3 to "
                             f"{onnx.IR_VERSION}")
    max_opset = onnx.defs.onnx_opset_version()
    if not model.opset_import:
        raise ModelFileError(f"{source} declares no opset; the file is corrupt")
    for op in model.opset_import:
        if op.domain not in ALLOWED_DOMAINS:
            raise ModelFileError(f"{source} imports the operator domain {op.domain[:80]!r}; only the standard ONNX "
                                 "domain is accepted (custom operators are refused)")
        if not MIN_OPSET <= op.version <= max_opset:
            raise ModelFileError(f"{source} uses opset {op.version}; accepted: {MIN_OPSET} to {max_opset}")
    if len(model.functions):
        raise ModelFileError(f"{source} defines {len(model.functions)} local functions; they are refused (re-export "
                             "the model with backdoor-arena export)")
    if len(model.training_info):
        raise ModelFileError(f"{source} holds training information; only inference graphs are accepted")
    g = model.graph
    if len(g.node) > MAX_NODES:
        raise ModelFileError(f"{source} has {len(g.node)} nodes, more than the limit of {MAX_NODES}")
    if len(g.node) == 0:
        raise ModelFileError(f"{source} has an empty graph; the file is corrupt")
    if len(g.sparse_initializer):
        raise ModelFileError(f"{source} holds sparse initializers; they are refused (re-export the model)")
    if len(g.initializer) > MAX_TENSORS:
        raise ModelFileError(f"{source} has {len(g.initializer)} initializers, more than the limit of {MAX_TENSORS}")
    for t in g.initializer:
        _check_tensor(t, source, "initializer")
    for node in g.node:
        if node.domain not in ALLOWED_DOMAINS:
            raise ModelFileError(f"{source}: node {node.name[:80]!r} ({node.op_type[:40]}) is from the domain "
                                 f"{node.domain[:80]!r}; custom operators are refused")
        if len(node.attribute) > MAX_ATTRIBUTES:
            raise ModelFileError(f"{source}: node {node.name[:80]!r} has {len(node.attribute)} attributes; corrupt")
        for a in node.attribute:
            if a.type in (5, 10, 11, 13) or len(a.g.node) or len(a.graphs):  # GRAPH, GRAPHS, SPARSE_TENSOR(S)
                raise ModelFileError(f"{source}: node {node.name[:80]!r} ({node.op_type[:40]}) holds a sub-graph or a "
                                     "sparse tensor; control flow and sparse tensors are refused")
            if a.HasField("t"):
                _check_tensor(a.t, source, f"constant of node {node.name[:80]!r}")
            if len(a.tensors):
                for t in a.tensors:
                    _check_tensor(t, source, f"constant of node {node.name[:80]!r}")
    names = {t.name for t in g.initializer}
    inputs = [i for i in g.input if i.name not in names]
    if len(inputs) != 1 or len(g.output) != 1:
        raise ModelFileError(f"{source} has {len(inputs)} inputs and {len(g.output)} outputs; an image classifier "
                             "has one input [N, C, H, W] and one output [N, classes]")
    _check_value(inputs[0], 4, source, "input")
    _check_value(g.output[0], 2, source, "output")


def _check_value(v: Any, rank: int, source: str, what: str) -> None:
    tt = v.type.tensor_type
    if not v.type.HasField("tensor_type") or tt.elem_type != _FLOAT:
        raise ModelFileError(f"{source}: the {what} {v.name[:80]!r} is not a float32 tensor")
    if len(tt.shape.dim) != rank:
        raise ModelFileError(f"{source}: the {what} {v.name[:80]!r} has rank {len(tt.shape.dim)}, expected {rank}")
    for d in list(tt.shape.dim)[1:]:
        if not d.HasField("dim_value") or not 0 < d.dim_value <= 4096:
            raise ModelFileError(f"{source}: the {what} {v.name[:80]!r} must have fixed sizes (1 to 4096) after the "
                                 "batch dimension")


def _check_tensor(t: Any, source: str, what: str) -> None:
    where = f"{source}: {what} {t.name[:80]!r}"
    if len(t.name) > MAX_NAME:
        raise ModelFileError(f"{source}: a tensor name is {len(t.name)} characters long; the file is corrupt")
    if t.data_location == 1 or len(t.external_data):
        raise ModelFileError(f"{where} is stored in an external file; external data is refused (export a single "
                             "self-contained file: backdoor-arena export)")
    if t.data_type not in _ELEM_BYTES:
        raise ModelFileError(f"{where} has data type {t.data_type}, which is not accepted (numbers only)")
    if len(t.dims) > MAX_RANK:
        raise ModelFileError(f"{where} has rank {len(t.dims)}, more than {MAX_RANK}")
    n = 1
    for d in t.dims:
        if d < 0 or d > MAX_TENSOR_ELEMENTS:
            raise ModelFileError(f"{where} has a dimension of {d}; the file is corrupt or hostile")
        n *= d
        if n > MAX_TENSOR_ELEMENTS:
            raise ModelFileError(f"{where} declares more than {MAX_TENSOR_ELEMENTS} elements; corrupt or hostile")
    if t.HasField("raw_data"):
        if len(t.raw_data) != n * _ELEM_BYTES[t.data_type]:
            raise ModelFileError(f"{where} holds {len(t.raw_data)} bytes for {n} elements of "
                                 f"{_ELEM_BYTES[t.data_type]} bytes; the file is corrupt")
    else:
        stored = (len(t.float_data) + len(t.int32_data) + len(t.int64_data) + len(t.double_data)
                  + len(t.uint64_data))
        if stored != n and not (stored == 2 * n and t.data_type in (14, 15)):
            raise ModelFileError(f"{where} holds {stored} values for {n} elements; the file is corrupt")


def sha256_file(path: str | os.PathLike[str], what: str, max_bytes: int) -> str:
    """sha256 of a regular file's bytes (read within `max_bytes`)."""
    return hashlib.sha256(read_bytes(path, what, ModelFileError, max_bytes)).hexdigest()


def file_name(path: str | os.PathLike[str]) -> str:
    return Path(path).name
