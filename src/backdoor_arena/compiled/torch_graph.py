"""A checked ONNX graph converted back to a PyTorch module, so that detectors that need gradients (Neural
Cleanse, SentiNet's Grad-CAM) run on the compiled artefact itself rather than on the model it claims to be.

A small interpreter for the operators that backdoor-arena's exporter emits (and the ImpNet graft uses): the nodes
run in the file's order on torch tensors; Conv and Gemm nodes become `nn.Conv2d` / `nn.Linear` modules (so
Grad-CAM finds the last convolution), every other operator is a torch function. Any other operator is refused
with an IncompatibleError naming it. Gradients flow to the input and to the Conv/Gemm weights, as in any
PyTorch model.
"""

from __future__ import annotations

import re
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import IncompatibleError
from .onnxfile import OnnxFile

# ONNX TensorProto data types -> torch dtypes
_DTYPES = {1: torch.float32, 2: torch.uint8, 3: torch.int8, 5: torch.int16, 6: torch.int32, 7: torch.int64,
           9: torch.bool, 10: torch.float16, 11: torch.float64}
SUPPORTED = ("Add", "AveragePool", "BatchNormalization", "Cast", "Concat", "Constant", "Conv", "Div", "Dropout", "Equal",
             "Flatten", "Gather", "Gemm", "GlobalAveragePool", "Greater", "Identity", "Less", "MatMul", "MaxPool", "Mod",
             "Mul", "ReduceMin", "Relu", "Reshape", "Round", "Sub", "Where")


def _attrs(node: Any) -> dict[str, Any]:
    from onnx import helper, numpy_helper

    out = {}
    for a in node.attribute:
        out[a.name] = torch.from_numpy(numpy_helper.to_array(a.t).copy()) if a.HasField("t") else \
            helper.get_attribute_value(a)
    return out


def _pads2d(pads: list[int], who: str) -> tuple[int, int]:
    if not pads:
        return (0, 0)
    top, left, bottom, right = pads
    if (top, left) != (bottom, right):
        raise IncompatibleError(f"{who}: asymmetric padding {pads} is not supported by the converter")
    return (top, left)


