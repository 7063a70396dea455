"""The FedAvg simulation loop with attackers and a server aggregator; one flat record per round.

Round t: sample clients_per_round of the K writers without replacement; the adversary model says which
sampled clients are malicious; benign clients train locally (engine); the attackers craft their update;
the aggregator turns the [n, d] stack into one update; w_{t+1} = w_t + server_lr * update; evaluate.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..data import Dataset, load_dataset
from ..metrics import predict
from ..runtime import seeded, set_threads, versions
from ..train import TrainConfig, create_model, fit
from .aggregators import make_aggregator, update_norms
from .attacks import (
    ADVERSARIES,
    CLIENT_ATTACKS,
    AttackContext,
    make_attacker_data,
    make_backdoor_task,
    make_component,
)
from .config import Scenario
from .engines import LocalTraining, choose_engine, flat_params, get_engine, load_flat
from .leaf import WRITER_FILES, load_writer_files
from .partition import partition_by_writer

_PRETRAINED: dict[tuple, torch.Tensor] = {}


@dataclass
class SimulationResult:
    records: list[dict[str, Any]]
    summary: dict[str, Any]
    weights: torch.Tensor  # final global weights, flat
    engine: str
    engine_timing: dict[str, float] = field(default_factory=dict)


def client_seed(seed: int, round_: int, client_id: int, stream: int = 0) -> int:
    """Independent, reproducible stream per (run seed, round, client); stream > 0 for the round's other
    draws (1: dropout of benign clients, 2: attacker batches, 3: attacker dropout)."""
    entropy = [seed, round_, stream, client_id]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0] >> np.uint64(1))


def _pretrained(model: nn.Module, sc: Scenario, train_set, progress: bool) -> torch.Tensor:
    """Centralised pre-training on the union of the clients' data (the paper attacks a converged model);
    memoised per process so that the variants of a scenario share it."""
    n = sc["warmup.pretrain_samples"]
    key = (sc["model.architecture"], sc["warmup.pretrain_epochs"], sc["warmup.pretrain_lr"], n, sc["seed"],
           sc["data.dataset"], sc["data.train_path"], sc["data.digits_only"])  # variants may change the data
    if key not in _PRETRAINED:
        if n and n < len(train_set):
            pick = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(sc["seed"] + 7))[:n]
            train_set = train_set.subset(pick.sort().values)
        cfg = TrainConfig(epochs=sc["warmup.pretrain_epochs"], batch_size=64, lr=sc["warmup.pretrain_lr"],
                          seed=sc["seed"], threads=sc["threads"] or None, progress=progress)
        fit(model, train_set, cfg, description="pre-train")
        _PRETRAINED[key] = flat_params(model).clone()
    return _PRETRAINED[key].clone()


def _accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    if len(labels) == 0:
        return float("nan")
    return float((predict(model, images) == labels).float().mean())


def _percentile(norms: torch.Tensor, q: float) -> float | None:
    return None if norms.numel() == 0 else float(torch.quantile(norms.double(), q))


def _load_data(sc: Scenario, data_root: str | Path | None) -> tuple[Dataset, Dataset]:
    """(train with writer ids, test): MNIST's from the data folder, or EMNIST's from the scenario's files."""
    name = sc["data.dataset"]
    if name in WRITER_FILES:
        return (load_writer_files(name, sc["data.train_path"], digits_only=sc["data.digits_only"]),
                load_writer_files(name, sc["data.test_path"], digits_only=sc["data.digits_only"]))
    return load_dataset(name, "train", data_root, writers=True), load_dataset(name, "test", data_root)


