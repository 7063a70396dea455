"""An ONNX Runtime session as a torch module, so that the project's metrics (`metrics.evaluate`) and
output-only detectors (STRIP, ...) run on a compiled artefact exactly as on a PyTorch model.

The module has no parameters and no gradient: detectors that optimise through the model (Neural Cleanse)
cannot run on it. Sessions run on the CPU provider with torch's thread count (the caller's setting).
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import IncompatibleError, ModelFileError
from .deps import require
from .onnxfile import OnnxFile


def make_session(onnx_file: OnnxFile) -> Any:
    """An ONNX Runtime CPU session for a checked ONNX file; a file ONNX Runtime refuses is a ModelFileError."""
    ort = require("onnxruntime")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, torch.get_num_threads())
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 4  # errors are raised as ours; ONNX Runtime's own log would only repeat them
    try:
        return ort.InferenceSession(onnx_file.data, sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        text = " ".join(str(exc).split())[:240]
        raise ModelFileError(f"{onnx_file.source}: ONNX Runtime cannot load it ({text})") from None


class OnnxModule(nn.Module):
    """`forward(x)`: the ONNX graph's output for float pixels x [N, C, H, W], as a float32 tensor."""

    def __init__(self, onnx_file: OnnxFile, session: Any | None = None) -> None:
        super().__init__()
        self.onnx_file = onnx_file
        self.session = session if session is not None else make_session(onnx_file)
        self.input_name = self.session.get_inputs()[0].name
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4:
            raise IncompatibleError(f"{self.onnx_file.source}: inputs must be images [N, C, H, W], got {tuple(x.shape)}")
        arr = np.ascontiguousarray(x.detach().to(torch.float32).cpu().numpy())
        try:
            ort = require("onnxruntime")
            run_options = ort.RunOptions()
            run_options.log_severity_level = 4
            (out,) = self.session.run(None, {self.input_name: arr}, run_options)
        except Exception as exc:
            text = " ".join(str(exc).split())[:240]
            raise IncompatibleError(f"{self.onnx_file.source}: ONNX Runtime failed on inputs of shape "
                                    f"{tuple(x.shape)} ({text})") from None
        return torch.from_numpy(np.array(out, dtype=np.float32, copy=True))

    def __deepcopy__(self, memo: dict[int, Any]) -> OnnxModule:
        # the session is immutable and holds no weights a caller could change: copies share it
        return OnnxModule(self.onnx_file, self.session)

    def copy(self) -> OnnxModule:
        return copy.deepcopy(self)
