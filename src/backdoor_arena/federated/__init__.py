"""Federated learning under backdoor attack (Sun et al. 2019, "Can You Really Backdoor Federated Learning?").

Clients are MNIST's 539 real writers (or EMNIST's, read from LEAF or TFF files: leaf.py); client updates are
flat tensors stacked as [n_clients, n_params] and the server's aggregation is a pure function of that stack, so
robust aggregators drop in.

    from backdoor_arena.federated import load_scenario, simulate
    result = simulate(load_scenario("configs/fl/quick.toml"), out="runs/fl-quick")
"""

from .aggregators import AGGREGATORS, make_aggregator
from .attacks import ADVERSARIES, CLIENT_ATTACKS
from .config import Scenario, load_scenario, parse_overrides, validate_file
from .engines import ENGINES, choose_engine
from .leaf import WRITER_FILES, load_leaf_femnist, load_tff_emnist
from .partition import FederatedData, partition_by_writer
from .simulation import SimulationResult, simulate

__all__ = [
    "ADVERSARIES", "AGGREGATORS", "CLIENT_ATTACKS", "ENGINES", "WRITER_FILES", "FederatedData", "Scenario",
    "SimulationResult", "choose_engine", "load_leaf_femnist", "load_scenario", "load_tff_emnist", "make_aggregator",
    "parse_overrides", "partition_by_writer", "simulate", "validate_file",
]
