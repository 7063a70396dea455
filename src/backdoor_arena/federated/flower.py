"""Flower adapter: the project's aggregators and client attacks on real Flower replies (flwr 1.42, Message API).

Install with `pip install 'backdoor-arena[flower]'`. Nothing else in the package imports this module, so the
rest of backdoor_arena works without Flower.

Server side:

- `RobustStrategy(aggregator, ...)`: a Flower strategy (a subclass of `flwr.serverapp.strategy.FedAvg`) that
  turns the round's train replies into flat updates w_local - w_global [n, d] with their reported sample
  counts as weights, calls any registered aggregator (`make_aggregator(name_or_dict)`, so rules registered
  later work too) with a seeded server generator and a state dict kept between rounds (filled with the
  round's inputs as `RoundPipeline` fills it: w_t, and FLTrust's server update on the server's root data),
  and applies w + server_lr * update. Every round's `AggregationResult` (which rows entered, scores, clip factors, info)
  is kept in `strategy.history` and its numbers are returned in the round's MetricRecord (keys "agg-...").
  Clients are sampled with a seeded generator (not Python's global `random`), and the train config carries
  "server-round" and "seed", so that seeded clients reproduce the built-in simulator's local training.
  `virtual_clients=N` simulates N clients on fewer SuperNodes (each message names its partition).
- `AttackedStrategy(strategy, attack, malicious=...)`: wraps any Flower strategy and rewrites the train
  replies of the chosen clients with a registered client attack (CLIENT_ATTACKS) before the wrapped
  strategy aggregates them; an omniscient attack (ALIE, IPM, ...) sees the other replies of the round as
  its `benign_updates`. Works the same on Flower's simulation engine and on a real deployment (the attack is
  simulated by the server: the experimenter's threat model, not a defence).

Client side:

- `client_app(load)`: a Flower `ClientApp` whose train handler runs the project's local SGD (the arithmetic
  of `sgd_local`, the sequential engine's per-client reference, bit for bit, through `engines.LocalTrainer`
  as the `processes` engine does) with the client seed of the built-in simulator
  (`client_seed(seed, round, client_id)`) and replies with its weights, "num-examples" and "client-id".
- `WriterClients`: a loader for `client_app` that maps a SuperNode's "partition-id" to one writer of a
  dataset (MNIST's 539 writers), loading the data once per process.

Conventions: the flat vector is the concatenation, in the order of `keys` (by default the global record's
floating-point arrays in their order; `model_arrays(model)` gives a model's parameters in
`model.parameters()` order, i.e. the order of `engines.flat_params`), of the arrays, so that a Flower run and
a `RoundPipeline` run see the same [n, d] stack. Rows are ordered by client id (reported by the clients under
"client-id"; the node id otherwise), so a run does not depend on the order replies arrive in. Seeds follow
`pipeline.py`: sampling generator seed + 4, server generator seed + 5, the attackers' streams
`client_seed(seed, t, 0, 2)` (batches) and `client_seed(seed, t, 0, 3)` (dropout).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from logging import INFO
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ArenaError, ConfigError
from ..runtime import seeded
from .aggregators import AggregationResult, Aggregator, make_aggregator
from .attacks import CLIENT_ATTACKS, AttackContext, ClientAttack
from .components import make_component
from .engines import LocalTrainer, LocalTraining, load_flat, sgd_local
from .pipeline import client_seed
from .task import AttackerData

INSTALL_HINT = "pip install 'backdoor-arena[flower]'"


class FlowerMissingError(ArenaError, ImportError):
    """Flower (flwr) is not installed."""


try:
    from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid
    from flwr.serverapp.strategy import FedAvg, Strategy
    from flwr.supercore import log
except ImportError as exc:  # pragma: no cover - exercised only without flwr
    raise FlowerMissingError(
        f"backdoor_arena.federated.flower needs Flower 1.42 (flwr with its simulation extra): {INSTALL_HINT} "
        f"({' '.join(str(exc).split())})"
    ) from None

__all__ = [
    "CLIENT_PROCESS", "INSTALL_HINT", "AttackedStrategy", "ClientData", "ClientProcess", "FlowerMissingError",
    "RobustStrategy", "RoundLog", "WriterClients", "arrays_to_flat", "client_app", "discover_clients",
    "evaluate_reply", "flat_to_arrays", "flat_weights", "float_keys", "initial_arrays", "load_model_arrays",
    "local_from_config", "model_arrays", "parse_replies", "query_reply", "train_reply",
]

CLIENT_ID = "client-id"
NUM_EXAMPLES = "num-examples"


# ---- arrays <-> flat vectors ---------------------------------------------------------------------------

def model_arrays(model: nn.Module) -> ArrayRecord:
    """A model's parameters (no buffers) as an ArrayRecord, in `model.parameters()` order."""
    return ArrayRecord({k: Array(p.detach().cpu().contiguous().numpy()) for k, p in model.named_parameters()})


def load_model_arrays(model: nn.Module, arrays: ArrayRecord) -> None:
    """Copy the arrays named like the model's parameters into it (buffers, if present, too)."""
    state = {k: torch.from_numpy(np.array(arrays[k].numpy())) for k in arrays.keys()}
    model.load_state_dict(state, strict=False)


