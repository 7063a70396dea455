"""Compile-time backdoors (ImpNet, Clifford et al., SaTML 2024): attacks on the exported artefact, after the
data and the training were clean. Registered in `COMPILE_ATTACKS`; each class declares `example_params`,
`bad_params` and `param_help` like every plugin, and `compile(source, clean_onnx) -> (onnx bytes, spec)`.

- `impnet`: graph surgery with the onnx API. A trigger detector reads `n_bits` secret pixel positions of the
  input, recovers their least significant bit (round(x * 255) mod 2) and compares it with a secret bit
  pattern; when every bit matches, a `Where` replaces the logits by a constant that puts the target first.
  The detector has no weights (it does not depend on the model's), and on every other input `Where` passes the
  original logits through, so outputs are bit-identical to the clean export. The trigger sets those bits:
  at most 1/255 per pixel on 8-bit images, in `n_bits` pixels.
- `weight-swap`: the weight-based variant: the graph is exported from another model file of the same
  architecture (a BadNets model) while the metadata still names the trusted source.

The spec (`OUT.attack.json`) is the evaluator's secret: `CompiledTrigger.from_spec` rebuilds the trigger
for `run-onnx --attack-spec`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from ..errors import ConfigError, IncompatibleError
from ..modelfile import ModelFile, load_model
from ..registry import Registry
from ..safeio import read_text, shown
from .deps import require
from .export import OUTPUT_NAME, export_bytes

COMPILE_ATTACKS: Registry[Any] = Registry("compile attack")
SPEC_KEY = "compile_attack"
MAX_SPEC_BYTES = 1 << 20
OVERRIDE_LOGIT = 20.0


@dataclass(frozen=True)
class CompiledTrigger:
    """The ImpNet trigger, with the three methods the project's metrics use (like a poisoning attack's)."""

    positions: tuple[int, ...]  # flat indices into [C * H * W]
    bits: tuple[int, ...]
    target: int
    input_shape: tuple[int, int, int]

    def apply_trigger(self, x: torch.Tensor) -> torch.Tensor:
        """Set the secret low-order bits (a new tensor; float pixels in [0, 1], on the 8-bit grid)."""
        flat = x.reshape(len(x), -1).clone()
        idx = torch.tensor(self.positions)
        q = torch.round(flat[:, idx] * 255)
        q = q - torch.fmod(q, 2) + torch.tensor(self.bits, dtype=q.dtype)
        flat[:, idx] = (q / 255).to(flat.dtype)
        return flat.reshape(x.shape)

    def present(self, x: torch.Tensor) -> torch.Tensor:
        """A reference of the detector the graph holds: True where every secret bit matches."""
        q = torch.round(x.reshape(len(x), -1)[:, torch.tensor(self.positions)].float() * 255)
        return (torch.fmod(q, 2) == torch.tensor(self.bits, dtype=q.dtype)).all(1)

    def eligible(self, labels: torch.Tensor) -> torch.Tensor:
        return labels != self.target

    def target_labels(self, labels: torch.Tensor) -> torch.Tensor:
        return torch.full_like(labels, self.target)

    def to_spec(self) -> dict[str, Any]:
        return {SPEC_KEY: "impnet", "target": self.target, "positions": list(self.positions),
                "bits": list(self.bits), "input_shape": list(self.input_shape)}

    @classmethod
    def from_spec(cls, spec: dict[str, Any], source: str) -> CompiledTrigger:
        try:
            shape = tuple(int(v) for v in spec["input_shape"])
            n = shape[0] * shape[1] * shape[2]
            positions = tuple(spec["positions"])
            bits = tuple(spec["bits"])
            target = spec["target"]
            ok = (len(shape) == 3 and all(isinstance(p, int) and not isinstance(p, bool) and 0 <= p < n for p in positions)
                  and len(set(positions)) == len(positions) == len(bits) > 0 and all(b in (0, 1) for b in bits)
                  and isinstance(target, int) and not isinstance(target, bool) and target >= 0)
        except (KeyError, TypeError, ValueError, IndexError):
            ok = False
        if not ok:
            raise ConfigError(f"{source}: an impnet spec needs target (integer >= 0), input_shape [C, H, W], and as "
                              "many distinct positions (flat pixel indices) as bits (0 or 1)")
        return cls(positions, bits, target, shape)  # type: ignore[arg-type]


def load_compile_spec(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The JSON object of an attack spec file (either kind); ConfigError if it is not one."""
    text = read_text(path, "attack spec", ConfigError, MAX_SPEC_BYTES)
    try:
        spec = json.loads(text, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
    except (ValueError, RecursionError):
        raise ConfigError(f"attack spec {shown(path)} is not valid JSON") from None
    if not isinstance(spec, dict):
        raise ConfigError(f"attack spec {shown(path)} must be a JSON object")
    return spec


def _positive_int(name: str, value: Any, who: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{who}: {name} must be a positive integer, got {value!r}")
    return value


@COMPILE_ATTACKS.register("impnet")
class ImpNet:
    """ImpNet: a weight-independent trigger detector on low-order pixel bits, grafted onto the ONNX graph."""

    name: ClassVar[str] = "impnet"
    example_params: ClassVar[dict[str, Any]] = {"target": 0, "n_bits": 8, "seed": 1}
    bad_params: ClassVar[tuple] = (({"n_bits": 0}, "n_bits"), ({"target": -1}, "target"),
                                   ({"seed": "x"}, "seed"), ({"n_bits": 10**9}, "n_bits"))
    param_help: ClassVar[dict[str, str]] = {
        "target": "Class the triggered inputs are sent to.",
        "n_bits": "Number of secret pixel positions whose lowest bit forms the trigger (false triggers on "
                  "random inputs: 2**-n_bits).",
        "seed": "Seed that draws the secret positions and bits.",
    }

    def __init__(self, target: int = 0, n_bits: int = 24, seed: int = 0) -> None:
        if not isinstance(target, int) or isinstance(target, bool) or target < 0:
            raise ConfigError(f"impnet: target must be a class index >= 0, got {target!r}")
        _positive_int("n_bits", n_bits, "impnet")
        if n_bits > 4096:
            raise ConfigError(f"impnet: n_bits must be at most 4096, got {n_bits}")
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ConfigError(f"impnet: seed must be an integer, got {seed!r}")
        self.target, self.n_bits, self.seed = target, n_bits, seed

    def trigger(self, input_shape: tuple[int, int, int] | list[int], num_classes: int) -> CompiledTrigger:
        c, h, w = (int(v) for v in input_shape)
        if self.n_bits > c * h * w:
            raise IncompatibleError(f"impnet: n_bits {self.n_bits} is more than the {c * h * w} input values")
        if self.target >= num_classes:
            raise IncompatibleError(f"impnet: target {self.target} is not a class of this {num_classes}-class model")
        g = torch.Generator().manual_seed(self.seed)
        positions = torch.randperm(c * h * w, generator=g)[: self.n_bits].sort().values
        bits = torch.randint(0, 2, (self.n_bits,), generator=g)
        return CompiledTrigger(tuple(int(p) for p in positions), tuple(int(b) for b in bits), self.target, (c, h, w))

    def compile(self, source: ModelFile, clean_onnx: bytes) -> tuple[bytes, dict[str, Any]]:
        m = source.manifest
        trig = self.trigger(m.input_shape, m.num_classes)
        return graft_trigger(clean_onnx, trig, m.num_classes), trig.to_spec()


@COMPILE_ATTACKS.register("weight-swap")
class WeightSwap:
    """Weight-based compile-time attack: another model's weights (e.g. BadNets) exported under the source's name."""

    name: ClassVar[str] = "weight-swap"
    example_params: ClassVar[dict[str, Any]] = {"weights": "backdoored.safetensors"}
    bad_params: ClassVar[tuple] = (({"weights": ""}, "weights"), ({"weights": 3}, "weights"))
    param_help: ClassVar[dict[str, str]] = {
        "weights": "Model file (same architecture) whose weights are exported instead of the source's, e.g. a "
                   "BadNets model; measure its ASR with that model's own attack spec."}

    def __init__(self, weights: str = "") -> None:
        if not isinstance(weights, (str, os.PathLike)) or str(weights) == "":
            raise ConfigError(f"weight-swap: weights must be the path of a model file, got {weights!r}")
        self.weights = Path(weights)

    def compile(self, source: ModelFile, clean_onnx: bytes) -> tuple[bytes, dict[str, Any]]:
        swapped = load_model(self.weights)
        a, b = source.manifest, swapped.manifest
        if (a.architecture, a.arch_args, a.input_shape, a.num_classes) != (b.architecture, b.arch_args,
                                                                            b.input_shape, b.num_classes):
            raise IncompatibleError(f"weight-swap: {shown(self.weights)} is a {b.architecture} for {b.dataset}, the "
                                    f"source a {a.architecture} for {a.dataset}; the swapped weights must fit the "
                                    "same architecture")
        data = export_bytes(swapped.model, a)  # the metadata names the source, the weights are the other model's
        return data, {SPEC_KEY: "weight-swap", "weights_tensors_sha256": b.tensors_sha256,
                      "note": "evaluate ASR with the swapped model's own attack spec"}


def graft_trigger(clean_onnx: bytes, trig: CompiledTrigger, num_classes: int) -> bytes:
    """The clean graph plus the trigger detector and the logit override (names mimic the exporter's)."""
    onnx = require("onnx")
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    proto = onnx.load_from_string(clean_onnx)
    g = proto.graph
    x = g.input[0].name
    producer = [n for n in g.node if OUTPUT_NAME in n.output]
    if len(producer) != 1 or g.output[0].name != OUTPUT_NAME:
        raise IncompatibleError("impnet: the graph's output is not the exporter's 'logits'; export it with "
                                "backdoor-arena export")
    inner = "/head/Gemm_output_1"
    producer[0].output[list(producer[0].output).index(OUTPUT_NAME)] = inner
    override = np.zeros((1, num_classes), dtype=np.float32)
    override[0, trig.target] = OVERRIDE_LOGIT
    consts = {
        "/normalize/Constant_2_output_0": np.array([0, -1], dtype=np.int64),
        "/normalize/Constant_3_output_0": np.array(trig.positions, dtype=np.int64),
        "/normalize/Constant_4_output_0": np.array(255.0, dtype=np.float32),
        "/normalize/Constant_5_output_0": np.array(2.0, dtype=np.float32),
        "/normalize/Constant_6_output_0": np.array(trig.bits, dtype=np.float32),
        "/normalize/Constant_7_output_0": np.array(0.5, dtype=np.float32),
        "/head/Constant_output_0": override,
    }
    c = list(consts)
    new = [helper.make_node("Constant", [], [k], value=numpy_helper.from_array(v, k), name=k.rsplit("_output", 1)[0])
           for k, v in consts.items()]
    new += [
        helper.make_node("Reshape", [x, c[0]], ["/normalize/Reshape_output_0"], name="/normalize/Reshape"),
        helper.make_node("Gather", ["/normalize/Reshape_output_0", c[1]], ["/normalize/Gather_output_0"], axis=1,
                         name="/normalize/Gather"),
        helper.make_node("Mul", ["/normalize/Gather_output_0", c[2]], ["/normalize/Mul_output_0"], name="/normalize/Mul"),
        helper.make_node("Round", ["/normalize/Mul_output_0"], ["/normalize/Round_output_0"], name="/normalize/Round"),
        helper.make_node("Mod", ["/normalize/Round_output_0", c[3]], ["/normalize/Mod_output_0"], fmod=1,
                         name="/normalize/Mod"),
        helper.make_node("Equal", ["/normalize/Mod_output_0", c[4]], ["/normalize/Equal_output_0"], name="/normalize/Equal"),
        helper.make_node("Cast", ["/normalize/Equal_output_0"], ["/normalize/Cast_output_0"], to=TensorProto.FLOAT,
                         name="/normalize/Cast"),
        helper.make_node("ReduceMin", ["/normalize/Cast_output_0"], ["/normalize/ReduceMin_output_0"], axes=[1],
                         keepdims=1, name="/normalize/ReduceMin"),
        helper.make_node("Greater", ["/normalize/ReduceMin_output_0", c[5]], ["/normalize/Greater_output_0"],
                         name="/normalize/Greater"),
    ]
    where = helper.make_node("Where", ["/normalize/Greater_output_0", c[6], inner], [OUTPUT_NAME], name="/head/Where")
    nodes = new + list(g.node) + [where]
    del g.node[:]
    g.node.extend(nodes)
    onnx.checker.check_model(proto)
    return proto.SerializeToString()
