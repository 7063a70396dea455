"""The verbs: everything a user can do, as typed Python functions. The CLI, the docs' scripts, the benchmarks,
the tests and the game server call these (and the registries in `backdoor_arena.registries`), nothing below.

    from backdoor_arena import api
    r = api.attack("badnets", "mnist", "badnet-mnist", "bad.safetensors", target=7, epochs=4)
    api.defend("fine-pruning", r.path, "fixed.safetensors", attack_spec=r.spec_path)
    api.detect("neural-cleanse", r.path).to_dict()

Each verb returns a result object with `to_dict()` (what `--json` prints) and `records()` (uniform Records).
Thread settings are the caller's: `api.set_threads(n)` once per process (the CLI does it at its entry).
"""

from ..runtime import set_threads
from ..sweep import Executor, Job, SweepError, run_sweep  # noqa: F401  (sweeps: api.Executor for --executor)
from .benchmark import BenchmarkConfig, benchmark, render_leaderboard  # noqa: F401  (the leaderboard)
from .compiled import compile_attack, export, keygen, load_onnx_model, load_onnx_torch, run_onnx, verify
from .defending import compare_defenses, defend, make_defense, make_monitor
from .demo import DemoResult, demo
from .detecting import detect, poisoned_training_set, scan
from .federated import fl_matrix, fl_run, fl_run_seeds, fl_validate  # noqa: F401
from .game import game_client, game_demo, game_init, game_serve, game_worker
from .results import DefenseResult, DetectionResult, EvaluationResult, ScanResult, TrainResult
from .scanning import scan_calibrate, scan_zoo
from .training import DPSettings, attack, attack_spec_path, evaluate, info, train, train_model, wrap
from .transfer import TransferResult, transfer  # noqa: F401  (transfer learning: api.transfer)
from .zoo import ZooConfig, build_zoo, evaluate_zoo, read_truth, summarize, zoo_plan

zoo_build = build_zoo
zoo_evaluate = evaluate_zoo

__all__ = [
    "DPSettings", "DefenseResult", "DemoResult", "DetectionResult", "EvaluationResult", "ScanResult", "TrainResult",
    "ZooConfig", "attack", "attack_spec_path", "build_zoo", "compare_defenses", "defend", "demo", "detect",
    "evaluate", "evaluate_zoo", "fl_matrix", "fl_run", "fl_validate", "info", "make_defense", "make_monitor",
    "poisoned_training_set", "read_truth", "scan", "scan_calibrate", "scan_zoo", "set_threads", "summarize", "train", "train_model", "wrap",
    "zoo_build", "zoo_evaluate", "zoo_plan",
    "compile_attack", "export", "keygen", "load_onnx_model", "load_onnx_torch", "run_onnx", "verify",
]

__all__ += ["game_client", "game_demo", "game_init", "game_serve", "game_worker", "read_text"]

# File reads for commands that take a JSON file of their own (one-line errors for a bad path).
# The error taxonomy travels with the verbs: callers (the CLI, the server) catch these, nothing deeper.
from ..errors import ArenaError, ConfigError, DatasetError, IncompatibleError, ModelFileError  # noqa: E402
from ..safeio import read_text  # noqa: E402

__all__ += ["ArenaError", "ConfigError", "DatasetError", "IncompatibleError", "ModelFileError"]