def float_keys(arrays: ArrayRecord) -> list[str]:
    """The names of the floating-point arrays of a record, in its order."""
    return [k for k in arrays.keys() if np.issubdtype(np.dtype(arrays[k].dtype), np.floating)]


def arrays_to_flat(arrays: ArrayRecord, keys: Sequence[str]) -> torch.Tensor:
    """The arrays named `keys`, flattened and concatenated (float32 stays float32)."""
    missing = [k for k in keys if k not in arrays]
    if missing:
        raise ConfigError(f"a reply lacks the array(s) {', '.join(missing[:5])}; every reply must carry the "
                          f"global model's arrays {', '.join(list(keys)[:5])}{', ...' if len(keys) > 5 else ''}")
    return torch.cat([torch.from_numpy(np.array(arrays[k].numpy())).reshape(-1) for k in keys])


def flat_to_arrays(flat: torch.Tensor, template: ArrayRecord, keys: Sequence[str],
                   others: Mapping[str, np.ndarray] | None = None) -> ArrayRecord:
    """An ArrayRecord shaped like `template`: the arrays `keys` cut from `flat` (in the template's dtypes),
    the others from `others` when given, else as in the template."""
    out: dict[str, Array] = {}
    offset = 0
    pieces: dict[str, np.ndarray] = {}
    for k in keys:
        ref = template[k]
        n = math.prod(ref.shape)
        pieces[k] = flat[offset: offset + n].detach().cpu().numpy().reshape(ref.shape).astype(ref.dtype, copy=False)
        offset += n
    if offset != flat.numel():
        raise ConfigError(f"flat vector has {flat.numel()} entries, the arrays {offset}")
    for k in template.keys():
        if k in pieces:
            out[k] = Array(np.ascontiguousarray(pieces[k]))
        elif others is not None and k in others:
            out[k] = Array(np.ascontiguousarray(others[k]))
        else:
            out[k] = template[k]
    return ArrayRecord(out)


# ---- replies -----------------------------------------------------------------------------------------------

@dataclass
class Replies:
    """The valid train replies of a round as a stack: rows ordered by client id."""

    messages: list[Message]
    client_ids: list[int]
    weights: torch.Tensor  # [n] float64, reported sample counts
    updates: torch.Tensor  # [n, d] w_local - w_global
    arrays: list[ArrayRecord]


def _single(records: Mapping[str, Any], what: str, msg: Message) -> Any:
    if len(records) != 1:
        raise ConfigError(f"a train reply from node {msg.metadata.src_node_id} holds {len(records)} {what}s; "
                          f"expected exactly one")
    return next(iter(records.values()))


def parse_replies(replies: Iterable[Message], global_flat: torch.Tensor, keys: Sequence[str],
                  weighted_by_key: str = NUM_EXAMPLES, client_id_key: str = CLIENT_ID) -> Replies:
    rows = []
    for msg in replies:
        if msg.has_error():
            continue
        content = msg.content
        arrays = _single(content.array_records, "ArrayRecord", msg)
        metrics = _single(content.metric_records, "MetricRecord", msg)
        if weighted_by_key not in metrics:
            raise ConfigError(f"a train reply from node {msg.metadata.src_node_id} has no {weighted_by_key!r} "
                              f"metric (its sample count)")
        cid = int(metrics[client_id_key]) if client_id_key in metrics else int(msg.metadata.src_node_id)
        rows.append((cid, float(metrics[weighted_by_key]), arrays, msg))
    rows.sort(key=lambda r: r[0])
    cids = [r[0] for r in rows]
    if len(set(cids)) != len(cids):
        raise ConfigError(f"two train replies report the same {client_id_key!r}: {sorted(cids)}")
    if rows:
        updates = torch.stack([arrays_to_flat(r[2], keys).to(global_flat.dtype) - global_flat for r in rows])
    else:
        updates = global_flat.new_zeros((0, global_flat.numel()))
    weights = torch.tensor([r[1] for r in rows], dtype=torch.float64)
    return Replies([r[3] for r in rows], cids, weights, updates, [r[2] for r in rows])