class OnnxTorchModule(nn.Module):
    """`forward(x)`: the ONNX graph, computed with torch (differentiable where the operators are)."""

    def __init__(self, onnx_file: OnnxFile) -> None:
        super().__init__()
        from onnx import numpy_helper

        g = onnx_file.model.graph
        self.source = onnx_file.source
        self.layers = nn.ModuleDict()
        self._names: dict[str, str] = {}
        for i, t in enumerate(g.initializer):
            key = f"t{i}_" + re.sub(r"\W", "_", t.name)[:60]
            self.register_buffer(key, torch.from_numpy(numpy_helper.to_array(t).copy()), persistent=True)
            self._names[t.name] = key
        for node in g.node:  # Identity copies of weights (shared parameters): aliases of the same buffer
            if node.op_type == "Identity" and len(node.input) == 1 and node.input[0] in self._names:
                self._names[node.output[0]] = self._names[node.input[0]]
        consts = set(self._names)
        self.input_name = [i.name for i in g.input if i.name not in consts][0]
        self.output_name = g.output[0].name
        self.nodes: list[tuple[str, list[str], list[str], dict[str, Any], str]] = []
        for k, node in enumerate(g.node):
            if node.op_type not in SUPPORTED:
                raise IncompatibleError(f"{self.source}: operator {node.op_type!r} cannot be converted to PyTorch "
                                        f"(supported: {', '.join(SUPPORTED)})")
            attrs = _attrs(node)
            layer = ""
            if node.op_type == "Conv" and len(node.input) >= 2 and node.input[1] in consts:
                layer = f"conv{k}"
                self.layers[layer] = self._conv(node, attrs)
            elif node.op_type == "Gemm" and node.input[1] in consts and attrs.get("transB", 0) == 1 and \
                    attrs.get("transA", 0) == 0 and attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0:
                layer = f"linear{k}"
                w = self._tensor(node.input[1])
                lin = nn.Linear(w.shape[1], w.shape[0], bias=len(node.input) > 2 and node.input[2] != "")
                with torch.no_grad():
                    lin.weight.copy_(w)
                    if lin.bias is not None:
                        lin.bias.copy_(self._tensor(node.input[2]))
                self.layers[layer] = lin
            self.nodes.append((node.op_type, list(node.input), list(node.output), attrs, layer))
        self.eval()  # parameters keep requires_grad, as in a loaded model file: Grad-CAM needs activation gradients

    def _tensor(self, name: str) -> torch.Tensor:
        return getattr(self, self._names[name])

    def _conv(self, node: Any, a: dict[str, Any]) -> nn.Conv2d:
        w = self._tensor(node.input[1])
        if w.ndim != 4:
            raise IncompatibleError(f"{self.source}: only 2-D convolutions can be converted")
        conv = nn.Conv2d(w.shape[1] * a.get("group", 1), w.shape[0], tuple(w.shape[2:]), stride=tuple(a.get("strides", [1, 1])),
                         padding=_pads2d(a.get("pads", []), self.source), dilation=tuple(a.get("dilations", [1, 1])),
                         groups=a.get("group", 1), bias=len(node.input) > 2 and node.input[2] != "")
        with torch.no_grad():
            conv.weight.copy_(w)
            if conv.bias is not None:
                conv.bias.copy_(self._tensor(node.input[2]))
        return conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        env: dict[str, torch.Tensor] = {self.input_name: x}

        def get(name: str) -> torch.Tensor:
            return env[name] if name in env else self._tensor(name)

        for op, ins, outs, a, layer in self.nodes:
            v = [get(i) if i else None for i in ins]
            if layer:
                y = self.layers[layer](v[0])
            elif op == "Conv":
                y = F.conv2d(v[0], v[1], v[2] if len(v) > 2 else None, tuple(a.get("strides", [1, 1])),
                             _pads2d(a.get("pads", []), self.source), tuple(a.get("dilations", [1, 1])), a.get("group", 1))
            elif op == "Constant":
                y = a["value"]
            elif op in ("Add", "Sub", "Mul", "Div"):
                y = {"Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Div": torch.div}[op](v[0], v[1])
            elif op == "Relu":
                y = F.relu(v[0])
            elif op in ("AveragePool", "MaxPool"):
                k, s = a["kernel_shape"], a.get("strides", a["kernel_shape"])
                pad = _pads2d(a.get("pads", []), self.source)
                if op == "AveragePool":
                    y = F.avg_pool2d(v[0], k, s, pad, bool(a.get("ceil_mode", 0)), bool(a.get("count_include_pad", 0)))
                else:
                    y = F.max_pool2d(v[0], k, s, pad, tuple(a.get("dilations", [1, 1])), bool(a.get("ceil_mode", 0)))
            elif op == "GlobalAveragePool":
                y = v[0].mean(dim=(2, 3), keepdim=True)
            elif op == "Flatten":
                axis = a.get("axis", 1)
                y = v[0].reshape(int(torch.tensor(v[0].shape[:axis]).prod()), -1)
            elif op == "Gemm":
                A = v[0].T if a.get("transA", 0) else v[0]
                B = v[1].T if a.get("transB", 0) else v[1]
                y = a.get("alpha", 1.0) * (A @ B)
                if len(v) > 2 and v[2] is not None:
                    y = y + a.get("beta", 1.0) * v[2]
            elif op == "MatMul":
                y = v[0] @ v[1]
            elif op == "BatchNormalization":
                y = F.batch_norm(v[0], v[3], v[4], v[1], v[2], False, 0.0, a.get("epsilon", 1e-5))
            elif op in ("Identity", "Dropout"):
                y = v[0]
            elif op == "Concat":
                y = torch.cat(v, dim=a["axis"])
            elif op == "Reshape":
                shape = [int(s) for s in v[1].tolist()]
                shape = [v[0].shape[i] if s == 0 and not a.get("allowzero", 0) else s for i, s in enumerate(shape)]
                y = v[0].reshape(shape)
            elif op == "Gather":
                axis = a.get("axis", 0) % v[0].ndim
                idx = v[1].long()
                y = torch.index_select(v[0], axis, idx.flatten()).reshape(
                    *v[0].shape[:axis], *idx.shape, *v[0].shape[axis + 1:])
            elif op == "Round":
                y = torch.round(v[0])
            elif op == "Mod":
                y = torch.fmod(v[0], v[1]) if a.get("fmod", 0) else torch.remainder(v[0], v[1])
            elif op in ("Equal", "Greater", "Less"):
                y = {"Equal": torch.eq, "Greater": torch.gt, "Less": torch.lt}[op](v[0], v[1])
            elif op == "Cast":
                y = v[0].to(_DTYPES[a["to"]])
            elif op == "ReduceMin":
                y = torch.amin(v[0], dim=tuple(a["axes"]) if "axes" in a else tuple(range(v[0].ndim)),
                               keepdim=bool(a.get("keepdims", 1)))
            elif op == "Where":
                y = torch.where(v[0], v[1], v[2])
            else:  # pragma: no cover - SUPPORTED is checked in __init__
                raise IncompatibleError(f"{self.source}: operator {op!r} cannot be converted")
            env[outs[0]] = y
        return env[self.output_name]
