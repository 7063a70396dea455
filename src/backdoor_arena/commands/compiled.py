"""Compiled artefacts on the command line: export, keygen, run-onnx, verify, and `compile-attack NAME` (one
sub-command per registered compile-time attack, its options generated from the plugin's parameters)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from .. import api
from ..registries import COMPILE_ATTACKS
from .generate import first_line, given_plugin_params, make_command, option_parameters
from .options import DataRoot, Json, Overwrite, emit, pct

OnnxOut = Annotated[Path, typer.Option("--out", "-o", help="Output ONNX file (.onnx); OUT.provenance.json is written "
                                       "beside it.")]
Key = Annotated[Path | None, typer.Option("--key", help="Sign the provenance manifest with this Ed25519 private key "
                                          "(from `backdoor-arena keygen`).")]


def export(
    model_file: Annotated[Path, typer.Argument(help="Model file (.safetensors).")],
    out: OnnxOut, key: Key = None, overwrite: Overwrite = False, json_out: Json = False,
) -> None:
    """Export a model file to one self-contained ONNX file plus a provenance manifest (signed with --key)."""
    r = api.export(model_file, out, key=key, overwrite=overwrite)
    emit(r.to_dict(), json_out, [
        f"wrote {r.path} ({r.n_nodes} nodes, sha256 {r.onnx_sha256[:16]}...) and {r.manifest_path}",
        f"ONNX Runtime vs PyTorch on random inputs: max |difference| {r.max_abs_diff:.3g}",
        f"signed by key {r.signed_by}" if r.signed_by else "not signed (pass --key to sign the manifest)"])


def keygen(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the key pair (outside any repository).")],
    overwrite: Overwrite = False, json_out: Json = False,
) -> None:
    """Make an Ed25519 signing key pair: OUT/backdoor-arena-signing.key (mode 0600) and .pub."""
    r = api.keygen(out, overwrite=overwrite)
    emit(r.to_dict(), json_out, [f"wrote {r.private_key} (private, mode 0600: keep it secret, never commit it)",
                                 f"wrote {r.public_key} (public; key id {r.key_id})"])


def run_onnx(
    onnx_file: Annotated[Path, typer.Argument(help="ONNX file.")],
    attack_spec: Annotated[Path | None, typer.Option(help="Attack spec for ASR: OUT.attack.json of compile-attack "
                                                     "impnet, or a data-poisoning spec.")] = None,
    dataset: Annotated[str | None, typer.Option(help="Dataset (default: the one the file's metadata names).")] = None,
    data_root: DataRoot = None, json_out: Json = False,
) -> None:
    """Evaluate an ONNX file with ONNX Runtime: clean accuracy; with --attack-spec, ASR and robust accuracy."""
    r = api.run_onnx(onnx_file, attack_spec, dataset=dataset, data_root=data_root).to_dict()
    lines = [f"{r['model']} (ONNX Runtime, {r['dataset']})",
             f"clean accuracy       {pct(r['clean_accuracy'])} of {r['n_clean']}"]
    if "attack_success_rate" in r:
        lines += [f"attack success rate  {pct(r['attack_success_rate'])} of {r['n_triggered']} triggered",
                  f"robust accuracy      {pct(r['robust_accuracy'])}"]
    emit(r, json_out, lines)


def verify(
    onnx_file: Annotated[Path, typer.Argument(help="ONNX file to check before deploying it.")],
    source: Annotated[Path | None, typer.Option(help="The trusted model file it should have been exported from.")] = None,
    public_key: Annotated[Path | None, typer.Option(help="Public key the provenance manifest must be signed with.")] = None,
    manifest: Annotated[Path | None, typer.Option(help="Provenance manifest (default: ONNX_FILE.provenance.json).")] = None,
    json_out: Json = False,
) -> None:
    """Verify an ONNX file: structure against a re-export of --source, red flags, signed provenance; a verdict."""
    r = api.verify(onnx_file, source=source, public_key=public_key, manifest=manifest)
    lines = [f"verdict: {r.verdict.upper()}  ({onnx_file})"]
    lines += [f"  - {reason}" for reason in r.reasons]
    if r.added_nodes:
        lines.append("added nodes (not in the trusted re-export):")
        lines += [f"  {n['op_type']:<10} {n['name']}  {n['inputs']} -> {n['outputs']}" for n in r.added_nodes]
    if r.verdict == "unverified":
        lines.append("  no red flag, but nothing ties the file to a trusted source: pass --source or --public-key")
    emit(r.to_dict(), json_out, lines)


def _compile_attack_command(name: str) -> Callable[..., None]:
    import inspect

    factory = COMPILE_ATTACKS.get(name)
    own = option_parameters(factory, prefix="attack_")
    common = [
        inspect.Parameter("source", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Annotated[
            Path, typer.Argument(help="The clean model file being compiled.")]),
        inspect.Parameter("out", inspect.Parameter.KEYWORD_ONLY, annotation=OnnxOut),
        inspect.Parameter("key", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Key),
        inspect.Parameter("overwrite", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=Overwrite),
        inspect.Parameter("json_out", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=Json),
    ]

    def body(**values: Any) -> None:
        params = given_plugin_params(factory, values, prefix="attack_")
        r = api.compile_attack(name, values["source"], values["out"], params=params, key=values["key"],
                               overwrite=values["overwrite"])
        emit(r.to_dict(), values["json_out"], [f"wrote {r.path} ({r.n_nodes} nodes) and {r.manifest_path}",
                                               f"wrote the attack spec {r.spec_path} (the evaluator's secret)"])

    return make_command(body, common + own, f"{first_line(factory)} (a compile-time attack: writes OUT.onnx, its "
                        "provenance manifest and OUT.attack.json)")


def register(app: typer.Typer) -> None:
    app.command()(export)
    app.command()(keygen)
    app.command("run-onnx")(run_onnx)
    app.command()(verify)
    group = typer.Typer(no_args_is_help=True, help="Backdoor a model while compiling it to ONNX: one sub-command "
                        "per registered compile-time attack.")
    for name in COMPILE_ATTACKS.names():
        group.command(name)(_compile_attack_command(name))
    app.add_typer(group, name="compile-attack")