def _numbers(prefix: str, info: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON scalars of `info` that a MetricRecord can hold (numbers, lists of one number type)."""
    out: dict[str, Any] = {}
    for k, v in info.items():
        if isinstance(v, bool):
            out[f"{prefix}{k}"] = int(v)
        elif isinstance(v, (int, float)):
            out[f"{prefix}{k}"] = v
        elif isinstance(v, list) and v and all(isinstance(x, float) for x in v):
            out[f"{prefix}{k}"] = v
        elif isinstance(v, list) and v and all(isinstance(x, int) and not isinstance(x, bool) for x in v):
            out[f"{prefix}{k}"] = v
    return out


def _floats(t: torch.Tensor | None) -> list[float] | None:
    return None if t is None else [float(x) for x in t.double().tolist()]


# ---- the strategy ------------------------------------------------------------------------------------------

@dataclass
class RoundLog:
    """What the server did in one round: the rows (client ids, weights) and the aggregator's result."""

    round: int
    client_ids: list[int]
    weights: list[float]
    result: AggregationResult
    update_norm: float
    aggregate_s: float
    client_metrics: list[dict[str, Any]] = field(default_factory=list)  # each row's reply metrics, row order

    @property
    def selected_ids(self) -> list[int]:
        """Client ids of the rows that entered the update (all, when the rule does not select)."""
        if self.result.selected is None:
            return list(self.client_ids)
        return [self.client_ids[i] for i in self.result.selected.tolist()]


class RobustStrategy(FedAvg):
    """FedAvg's message flow with any registered aggregator in place of the weighted mean.

    aggregator: a registered name or a dict {"name": ..., params...} (or an Aggregator instance).
    clients_per_round: nodes sampled per round (a seeded draw from the sorted node ids); None: use
      fraction_train of the connected nodes, as FedAvg does.
    server_lr: w_{t+1} = w_t + server_lr * update.
    seed: sampling generator seed + 4 and server generator seed + 5 (as `RoundPipeline`); also sent to the
      clients in the train config ("seed") for their per-client streams.
    sampler: (round, sorted node ids) -> the node ids to train this round, in place of the seeded draw (e.g.
      the clients another run sampled; `discover_clients` maps client ids to node ids). With
      `virtual_clients`: (round, range of partitions) -> the partition ids to train.
    virtual_clients: simulate that many clients on however many nodes are connected (Flower's usual way to
      simulate a large cross-device population cheaply): each round draws `clients_per_round` partition ids
      from range(virtual_clients) (seeded, or `sampler`) and sends one message per client, round-robin over
      the sorted nodes, its config carrying "partition-id"; `client_app` trains that partition. A node may
      get several messages a round and trains them in turn. None: one client per node.
    root_data, model, local / server_update: the server's own update for rules that need one (FLTrust:
      `aggregator.server_root_samples()` > 0): its local SGD from w_t on `root_data` (images, labels, or a
      Dataset) with `model`'s architecture, `local` training and the seed stream client_seed(seed, t, 0, 5), as
      `RoundPipeline.server_update`; or any function (round, w_t flat) -> update.
    keys: names of the arrays the rule aggregates (default: every floating-point array of the global record);
      other floating arrays are averaged with the sample counts, the rest keep the global value.
    Every other keyword goes to `flwr.serverapp.strategy.FedAvg` (fraction_evaluate defaults to 0 here).
    """

    def __init__(self, aggregator: str | dict[str, Any] | Aggregator = "fedavg", *,
                 clients_per_round: int | None = None, server_lr: float = 1.0, seed: int = 0,
                 keys: Sequence[str] | None = None, client_id_key: str = CLIENT_ID,
                 sampler: Callable[[int, list[int]], Iterable[int]] | None = None,
                 virtual_clients: int | None = None,
                 root_data: tuple[torch.Tensor, torch.Tensor] | Any | None = None, model: nn.Module | None = None,
                 local: LocalTraining | None = None,
                 server_update: Callable[[int, torch.Tensor], torch.Tensor] | None = None,
                 fraction_evaluate: float = 0.0, **fedavg_kwargs: Any) -> None:
        super().__init__(fraction_evaluate=fraction_evaluate, **fedavg_kwargs)
        self.sampler = sampler
        if virtual_clients is not None and (not isinstance(virtual_clients, int) or virtual_clients < 1):
            raise ConfigError(f"virtual_clients must be a positive integer, got {virtual_clients!r}")
        if virtual_clients is not None and clients_per_round is None and sampler is None:
            raise ConfigError("virtual_clients needs clients_per_round (or a sampler)")
        self.virtual_clients = virtual_clients
        self.server_update = server_update
        if server_update is None and root_data is not None:
            if model is None:
                raise ConfigError("root_data needs the model (the architecture the server trains its update with)")
            images, labels = (root_data.images, root_data.labels) if hasattr(root_data, "images") else root_data
            self.server_update = _root_update(model, images, labels, local or LocalTraining(), int(seed))
        self.aggregator = aggregator if isinstance(aggregator, Aggregator) else make_aggregator(aggregator)
        self.aggregator_spec = aggregator if not isinstance(aggregator, Aggregator) else type(aggregator).__name__
        if clients_per_round is not None and (not isinstance(clients_per_round, int) or clients_per_round < 1):
            raise ConfigError(f"clients_per_round must be a positive integer, got {clients_per_round!r}")
        if not (isinstance(server_lr, (int, float)) and math.isfinite(server_lr) and server_lr > 0):
            raise ConfigError(f"server_lr must be a positive number, got {server_lr!r}")
        self.clients_per_round = clients_per_round
        self.server_lr = float(server_lr)
        self.seed = int(seed)
        self.keys = list(keys) if keys is not None else None
        self.client_id_key = client_id_key
        self.g_sample = torch.Generator().manual_seed(self.seed + 4)
        self.g_server = torch.Generator().manual_seed(self.seed + 5)
        self.state: dict[str, Any] = {}  # the aggregator's memory between rounds
        self.history: dict[int, RoundLog] = {}
        self.round_arrays: dict[int, ArrayRecord] = {}  # the global arrays sent in the current round
        self.latest: ArrayRecord | None = None  # the global arrays after the last aggregation
        self.timing: dict[int, dict[str, float]] = {}

    # ---- Flower's hooks -----------------------------------------------------------------------------------

    def summary(self) -> None:
        super().summary()
        log(INFO, "\t└──> Aggregator: %s (server_lr %s, seed %s)", self.aggregator_spec, self.server_lr, self.seed)

    def sample(self, grid: Grid, server_round: int = 0) -> list[int]:
        """This round's nodes: `sampler(round, sorted node ids)` if given, else a seeded draw from the sorted
        ids of the connected nodes."""
        while self.sampler is not None:
            nodes = sorted(int(n) for n in grid.get_node_ids())
            if len(nodes) >= self.min_available_nodes:
                return [int(n) for n in self.sampler(server_round, nodes)]
            time.sleep(0.2)
        while True:
            nodes = sorted(int(n) for n in grid.get_node_ids())
            wanted = self.clients_per_round or max(int(len(nodes) * self.fraction_train), self.min_train_nodes)
            if len(nodes) >= max(wanted, self.min_available_nodes):
                break
            log(INFO, "Waiting for nodes to connect: %d connected (need %d).", len(nodes),
                max(wanted, self.min_available_nodes))
            time.sleep(0.2)
        pick = torch.randperm(len(nodes), generator=self.g_sample)[:wanted].tolist()
        return [nodes[i] for i in pick]

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self.timing.setdefault(server_round, {})["configure"] = time.perf_counter()
        if self.fraction_train == 0.0 and self.clients_per_round is None:
            return []
        config["server-round"] = server_round
        config["seed"] = self.seed
        self.round_arrays = {server_round: arrays}
        if self.virtual_clients is not None:
            return self._virtual_messages(server_round, arrays, config, grid)
        nodes = self.sample(grid, server_round)
        log(INFO, "configure_train: sampled %d nodes", len(nodes))
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        return self._construct_messages(record, nodes, MessageType.TRAIN)

    def sample_partitions(self, server_round: int) -> list[int]:
        """This round's virtual clients: `sampler(round, range(virtual_clients))` or a seeded draw."""
        assert self.virtual_clients is not None
        if self.sampler is not None:
            return [int(p) for p in self.sampler(server_round, list(range(self.virtual_clients)))]
        n = min(self.clients_per_round or 1, self.virtual_clients)
        return torch.randperm(self.virtual_clients, generator=self.g_sample)[:n].tolist()

    def _virtual_messages(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                          grid: Grid) -> list[Message]:
        while not (nodes := sorted(int(n) for n in grid.get_node_ids())) or len(nodes) < self.min_available_nodes:
            time.sleep(0.2)
        parts = self.sample_partitions(server_round)
        log(INFO, "configure_train: %d virtual clients on %d nodes", len(parts), len(nodes))
        messages = []
        for i, part in enumerate(parts):
            own = ConfigRecord({**dict(config.items()), "partition-id": int(part)})
            record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: own})
            messages.append(Message(content=record, message_type=MessageType.TRAIN, dst_node_id=nodes[i % len(nodes)]))
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        started = time.perf_counter()
        replies = list(replies)
        valid, _errors = self._check_and_log_replies(replies, is_train=True)
        if not valid:
            return None, None
        global_arrays = self.global_arrays(server_round)
        keys = self.array_keys(global_arrays)
        w = arrays_to_flat(global_arrays, keys)
        rep = parse_replies(valid, w, keys, self.weighted_by_key, self.client_id_key)
        result = self.aggregate_updates(server_round, rep.updates, rep.weights, w)
        new = w + self.server_lr * result.update.to(w.dtype)
        others = self._average_others(global_arrays, keys, rep)
        arrays = flat_to_arrays(new, global_arrays, keys, others)
        self.latest = arrays
        elapsed = time.perf_counter() - started
        entry = RoundLog(server_round, rep.client_ids, rep.weights.tolist(), result,
                         float(torch.linalg.vector_norm(result.update)), elapsed,
                         [dict(next(iter(m.content.metric_records.values())).items()) for m in rep.messages])
        self.history[server_round] = entry
        self.timing.setdefault(server_round, {})["aggregated"] = time.perf_counter()
        metrics = self._client_metrics([m.content for m in valid])
        for k, v in self.round_metrics(entry).items():
            metrics[k] = v
        return arrays, metrics

    # ---- the pieces, reusable outside Flower's loop ---------------------------------------------------------

    def global_arrays(self, server_round: int) -> ArrayRecord:
        if server_round not in self.round_arrays:
            raise ConfigError(f"no global arrays recorded for round {server_round}: aggregate_train must follow "
                              f"configure_train of the same round")
        return self.round_arrays[server_round]

    def array_keys(self, arrays: ArrayRecord) -> list[str]:
        if self.keys is None:
            return float_keys(arrays)
        missing = [k for k in self.keys if k not in arrays]
        if missing:
            raise ConfigError(f"keys {missing[:5]} are not arrays of the global model")
        return list(self.keys)

    def aggregate_updates(self, server_round: int, updates: torch.Tensor, weights: torch.Tensor,
                          global_weights: torch.Tensor) -> AggregationResult:
        """The registered rule on the round's stack (seeded server generator, persistent state), with the round's
        inputs in the state as `RoundPipeline` gives them: `global_weights` (w_t) and, for rules that need one,
        the server's own `server_update`."""
        problems = self.aggregator.round_problems(int(updates.shape[0]))
        if problems:
            raise ConfigError(f"round {server_round}: aggregator {self.aggregator_spec!r} cannot aggregate "
                              f"{updates.shape[0]} replies: " + "; ".join(problems))
        self.state["global_weights"] = global_weights
        if self.aggregator.server_root_samples() > 0:
            if self.server_update is None:
                raise ConfigError(f"aggregator {self.aggregator_spec!r} needs the server's own update on its root "
                                  f"data: give RobustStrategy root_data= and model= (or server_update=)")
            self.state["server_update"] = self.server_update(server_round, global_weights)
        return self.aggregator.aggregate(updates, weights, self.g_server, self.state)

    def round_metrics(self, entry: RoundLog) -> dict[str, Any]:
        """The round's aggregation as MetricRecord values: client ids of the rows, of the selected rows, the
        weights, scores and clip factors per row, the update norm and the rule's numeric info."""
        r = entry.result
        out: dict[str, Any] = {"agg-client-ids": entry.client_ids, "agg-selected-ids": entry.selected_ids,
                               "agg-n-rows": len(entry.client_ids), "agg-update-norm": entry.update_norm,
                               "agg-time-s": entry.aggregate_s}
        for name, t in (("agg-weights", r.weights), ("agg-scores", r.scores), ("agg-clip-factors", r.clip_factors)):
            values = _floats(t)
            if values:
                out[name] = values
        out.update(_numbers("agg-info-", r.info))
        return out

    def _client_metrics(self, contents: list[RecordDict]) -> MetricRecord:
        """The clients' own metrics averaged by sample count, without the client id."""
        trimmed = []
        for c in contents:
            m = next(iter(c.metric_records.values()))
            trimmed.append(RecordDict({"metrics": MetricRecord({k: v for k, v in m.items()
                                                                if k != self.client_id_key})}))
        return self.train_metrics_aggr_fn(trimmed, self.weighted_by_key)

    def _average_others(self, global_arrays: ArrayRecord, keys: Sequence[str], rep: Replies
                        ) -> dict[str, np.ndarray]:
        """Floating arrays outside `keys` (e.g. BatchNorm statistics): the sample-weighted mean of the replies."""
        out: dict[str, np.ndarray] = {}
        total = float(rep.weights.sum())
        for k in float_keys(global_arrays):
            if k in keys or not all(k in a for a in rep.arrays):
                continue
            acc = sum(float(wt) * a[k].numpy().astype(np.float64) for wt, a in zip(rep.weights, rep.arrays, strict=True))
            out[k] = (acc / total).astype(global_arrays[k].dtype)
        return out


