"""backdoor-arena: attack and defend neural networks against backdoors.

The few names most users need; everything else lives in its module (see the README's layout).
"""

__version__ = "0.1.0"

from .api import attack, evaluate, info, train, wrap  # noqa: E402
from .attacks import load_attack_spec, make_attack  # noqa: E402
from .data import load_dataset  # noqa: E402
from .errors import ArenaError, ConfigError, DatasetError, IncompatibleError, ModelFileError  # noqa: E402
from .modelfile import load_model, save_model  # noqa: E402

__all__ = [
    "ArenaError", "ConfigError", "DatasetError", "IncompatibleError", "ModelFileError", "__version__", "attack",
    "evaluate", "info", "load_attack_spec", "load_dataset", "load_model", "make_attack", "save_model", "train",
    "wrap",
]
