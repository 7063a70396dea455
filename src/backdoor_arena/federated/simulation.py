"""Running a scenario: the round pipeline (pipeline.py), one `Record` per round made from its typed results,
a summary, and the run's files (records.jsonl, run.json, curves.png; per scenario summary.md and figures).

    from backdoor_arena.federated import load_scenario, simulate
    result = simulate(load_scenario("configs/fl/quick.toml"), out="runs/fl-quick")

Thread settings are the caller's (the api layer applies a scenario's `threads`: `config.scenario_threads`).
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
from tqdm.auto import tqdm

from ..records import Record, write_jsonl
from ..runtime import versions
from .aggregators import update_norms
from .config import Scenario
from .pipeline import Evaluation, Federation, FederationCache, RoundPipeline, RoundResult, client_seed

__all__ = ["RoundRecorder", "SimulationResult", "client_seed", "run_scenario", "simulate", "summarise",
           "variant_dir", "write_run"]

VERB = "fl-round"


@dataclass
class SimulationResult:
    records: list[dict[str, Any]]  # Record.to_dict() of round 0 (start) and of every round
    summary: dict[str, Any]
    weights: torch.Tensor  # final global weights, flat
    engine: str
    engine_timing: dict[str, float] = field(default_factory=dict)


def _percentile(norms: torch.Tensor, q: float) -> float | None:
    return None if norms.numel() == 0 else float(torch.quantile(norms.double(), q))


class RoundRecorder:
    """Turns the pipeline's results into Records (verb "fl-round"): subject = scenario, variant, round,
    phase, engine and client ids; metrics = accuracies under the uniform names, update norms, what the
    aggregator and the attack report, and the time of every stage."""

    def __init__(self, fed: Federation, label: str = "") -> None:
        sc = fed.scenario
        self.fed = fed
        self.config = sc.to_dict()
        self.seed = sc["seed"]
        self.versions = versions()
        self.subject = {"scenario": sc["name"], "variant": label, "engine": fed.engine_name}
        self.started = time.perf_counter()

    def _record(self, subject: dict[str, Any], metrics: dict[str, Any]) -> Record:
        return Record(VERB, self.config, self.seed, metrics, {**self.subject, **subject}, self.versions)

    def start(self, ev: Evaluation) -> Record:
        self.started = time.perf_counter()
        return self._record(
            {"round": 0, "phase": "start", "malicious_clients": [], "sampled_clients": []},
            {"clean_accuracy": ev.clean_accuracy, "attack_success_rate": ev.attack_success_rate, "n_malicious": 0,
             "benign_norm_p50": None, "benign_norm_p90": None, "benign_norm_p99": None, "malicious_norms": [],
             "wall_s": 0.0})

    def round(self, rr: RoundResult, ev: Evaluation) -> Record:
        """`ev` is the round's evaluation, or the last one when the round was not evaluated."""
        sel, agg = rr.selection, rr.aggregation
        b_norms = update_norms(rr.benign_updates)
        m_norms = update_norms(rr.malicious_updates).tolist()
        metrics: dict[str, Any] = {
            "clean_accuracy": ev.clean_accuracy, "attack_success_rate": ev.attack_success_rate,
            "evaluated": rr.evaluation is not None, "n_malicious": len(sel.malicious),
            "benign_norm_p50": _percentile(b_norms, 0.5), "benign_norm_p90": _percentile(b_norms, 0.9),
            "benign_norm_p99": _percentile(b_norms, 0.99), "malicious_norms": m_norms,
            "malicious_norm": max(m_norms) if m_norms else None,
            "aggregate_norm": float(torch.linalg.vector_norm(agg.update)),
            "clipped": agg.clipped(),
            "n_selected": None if agg.selected is None else int(agg.selected.numel()),
        }
        metrics.update({f"aggregator_{k}": v for k, v in agg.info.items()})
        if rr.attack is not None:
            metrics.update({f"attack_{k}": v for k, v in rr.attack.info.items()})
        metrics.update({f"time_{k}_s": v for k, v in rr.times.items()})
        metrics["wall_s"] = time.perf_counter() - self.started
        subject = {"round": rr.round, "phase": sel.phase, "malicious_clients": self.fed.client_ids(sel.malicious),
                   "sampled_clients": self.fed.client_ids(sel.sampled)}
        return self._record(subject, metrics)