def _root_update(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, local: LocalTraining,
                 seed: int) -> Callable[[int, torch.Tensor], torch.Tensor]:
    def update(server_round: int, w: torch.Tensor) -> torch.Tensor:
        return sgd_local(model, w, images, labels, torch.arange(len(labels)), client_seed(seed, server_round, 0, 5),
                         local)
    return update


# ---- the attack wrapper ------------------------------------------------------------------------------------

Chooser = Callable[[int, list[int]], Iterable[int]]


def _empty_attacker_data(model: nn.Module) -> AttackerData:
    shape = getattr(getattr(model, "info", None), "input_shape", None) or (1, 1, 1)
    return AttackerData(torch.zeros((0, *shape), dtype=torch.uint8), torch.zeros(0, dtype=torch.int64), 0)


class AttackedStrategy(Strategy):
    """Wraps a Flower strategy; in each round, the train replies of the chosen clients are replaced by a
    registered client attack's updates before the wrapped strategy aggregates them.

    attack: a CLIENT_ATTACKS name or dict (or a ClientAttack).
    malicious: the client ids that are compromised (their replies are rewritten whenever they are sampled),
      or a function (round, client ids of the round's replies) -> the client ids to rewrite this round.
    model: the architecture (a copy holding w_t goes into the AttackContext).
    attacker_data: the attackers' own data (AttackerData; backdoor attacks train on it); None: empty (the
      tailored attacks on benign updates need none).
    attacker_weight: the sample count each attacker reports; None: keep the count its reply reported.
    seed: the run seed (the attackers' streams are client_seed(seed, t, 0, 2) and (..., 3)).
    server_lr: what the attackers believe the server applies (default: the wrapped strategy's, else 1).
    The attacked rows stay where their clients' replies were; the wrapped strategy sees rewritten replies
    (w_t + crafted update, with the attacker's reported weight), nothing else.
    """

    def __init__(self, strategy: Strategy, attack: str | dict[str, Any] | ClientAttack, *,
                 malicious: Collection[int] | Chooser, model: nn.Module, attacker_data: AttackerData | None = None,
                 attacker_weight: float | None = None, seed: int = 0, server_lr: float | None = None,
                 keys: Sequence[str] | None = None, client_id_key: str = CLIENT_ID,
                 weighted_by_key: str = NUM_EXAMPLES) -> None:
        self.strategy = strategy
        self.attack = attack if isinstance(attack, ClientAttack) else make_component(CLIENT_ATTACKS, attack, "attack")
        self.attack_name = attack if isinstance(attack, str) else (
            attack.get("name", "attack") if isinstance(attack, Mapping) else type(attack).__name__)
        if callable(malicious):
            self.choose: Chooser = malicious
        else:
            pool = frozenset(int(c) for c in malicious)
            self.choose = lambda _round, ids: [c for c in ids if c in pool]
        self.model = model
        self.attacker_data = attacker_data if attacker_data is not None else _empty_attacker_data(model)
        if attacker_weight is not None and not (isinstance(attacker_weight, (int, float)) and attacker_weight > 0):
            raise ConfigError(f"attacker_weight must be a positive number, got {attacker_weight!r}")
        self.attacker_weight = attacker_weight
        self.seed = int(seed)
        self.server_lr = float(server_lr if server_lr is not None else getattr(strategy, "server_lr", 1.0))
        self.keys = list(keys) if keys is not None else None
        self.client_id_key = client_id_key
        self.weighted_by_key = weighted_by_key
        self.round_arrays: dict[int, ArrayRecord] = {}
        self.history: dict[int, dict[str, Any]] = {}

    def summary(self) -> None:
        log(INFO, "\t├──> Client attack %r rewrites the chosen replies", self.attack_name)
        self.strategy.summary()

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self.round_arrays = {server_round: arrays}
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        return self.strategy.aggregate_evaluate(server_round, replies)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        rewritten = self.rewrite(server_round, replies)
        arrays, metrics = self.strategy.aggregate_train(server_round, rewritten)
        info = self.history.get(server_round)
        if metrics is not None and info is not None:
            metrics["attack-malicious-ids"] = info["malicious_ids"]
            for k, v in _numbers("attack-info-", info["info"]).items():
                metrics[k] = v
        return arrays, metrics

    def _aggregator_params(self) -> dict[str, Any]:
        agg = getattr(self.strategy, "aggregator", None)
        return agg.public_params() if isinstance(agg, Aggregator) else {}

    def rewrite(self, server_round: int, replies: list[Message]) -> list[Message]:
        """The replies with the chosen clients' replaced by the attack's (others untouched)."""
        if server_round not in self.round_arrays:
            raise ConfigError(f"no global arrays recorded for round {server_round}")
        global_arrays = self.round_arrays[server_round]
        keys = self.keys if self.keys is not None else float_keys(global_arrays)
        w = arrays_to_flat(global_arrays, keys)
        rep = parse_replies(replies, w, keys, self.weighted_by_key, self.client_id_key)
        chosen = {int(c) for c in self.choose(server_round, list(rep.client_ids))}
        mal = [i for i, c in enumerate(rep.client_ids) if c in chosen]
        if not mal:
            return replies
        ben = [i for i in range(len(rep.client_ids)) if i not in set(mal)]
        mal_ids = [rep.client_ids[i] for i in mal]
        reported = rep.weights[mal]
        mal_weights = torch.full((len(mal),), float(self.attacker_weight), dtype=torch.float64) \
            if self.attacker_weight is not None else reported.clone()
        omniscient = bool(getattr(self.attack, "omniscient", False))
        model = copy.deepcopy(self.model)
        load_flat(model, w)
        benign, benign_w = rep.updates[ben], rep.weights[ben]
        ctx = AttackContext(
            model=model, global_weights=w.clone(), data=self.attacker_data, round=server_round,
            seed=client_seed(self.seed, server_round, 0, 2), n_malicious=len(mal), malicious_ids=tuple(mal_ids),
            malicious_weights=mal_weights.clone(), weight_sum=float(benign_w.sum()) + float(mal_weights.sum()),
            server_lr=self.server_lr, aggregator_params=self._aggregator_params(),
            benign_updates=benign.clone() if omniscient else None,
            benign_weights=benign_w.clone() if omniscient else None,
            aggregator=getattr(self.strategy, "aggregator", None),
        )
        with seeded(client_seed(self.seed, server_round, 0, 3)):
            result = self.attack.craft(ctx)
        result.check(len(mal), w.numel(), str(self.attack_name))
        self.history[server_round] = {"malicious_ids": mal_ids, "info": dict(result.info),
                                      "updates": result.updates.detach().clone()}
        by_msg = {id(rep.messages[i]): j for j, i in enumerate(mal)}
        out = []
        for msg in replies:
            j = by_msg.get(id(msg))
            if j is None:
                out.append(msg)
                continue
            arrays = flat_to_arrays(w + result.updates[j].to(w.dtype), global_arrays, keys)
            old = _single(msg.content.metric_records, "MetricRecord", msg)
            metrics = MetricRecord({k: v for k, v in old.items()})
            value = float(mal_weights[j])
            metrics[self.weighted_by_key] = int(value) if value.is_integer() and isinstance(old[self.weighted_by_key], int) \
                else value
            akey = next(iter(msg.content.array_records.keys()))
            mkey = next(iter(msg.content.metric_records.keys()))
            out.append(Message(content=RecordDict({akey: arrays, mkey: metrics}), metadata=msg.metadata))
        return out


