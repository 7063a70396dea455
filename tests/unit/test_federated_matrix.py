"""The attack x aggregator matrix (fl matrix), the by-class and iid partitions and local steps: validation
errors name the cell and the fix, a tiny MNIST matrix writes records, heatmap and table and resumes, and an
attack that breaks FedAvg is stopped by a robust rule on the same round."""

from __future__ import annotations

import pytest
import torch

from backdoor_arena.data import load_dataset
from backdoor_arena.errors import ConfigError
from backdoor_arena.federated.config import load_scenario
from backdoor_arena.federated.matrix import loads_matrix, run_matrix, worst_cases
from backdoor_arena.federated.partition import partition_by_class, partition_iid
from backdoor_arena.federated.pipeline import Federation, RoundPipeline

BASE = """
name = "tiny-matrix"
seed = 0
[data]
dataset = "mnist"
partition = "iid"
clients = 12
test_samples = 300
[model]
architecture = "badnet-mnist"
[federation]
rounds = 3
clients_per_round = 12
local_steps = 2
batch_size = 32
client_lr = 0.1
engine = "sequential"
eval_every = 3
[warmup]
pretrain_epochs = 1
pretrain_samples = 3000
[backdoor]
tasks = 1
[adversary]
name = "random-sampling"
fraction = 0.1667
"""

MATRIX = BASE + """
[matrix]
attacks = [{ name = "none" }, { label = "ipm 10", name = "ipm", epsilon = 10.0 }]
aggregators = [{ name = "fedavg" }, { name = "coordinate-median", f = 2 }]
"""


@pytest.mark.parametrize(("text", "needle"), [
    (BASE, "needs a [matrix] table"),
    (MATRIX.replace('metric', 'x') + "metric = \"loss\"\n", "matrix.metric must be one of"),
    (BASE + "[matrix]\nattacks = []\naggregators = [{ name = \"fedavg\" }]\n", "matrix.attacks must be a non-empty"),
    (BASE + "[matrix]\nattacks = [{ name = \"alie\" }, { name = \"alie\" }]\naggregators = [{ name = \"fedavg\" }]\n",
     "used twice"),
    (BASE + "[matrix]\nattacks = [{ name = \"alie\" }]\naggregators = [{ name = \"krum\", f = 6 }]\n",
     "cell krum(f=6) x alie"),
    (BASE + "[matrix]\nattacks = [{ name = \"alie\" }]\naggregators = [{ name = \"krun\" }]\n", "krum"),
])
def test_bad_matrix_files_are_one_clear_error(text, needle):
    with pytest.raises(ConfigError) as err:
        loads_matrix(text)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_fl_run_on_a_matrix_file_points_to_fl_matrix(tmp_path):
    path = tmp_path / "m.toml"
    path.write_text(MATRIX)
    with pytest.raises(ConfigError, match="backdoor-arena fl matrix"):
        load_scenario(path)


def test_partitions_by_class_and_iid(data_root):
    train = load_dataset("mnist", "train", data_root)
    fed = partition_by_class(train, 12, torch.Generator().manual_seed(0))
    for k, idx in enumerate(fed.indices):
        assert bool((train.labels[idx] == k % 10).all())
    shared = torch.cat([fed.indices[0], fed.indices[10]])  # class 0 split between clients 0 and 10, no overlap
    assert len(shared.unique()) == int((train.labels == 0).sum())
    iid = partition_iid(train, 7, torch.Generator().manual_seed(0))
    sizes = iid.sizes()
    assert int(sizes.sum()) == len(train) and int(sizes.max() - sizes.min()) <= 1
    assert len(torch.cat(iid.indices).unique()) == len(train)


def test_local_steps_draw_fresh_batches_from_the_clients_own_data(data_root):
    sc = load_scenario_text(BASE)
    fed = Federation.setup(sc, data_root, progress=False)
    pipe = RoundPipeline(fed)
    a, b = pipe.client_batches(1, 3), pipe.client_batches(2, 3)
    assert len(a) == 2 * 32 and set(a.tolist()) <= set(fed.data.indices[3].tolist())
    assert not torch.equal(a, b) and torch.equal(a, pipe.client_batches(1, 3))
    assert pipe.local.epochs == 1


def load_scenario_text(text: str):
    from backdoor_arena.federated.config import _parse_toml, build_scenario

    return build_scenario(_parse_toml(text, "t"), "t")


def test_a_tiny_matrix_runs_resumes_and_shows_the_robust_rule_holding(tmp_path, data_root):
    matrix = loads_matrix(MATRIX)
    seen = []
    records = run_matrix(matrix, tmp_path, progress=False, data_root=data_root, on_cell=lambda c, r: seen.append(c))
    assert len(records) == 4 == len(seen)
    assert {(r["aggregator"], r["attack"]) for r in records} == {
        (g, a) for g in ("fedavg", "coordinate-median(f=2)") for a in ("none", "ipm 10")}
    for name in ("matrix.jsonl", "matrix.png", "matrix.md"):
        assert (tmp_path / name).stat().st_size > 0
    by = {(r["aggregator"], r["attack"]): r["clean_accuracy"] for r in records}
    # two attackers sending -10 x the benign mean reverse FedAvg's step; the median ignores them
    assert by[("fedavg", "ipm 10")] < by[("fedavg", "none")] - 0.2
    assert by[("coordinate-median(f=2)", "ipm 10")] > by[("fedavg", "ipm 10")] + 0.2
    worst = worst_cases(records, "clean_accuracy", ["fedavg", "coordinate-median(f=2)"], ["none", "ipm 10"])
    assert worst["fedavg"][0] == "ipm 10"
    assert "worst case" in (tmp_path / "matrix.md").read_text()
    again = run_matrix(matrix, tmp_path, progress=False, data_root=data_root, on_cell=lambda c, r: seen.append(c))
    assert len(seen) == 4 and [r["run_id"] for r in again] == [r["run_id"] for r in records]  # resumed: none rerun