def simulate(sc: Scenario, out: str | Path | None = None, progress: bool = True, data_root: str | Path | None = None,
             label: str = "", *, cache: FederationCache | None = None) -> SimulationResult:
    """Run one scenario (its variants are run by `run_scenario`); writes out/records.jsonl and plots if `out`.
    `cache` (owned by the caller) lets several runs share loaded data, pre-training and engine choices."""
    fed = Federation.setup(sc, data_root, progress, cache)
    pipeline = RoundPipeline(fed)
    recorder = RoundRecorder(fed, label)
    ev = pipeline.evaluate()
    records = [recorder.start(ev).to_dict()]
    bar = tqdm(total=sc["federation.rounds"], desc=f"fl {sc['name']}{(' ' + label) if label else ''}", unit="round",
               disable=not progress, leave=False)
    for rr in pipeline.run():
        ev = rr.evaluation or ev
        records.append(recorder.round(rr, ev).to_dict())
        bar.update()
        bar.set_postfix(clean=f"{ev.clean_accuracy:.3f}", asr=f"{ev.attack_success_rate:.3f}",
                        mal=len(rr.selection.malicious))
    bar.close()
    summary = summarise(records, fed.aggregator.public_params().get("max_norm"))
    summary.update({"scenario": sc["name"], "engine": fed.engine_name, "engine_timing": fed.engine_timing,
                    "target_clients": fed.client_ids(list(fed.task.target_clients)),
                    "n_backdoor_train": len(fed.task.attacker_index), "n_backdoor_eval": len(fed.task.eval_index),
                    "malicious_pool": len(fed.malicious_pool), "num_clients": fed.data.num_clients})
    result = SimulationResult(records, summary, pipeline.weights, fed.engine_name, fed.engine_timing)
    if out is not None:
        write_run(Path(out), sc, result, label)
    return result


def summarise(records: list[dict[str, Any]], max_norm: float | None = None) -> dict[str, Any]:
    """Final and mean accuracies over a run's records; with the aggregator's clipping bound `max_norm`, the
    share of rounds whose benign p90 norm stays below it."""
    rounds = [r for r in records if r["round"] > 0]
    attack = [r for r in rounds if r["phase"] == "attack"] or rounds
    asr = [r["attack_success_rate"] for r in attack]
    norms90 = [r["benign_norm_p90"] for r in rounds if r["benign_norm_p90"] is not None]
    out = {
        "scenario": records[0].get("scenario"), "rounds": len(rounds),
        "final_clean_accuracy": records[-1]["clean_accuracy"],
        "final_attack_success_rate": records[-1]["attack_success_rate"],
        "mean_attack_success_rate": float(np.mean(asr)) if asr else None,
        "start_clean_accuracy": records[0]["clean_accuracy"],
        "start_attack_success_rate": records[0]["attack_success_rate"],
        "attacked_rounds": sum(1 for r in rounds if r["n_malicious"]),
        "median_benign_norm_p90": float(np.median(norms90)) if norms90 else None,
        "wall_s": records[-1]["wall_s"],
    }
    if max_norm:
        out["max_norm"] = max_norm
        out["rounds_p90_below_bound"] = float(np.mean([n <= max_norm for n in norms90])) if norms90 else None
    return out


def variant_dir(label: str) -> str:
    """A variant's folder name: its label with path separators, spaces and brackets replaced, so that a
    label such as "f=1/10 (eps 0.33%)" is one folder, not two."""
    return re.sub(r"[^\w.=%+-]+", "-", label).strip("-") or "variant"


def write_run(out: Path, sc: Scenario, result: SimulationResult, label: str = "") -> None:
    from . import plots

    out.mkdir(parents=True, exist_ok=True)
    write_jsonl(out / "records.jsonl", result.records)
    meta = {"scenario": sc.to_dict(), "source": sc.source, "variant": label, "seed": sc["seed"],
            "versions": versions(), "summary": result.summary}
    (out / "run.json").write_text(json.dumps(meta, indent=1, sort_keys=True, default=str))
    plots.plot_run(out / "curves.png", result.records, title=f"{sc['name']} {label}".strip())


def run_scenario(sc: Scenario, out: str | Path, progress: bool = True, data_root: str | Path | None = None,
                 *, cache: FederationCache | None = None) -> dict[str, SimulationResult]:
    """Run a scenario, or each of its variants, into `out` (one sub-folder per variant), then write the
    combined figure (panels and overlay) and summary table. The variants share one `FederationCache`."""
    from . import plots

    out = Path(out)
    cache = cache if cache is not None else FederationCache()
    labels = list(sc.variants) or [""]
    results: dict[str, SimulationResult] = {}
    for label in labels:
        run_sc = sc.variant(label) if label else sc
        results[label] = simulate(run_sc, out / variant_dir(label) if label else out, progress, data_root, label,
                                  cache=cache)
    if sc.variants:
        runs = {lb: r.records for lb, r in results.items()}
        plots.plot_panels(out / "panels.png", runs, title=sc["name"])
        plots.plot_overlay(out / "overlay.png", runs, title=sc["name"])
    rows = [{"variant": lb or sc["name"], **r.summary} for lb, r in results.items()]
    plots.write_summary(out, sc["name"], sc["description"], rows)
    return results