# ---- the client side ---------------------------------------------------------------------------------------

@dataclass
class ClientData:
    """What a ClientApp trains on: the architecture, its images (uint8 or float) and labels, its id."""

    model: nn.Module
    images: torch.Tensor
    labels: torch.Tensor
    client_id: int


def local_from_config(config: Mapping[str, Any], default: LocalTraining) -> LocalTraining:
    """Local training from the train config ("local-epochs", "batch-size", "lr"), else `default`."""
    return LocalTraining(int(config.get("local-epochs", default.epochs)), int(config.get("batch-size", default.batch_size)),
                         float(config.get("lr", default.lr)))


def train_reply(msg: Message, data: ClientData, local: LocalTraining, trainer: LocalTrainer | None = None) -> Message:
    """One client's local SGD on a train message (`engines.LocalTrainer`: `sgd_local`'s arithmetic bit for bit,
    without its per-client copies; pass one trainer per model to reuse its working copy); the reply carries
    the client's weights, sample count, client id and training time."""
    started = time.perf_counter()
    arrays = msg.content.array_records
    global_arrays = arrays.get("arrays") or next(iter(arrays.values()))
    config = next(iter(msg.content.config_records.values()), ConfigRecord())
    t, seed = int(config.get("server-round", 0)), int(config.get("seed", 0))
    local = local_from_config(config, local)
    names = [k for k, _ in data.model.named_parameters()]
    w = arrays_to_flat(global_arrays, names)
    index = torch.arange(len(data.labels))
    cid = int(data.client_id)
    trainer = trainer if trainer is not None and trainer.model is data.model else LocalTrainer(data.model)
    with seeded(client_seed(seed, t, cid, 1)):  # this client's dropout stream
        delta = trainer(w, data.images, data.labels, index, client_seed(seed, t, cid), local)
    reply = flat_to_arrays(w + delta, model_arrays(data.model), names)
    metrics = MetricRecord({NUM_EXAMPLES: len(index), CLIENT_ID: cid, "train-s": time.perf_counter() - started})
    return Message(content=RecordDict({"arrays": reply, "metrics": metrics}), reply_to=msg)