def test_round_records_carry_mixtailors_draw_and_fltrust_trains_on_root_data_outside_the_test_subset(data_root):
    from backdoor_arena.federated.simulation import simulate

    text = BASE.replace("rounds = 3", "rounds = 4").replace("eval_every = 3", "eval_every = 4")
    pool = '[aggregator]\nname = "mixtailor"\nf = 2\npool = ["krum", "coordinate-median", { name = "fltrust", root_samples = 40 }]\n'
    sc = load_scenario_text(text + pool)
    a = simulate(sc, None, progress=False, data_root=data_root)
    b = simulate(sc, None, progress=False, data_root=data_root)
    draws = [r["aggregator_rule"] for r in a.records if r["round"] > 0]
    assert len(draws) == 4 and draws == [r["aggregator_rule"] for r in b.records if r["round"] > 0]
    assert torch.equal(a.weights, b.weights)
    fed = Federation.setup(sc, data_root, progress=False)
    assert fed.root_data is not None and len(fed.root_data) == 40
    test_images = {bytes(x.numpy().tobytes()) for x in fed.test_set.images}
    assert not any(bytes(x.numpy().tobytes()) in test_images for x in fed.root_data.images)
    pipe = RoundPipeline(fed)
    g0 = pipe.server_update(1)
    assert g0.shape == pipe.weights.shape and float(g0.norm()) > 0


def test_a_matrix_on_the_processes_executor_equals_the_one_run_here_and_resumes(tmp_path, data_root):
    """Cells as parallel sweep jobs (one thread each): the same records as one after another at one thread."""
    from backdoor_arena.federated.matrix import load_matrix
    from backdoor_arena.sweep import Executor

    path = tmp_path / "m.toml"
    path.write_text(MATRIX.replace("rounds = 3", "rounds = 2").replace("eval_every = 3", "eval_every = 2"))
    matrix = load_matrix(path)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        here = run_matrix(matrix, tmp_path / "here", progress=False, data_root=data_root)
    finally:
        torch.set_num_threads(previous)
    seen = []
    pooled = run_matrix(matrix, tmp_path / "pool", progress=False, data_root=data_root,
                        executor=Executor("processes", jobs=2, threads=2), on_cell=lambda c, r: seen.append(c))
    assert len(seen) == 4 and len(list((tmp_path / "pool" / "sweep" / "records").glob("*.json"))) == 4
    keys = ("run_id", "aggregator", "attack", "clean_accuracy", "attack_success_rate", "seed")
    assert [{k: r[k] for k in keys} for r in pooled] == [{k: r[k] for k in keys} for r in here]
    assert (tmp_path / "pool" / "matrix.png").stat().st_size > 0
    assert len((tmp_path / "pool" / "matrix.jsonl").read_text().splitlines()) == 4
    # each cell's round records in its own folder, as when run here
    rounds = {where: {p.relative_to(tmp_path / where): len(p.read_text().splitlines())
                      for p in (tmp_path / where / "cells").glob("*/records.jsonl")} for where in ("here", "pool")}
    assert len(rounds["pool"]) == 4 and rounds["pool"] == rounds["here"]
    again = run_matrix(matrix, tmp_path / "pool", progress=False, data_root=data_root,
                       executor=Executor("processes", jobs=2, threads=2), on_cell=lambda c, r: seen.append(c))
    assert len(seen) == 4 and [r["run_id"] for r in again] == [r["run_id"] for r in pooled]  # nothing rerun


def test_the_processes_executor_needs_a_matrix_file(tmp_path, data_root):
    from backdoor_arena.sweep import Executor

    with pytest.raises(ConfigError, match="matrix file"):
        run_matrix(loads_matrix(MATRIX), tmp_path, progress=False, data_root=data_root,
                   executor=Executor("processes", jobs=2))


def test_a_cell_job_whose_matrix_file_changed_says_so(tmp_path):
    from backdoor_arena.federated.matrix import load_matrix, run_cell_job
    from backdoor_arena.sweep import JobContext

    path = tmp_path / "m.toml"
    path.write_text(MATRIX)
    cell = load_matrix(path).cells()[0]
    path.write_text(MATRIX.replace("rounds = 3", "rounds = 4"))  # edited after the jobs were made
    ctx = JobContext({"cell": cell.run_id, "scenario": cell.scenario.to_dict(), "overrides": []}, cell.seed,
                     "fedavg x none seed 0", {"matrix": str(path), "folder": str(tmp_path / "c")}, lambda m: None)
    with pytest.raises(ConfigError, match="changed since the run started"):
        run_cell_job(ctx)
