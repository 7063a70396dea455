"""The verbs of compiled artefacts: export, keygen, run_onnx, verify, compile_attack (the `compiled` package).

    r = api.export("model.safetensors", "model.onnx", key="keys/backdoor-arena-signing.key")
    api.run_onnx("model.onnx").to_dict()
    api.compile_attack("impnet", "model.safetensors", "evil.onnx", params={"target": 0})
    api.verify("evil.onnx", source="model.safetensors", public_key="keys/backdoor-arena-signing.pub").verdict
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..attacks import load_attack_spec
from ..compiled import COMPILE_ATTACKS
from ..compiled import provenance as prov
from ..compiled.deps import library_versions
from ..compiled.export import OPSET, export_bytes, metadata
from ..compiled.impnet import SPEC_KEY, CompiledTrigger, load_compile_spec
from ..compiled.onnxfile import MAX_ONNX_BYTES, OnnxFile, parse_onnx, read_onnx
from ..compiled.runtime import OnnxModule
from ..compiled.torch_graph import OnnxTorchModule
from ..compiled.verify import red_flags, structural_diff
from ..data import dataset_info, load_dataset
from ..errors import ConfigError, IncompatibleError, ModelFileError
from ..metrics import evaluate as evaluate_metrics
from ..modelfile import MAX_FILE_BYTES, ModelFile, load_model
from ..records import Record, json_safe
from ..runtime import versions
from ..safeio import atomic_write_bytes, atomic_write_text, check_writable_location, shown
from .outputs import check_model_output
from .results import EvaluationResult

ROUND_TRIP_TOLERANCE = 1e-4


def compiled_spec_path(onnx_path: str | Path) -> Path:
    """`F.onnx` -> `F.attack.json`, beside the artefact."""
    p = Path(onnx_path)
    return p.with_name(p.name.removesuffix(".onnx") + ".attack.json")


def _check_onnx_output(out: str | os.PathLike[str], inputs: list[Any], side_files: list[Path], overwrite: bool) -> Path:
    return check_model_output(out, inputs=inputs, side_files=side_files, overwrite=overwrite, suffix=".onnx")


def _exporter() -> dict[str, Any]:
    return {"opset": OPSET, "versions": {**versions(), **library_versions()}}


def _round_trip(model: torch.nn.Module, onnx_file: OnnxFile, shape: list[int], seed: int = 0, n: int = 16) -> float:
    x = torch.rand(n, *shape, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return float((OnnxModule(onnx_file)(x) - model.eval()(x)).abs().max())


@dataclass(frozen=True)
class ExportResult:
    """`export` and `compile_attack`: the ONNX file, its provenance manifest, and facts about both."""

    path: Path
    manifest_path: Path
    onnx_sha256: str
    n_nodes: int
    n_bytes: int
    signed_by: str | None
    max_abs_diff: float | None  # ONNX Runtime vs PyTorch on random inputs (export only)
    spec_path: Path | None = None
    attack: str | None = None
    source: str = ""
    wall_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return json_safe({"onnx": str(self.path), "provenance": str(self.manifest_path), "onnx_sha256": self.onnx_sha256,
                          "n_nodes": self.n_nodes, "bytes": self.n_bytes, "signed_by": self.signed_by,
                          "max_abs_diff": self.max_abs_diff, "attack_spec": str(self.spec_path) if self.spec_path else None,
                          "attack": self.attack, "source": self.source, "wall_s": self.wall_s})

    def records(self) -> list[Record]:
        verb = "compile-attack" if self.attack else "export"
        return [Record(verb, {"source": self.source, "attack": self.attack}, None,
                       {"wall_s": self.wall_s, **({"max_abs_diff": self.max_abs_diff} if self.max_abs_diff is not None
                                                  else {})},
                       {"onnx": str(self.path), "n_nodes": self.n_nodes}, versions())]


def _write_artefact(data: bytes, out: Path, source_path: str | Path, source: ModelFile, key: Any) -> tuple[OnnxFile, Path, str | None]:
    checked = parse_onnx(data, f"the exported graph of {shown(source_path)}")
    manifest = prov.make_manifest(checked.sha256, len(data), prov.source_facts(source_path, source.manifest,
                                                                                  MAX_FILE_BYTES), _exporter())
    signer = None
    if key is not None:
        manifest = prov.sign(manifest, key)
        signer = manifest["signature"]["key_id"]
    atomic_write_bytes(out, data)
    mpath = prov.manifest_path(out)
    prov.write_manifest(mpath, manifest)
    return checked, mpath, signer


def export(model_path: str | Path, out: str | Path, *, key: str | Path | None = None,
           overwrite: bool = False) -> ExportResult:
    """Export a model file to one self-contained ONNX file plus OUT.provenance.json (signed with `key`)."""
    started = time.perf_counter()
    out = _check_onnx_output(out, [model_path, key], [prov.manifest_path(out)], overwrite)
    private = prov.load_private_key(key) if key is not None else None
    loaded = load_model(model_path)
    data = export_bytes(loaded.model, loaded.manifest)
    checked = parse_onnx(data, f"the exported graph of {shown(model_path)}")
    diff = _round_trip(loaded.model, checked, loaded.manifest.input_shape)
    if not diff <= ROUND_TRIP_TOLERANCE:
        raise IncompatibleError(f"the ONNX export of {shown(model_path)} differs from the PyTorch model by {diff:.3g} "
                                f"(tolerance {ROUND_TRIP_TOLERANCE}); this architecture does not export faithfully")
    checked, mpath, signer = _write_artefact(data, out, model_path, loaded, private)
    return ExportResult(out, mpath, checked.sha256, len(checked.model.graph.node), len(data), signer, diff,
                        source=str(model_path), wall_s=round(time.perf_counter() - started, 3))


@dataclass(frozen=True)
class KeygenResult:
    private_key: Path
    public_key: Path
    key_id: str

    def to_dict(self) -> dict[str, Any]:
        return {"private_key": str(self.private_key), "public_key": str(self.public_key), "key_id": self.key_id}


def _inside_repository(folder: Path) -> Path | None:
    for p in (folder.resolve(), *folder.resolve().parents):
        if (p / ".git").exists():
            return p
    return None


def keygen(out: str | Path, *, overwrite: bool = False, allow_repository: bool = False) -> KeygenResult:
    """A new Ed25519 signing key pair in folder `out` (the private key with permissions 0600). A folder inside a
    git working tree is refused (keys never go into a repository) unless `allow_repository`."""
    folder = Path(out)
    if os.path.lexists(folder) and not folder.is_dir():
        raise ConfigError(f"--out {shown(folder)} is a file; give a folder for the key pair")
    repo = _inside_repository(folder)
    if repo is not None and not allow_repository:
        raise ConfigError(f"--out {shown(folder)} is inside the git repository {shown(repo)}; keep signing keys out "
                          "of repositories (e.g. --out ~/.config/backdoor-arena/keys)")
    check_writable_location(folder / prov.PRIVATE_KEY_NAME, "--out")
    folder.mkdir(parents=True, exist_ok=True)
    private, public, kid = prov.generate_keys(folder, overwrite)
    return KeygenResult(private, public, kid)


def _artefact_facts(onnx_file: OnnxFile, dataset: str | None) -> tuple[str, str]:
    meta = metadata(onnx_file.model)
    name = dataset or meta.get("dataset")
    if not name:
        raise ConfigError(f"{onnx_file.source} does not say which dataset it classifies; pass --dataset")
    return name, meta.get("architecture", "onnx")


def load_onnx_model(onnx_path: str | Path) -> OnnxModule:
    """A checked ONNX file as a torch module running on ONNX Runtime (no gradients)."""
    return OnnxModule(read_onnx(onnx_path))


def load_onnx_torch(onnx_path: str | Path) -> OnnxTorchModule:
    """A checked ONNX file converted back to a PyTorch module (differentiable), so that gradient-based detectors
    (Neural Cleanse, SentiNet) run on the artefact itself; an operator the converter lacks is an IncompatibleError."""
    return OnnxTorchModule(read_onnx(onnx_path))


def run_onnx(onnx_path: str | Path, attack_spec: str | Path | None = None, *, dataset: str | None = None,
             data_root: str | Path | None = None) -> EvaluationResult:
    """Clean accuracy of an ONNX file on the test split (ONNX Runtime, the project's metrics); with an attack
    spec (an impnet spec from compile_attack, or a data-poisoning spec), ASR and robust accuracy too."""
    onnx_file = read_onnx(onnx_path)
    name, architecture = _artefact_facts(onnx_file, dataset)
    info = dataset_info(name)
    shape = list(info.input_shape)
    if onnx_file.input_shape[1:] != shape or onnx_file.num_outputs not in (0, info.num_classes):
        raise IncompatibleError(f"{onnx_file.source} takes inputs {onnx_file.input_shape[1:]} and gives "
                                f"{onnx_file.num_outputs} outputs; {name} has {shape} and {info.num_classes} classes")
    atk = None
    if attack_spec is not None:
        spec = load_compile_spec(attack_spec)
        if spec.get(SPEC_KEY) == "impnet":
            atk = CompiledTrigger.from_spec(spec, f"attack spec {shown(attack_spec)}")
            if list(atk.input_shape) != shape:
                raise IncompatibleError(f"attack spec {shown(attack_spec)} is for inputs {list(atk.input_shape)}, "
                                        f"the model takes {shape}")
        elif SPEC_KEY in spec:
            raise ConfigError(f"attack spec {shown(attack_spec)} describes a {spec[SPEC_KEY]!r} compile attack, which "
                              "has no trigger of its own; pass the attack spec of the model whose weights it holds")
        else:
            atk = load_attack_spec(attack_spec, info.num_classes, input_shape=shape)
    model = OnnxModule(onnx_file)
    test = load_dataset(name, "test", data_root)
    return EvaluationResult(str(onnx_path), architecture, name, evaluate_metrics(model, test, atk))


def compile_attack(kind: str, source: str | Path, out: str | Path, *, params: dict[str, Any] | None = None,
                   key: str | Path | None = None, overwrite: bool = False) -> ExportResult:
    """The compromised compiler: export `source` with the `kind` compile attack (COMPILE_ATTACKS), write
    OUT.onnx, its provenance manifest (signed with `key`: the build machine's key is the compiler's to use) and
    the attack spec OUT.attack.json (the evaluator's secret)."""
    started = time.perf_counter()
    attack = COMPILE_ATTACKS.create(kind, **dict(params or {}))
    spec_path = compiled_spec_path(out)
    weights = getattr(attack, "weights", None)
    out = _check_onnx_output(out, [source, key, weights], [prov.manifest_path(out), spec_path], overwrite)
    private = prov.load_private_key(key) if key is not None else None
    loaded = load_model(source)
    clean = export_bytes(loaded.model, loaded.manifest)
    data, spec = attack.compile(loaded, clean)
    checked, mpath, signer = _write_artefact(data, out, source, loaded, private)
    atomic_write_text(spec_path, json.dumps({**spec, "onnx_sha256": checked.sha256}, indent=1, sort_keys=True) + "\n")
    return ExportResult(out, mpath, checked.sha256, len(checked.model.graph.node), len(data), signer, None,
                        spec_path, kind, str(source), round(time.perf_counter() - started, 3))


@dataclass(frozen=True)
class VerifyResult:
    """`verify`: the verdict, each signal, and the nodes the deployed graph adds to the trusted re-export."""

    path: str
    verdict: str
    reasons: list[str]
    structure: dict[str, Any] | None
    flags: dict[str, Any]
    provenance: dict[str, Any]
    wall_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def added_nodes(self) -> list[dict[str, Any]]:
        return list((self.structure or {}).get("added_nodes", []))

    def to_dict(self) -> dict[str, Any]:
        return json_safe({"onnx": self.path, "verdict": self.verdict, "reasons": self.reasons,
                          "structure": self.structure, "red_flags": self.flags, "provenance": self.provenance,
                          "wall_s": self.wall_s})

    def records(self) -> list[Record]:
        fired = {f"flag_{k}": v["fired"] for k, v in self.flags.items()}
        return [Record("verify", {"onnx": self.path}, None, {"wall_s": self.wall_s},
                       {"verdict": self.verdict, "n_added_nodes": len(self.added_nodes), **fired}, versions())]


def _check_provenance(onnx_file: OnnxFile, onnx_path: str | Path, manifest: str | Path | None, source: str | Path | None,
                      public_key: str | Path | None) -> dict[str, Any]:
    explicit = manifest is not None
    mpath = Path(manifest) if explicit else prov.manifest_path(onnx_path)
    res: dict[str, Any] = {"manifest": str(mpath), "checks": {}, "problems": []}
    key = prov.load_public_key(public_key) if public_key is not None else None
    if not explicit and not os.path.lexists(mpath):
        res["present"] = False
        if key is not None:
            res["problems"].append(f"no provenance manifest {shown(mpath)}, so no signature to check")
        return res
    res["present"] = True
    try:
        m = prov.read_manifest(mpath)
    except ModelFileError as exc:
        res["problems"].append(str(exc))
        return res
    ok = m["onnx"]["sha256"] == onnx_file.sha256 and m["onnx"]["bytes"] == len(onnx_file.data)
    res["checks"]["onnx_sha256"] = ok
    if not ok:
        res["problems"].append("the ONNX file is not the one the manifest records (sha256 differs)")
    if source is not None:
        facts = prov.source_facts(source, load_model(source).manifest, MAX_FILE_BYTES)
        ok = m["source"]["file_sha256"] == facts["file_sha256"]
        res["checks"]["source_sha256"] = ok
        if not ok:
            res["problems"].append("the manifest names another source model file (sha256 differs)")
    sig = m.get("signature")
    res["signed_by"] = sig["key_id"] if sig else None
    if key is not None:
        status = prov.check_signature(m, key, str(mpath))
        res["checks"]["signature"] = status == "valid"
        if status != "valid":
            res["problems"].append(status)
    res["exporter"] = m["exporter"]
    return res


def verify(onnx_path: str | Path, *, source: str | Path | None = None, public_key: str | Path | None = None,
           manifest: str | Path | None = None) -> VerifyResult:
    """Check an ONNX file before deploying it: structure against a re-export of the trusted `source`, the
    reference-free red flags, and the provenance manifest (OUT.provenance.json, or `manifest`; with
    `public_key`, its signature)."""
    started = time.perf_counter()
    onnx_file = read_onnx(onnx_path)
    structure = None
    reasons: list[str] = []
    if source is not None:
        loaded = load_model(source)
        reference = parse_onnx(export_bytes(loaded.model, loaded.manifest), f"the re-export of {shown(source)}")
        structure = structural_diff(onnx_file, reference)
        if not structure["nodes_equal"]:
            reasons.append(f"{structure['n_added_nodes']} nodes added and {structure['n_removed_nodes']} removed "
                           "compared with a re-export of the source")
        if not structure["constants_equal"]:
            reasons.append(f"{structure['n_added_constants']} constants (weights or added constants) differ from the source's re-export")
    flags = red_flags(onnx_file)
    for name, f in flags.items():
        if f["fired"]:
            reasons.append(f"red flag: {name.replace('_', ' ')} ({', '.join(f['nodes'][:4])}"
                           f"{', ...' if len(f['nodes']) > 4 else ''})")
    provenance = _check_provenance(onnx_file, onnx_path, manifest, source, public_key)
    reasons += [f"provenance: {p}" for p in provenance["problems"]]
    tied = source is not None or provenance.get("checks", {}).get("signature") is True
    verdict = "tampered" if reasons else ("ok" if tied else "unverified")
    return VerifyResult(str(onnx_path), verdict, reasons, structure, flags, provenance,
                        round(time.perf_counter() - started, 3))


__all__ = ["COMPILE_ATTACKS", "ExportResult", "KeygenResult", "VerifyResult", "compile_attack", "compiled_spec_path", "export", "keygen",
           "load_onnx_model", "load_onnx_torch", "run_onnx", "verify", "MAX_ONNX_BYTES"]
