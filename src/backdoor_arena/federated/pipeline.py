"""The federated round as a pipeline: set up once, then every round is

    select -> benign updates -> attack -> aggregate -> (apply, evaluate) -> record

`Federation.setup(scenario)` builds everything a run needs once (data, partition by writer, backdoor task,
the attackers' data, model and start weights, engine, aggregator, client attack, adversary model and its
pool). `RoundPipeline(federation)` holds what changes from round to round (the global weights w_t, the
sampling and server generators, the aggregator's state) and runs one round per `run_round()`, each stage a
method, returning a typed `RoundResult`; `simulation.py` turns those into records.

Counts the loaded data cannot satisfy (clients_per_round above the writers, test_samples above the test
set, backdoor.tasks above the writers with two source images, ...) are one ConfigError before any training
(`check_data_bounds`, run by `setup`; `check_scenario_data` checks a scenario and all its variants at once).
Nothing is clamped.

Round t: sample clients_per_round of the K writers without replacement; the adversary model says which
sampled clients are malicious; benign clients train locally (engine); the attackers craft one update each
from their `AttackContext` (omniscient attacks also see the benign updates of the round); the aggregator
turns the [n, d] stack (benign rows first, then the attackers' in `malicious` order) into an
`AggregationResult`; w_{t+1} = w_t + server_lr * update; evaluate every `eval_every` rounds and at the end.

Randomness: explicit generators seeded from the run seed (seed+1 backdoor task, +2 attacker data,
+3 adversary pool, +4 client sampling, +5 server, +6 engine probe, +7 pre-training subset, +8 partition,
+9 the server's root data); per-client streams from `client_seed` (stream 4: the batches of a client that
takes `local_steps` steps).

Before every aggregation the pipeline puts the round's inputs in the aggregator's state: `global_weights`
(w_t) and, for a rule whose `server_root_samples()` > 0 (FLTrust), `server_update`: the server's own update,
trained like a client's from w_t on its root data (that many test images outside the evaluation subset). Caches shared between runs (data, pre-trained weights, engine choices) live in
a `FederationCache` that the caller owns and passes in.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..data import Dataset, load_dataset
from ..errors import ConfigError
from ..metrics import predict
from ..runtime import seeded
from ..train import TrainConfig, create_model, fit
from .adversaries import ADVERSARIES, AdversaryModel
from .aggregators import AggregationResult, Aggregator, make_aggregator
from .attacks import CLIENT_ATTACKS, AttackContext, AttackResult, ClientAttack
from .components import make_component
from .config import Scenario, shown_source
from .engines import Engine, EngineChooser, LocalTraining, flat_params, get_engine, load_flat, sgd_local
from .leaf import WRITER_FILES, load_writer_files
from .partition import FederatedData, partition
from .task import AttackerData, BackdoorTask, make_attacker_data, make_backdoor_task


def client_seed(seed: int, round_: int, client_id: int, stream: int = 0) -> int:
    """Independent, reproducible stream per (run seed, round, client); stream > 0 for the round's other
    draws (1: dropout of benign clients, 2: attacker batches, 3: attacker dropout)."""
    entropy = [seed, round_, stream, client_id]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0] >> np.uint64(1))


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class FederationCache:
    """What several runs in one process may share, owned by the caller (`run_scenario` makes one for the
    variants of a scenario): the loaded datasets, the centrally pre-trained start weights (the paper attacks
    a converged model) and the engine choices by measurement."""

    def __init__(self) -> None:
        self.datasets: dict[tuple, tuple[Dataset, Dataset]] = {}
        self.pretrained: dict[tuple, torch.Tensor] = {}
        self.engines = EngineChooser()

    def data(self, sc: Scenario, data_root: str | Path | None) -> tuple[Dataset, Dataset]:
        """(train with writer ids, test): MNIST's from the data folder, or EMNIST's from the scenario's files."""
        name = sc["data.dataset"]
        key = (name, sc["data.train_path"], sc["data.test_path"], sc["data.digits_only"], str(data_root))
        if key not in self.datasets:
            if name in WRITER_FILES:
                pair = (load_writer_files(name, sc["data.train_path"], digits_only=sc["data.digits_only"]),
                        load_writer_files(name, sc["data.test_path"], digits_only=sc["data.digits_only"]))
            else:
                pair = (load_dataset(name, "train", data_root, writers=True), load_dataset(name, "test", data_root))
            self.datasets[key] = pair
        return self.datasets[key]

    def pretrained_weights(self, model: nn.Module, sc: Scenario, train_set: Dataset, progress: bool) -> torch.Tensor:
        """Centralised pre-training on (a seeded subset of) the union of the clients' data; trains `model`
        in place the first time, and is memoised per (architecture, pre-training settings, seed, data)."""
        n = sc["warmup.pretrain_samples"]
        key = (sc["model.architecture"], sc["warmup.pretrain_epochs"], sc["warmup.pretrain_lr"], n, sc["seed"],
               sc["data.dataset"], sc["data.train_path"], sc["data.digits_only"])  # variants may change the data
        if key not in self.pretrained:
            if n and n < len(train_set):
                pick = torch.randperm(len(train_set), generator=_generator(sc["seed"] + 7))[:n]
                train_set = train_set.subset(pick.sort().values)
            cfg = TrainConfig(epochs=sc["warmup.pretrain_epochs"], batch_size=64, lr=sc["warmup.pretrain_lr"],
                              seed=sc["seed"], progress=progress)
            fit(model, train_set, cfg, description="pre-train")
            self.pretrained[key] = flat_params(model).clone()
        return self.pretrained[key].clone()


