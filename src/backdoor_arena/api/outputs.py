"""Every verb checks its outputs before it starts work: the path can be created, it is not one of the
command's inputs, and it does not replace an existing file or a non-empty folder unless `overwrite` is set.
A model file and its side files (attack spec, curve files) are checked together."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from ..errors import ConfigError
from ..safeio import check_writable_location, same_file, shown


def _refuse_inputs(out: Path, inputs: Iterable[str | os.PathLike[str] | None], what: str) -> None:
    for source in inputs:
        if source is not None and os.path.lexists(out) and same_file(out, source):
            raise ConfigError(f"{what} {shown(out)} is also an input of this command; write the result to "
                              "another path (the input must stay as it is)")
        if source is not None and Path(source).resolve() == out.resolve():
            raise ConfigError(f"{what} {shown(out)} is also an input of this command; write the result to "
                              "another path (the input must stay as it is)")


def check_model_output(out: str | os.PathLike[str], *, inputs: Iterable[str | os.PathLike[str] | None] = (),
                       side_files: Iterable[Path] = (), overwrite: bool = False, suffix: str = ".safetensors") -> Path:
    """A model file to be written (with its side files, e.g. the attack spec beside it): a `.safetensors` model
    file, or with `suffix` another artefact (an exported `.onnx` graph)."""
    out = Path(out)
    if out.suffix != suffix:
        raise ConfigError(f"--out must end in {suffix}, got {shown(out)}")
    if out.is_dir():
        raise ConfigError(f"--out {shown(out)} is a folder; give a file name ending in {suffix}")
    inputs = list(inputs)
    for path in (out, *side_files):
        _refuse_inputs(path, inputs, "--out" if path == out else "output")
        if os.path.lexists(path):
            if Path(path).is_dir():
                raise ConfigError(f"output {shown(path)} is a folder; move it or choose another --out")
            if not overwrite:
                raise ConfigError(f"{shown(path)} already exists; pass --overwrite to replace it, or choose "
                                  "another --out")
    check_writable_location(out, "--out")
    return out


def check_folder_output(out: str | os.PathLike[str], *, inputs: Iterable[str | os.PathLike[str] | None] = (),
                        overwrite: bool = False, resumable: bool = False) -> Path:
    """A report folder to be written. An existing non-empty folder needs `overwrite` (files with the same
    names are replaced, others kept), unless the verb resumes into it (`resumable`)."""
    out = Path(out)
    _refuse_inputs(out, inputs, "--out")
    for source in inputs:
        if source is not None and Path(source).resolve().is_relative_to(out.resolve()) and overwrite:
            raise ConfigError(f"--out {shown(out)} holds an input of this command ({shown(source)}); with "
                              "--overwrite it could be replaced: choose another folder")
    if os.path.lexists(out):
        if not out.is_dir():
            raise ConfigError(f"--out {shown(out)} is a file, not a folder; choose a folder name")
        if not resumable and not overwrite and any(out.iterdir()):
            raise ConfigError(f"--out {shown(out)} already holds files; pass --overwrite to write into it, or "
                              "choose another folder")
        if not os.access(out, os.W_OK | os.X_OK):
            raise ConfigError(f"--out {shown(out)} is not writable")
    check_writable_location(out, "--out")
    return out
