"""Lazy imports of the optional dependencies of compiled artefacts, with one error naming the pip extra."""

from __future__ import annotations

import importlib
from typing import Any

from ..errors import ConfigError

EXTRA_HINT = "install them with `pip install 'backdoor-arena[onnx]'` (or: pip install onnx onnxruntime cryptography)"


def require(module: str) -> Any:
    """`importlib.import_module(module)`, or a ConfigError saying how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        top = module.split(".")[0]
        raise ConfigError(f"compiled artefacts need the package {top!r}, which is not installed; {EXTRA_HINT}") from None


def library_versions() -> dict[str, str]:
    """Versions of the exporter's libraries (those installed), for the provenance manifest."""
    out: dict[str, str] = {}
    for name in ("onnx", "onnxruntime", "cryptography"):
        try:
            out[name] = importlib.import_module(name).__version__
        except ImportError:
            pass
    return out