@dataclass(eq=False)
class Federation:
    """Everything a run needs, built once from a scenario (`setup`); rounds never change it."""

    scenario: Scenario
    data: FederatedData  # the training set split by writer
    test_set: Dataset
    task: BackdoorTask
    attacker_data: AttackerData
    attack: ClientAttack | None  # None: no attack
    adversary: AdversaryModel
    malicious_pool: frozenset[int]
    aggregator: Aggregator
    model: nn.Module  # the architecture; evaluation loads weights into it
    start_weights: torch.Tensor
    local: LocalTraining
    engine: Engine
    engine_name: str
    engine_timing: dict[str, float] = field(default_factory=dict)
    root_data: Dataset | None = None  # the server's own clean images (FLTrust); None when the rule needs none

    @classmethod
    def setup(cls, sc: Scenario, data_root: str | Path | None = None, progress: bool = True,
              cache: FederationCache | None = None) -> Federation:
        cache = cache if cache is not None else FederationCache()
        seed = sc["seed"]
        train_set, test_set = cache.data(sc, data_root)
        fed = partition(train_set, sc["data.partition"], sc["data.clients"], _generator(seed + 8))
        check_data_bounds(sc, fed, test_set)  # before any training: counts the data cannot satisfy
        aggregator = make_aggregator(sc.aggregator)
        order = torch.randperm(len(test_set), generator=_generator(seed))
        n_eval = sc["data.test_samples"] if 0 < sc["data.test_samples"] < len(test_set) else len(test_set)
        root = _root_data(test_set, order[n_eval:], aggregator.server_root_samples(), seed)
        if n_eval < len(test_set):
            test_set = test_set.subset(order[:n_eval].sort().values)
        task = make_backdoor_task(fed, sc["backdoor.tasks"], _generator(seed + 1), sc["backdoor.source"],
                                  sc["backdoor.target"])
        _check_attacker_pool(sc, fed, task)
        attacker_data = make_attacker_data(fed, task, sc["backdoor.attacker_clean_samples"], _generator(seed + 2))
        attack = None if sc.attack["name"] == "none" else make_component(CLIENT_ATTACKS, sc.attack, "attack")
        adversary = make_component(ADVERSARIES, sc.adversary, "adversary")
        pool = adversary.setup(fed.num_clients, task.target_clients, _generator(seed + 3))
        problems = aggregator.round_problems(min(sc["federation.clients_per_round"], fed.num_clients))
        if problems:
            raise ConfigError(f"aggregator {sc.aggregator['name']!r}: " + "; ".join(problems))
        model, _ = create_model(sc["model.architecture"], train_set.info, seed)
        w = cache.pretrained_weights(model, sc, train_set, progress) if sc["warmup.pretrain_epochs"] \
            else flat_params(model)
        local = LocalTraining(sc["federation.local_epochs"], sc["federation.batch_size"], sc["federation.client_lr"])
        engine_name, timing = sc["federation.engine"], {}
        if engine_name == "auto":
            load_flat(model, w)
            per_round = min(sc["federation.clients_per_round"], fed.num_clients)
            probe = torch.randperm(fed.num_clients, generator=_generator(seed + 6))[:per_round].tolist()
            steps = sc["federation.local_steps"]
            shapes = [fed.indices[k][: steps * local.batch_size] if steps else fed.indices[k] for k in probe]
            probe_local = LocalTraining(1, local.batch_size, local.lr) if steps else local
            engine_name, timing = cache.engines.choose(model, train_set.images, train_set.labels, shapes, probe_local)
        return cls(sc, fed, test_set, task, attacker_data, attack, adversary, pool, aggregator, model, w, local,
                   get_engine(engine_name), engine_name, dict(timing), root)

    @property
    def clients_per_round(self) -> int:
        return min(self.scenario["federation.clients_per_round"], self.data.num_clients)

    @property
    def attacker_weight(self) -> float:
        """The sample count each attacker reports: an average client's."""
        return float(self.data.sizes().float().mean())

    def client_ids(self, positions: list[int]) -> list[int]:
        return [self.data.client_ids[k] for k in positions]