def evaluate_reply(msg: Message, data: ClientData) -> Message:
    """Accuracy and loss of the received weights on the client's data."""
    from ..data.dataset import to_float

    model = copy.deepcopy(data.model)
    arrays = msg.content.array_records
    load_flat(model, arrays_to_flat(arrays.get("arrays") or next(iter(arrays.values())),
                                    [k for k, _ in model.named_parameters()]))
    model.eval()
    with torch.no_grad():
        logits = model(to_float(data.images))
        loss = float(torch.nn.functional.cross_entropy(logits, data.labels))
        acc = float((logits.argmax(1) == data.labels).float().mean())
    metrics = MetricRecord({NUM_EXAMPLES: len(data.labels), "accuracy": acc, "loss": loss})
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)


def query_reply(msg: Message, data: ClientData) -> Message:
    """Who this node is: its client id and sample count (for `discover_clients`)."""
    metrics = MetricRecord({CLIENT_ID: int(data.client_id), NUM_EXAMPLES: len(data.labels)})
    return Message(content=RecordDict({"metrics": metrics}), reply_to=msg)


def discover_clients(grid: Grid, expected: int = 1, timeout: float = 3600,
                     client_id_key: str = CLIENT_ID) -> dict[int, int]:
    """{client id: node id} of the connected nodes (once at least `expected` are connected), from one query
    message each (nodes running `client_app` answer with their client id). Useful to sample given clients
    (RobustStrategy's sampler)."""
    deadline = time.monotonic() + timeout
    while len(nodes := sorted(int(n) for n in grid.get_node_ids())) < expected:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(nodes)} of {expected} nodes connected within {timeout} s")
        time.sleep(0.2)
    messages = [Message(RecordDict({"config": ConfigRecord({})}), node, MessageType.QUERY) for node in nodes]
    out: dict[int, int] = {}
    for reply in grid.send_and_receive(messages, timeout=timeout):
        if reply.has_error():
            continue
        metrics = next(iter(reply.content.metric_records.values()))
        out[int(metrics[client_id_key])] = int(reply.metadata.src_node_id)
    return out


