"""Structured mutations of a valid model file, for fuzzing the loader: the default suite draws a few hundred
with hypothesis (tests/unit/test_modelfile.py), `benchmarks/fuzz_modelfile.py` runs thousands (and
coverage-guided ones with atheris where it installs). The one property: a mutated file either loads with
exactly the original tensors or is refused with a ModelFileError, never anything else."""

from __future__ import annotations

import json
import random
import struct
from pathlib import Path

import torch

MUTATIONS = ("truncate", "flip_header", "flip_data", "length_prefix", "entry_field", "manifest_field",
             "duplicate_key", "garbage", "swap_offsets", "splice")

_WEIRD = [None, True, -1, 0, 2**63, 1e308, -1e-308, "", "x" * 300, [], {}, [1, 2], {"a": 1}, "F32", "I64",
          [2**40, 2**40], [0, 2**62], 3.5]


def _split(raw: bytes) -> tuple[int, bytes, bytes]:
    (n,) = struct.unpack("<Q", raw[:8])
    return n, raw[8:8 + n], raw[8 + n:]


def _join(header: dict | str, data: bytes) -> bytes:
    text = (header if isinstance(header, str) else json.dumps(header)).encode()
    return struct.pack("<Q", len(text)) + text + data


def mutate(raw: bytes, kind: str, seed: int) -> bytes:
    """One mutation of `raw` (a valid model file), drawn from `seed`."""
    rng = random.Random(seed)
    n, header_bytes, data = _split(raw)
    if kind == "truncate":
        return raw[: rng.randrange(len(raw))]
    if kind == "flip_header":
        b = bytearray(raw)
        for _ in range(rng.randint(1, 4)):
            b[8 + rng.randrange(n)] ^= 1 << rng.randrange(8)
        return bytes(b)
    if kind == "flip_data":
        b = bytearray(raw)
        for _ in range(rng.randint(1, 4)):
            b[8 + n + rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        return bytes(b)
    if kind == "length_prefix":
        value = rng.choice([0, 1, n - 1, n + 1, len(raw), 2**63 - 1, rng.randrange(2**64)])
        return struct.pack("<Q", value) + raw[8:]
    if kind == "garbage":
        pos = rng.randrange(len(raw) + 1)
        return raw[:pos] + bytes(rng.randrange(256) for _ in range(rng.randint(1, 64))) + raw[pos:]
    header = json.loads(header_bytes)
    names = sorted(k for k in header if k != "__metadata__")
    if kind == "entry_field":
        entry = header[rng.choice(names)]
        key = rng.choice(["dtype", "shape", "data_offsets", "extra"])
        entry[key] = rng.choice(_WEIRD)
        return _join(header, data)
    if kind == "swap_offsets":
        a, b = rng.sample(names, 2)
        header[a]["data_offsets"], header[b]["data_offsets"] = header[b]["data_offsets"], header[a]["data_offsets"]
        return _join(header, data)
    if kind == "manifest_field":
        meta = header["__metadata__"]
        manifest = json.loads(meta["backdoor_arena"])
        key = rng.choice(sorted(manifest) + ["unknown_key"])
        manifest[key] = rng.choice(_WEIRD)
        meta["backdoor_arena"] = json.dumps(manifest)
        return _join(header, data)
    if kind == "duplicate_key":
        text = header_bytes.decode()
        name = rng.choice(names)
        entry = json.dumps({name: header[name]})[1:-1]
        return _join(text[:-1] + ", " + entry + "}", data)
    if kind == "splice":  # another tensor's bytes under this tensor's name
        a, b = rng.sample(names, 2)
        header[a] = dict(header[b])
        return _join(header, data)
    raise ValueError(kind)


def check_outcome(mutated: bytes, tensors: dict[str, torch.Tensor], path: Path) -> str:
    """'refused' (a ModelFileError), 'unchanged' (loaded, same tensors), or a description of a failure."""
    from backdoor_arena.errors import ModelFileError
    from backdoor_arena.modelfile import load_model

    path.write_bytes(mutated)
    try:
        loaded = load_model(path)
    except ModelFileError as exc:
        return "refused" if "\n" not in str(exc) else f"multi-line ModelFileError: {exc!s:.200}"
    except Exception as exc:  # anything else is a loader bug
        return f"{type(exc).__name__}: {exc!s:.200}"
    state = loaded.model.state_dict()
    same = set(state) == set(tensors) and all(torch.equal(state[k], tensors[k]) for k in tensors)
    return "unchanged" if same else "CHANGED: loaded with different tensors"