def data_problems(sc: Scenario, fed: FederatedData, test_set: Dataset) -> list[str]:
    """One sentence per count of the scenario that the loaded data cannot satisfy (nothing is clamped):
    `fl validate` checks these statically where the sizes are known (MNIST); writer files are only
    measured here."""
    name, n = sc["data.dataset"], fed.num_clients
    problems = []
    cpr = sc["federation.clients_per_round"]
    if cpr > n:
        problems.append(f"federation.clients_per_round = {cpr} is more than the {n} clients (writers) of "
                        f"data.dataset = {name!r}; at most {n}")
    for key, size, what in (("data.test_samples", len(test_set), "test images"),
                            ("warmup.pretrain_samples", len(fed.dataset), "training images"),
                            ("backdoor.attacker_clean_samples", len(fed.dataset), "training images")):
        if sc[key] > size:
            problems.append(f"{key} = {sc[key]} is more than the {size} {what} of data.dataset = {name!r}; "
                            f"at most {size}")
    tasks, source = sc["backdoor.tasks"], sc["backdoor.source"]
    labels = fed.dataset.labels
    eligible = sum(int((labels[idx] == source).sum()) >= 2 for idx in fed.indices)
    if tasks > eligible:
        problems.append(f"backdoor.tasks = {tasks} is more than the {eligible} writers of data.dataset = {name!r} "
                        f"with >= 2 images of backdoor.source = {source}; at most {eligible}")
    elif tasks >= n:
        problems.append(f"backdoor.tasks = {tasks} makes every one of the {n} writers a target client; the attackers "
                        f"need others: at most {n - 1}")
    return problems


def check_data_bounds(sc: Scenario, fed: FederatedData, test_set: Dataset) -> None:
    """Raise one ConfigError naming every count the loaded data cannot satisfy (`data_problems`)."""
    problems = data_problems(sc, fed, test_set)
    if problems:
        head = f"{shown_source(sc.source)}: " if sc.source else ""
        raise ConfigError(f"{head}{len(problems)} problem(s) with the data loaded: " + " | ".join(problems))


def check_scenario_data(sc: Scenario, data_root: str | Path | None = None,
                        cache: FederationCache | None = None) -> None:
    """Load the data of the scenario and of each variant (through `cache`) and check every data-dependent
    bound of all of them at once, so that a bad last variant fails before the first one trains."""
    cache = cache if cache is not None else FederationCache()
    problems: list[str] = []
    for label in list(sc.variants) or [""]:
        run_sc = sc.variant(label) if label else sc
        train_set, test_set = cache.data(run_sc, data_root)
        found = data_problems(run_sc, partition(train_set, run_sc["data.partition"], run_sc["data.clients"],
                                                _generator(run_sc["seed"] + 8)), test_set)
        problems.extend(f"variant {label!r}: {p}" if label else p for p in found)
    if problems:
        head = f"{shown_source(sc.source)}: " if sc.source else ""
        raise ConfigError(f"{head}{len(problems)} problem(s) with the data loaded: " + " | ".join(problems))


def _root_data(test_set: Dataset, spare: torch.Tensor, n: int, seed: int) -> Dataset | None:
    """`n` test images outside the evaluation subset (seeded): the server's root data set."""
    if n <= 0:
        return None
    if n > len(spare):
        raise ConfigError(f"the aggregator needs {n} root images but only {len(spare)} test images lie outside the "
                          f"evaluation subset; lower data.test_samples or the aggregator's root_samples")
    pick = spare[torch.randperm(len(spare), generator=_generator(seed + 9))[:n]]
    return test_set.subset(pick.sort().values)


def _check_attacker_pool(sc: Scenario, fed: FederatedData, task: BackdoorTask) -> None:
    """The attackers' clean samples come from the writers that are not target clients."""
    targets = set(task.target_clients)
    pool = sum(len(idx) for k, idx in enumerate(fed.indices) if k not in targets)
    wanted = sc["backdoor.attacker_clean_samples"]
    if wanted > pool:
        head = f"{shown_source(sc.source)}: " if sc.source else ""
        raise ConfigError(f"{head}backdoor.attacker_clean_samples = {wanted} is more than the {pool} training images "
                          f"of the writers that are not target clients; at most {pool}")


