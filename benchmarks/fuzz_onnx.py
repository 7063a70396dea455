"""Fuzz the ONNX reader (`compiled/onnxfile.py` + ONNX Runtime session creation) and the provenance manifest
reader (`compiled/provenance.py`) with structured mutations of valid files.

Properties:
- ONNX: a mutated file is refused with a one-line ModelFileError, or it loads and runs in ONNX Runtime (an
  ONNX file carries no hash of its own, so a mutation can give a different valid graph: the provenance
  manifest's sha256 is what refuses it, which every such case checks). Anything else (another exception, a
  multi-line error, a crash) is "other".
- Manifest: a mutated manifest is refused with a one-line ModelFileError, or it parses and its signature
  verifies only if its signed content is unchanged (whitespace, key order); otherwise the check says why.

    BACKDOOR_ARENA_THREADS=1 .venv/bin/python benchmarks/fuzz_onnx.py --cases-per-kind 300 [--json OUT]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ONNX_MUTATIONS = ("truncate", "flip_bytes", "garbage", "external_data", "tensor_dims", "raw_data", "op_type",
                  "domain", "drop_node", "rewire", "subgraph", "attribute", "opset", "io_type", "duplicate_node")
MANIFEST_MUTATIONS = ("truncate", "flip_bytes", "field_value", "drop_field", "extra_field", "duplicate_key",
                      "nesting", "hash_char", "whitespace")
_WEIRD = [None, True, -1, 0, 2**63, 1e308, "", "x" * 300, [], {}, [1, 2], {"a": 1}, "ed25519", "0" * 64, 3.5,
          float("nan")]


def mutate_onnx(raw: bytes, kind: str, seed: int) -> bytes:
    """One mutation of `raw` (a valid exported ONNX file), drawn from `seed`."""
    rng = random.Random(seed)
    if kind == "truncate":
        return raw[: rng.randrange(len(raw))]
    if kind == "flip_bytes":
        b = bytearray(raw)
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(min(len(b), 4096)) if rng.random() < 0.7 else rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
        return bytes(b)
    if kind == "garbage":
        i = rng.randrange(len(raw))
        return raw[:i] + bytes(rng.randrange(256) for _ in range(rng.randint(1, 64))) + raw[i:]
    import onnx
    from onnx import helper

    m = onnx.load_from_string(raw)
    g = m.graph
    if kind == "external_data":
        t = rng.choice(list(g.initializer))
        t.data_location = onnx.TensorProto.EXTERNAL
        e = t.external_data.add()
        e.key, e.value = "location", rng.choice(["../../etc/passwd", "/dev/zero", "weights.bin", "x" * 1000])
        if rng.random() < 0.5:
            t.ClearField("raw_data")
    elif kind == "tensor_dims":
        t = rng.choice(list(g.initializer))
        dims = list(t.dims) or [1]
        dims[rng.randrange(len(dims))] = rng.choice([-1, 0, 2**31, 2**40, 2**62, 3, 10**6])
        del t.dims[:]
        t.dims.extend(dims if rng.random() < 0.8 else dims * 5)
    elif kind == "raw_data":
        t = rng.choice(list(g.initializer))
        t.raw_data = t.raw_data[: rng.randrange(len(t.raw_data) + 1)] + (b"\0" * rng.choice([0, 1, 4]))
    elif kind == "op_type":
        n = rng.choice(list(g.node))
        n.op_type = rng.choice(["Conv", "Gemm", "Relu", "Loop", "If", "Evil", "", "Identity", "Where", "Scan",
                                "BitwiseAnd", "Mod"])
    elif kind == "domain":
        if rng.random() < 0.5:
            rng.choice(list(g.node)).domain = rng.choice(["com.evil", "ai.onnx.ml", "com.microsoft", "x" * 300])
        else:
            op = m.opset_import.add()
            op.domain, op.version = rng.choice(["com.microsoft", "evil"]), rng.choice([1, 2**40])
    elif kind == "drop_node":
        del g.node[rng.randrange(len(g.node))]
    elif kind == "rewire":
        n = rng.choice(list(g.node))
        if len(n.input):
            n.input[rng.randrange(len(n.input))] = rng.choice(["nowhere", "input", "logits", "",
                                                                 rng.choice(list(g.node)).output[0]])
        else:
            n.output[0] = rng.choice(["input", "logits", "dup"])
    elif kind == "subgraph":
        body = helper.make_graph([helper.make_node("Identity", ["input"], ["y"])], "b", [],
                                 [helper.make_tensor_value_info("y", 1, None)])
        node = helper.make_node("If", [rng.choice(list(g.node)).output[0]], ["z"], then_branch=body, else_branch=body)
        g.node.insert(rng.randrange(len(g.node) + 1), node)
    elif kind == "attribute":
        n = rng.choice([n for n in g.node if len(n.attribute)] or list(g.node))
        if len(n.attribute):
            a = rng.choice(list(n.attribute))
            choice = rng.randrange(4)
            if choice == 0 and len(a.ints):
                a.ints[rng.randrange(len(a.ints))] = rng.choice([-1, 0, 2**40, -(2**62)])
            elif choice == 1:
                a.type = rng.choice([0, 3, 5, 11, 14])
            elif choice == 2:
                a.name = rng.choice(["", "evil", "kernel_shape"])
            else:
                a.i = rng.choice([-1, 2**62])
                a.type = 2
    elif kind == "opset":
        m.opset_import[0].version = rng.choice([0, 1, 6, 18, 99, 2**40])
        if rng.random() < 0.3:
            m.ir_version = rng.choice([0, 1, 99])
    elif kind == "io_type":
        v = rng.choice([g.input[0], g.output[0]])
        choice = rng.randrange(3)
        if choice == 0:
            v.type.tensor_type.elem_type = rng.choice([0, 2, 7, 11, 16])
        elif choice == 1:
            d = v.type.tensor_type.shape.dim
            if len(d) > 1:
                d[rng.randrange(1, len(d))].dim_value = rng.choice([0, 1, 5000, 2**40])
        else:
            g.input.append(helper.make_tensor_value_info("second", 1, [1, 1, 28, 28]))
    elif kind == "duplicate_node":
        n = rng.choice(list(g.node))
        g.node.insert(rng.randrange(len(g.node) + 1), n)
    return m.SerializeToString()


def mutate_manifest(text: str, kind: str, seed: int) -> str:
    rng = random.Random(seed)
    if kind == "truncate":
        return text[: rng.randrange(len(text))]
    if kind == "flip_bytes":
        b = bytearray(text.encode())
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(7)
        return b.decode("utf-8", "replace")
    if kind == "whitespace":
        return json.dumps(json.loads(text), indent=rng.choice([None, 0, 4]), sort_keys=rng.random() < 0.5)
    obj = json.loads(text)
    paths = _paths(obj)
    if kind == "field_value":
        path = rng.choice(paths)
        _set(obj, path, rng.choice(_WEIRD))
        return json.dumps(obj)
    if kind == "drop_field":
        path = rng.choice(paths)
        parent = obj
        for k in path[:-1]:
            parent = parent[k]
        del parent[path[-1]]
        return json.dumps(obj)
    if kind == "extra_field":
        path = rng.choice(paths)[:-1]
        parent = obj
        for k in path:
            parent = parent[k]
        parent[rng.choice(["evil", "signature", "format", "x" * 50])] = rng.choice(_WEIRD)
        return json.dumps(obj)
    if kind == "duplicate_key":
        key = rng.choice(list(obj))
        return text.rstrip().rstrip("}") + f', "{key}": {json.dumps(rng.choice(_WEIRD))}' + "}"
    if kind == "nesting":
        depth = rng.choice([10, 1000, 100000])
        path = rng.choice(paths)
        _set(obj, path, "__NEST__")
        return json.dumps(obj).replace('"__NEST__"', "[" * depth + "]" * depth)
    if kind == "hash_char":
        path = rng.choice([p for p in paths if isinstance(_get(obj, p), str)])
        v = _get(obj, path)
        if v:
            i = rng.randrange(len(v))
            v = v[:i] + rng.choice("0123456789abcdef") + v[i + 1:]
        _set(obj, path, v)
        return json.dumps(obj)
    raise ValueError(kind)


def _paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
    out = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.append(prefix + (k,))
            out += _paths(v, prefix + (k,))
    return out


def _get(obj: Any, path: tuple) -> Any:
    for k in path:
        obj = obj[k]
    return obj


def _set(obj: Any, path: tuple, value: Any) -> None:
    _get(obj, path[:-1])[path[-1]] = value


def check_onnx_case(data: bytes, original_sha256: str) -> str:
    """'refused', 'loaded-same', 'loaded-different' (runs; provenance refuses it), or 'other: ...'."""
    import torch

    from backdoor_arena.compiled.onnxfile import parse_onnx
    from backdoor_arena.compiled.runtime import OnnxModule
    from backdoor_arena.errors import ArenaError

    try:
        f = parse_onnx(data, "fuzzed.onnx")
        OnnxModule(f)(torch.rand(2, *[int(d) for d in f.input_shape[1:]]))
    except ArenaError as exc:
        return "refused" if "\n" not in str(exc) else f"other: multi-line {type(exc).__name__}"
    except Exception as exc:  # anything else is a finding
        return f"other: {type(exc).__name__}: {' '.join(str(exc).split())[:120]}"
    same = hashlib.sha256(data).hexdigest() == original_sha256
    return "loaded-same" if same else "loaded-different"


def check_manifest_case(text: str, original: dict[str, Any], public_key: Any) -> str:
    """'refused', 'verified-unchanged', 'signature-rejected', or 'other: ...'."""
    from backdoor_arena.compiled import provenance as prov
    from backdoor_arena.errors import ArenaError

    try:
        m = prov.parse_manifest(text, "fuzzed manifest")
        status = prov.check_signature(m, public_key, "fuzzed manifest")
    except ArenaError as exc:
        return "refused" if "\n" not in str(exc) else "other: multi-line error"
    except Exception as exc:
        return f"other: {type(exc).__name__}: {' '.join(str(exc).split())[:120]}"
    unchanged = prov.canonical(m) == prov.canonical(original) and m.get("signature") == original.get("signature")
    if status == "valid":
        return "verified-unchanged" if unchanged else "other: a changed manifest verified"
    return "signature-rejected"


def fixture_files(folder: Path) -> tuple[bytes, str, Any]:
    """A valid exported ONNX file (random-init badnet-mnist) and its signed manifest text, plus the public key."""
    from backdoor_arena import api
    from backdoor_arena.data import dataset_info
    from backdoor_arena.modelfile import Manifest, save_model
    from backdoor_arena.models import architecture_args, build_model
    from backdoor_arena.runtime import seeded

    info = dataset_info("mnist")
    args = architecture_args(info)
    with seeded(0):
        model = build_model("badnet-mnist", args)
    src = folder / "src.safetensors"
    save_model(src, model, Manifest("badnet-mnist", args, "mnist", list(info.input_shape), info.num_classes,
                                    list(info.class_names)))
    keys = api.keygen(folder / "keys")
    r = api.export(src, folder / "src.onnx", key=keys.private_key)
    from backdoor_arena.compiled.provenance import load_public_key

    return r.path.read_bytes(), r.manifest_path.read_text(), load_public_key(keys.public_key)


def run(cases: int, seed: int = 0) -> dict[str, Any]:
    from backdoor_arena.runtime import set_threads

    set_threads()
    results: dict[str, Any] = {"onnx": {}, "manifest": {}, "cases_per_kind": cases}
    with tempfile.TemporaryDirectory() as tmp:
        raw, text, key = fixture_files(Path(tmp))
    sha = hashlib.sha256(raw).hexdigest()
    original = json.loads(text)
    for kind in ONNX_MUTATIONS:
        outcomes: Counter = Counter()
        for i in range(cases):
            outcomes[check_onnx_case(mutate_onnx(raw, kind, seed * 1_000_003 + i), sha)] += 1
        results["onnx"][kind] = dict(outcomes)
    for kind in MANIFEST_MUTATIONS:
        outcomes = Counter()
        for i in range(cases):
            outcomes[check_manifest_case(mutate_manifest(text, kind, seed * 1_000_003 + i), original, key)] += 1
        results["manifest"][kind] = dict(outcomes)
    return results


def table(results: dict[str, Any]) -> str:
    rows = ["| file | mutation | cases | refused (ModelFileError) | loaded, unchanged | loaded, different graph¹ / "
            "signature rejected² | other outcomes |", "|---|---|---|---|---|---|---|"]
    for file, kinds in (("ONNX", results["onnx"]), ("manifest", results["manifest"])):
        for kind, o in kinds.items():
            other = sum(v for k, v in o.items() if k.startswith("other"))
            same = o.get("loaded-same", 0) + o.get("verified-unchanged", 0)
            diff = o.get("loaded-different", 0) + o.get("signature-rejected", 0)
            rows.append(f"| {file} | {kind} | {sum(o.values())} | {o.get('refused', 0)} | {same} | {diff} | {other} |")
    return "\n".join(rows) + "\n"


def write_records(path: Path, results: dict[str, Any], command: str, seed: int) -> None:
    from backdoor_arena.records import Record, write_jsonl
    from backdoor_arena.runtime import versions

    records = []
    for file, kinds in (("ONNX", results["onnx"]), ("manifest", results["manifest"])):
        for kind, o in kinds.items():
            records.append(Record("fuzz-onnx", {"command": command, "mutation": kind, "file": file}, seed, {
                "cases": sum(o.values()), "refused": o.get("refused", 0),
                "loaded_unchanged": o.get("loaded-same", 0) + o.get("verified-unchanged", 0),
                "loaded_different": o.get("loaded-different", 0), "signature_rejected": o.get("signature-rejected", 0),
                "other": sum(v for k, v in o.items() if k.startswith("other")), "wall_s": results.get("wall_s")},
                {"file": file, "mutation": kind}, versions()))
    write_jsonl(path, records)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases-per-kind", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--records", type=Path, default=None,
                        help="Write one Record per (file, mutation) here (docs/records/compiled_fuzz.jsonl for the docs).")
    a = parser.parse_args()
    started = time.perf_counter()
    res = run(a.cases_per_kind, a.seed)
    res["wall_s"] = round(time.perf_counter() - started, 1)
    print(table(res))
    others = {f"{f}/{k}": {o: n for o, n in v.items() if o.startswith("other")}
              for f in ("onnx", "manifest") for k, v in res[f].items()}
    print(json.dumps({k: v for k, v in others.items() if v}, indent=1))
    if a.json:
        a.json.write_text(json.dumps(res, indent=1, sort_keys=True))
    if a.records:
        write_records(a.records, res, f"python benchmarks/fuzz_onnx.py --cases-per-kind {a.cases_per_kind} "
                      f"--seed {a.seed}", a.seed)
    sys.exit(1 if any(others.values()) else 0)