def simulate(sc: Scenario, out: str | Path | None = None, progress: bool = True, data_root: str | Path | None = None,
             label: str = "") -> SimulationResult:
    """Run one scenario (its variants are run by `run_scenario`); writes out/records.jsonl and plots if `out`."""
    set_threads(sc["threads"] or None)
    seed = sc["seed"]
    train_set, test_set = _load_data(sc, data_root)
    if sc["data.test_samples"] and sc["data.test_samples"] < len(test_set):
        pick = torch.randperm(len(test_set), generator=torch.Generator().manual_seed(seed))[: sc["data.test_samples"]]
        test_set = test_set.subset(pick.sort().values)
    fed = partition_by_writer(train_set)
    k_total = fed.num_clients
    per_round = min(sc["federation.clients_per_round"], k_total)
    task = make_backdoor_task(fed, sc["backdoor.tasks"], torch.Generator().manual_seed(seed + 1),
                              sc["backdoor.source"], sc["backdoor.target"])
    attacker_data = make_attacker_data(fed, task, sc["backdoor.attacker_clean_samples"],
                                       torch.Generator().manual_seed(seed + 2))
    attack = None if sc.attack["name"] == "none" else make_component(CLIENT_ATTACKS, sc.attack, "attack")
    adversary = make_component(ADVERSARIES, sc.adversary, "adversary")
    malicious_set = adversary.setup(k_total, task.target_clients, torch.Generator().manual_seed(seed + 3))
    aggregator = make_aggregator(sc.aggregator)
    g_sample = torch.Generator().manual_seed(seed + 4)
    g_server = torch.Generator().manual_seed(seed + 5)
    state: dict[str, Any] = {}

    model, _ = create_model(sc["model.architecture"], train_set.info, seed)
    w = _pretrained(model, sc, train_set, progress) if sc["warmup.pretrain_epochs"] else flat_params(model)
    cfg = LocalTraining(sc["federation.local_epochs"], sc["federation.batch_size"], sc["federation.client_lr"])
    images, labels = train_set.images, train_set.labels
    sizes = fed.sizes()
    attacker_weight = float(sizes.float().mean())  # each attacker reports an average client's sample count
    eval_bd_x, eval_bd_y = images[task.eval_index], torch.full((len(task.eval_index),), task.target)
    eta = sc["federation.server_lr"]

    engine_name, timing = sc["federation.engine"], {}
    if engine_name == "auto":
        load_flat(model, w)
        probe = torch.randperm(k_total, generator=torch.Generator().manual_seed(seed + 6))[:per_round].tolist()
        engine_name, timing = choose_engine(model, images, labels, [fed.indices[k] for k in probe], cfg)
    engine = get_engine(engine_name)

    def evaluate() -> tuple[float, float]:
        load_flat(model, w)
        return _accuracy(model, test_set.images, test_set.labels), _accuracy(model, eval_bd_x, eval_bd_y)

    records: list[dict[str, Any]] = []
    main0, bd0 = evaluate()
    base = {"scenario": sc["name"], "variant": label, "seed": seed, "engine": engine_name}
    records.append({**base, "round": 0, "phase": "start", "main_accuracy": main0, "backdoor_accuracy": bd0,
                    "malicious_clients": [], "n_malicious": 0, "benign_norm_p50": None, "benign_norm_p90": None,
                    "benign_norm_p99": None, "malicious_norms": [], "wall_time_s": 0.0})
    rounds = sc["federation.rounds"]
    started = time.perf_counter()
    bar = tqdm(range(1, rounds + 1), desc=f"fl {sc['name']}{(' ' + label) if label else ''}", unit="round",
               disable=not progress, leave=False)
    main_acc, bd_acc = main0, bd0
    for t in bar:
        t0 = time.perf_counter()
        sampled = torch.randperm(k_total, generator=g_sample)[:per_round].tolist()
        attack_round = t - 1 - sc["warmup.rounds"]
        mal = adversary.malicious(t, sampled, task.target_clients, malicious_set, attack_round) if attack else []
        mal_set = set(mal)
        benign = [k for k in sampled if k not in mal_set]
        t1 = time.perf_counter()
        with seeded(client_seed(seed, t, 0, 1)):  # dropout stream of this round
            u_benign = engine.train(model, w, images, labels, [fed.indices[k] for k in benign],
                                    [client_seed(seed, t, fed.client_ids[k]) for k in benign], cfg)
        w_benign = sizes[benign].double()
        t2 = time.perf_counter()
        attack_info: dict[str, float] = {}
        updates, weights = u_benign, w_benign
        if mal:
            ctx = AttackContext(model, w, attacker_data, t, client_seed(seed, t, 0, 2), len(mal), attacker_weight,
                                float(w_benign.sum()) + len(mal) * attacker_weight, eta)
            with seeded(client_seed(seed, t, 0, 3)):
                u_mal, attack_info = attack.craft(ctx)
            updates = torch.cat([u_benign, u_mal.unsqueeze(0).expand(len(mal), -1)])
            weights = torch.cat([w_benign, torch.full((len(mal),), attacker_weight, dtype=torch.float64)])
        t3 = time.perf_counter()
        update, agg_info = aggregator.aggregate(updates, weights, g_server, state)
        w = w + eta * update.to(w.dtype)
        t4 = time.perf_counter()
        if t % sc["federation.eval_every"] == 0 or t == rounds:
            main_acc, bd_acc = evaluate()
            evaluated = True
        else:
            evaluated = False
        t5 = time.perf_counter()
        b_norms = update_norms(u_benign)
        m_norms = update_norms(updates[len(benign):]).tolist()
        records.append({
            **base, "round": t, "phase": "attack" if attack_round >= 0 else "warmup",
            "main_accuracy": main_acc, "backdoor_accuracy": bd_acc, "evaluated": evaluated,
            "malicious_clients": [fed.client_ids[k] for k in mal], "n_malicious": len(mal),
            "sampled_clients": [fed.client_ids[k] for k in sampled],
            "benign_norm_p50": _percentile(b_norms, 0.5), "benign_norm_p90": _percentile(b_norms, 0.9),
            "benign_norm_p99": _percentile(b_norms, 0.99), "malicious_norms": m_norms,
            "malicious_norm": max(m_norms) if m_norms else None,
            "boost": attack_info.get("boost"), "attack_unboosted_norm": attack_info.get("unboosted_norm"),
            "aggregate_norm": float(torch.linalg.vector_norm(update)),
            "clipped": agg_info.get("clipped"),
            "time_sample_s": t1 - t0, "time_benign_s": t2 - t1, "time_attack_s": t3 - t2,
            "time_aggregate_s": t4 - t3, "time_eval_s": t5 - t4, "wall_time_s": time.perf_counter() - started,
        })
        bar.set_postfix(main=f"{main_acc:.3f}", backdoor=f"{bd_acc:.3f}", mal=len(mal))
    bar.close()
    summary = summarise(records, sc)
    summary.update({"engine": engine_name, "engine_timing": timing, "target_clients": [fed.client_ids[k] for k in
                    task.target_clients], "n_backdoor_train": len(task.attacker_index),
                    "n_backdoor_eval": len(task.eval_index), "malicious_pool": len(malicious_set),
                    "num_clients": k_total})
    result = SimulationResult(records, summary, w, engine_name, timing)
    if out is not None:
        write_run(Path(out), sc, result, label)
    return result