@dataclass(frozen=True)
class Selection:
    """The clients of one round, as positions into the federation's clients."""

    sampled: list[int]
    malicious: list[int]
    benign: list[int]
    attack_round: int  # rounds since the first attack round (< 0: warm-up)

    @property
    def phase(self) -> str:
        return "attack" if self.attack_round >= 0 else "warmup"


@dataclass(frozen=True)
class Evaluation:
    clean_accuracy: float  # on the (subset of the) test set
    attack_success_rate: float  # held-out target-client sources classified as the target


@dataclass(frozen=True, eq=False)
class RoundResult:
    """Everything one round produced; the stack the aggregator saw is benign rows, then the attackers'."""

    round: int
    selection: Selection
    benign_updates: torch.Tensor  # [n_benign, d]
    benign_weights: torch.Tensor  # [n_benign] float64 sample counts
    attack: AttackResult | None  # None: no malicious client this round
    malicious_weights: torch.Tensor  # [m] float64 reported sample counts
    aggregation: AggregationResult
    evaluation: Evaluation | None  # None: not evaluated this round (eval_every)
    times: dict[str, float]  # seconds per stage: sample, benign, attack, aggregate, eval

    @property
    def malicious_updates(self) -> torch.Tensor:
        return self.attack.updates if self.attack is not None else self.benign_updates[:0]


