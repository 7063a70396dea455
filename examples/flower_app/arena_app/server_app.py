"""The ServerApp: a RobustStrategy with the configured aggregator, optionally wrapped in an AttackedStrategy
that rewrites the replies of the configured malicious writers with a registered client attack."""

from __future__ import annotations

import copy
import json
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from backdoor_arena.data import load_dataset
from backdoor_arena.federated.flower import (
    AttackedStrategy,
    RobustStrategy,
    WriterClients,
    flat_weights,
    initial_arrays,
)
from backdoor_arena.federated.task import make_attacker_data, make_backdoor_task
from backdoor_arena.metrics import predict

app = ServerApp()


def component(text: str) -> Any:
    """A registered name, or a JSON table {"name": ..., params...}."""
    text = text.strip()
    return json.loads(text) if text.startswith("{") else text


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    seed = int(cfg["seed"])
    clients = WriterClients(str(cfg["architecture"]), "mnist", seed=seed)
    fed = clients.federation()  # the server's own copy of MNIST: the attackers' data and the test images
    model = clients.model
    virtual = bool(cfg["virtual-clients"])  # all writers simulated on however many SuperNodes are connected
    strategy = RobustStrategy(component(str(cfg["aggregator"])), clients_per_round=int(cfg["clients-per-round"]),
                              server_lr=float(cfg["server-lr"]), seed=seed,
                              virtual_clients=fed.num_clients if virtual else None, min_available_nodes=1)
    run = strategy
    attack = component(str(cfg["attack"]))
    if attack != "none":
        task = make_backdoor_task(fed, 30, torch.Generator().manual_seed(seed + 1))
        data = make_attacker_data(fed, task, 200, torch.Generator().manual_seed(seed + 2))
        fixed = {int(c) for c in str(cfg["malicious-clients"]).split(",") if c.strip()}
        per_round = int(cfg["attackers-per-round"])

        def malicious(_round: int, ids: list[int]) -> list[int]:
            """The configured writers when sampled, plus the first `attackers-per-round` of the others."""
            chosen = [c for c in ids if c in fixed]
            return chosen + [c for c in ids if c not in fixed][:per_round]

        run = AttackedStrategy(strategy, attack, malicious=malicious, model=model, attacker_data=data,
                               attacker_weight=float(fed.sizes().float().mean()), seed=seed)

    test = load_dataset("mnist", "test")
    n_test = int(cfg["test-samples"])
    judge = copy.deepcopy(model)  # evaluation loads weights into its own copy

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        if not n_test:
            return None
        from backdoor_arena.federated.engines import load_flat

        load_flat(judge, flat_weights(arrays, judge))
        acc = float((predict(judge, test.images[:n_test]) == test.labels[:n_test]).float().mean())
        return MetricRecord({"clean_accuracy": acc})

    result = run.start(grid, initial_arrays(model), num_rounds=int(cfg["num-server-rounds"]),
                       train_config=ConfigRecord({"local-epochs": int(cfg["local-epochs"]),
                                                  "batch-size": int(cfg["batch-size"]), "lr": float(cfg["lr"])}),
                       evaluate_fn=evaluate)
    for t, log in sorted(strategy.history.items()):
        attacked = f" ({len(run.history.get(t, {}).get('malicious_ids', []))} rewritten by the attack)" \
            if run is not strategy else ""
        print(f"round {t}: {len(log.client_ids)} replies{attacked}, {len(log.selected_ids)} selected, "
              f"update norm {log.update_norm:.4f}, clean accuracy "
              f"{result.evaluate_metrics_serverapp.get(t, {}).get('clean_accuracy', float('nan')):.4f}")