def _virtual(msg: Message, context: Context) -> Context:
    """The context with the message's "partition-id" (a virtual client, RobustStrategy(virtual_clients=...))
    in place of the node's own."""
    config = next(iter(msg.content.config_records.values()), None)
    if config is None or "partition-id" not in config:
        return context
    ctx = copy.copy(context)
    ctx.node_config = {**dict(context.node_config), "partition-id": int(config["partition-id"])}
    return ctx


def client_app(load: Callable[[Context], ClientData], local: LocalTraining | None = None,
               threads: int | None = 1) -> ClientApp:
    """A Flower ClientApp running the project's local SGD. `load(context)` gives the node's ClientData (cache
    it: it is called for every message); `local` is the default local training (the train config's
    "local-epochs", "batch-size", "lr" override it); `threads` sets torch's threads in the client process
    (1: one core per simulated client; None: leave it)."""
    default = local or LocalTraining()
    app = ClientApp()

    # The handlers are the entry functions of a Flower client process (a Ray actor, a SuperNode's ClientApp
    # process): that process is its own, so they may set its torch threads, as a forked engine worker does.
    @app.train()
    def _worker_train(msg: Message, context: Context) -> Message:
        if threads:
            torch.set_num_threads(threads)
        data = load(_virtual(msg, context))
        return train_reply(msg, data, default, _process_trainer(data.model))

    @app.evaluate()
    def _worker_evaluate(msg: Message, context: Context) -> Message:
        if threads:
            torch.set_num_threads(threads)
        return evaluate_reply(msg, load(context))

    @app.query()
    def _worker_query(msg: Message, context: Context) -> Message:
        return query_reply(msg, load(context))

    return app