class RoundPipeline:
    """Runs the rounds of a `Federation`; holds the state that changes from round to round."""

    def __init__(self, federation: Federation) -> None:
        self.fed = federation
        seed = federation.scenario["seed"]
        self.seed = seed
        self.weights = federation.start_weights.clone()  # w_t
        self.round = 0
        self.g_sample = _generator(seed + 4)
        self.g_server = _generator(seed + 5)
        self.state: dict = {}  # the aggregator's memory between rounds

    # ---- the stages -----------------------------------------------------------------------------------

    def select(self, t: int) -> Selection:
        fed = self.fed
        sampled = torch.randperm(fed.data.num_clients, generator=self.g_sample)[: fed.clients_per_round].tolist()
        attack_round = t - 1 - fed.scenario["warmup.rounds"]
        mal = fed.adversary.malicious(t, sampled, fed.task.target_clients, fed.malicious_pool, attack_round) \
            if fed.attack is not None else []
        mal_set = set(mal)
        return Selection(sampled, list(mal), [k for k in sampled if k not in mal_set], attack_round)

    def benign_updates(self, t: int, sel: Selection) -> tuple[torch.Tensor, torch.Tensor]:
        """([n_benign, d] updates, [n_benign] float64 sample counts) of the round's benign clients."""
        fed, data = self.fed, self.fed.data
        indices = [self.client_batches(t, k) for k in sel.benign]
        with seeded(client_seed(self.seed, t, 0, 1)):  # dropout stream of this round
            updates = fed.engine.train(fed.model, self.weights, data.dataset.images, data.dataset.labels, indices,
                                       [client_seed(self.seed, t, data.client_ids[k]) for k in sel.benign], self.local)
        return updates, data.sizes()[sel.benign].double()

    @property
    def local(self) -> LocalTraining:
        """The clients' training: local_epochs passes, or one pass over `local_steps` fresh batches."""
        steps = self.fed.scenario["federation.local_steps"]
        return self.fed.local if not steps else LocalTraining(1, self.fed.local.batch_size, self.fed.local.lr)

    def client_batches(self, t: int, k: int) -> torch.Tensor:
        """The sample indices client k trains on in round t: all of its data, or with `local_steps` = s,
        s * batch_size of them drawn afresh each round (without replacement while they last)."""
        data, steps = self.fed.data, self.fed.scenario["federation.local_steps"]
        own = data.indices[k]
        if not steps:
            return own
        need = steps * self.fed.local.batch_size
        g = _generator(client_seed(self.seed, t, data.client_ids[k], 4))
        reps = -(-need // len(own))
        order = torch.cat([torch.randperm(len(own), generator=g) for _ in range(reps)])[:need]
        return own[order]

    def server_update(self, t: int) -> torch.Tensor:
        """The server's own update on its root data, trained like a client's (FLTrust's g0)."""
        root = self.fed.root_data
        return sgd_local(self.fed.model, self.weights, root.images, root.labels, torch.arange(len(root)),
                         client_seed(self.seed, t, 0, 5), self.local)

    def attack_context(self, t: int, sel: Selection, benign: torch.Tensor, benign_weights: torch.Tensor,
                       malicious_weights: torch.Tensor) -> AttackContext:
        fed = self.fed
        model = copy.deepcopy(fed.model)
        load_flat(model, self.weights)
        omniscient = bool(getattr(fed.attack, "omniscient", False))
        m = len(sel.malicious)
        return AttackContext(
            model=model, global_weights=self.weights.clone(), data=fed.attacker_data, round=t,
            seed=client_seed(self.seed, t, 0, 2), n_malicious=m, malicious_ids=tuple(fed.client_ids(sel.malicious)),
            malicious_weights=malicious_weights.clone(),
            weight_sum=float(benign_weights.sum()) + m * fed.attacker_weight,
            server_lr=fed.scenario["federation.server_lr"], aggregator_params=fed.aggregator.public_params(),
            benign_updates=benign.clone() if omniscient else None,
            benign_weights=benign_weights.clone() if omniscient else None,
            aggregator=fed.aggregator,
        )

    def craft(self, t: int, sel: Selection, benign: torch.Tensor, benign_weights: torch.Tensor,
              malicious_weights: torch.Tensor) -> AttackResult | None:
        """The malicious clients' updates ([m, d]), or None in a round without one."""
        if not sel.malicious or self.fed.attack is None:
            return None
        ctx = self.attack_context(t, sel, benign, benign_weights, malicious_weights)
        with seeded(client_seed(self.seed, t, 0, 3)):  # the attackers' dropout stream
            result = self.fed.attack.craft(ctx)
        result.check(len(sel.malicious), self.weights.numel(), self.fed.scenario.attack["name"])
        return result

    def aggregate(self, benign: torch.Tensor, benign_weights: torch.Tensor, attack: AttackResult | None,
                  malicious_weights: torch.Tensor, t: int | None = None) -> AggregationResult:
        self.state["global_weights"] = self.weights
        if self.fed.root_data is not None:
            self.state["server_update"] = self.server_update(self.round + 1 if t is None else t)
        updates, weights = benign, benign_weights
        if attack is not None:
            updates = torch.cat([benign, attack.updates.to(benign.dtype)])
            weights = torch.cat([benign_weights, malicious_weights])
        return self.fed.aggregator.aggregate(updates, weights, self.g_server, self.state)

    def apply(self, aggregation: AggregationResult) -> None:
        """w_{t+1} = w_t + server_lr * update."""
        self.weights = self.weights + self.fed.scenario["federation.server_lr"] * aggregation.update.to(
            self.weights.dtype)

    def evaluate(self) -> Evaluation:
        fed = self.fed
        load_flat(fed.model, self.weights)
        images = fed.data.dataset.images[fed.task.eval_index]
        targets = torch.full((len(fed.task.eval_index),), fed.task.target)
        return Evaluation(_accuracy(fed.model, fed.test_set.images, fed.test_set.labels),
                          _accuracy(fed.model, images, targets))

    # ---- a round ----------------------------------------------------------------------------------------

    def due_for_evaluation(self, t: int) -> bool:
        sc = self.fed.scenario
        return t % sc["federation.eval_every"] == 0 or t == sc["federation.rounds"]

    def run_round(self) -> RoundResult:
        t = self.round + 1
        t0 = time.perf_counter()
        sel = self.select(t)
        t1 = time.perf_counter()
        benign, benign_weights = self.benign_updates(t, sel)
        t2 = time.perf_counter()
        malicious_weights = torch.full((len(sel.malicious),), self.fed.attacker_weight, dtype=torch.float64)
        attack = self.craft(t, sel, benign, benign_weights, malicious_weights)
        t3 = time.perf_counter()
        aggregation = self.aggregate(benign, benign_weights, attack, malicious_weights, t)
        self.apply(aggregation)
        t4 = time.perf_counter()
        evaluation = self.evaluate() if self.due_for_evaluation(t) else None
        t5 = time.perf_counter()
        self.round = t
        times = {"sample": t1 - t0, "benign": t2 - t1, "attack": t3 - t2, "aggregate": t4 - t3, "eval": t5 - t4}
        return RoundResult(t, sel, benign, benign_weights, attack, malicious_weights, aggregation, evaluation, times)

    def run(self, rounds: int | None = None) -> Iterator[RoundResult]:
        """The remaining rounds of the scenario (or `rounds` more), one result each."""
        last = self.fed.scenario["federation.rounds"] if rounds is None else self.round + rounds
        while self.round < last:
            yield self.run_round()


def _accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    if len(labels) == 0:
        return float("nan")
    return float((predict(model, images) == labels).float().mean())
