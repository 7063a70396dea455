"""Detection at the compiled stage: what a user checks before deploying an ONNX file.

1. Structural comparison with a re-export of the trusted source model file (same exporter and opset): the
   multiset of nodes (operator, domain, attributes, arity; names ignored) and the multiset of constants
   (initializers and Constant nodes: dtype, shape and bytes; names ignored). Added nodes are listed.
2. Reference-free red flags, which need no source: (a) bit or comparison operations reachable from the input
   before any weighted layer, (b) a path from the input to the output that skips every weighted layer,
   (c) the input consumed by more than one branch.
3. The provenance manifest: the ONNX file's sha256 and the source model file's sha256 as recorded, and with
   a public key, the Ed25519 signature.

Verdict: "tampered" if any signal fires; "ok" if the graph equals the trusted re-export, no red flag fires and
the provenance (when given) holds; "unverified" when nothing ties the file to a source (no source, no signed
manifest) and no red flag fires.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from .onnxfile import OnnxFile

WEIGHTED_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul", "ConvInteger", "MatMulInteger", "QLinearConv",
                          "QLinearMatMul", "Einsum", "LSTM", "GRU", "RNN"})
METADATA_OPS = frozenset({"Shape", "Size"})  # read the shape, not the values
BIT_COMPARE_OPS = frozenset({"BitwiseAnd", "BitwiseOr", "BitwiseXor", "BitwiseNot", "BitShift", "Mod", "Equal",
                             "Greater", "GreaterOrEqual", "Less", "LessOrEqual", "Not", "And", "Or", "Xor", "Round",
                             "Floor", "Ceil", "Sign", "IsNaN", "IsInf", "ArgMax", "ArgMin", "TopK"})


@dataclass
class GraphFacts:
    node_keys: Counter = field(default_factory=Counter)
    constant_keys: Counter = field(default_factory=Counter)


def _tensor_key(t: Any) -> str:
    from onnx import numpy_helper

    arr = numpy_helper.to_array(t)
    h = hashlib.sha256(f"{arr.dtype}|{list(arr.shape)}|".encode())
    h.update(arr.tobytes())
    return h.hexdigest()[:32]


def _attr_value(a: Any) -> Any:
    from onnx import helper

    if a.HasField("t"):
        return ("tensor", _tensor_key(a.t))
    v = helper.get_attribute_value(a)
    return tuple(v) if isinstance(v, list) else v


def node_key(node: Any, constant_names: set[str]) -> str:
    """Operator, domain, attributes and arity; which inputs are constants, but no names."""
    attrs = sorted((a.name, repr(_attr_value(a))) for a in node.attribute)
    kinds = tuple("const" if i in constant_names else ("" if i == "" else "value") for i in node.input)
    return repr((node.domain, node.op_type, attrs, kinds, len(node.output)))


def _constant_names(g: Any) -> set[str]:
    """Initializers, Constant outputs, and Identity copies of either (the exporter aliases shared weights)."""
    names = {t.name for t in g.initializer}
    names |= {o for n in g.node if n.op_type == "Constant" for o in n.output}
    for n in g.node:  # file order is topological
        if n.op_type == "Identity" and len(n.input) == 1 and n.input[0] in names:
            names |= set(n.output)
    return names


def graph_facts(onnx_file: OnnxFile) -> GraphFacts:
    g = onnx_file.model.graph
    consts = _constant_names(g)
    facts = GraphFacts()
    for n in g.node:
        facts.node_keys[node_key(n, consts)] += 1
        for a in n.attribute:
            if n.op_type == "Constant" and a.HasField("t"):
                facts.constant_keys[_tensor_key(a.t)] += 1
    for t in g.initializer:
        facts.constant_keys[_tensor_key(t)] += 1
    return facts


def structural_diff(deployed: OnnxFile, reference: OnnxFile) -> dict[str, Any]:
    """Nodes and constants of `deployed` that a trusted re-export does not have, and the reverse."""
    a, b = graph_facts(deployed), graph_facts(reference)
    added_keys = a.node_keys - b.node_keys
    removed_nodes = sum((b.node_keys - a.node_keys).values())
    g = deployed.model.graph
    consts = _constant_names(g)
    added: list[dict[str, Any]] = []
    left = Counter(added_keys)
    for n in g.node:
        k = node_key(n, consts)
        if left[k] > 0:
            left[k] -= 1
            added.append({"name": n.name, "op_type": n.op_type, "inputs": list(n.input), "outputs": list(n.output)})
    return {"nodes_equal": not added_keys and not removed_nodes, "constants_equal": a.constant_keys == b.constant_keys,
            "added_nodes": added, "n_added_nodes": len(added), "n_removed_nodes": removed_nodes,
            "n_added_constants": sum((a.constant_keys - b.constant_keys).values()),
            "n_removed_constants": sum((b.constant_keys - a.constant_keys).values())}


def red_flags(onnx_file: OnnxFile) -> dict[str, Any]:
    """The reference-free signals (see the module docstring); each with the nodes that raise it."""
    g = onnx_file.model.graph
    consts = _constant_names(g)
    x = [i.name for i in g.input if i.name not in consts][0]
    out = g.output[0].name
    consumers: dict[str, list[Any]] = {}
    for n in g.node:
        for i in set(n.input):
            consumers.setdefault(i, []).append(n)

    def weighted(n: Any) -> bool:
        return n.op_type in WEIGHTED_OPS and any(i in consts for i in n.input[1:])

    # forward from the input, stopping at weighted layers and at shape reads
    reached: set[str] = {x}
    unweighted: list[Any] = []
    seen: set[int] = set()
    frontier = [x]
    while frontier:
        value = frontier.pop()
        for n in consumers.get(value, []):
            if id(n) in seen or weighted(n) or n.op_type in METADATA_OPS:
                continue
            seen.add(id(n))
            unweighted.append(n)
            for o in n.output:
                if o not in reached:
                    reached.add(o)
                    frontier.append(o)
    bit_ops = [n for n in unweighted if n.op_type in BIT_COMPARE_OPS]
    input_users = [n for n in consumers.get(x, []) if n.op_type not in METADATA_OPS]
    skip = out in reached

    def names(nodes: list[Any]) -> list[str]:
        return [f"{n.op_type} {n.name!r}" for n in nodes]

    return {
        "bit_or_comparison_ops_on_input": {"fired": bool(bit_ops), "nodes": names(bit_ops)},
        "path_skipping_weighted_layers": {"fired": skip, "nodes": names([n for n in unweighted if out in n.output])
                                          if skip else []},
        "input_consumed_by_several_branches": {"fired": len(input_users) > 1, "nodes": names(input_users)
                                               if len(input_users) > 1 else []},
    }
