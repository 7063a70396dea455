"""Compiled artefacts: ONNX export with signed provenance, ONNX Runtime evaluation, compile-time backdoors
(ImpNet) and the checks that catch them at that stage.

Every module here imports `onnx`, `onnxruntime` and `cryptography` lazily (`deps.require`), so the package
imports without them; a verb that needs them says which pip extra to install.

    export.py      torch.onnx export of a model file: one self-contained .onnx file (no external data)
    onnxfile.py    bounded, hardened reading of ONNX files (size, nodes, external data, custom ops refused)
    provenance.py  the manifest binding the ONNX file to its source model file, Ed25519 signatures, keygen
    impnet.py      the compile-time attacks (COMPILE_ATTACKS): impnet (a weight-independent trigger detector
                   grafted onto the graph) and weight-swap (a BadNets model's weights exported instead)
    verify.py      structural comparison with a trusted re-export, reference-free red flags, provenance
    runtime.py     an ONNX Runtime session as a torch module, so the project's metrics and detectors run on it
"""

from __future__ import annotations

from .impnet import COMPILE_ATTACKS

__all__ = ["COMPILE_ATTACKS"]