def summarise(records: list[dict[str, Any]], sc: Scenario) -> dict[str, Any]:
    rounds = [r for r in records if r["round"] > 0]
    attack = [r for r in rounds if r["phase"] == "attack"] or rounds
    bd = [r["backdoor_accuracy"] for r in attack]
    norms90 = [r["benign_norm_p90"] for r in rounds if r["benign_norm_p90"] is not None]
    out = {
        "scenario": sc["name"], "rounds": len(rounds), "final_main_accuracy": records[-1]["main_accuracy"],
        "final_backdoor_accuracy": records[-1]["backdoor_accuracy"],
        "mean_backdoor_accuracy": float(np.mean(bd)) if bd else None,
        "start_main_accuracy": records[0]["main_accuracy"], "start_backdoor_accuracy": records[0]["backdoor_accuracy"],
        "attacked_rounds": sum(1 for r in rounds if r["n_malicious"]),
        "median_benign_norm_p90": float(np.median(norms90)) if norms90 else None,
        "wall_time_s": records[-1]["wall_time_s"],
    }
    bound = sc.aggregator.get("max_norm") or (sc.aggregator.get("inner") or {}).get("max_norm")
    if bound:
        out["max_norm"] = bound
        out["rounds_p90_below_bound"] = float(np.mean([n <= bound for n in norms90])) if norms90 else None
    return out


def variant_dir(label: str) -> str:
    """A variant's folder name: its label with path separators, spaces and brackets replaced, so that a
    label such as "f=1/10 (eps 0.33%)" is one folder, not two."""
    return re.sub(r"[^\w.=%+-]+", "-", label).strip("-") or "variant"


def write_run(out: Path, sc: Scenario, result: SimulationResult, label: str = "") -> None:
    from ..report import write_jsonl
    from . import plots

    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "records.jsonl", result.records)
    meta = {"scenario": sc.to_dict(), "source": sc.source, "variant": label, "seed": sc["seed"],
            "versions": versions(), "summary": result.summary}
    (out / "run.json").write_text(json.dumps(meta, indent=1, sort_keys=True, default=str))
    plots.plot_run(out / "curves.png", result.records, title=f"{sc['name']} {label}".strip())


def run_scenario(sc: Scenario, out: str | Path, progress: bool = True,
                 data_root: str | Path | None = None) -> dict[str, SimulationResult]:
    """Run a scenario, or each of its variants, into `out` (one sub-folder per variant), then write the
    combined figure (panels and overlay) and summary table."""
    from ..report import markdown_table
    from . import plots

    out = Path(out)
    labels = list(sc.variants) or [""]
    results: dict[str, SimulationResult] = {}
    for label in labels:
        run_sc = sc.variant(label) if label else sc
        results[label] = simulate(run_sc, out / variant_dir(label) if label else out, progress, data_root, label)
    if sc.variants:
        runs = {lb: r.records for lb, r in results.items()}
        plots.plot_panels(out / "panels.png", runs, title=sc["name"])
        plots.plot_overlay(out / "overlay.png", runs, title=sc["name"])
    rows = [{"variant": lb or sc["name"], **r.summary} for lb, r in results.items()]
    cols = ["variant", "rounds", "attacked_rounds", "start_main_accuracy", "final_main_accuracy",
            "mean_backdoor_accuracy", "final_backdoor_accuracy", "median_benign_norm_p90", "engine", "wall_time_s"]
    fmts = {c: ".3f" for c in cols if "accuracy" in c or "norm" in c} | {"wall_time_s": ".0f"}
    (out / "summary.md").write_text(f"# {sc['name']}\n\n{sc['description']}\n\n{markdown_table(rows, cols, fmts)}")
    (out / "summary.json").write_text(json.dumps(rows, indent=1, default=str))
    return results
