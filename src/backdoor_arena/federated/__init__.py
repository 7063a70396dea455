"""Federated learning under backdoor attack (Sun et al. 2019, "Can You Really Backdoor Federated Learning?").

Clients are MNIST's 539 real writers (or EMNIST's, read from LEAF or TFF files: leaf.py); client updates are
flat tensors stacked as [n_clients, n_params] and the server's aggregation is a pure function of that stack, so
robust aggregators drop in. A round is a pipeline (pipeline.py): select -> benign updates (ENGINES) ->
attack (CLIENT_ATTACKS, an AttackContext in, an AttackResult out) -> aggregate (AGGREGATORS, an
AggregationResult out) -> record (records.Record, verb "fl-round").

    from backdoor_arena.federated import load_scenario, simulate
    result = simulate(load_scenario("configs/fl/quick.toml"), out="runs/fl-quick")
"""

from . import robust, tailored  # noqa: F401 - register the Byzantine-robust rules, MixTailor, tailored attacks
from .adversaries import ADVERSARIES, AdversaryModel
from .aggregators import AGGREGATORS, AggregationResult, Aggregator, make_aggregator
from .attacks import CLIENT_ATTACKS, AttackContext, AttackResult, ClientAttack
from .config import Scenario, load_scenario, parse_overrides, scenario_threads, validate_file
from .engines import ENGINES, Engine, EngineChooser, choose_engine
from .leaf import WRITER_FILES, load_leaf_femnist, load_tff_emnist
from .partition import FederatedData, partition_by_writer
from .pipeline import Federation, FederationCache, RoundPipeline, RoundResult
from .simulation import SimulationResult, run_scenario, simulate
from .task import AttackerData, BackdoorTask

__all__ = [
    "ADVERSARIES", "AGGREGATORS", "CLIENT_ATTACKS", "ENGINES", "WRITER_FILES", "AdversaryModel", "AggregationResult",
    "Aggregator", "AttackContext", "AttackResult", "AttackerData", "BackdoorTask", "ClientAttack", "Engine",
    "EngineChooser", "FederatedData", "Federation", "FederationCache", "RoundPipeline", "RoundResult", "Scenario",
    "SimulationResult", "choose_engine", "load_leaf_femnist", "load_scenario", "load_tff_emnist", "make_aggregator",
    "parse_overrides", "partition_by_writer", "run_scenario", "scenario_threads", "simulate", "validate_file",
]