class ClientProcess:
    """What a Flower client process keeps between messages: the data WriterClients loaded (by recipe) and the
    local trainer's working copy of the model. Flower's simulation engine ships the ClientApp, and with it
    every object its handlers hold, to its actors with each message, so nothing owned by the app survives
    from one message to the next; this state belongs to the client process (a Ray actor, a SuperNode's
    ClientApp process) instead, one `CLIENT_PROCESS` per process, and never crosses processes. The server
    side and the rest of the package never touch it."""

    def __init__(self) -> None:
        self.data: dict[tuple, tuple[Any, nn.Module]] = {}
        self.trainer: LocalTrainer | None = None

    def trainer_for(self, model: nn.Module) -> LocalTrainer:
        """The trainer of `model` (one at a time: a new model replaces the old one's working copy)."""
        if self.trainer is None or self.trainer.model is not model:
            self.trainer = LocalTrainer(model)
        return self.trainer


CLIENT_PROCESS = ClientProcess()


def _process_trainer(model: nn.Module) -> LocalTrainer:
    # Handlers call this module-level function (pickled by reference with them) rather than naming
    # CLIENT_PROCESS: a handler pickled by value would carry a copy of CLIENT_PROCESS, data and all, in
    # every message Flower ships to its actors.
    return CLIENT_PROCESS.trainer_for(model)


class WriterClients:
    """`load` for `client_app`: SuperNode "partition-id" k is writer k (clients ordered by writer id, as in
    `partition_by_writer`) of `dataset`, or writer `writers[k]` when a subset of positions is given; its
    client id is the writer id. The data is loaded once per process, on first use, and the loader pickles
    as its recipe only."""

    def __init__(self, architecture: str = "badnet-mnist", dataset: str = "mnist", data_root: str | None = None,
                 seed: int = 0, writers: Sequence[int] | None = None) -> None:
        self.architecture, self.dataset, self.data_root, self.seed = architecture, dataset, data_root, seed
        self.writers = list(writers) if writers is not None else None  # a subset of positions, if given
        self._clients: dict[int, ClientData] = {}

    def __getstate__(self) -> dict[str, Any]:  # ship the recipe, not the data
        return {**self.__dict__, "_clients": {}}

    def _loaded(self) -> tuple[Any, nn.Module]:
        key = (self.architecture, self.dataset, str(self.data_root), self.seed)
        if key not in CLIENT_PROCESS.data:
            from ..data import load_dataset
            from ..train import create_model
            from .partition import partition_by_writer

            data = load_dataset(self.dataset, "train", self.data_root, writers=True)
            model, _ = create_model(self.architecture, data.info, self.seed)
            CLIENT_PROCESS.data[key] = (partition_by_writer(data), model)
        return CLIENT_PROCESS.data[key]

    def federation(self) -> Any:
        """The dataset split by writer (FederatedData)."""
        return self._loaded()[0]

    @property
    def model(self) -> nn.Module:
        """The architecture (its start weights: seeded by `seed`)."""
        return self._loaded()[1]

    @property
    def num_clients(self) -> int:
        return len(self.writers) if self.writers is not None else self.federation().num_clients

    def client(self, partition: int) -> ClientData:
        if partition not in self._clients:
            fed = self.federation()
            pos = self.writers[partition] if self.writers is not None else partition
            if not 0 <= pos < fed.num_clients:
                raise ConfigError(f"partition-id {partition} is not one of the {fed.num_clients} writers")
            idx = fed.indices[pos]
            self._clients[partition] = ClientData(self.model, fed.dataset.images[idx], fed.dataset.labels[idx],
                                                  fed.client_ids[pos])
        return self._clients[partition]

    def __call__(self, context: Context) -> ClientData:
        return self.client(int(context.node_config["partition-id"]))


def initial_arrays(model: nn.Module, weights: torch.Tensor | None = None) -> ArrayRecord:
    """The global model to start from (its parameters; `weights` flat, if given, replace them)."""
    if weights is not None:
        model = copy.deepcopy(model)
        load_flat(model, weights)
    return model_arrays(model)


def flat_weights(arrays: ArrayRecord, model: nn.Module) -> torch.Tensor:
    """The flat parameter vector (engines.flat_params order) of a record holding the model's parameters."""
    return arrays_to_flat(arrays, [k for k, _ in model.named_parameters()])

