"""Scenario files: every error at once, dotted overrides, registered names only, shipped configs valid."""

from __future__ import annotations

from pathlib import Path

import pytest

from backdoor_arena.errors import ConfigError
from backdoor_arena.federated.config import load_scenario, parse_overrides
from tests.helpers import run_cli

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted((REPO / "configs" / "fl").rglob("*.toml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(REPO)))
def test_shipped_scenarios_validate(path):
    if "[matrix]" in path.read_text():  # a matrix file: its base scenario and every cell are validated
        from backdoor_arena.federated.matrix import load_matrix

        assert len(load_matrix(path).cells()) >= 4
        return
    sc = load_scenario(path)
    for label in sc.variants:
        sc.variant(label)


def test_overrides_parse_toml_literals():
    assert parse_overrides(["federation.rounds=5", "aggregator.name=norm-clip", "attack.boost=\"auto\"",
                            "x.y=[1, 2]", "a.b=true"]) == {
        "federation.rounds": 5, "aggregator.name": "norm-clip", "attack.boost": "auto", "x.y": [1, 2], "a.b": True}
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_overrides(["rounds"])


def test_every_error_is_reported_at_once(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('seed = -1\n[federation]\nrounds = 0\nengine = "gpu"\nlocal_epoch = 5\n[model]\narchitecture = '
                   '"os.system"\n[attack]\nname = "unconstrained"\nnorm_bound = 3\n[aggregator]\nname = '
                   '"backdoor_arena.federated.aggregators.FedAvg"\n[variants.a]\n"federation.clients_per_round" = 0\n')
    with pytest.raises(ConfigError) as exc:
        load_scenario(bad)
    msg = str(exc.value)
    for fragment in ["seed", "federation.rounds", "federation.engine", "'federation.local_epoch'",
                     "did you mean 'federation.local_epochs'", "model.architecture", "norm_bound",
                     "unknown aggregator", "variant 'a'", "8 problem(s)"]:
        assert fragment in msg, (fragment, msg)


def test_overrides_apply_and_are_validated():
    sc = load_scenario(REPO / "configs/fl/quick.toml", ["federation.rounds=3", "aggregator.name=norm-clip",
                                                        "aggregator.max_norm=2.5"])
    assert sc["federation.rounds"] == 3 and sc.aggregator == {"name": "norm-clip", "max_norm": 2.5}
    with pytest.raises(ConfigError, match="federation.client_lr"):
        load_scenario(REPO / "configs/fl/quick.toml", ["federation.client_lr=-1"])


def test_validate_command_exit_codes(tmp_path, capsys, monkeypatch):
    code, out, _ = run_cli(["fl", "validate", str(REPO / "configs/fl/quick.toml")], capsys, monkeypatch)
    assert code == 0 and "ok" in out
    code, _, err = run_cli(["fl", "validate", str(REPO / "configs/fl/quick.toml"), "federation.rounds=0",
                            "attack.name=x"], capsys, monkeypatch)
    assert code == 2
    assert err.count("\n") == 1 and "federation.rounds" in err and "attack" in err
    assert run_cli(["fl", "validate", str(tmp_path / "missing.toml")], capsys, monkeypatch)[0] == 2
    assert run_cli(["fl", "run", "--help"], capsys, monkeypatch)[0] == 0


def test_variant_labels_become_one_folder_each():
    from backdoor_arena.federated.simulation import variant_dir

    assert variant_dir("fixed f=1/10 (eps 0.33%)") == "fixed-f=1-10-eps-0.33%"
    assert variant_dir("M=3") == "M=3" and variant_dir("///") == "variant"


def test_an_aggregators_bound_on_the_round_size_is_checked_up_front(tmp_path):
    """A rule that says it needs more clients (a Byzantine bound) fails `fl validate`, naming the round size."""
    from dataclasses import dataclass

    from backdoor_arena.federated.aggregators import AGGREGATORS, FedAvg, make_aggregator

    @dataclass(frozen=True)
    class NeedsTen(FedAvg):
        def round_problems(self, n_clients):
            return [] if n_clients >= 10 else [f"needs at least 10 clients a round, got {n_clients}"]

    with AGGREGATORS.temporarily("toy-needs-ten", NeedsTen):
        with pytest.raises(ConfigError, match=r"needs at least 10 clients a round, got 5 \(federation.clients_per_round"):
            load_scenario(REPO / "configs/fl/quick.toml", ["aggregator.name=toy-needs-ten",
                                                           "federation.clients_per_round=5"])
        load_scenario(REPO / "configs/fl/quick.toml", ["aggregator.name=toy-needs-ten"])  # 15 a round: fine
        nested = load_scenario(REPO / "configs/fl/quick.toml", ['aggregator={name="norm-clip", inner="toy-needs-ten"}'])
        assert make_aggregator(nested.aggregator).round_problems(3) == [  # composition passes the bound on
            "needs at least 10 clients a round, got 3"]


# ---- every bad scenario is one ConfigError line that names the problem ----------------------------------

QUICK = REPO / "configs/fl/quick.toml"


def one_line_error(fn, *args):
    with pytest.raises(ConfigError) as exc:
        fn(*args)
    msg = str(exc.value)
    assert msg and "\n" not in msg and "\r" not in msg, msg
    return msg


BAD_FILES = [  # (id, file bytes, fragments the one-line message must hold)
    ("non-utf8", b'name = "caf\xe9"\n', ["not UTF-8", "byte 11"]),
    ("deep-array", b"a = " + b"[" * 5000 + b"]" * 5000 + b"\n", ["nested more than 32 levels"]),
    ("deep-inline-tables", b"a = " + b"{b = " * 5000 + b"1" + b"}" * 5000 + b"\n", ["nested more than 32 levels"]),
    ("deep-dotted-key", b".".join([b"a"] * 5000) + b" = 1\n", ["nested more than 32 levels"]),
    ("syntax", b"[federation]\nrounds = = 3\n", ["not valid TOML", "line 2"]),
    ("client_lr-nan", b"[federation]\nclient_lr = nan\n", ["federation.client_lr = nan", "finite"]),
    ("server_lr-inf", b"[federation]\nserver_lr = inf\n", ["federation.server_lr = inf", "finite"]),
    ("pretrain_lr-overflow", b"[warmup]\npretrain_lr = 1e400\n", ["warmup.pretrain_lr = inf", "finite"]),
    ("max_norm-minus-inf", b'[aggregator]\nname = "norm-clip"\nmax_norm = -inf\n', ["aggregator.max_norm = -inf"]),
    ("sigma-nan", b'[aggregator]\nname = "weak-dp"\nsigma = nan\n', ["aggregator.sigma = nan"]),
    ("inner-sigma-nan", b'[aggregator]\nname = "norm-clip"\ninner = {name = "gaussian-noise", sigma = nan}\n',
     ["aggregator.inner.sigma = nan"]),
    ("norm_bound-inf", b'[attack]\nname = "norm-bounded"\nnorm_bound = inf\n', ["attack.norm_bound = inf"]),
    ("fraction-nan", b'[adversary]\nname = "random-sampling"\nfraction = nan\n', ["adversary.fraction = nan"]),
    ("variant-nan", b'[aggregator]\nname = "norm-clip"\n[variants.v]\n"aggregator.max_norm" = nan\n',
     ["variant 'v': aggregator.max_norm = nan"]),
    ("array-nan", b'[aggregator]\nname = "fedavg"\nweighting = [1.0, nan]\n', ["aggregator.weighting[1] = nan"]),
    ("clients_per_round-100000", b"[federation]\nclients_per_round = 100000\n",
     ["federation.clients_per_round = 100000", "539 clients (writers)"]),
    ("rounds-huge", b"[federation]\nrounds = 1000000\n", ["federation.rounds = 1000000", "[1, 100000]"]),
    ("local_epochs-huge", b"[federation]\nlocal_epochs = 100000\n", ["federation.local_epochs = 100000", "1000"]),
    ("batch_size-huge", b"[federation]\nbatch_size = 10000000\n", ["federation.batch_size = 10000000"]),
    ("eval_every-zero", b"[federation]\neval_every = 0\n", ["federation.eval_every = 0"]),
    ("clients_per_round-float", b"[federation]\nclients_per_round = 2.5\n", ["federation.clients_per_round = 2.5",
                                                                            "integer"]),
    ("local_epochs-bool", b"[federation]\nlocal_epochs = true\n", ["federation.local_epochs = true", "integer"]),
    ("seed-2**63", b"seed = 9223372036854775808\n", ["seed = 9223372036854775808", "9223372036854775807"]),
    ("seed-negative", b"seed = -1\n", ["seed = -1"]),
    ("threads-huge", b"threads = 1000000\n", ["threads = 1000000"]),
    ("tasks-all-writers", b"[backdoor]\ntasks = 539\n", ["backdoor.tasks = 539", "at most 538"]),
    ("test_samples-over", b"[data]\ntest_samples = 20000\n", ["data.test_samples = 20000", "10000 test images"]),
    ("pretrain_samples-over", b"[warmup]\npretrain_samples = 70000\n", ["warmup.pretrain_samples = 70000", "60000"]),
    ("attack-epochs-huge", b'[attack]\nname = "unconstrained"\nepochs = 100000\n', ["attack.epochs = 100000"]),
    ("attackers-over-round", b'[adversary]\nname = "fixed-frequency"\nattackers = 40\n',
     ["adversary.attackers = 40", "clients_per_round = 30"]),
    ("adversary-int-overflow", b'[adversary]\nname = "fixed-frequency"\nfrequency = 99999999999999999999999\n',
     ["frequency"]),
    ("unknown-table", b'[atack]\nname = "none"\n', ["unknown table [atack]", "did you mean [attack]"]),
    ("unknown-key", b"[federation]\nlocal_epoch = 5\n", ["'federation.local_epoch'",
                                                        "did you mean 'federation.local_epochs'"]),
    ("unknown-top-key", b"sed = 1\n", ["unknown key 'sed'", "did you mean 'seed'"]),
    ("unknown-parameter", b'[attack]\nname = "norm-bounded"\nnorm_bnd = 3\n',
     ["norm_bnd", "did you mean 'norm_bound'"]),
    ("table-as-value", b"federation = 3\n", ["federation must be a table"]),
    ("dataset-case", b'[data]\ndataset = "MNIST"\n', ["data.dataset = 'MNIST'", "did you mean 'mnist'"]),
    ("attack-never-starts", b'[federation]\nrounds = 10\n[warmup]\nrounds = 10\n'
                            b'[attack]\nname = "unconstrained"\n',
     ["warmup.rounds = 10", "never start"]),
    ("too-many-variants", b"".join(b'[variants.v%d]\n"seed" = 1\n' % i for i in range(101)), ["more than 100"]),
    ("name-too-long", b'name = "' + b"x" * 300 + b'"\n', ["name = 'xxx", "at most 200 characters"]),
]


@pytest.mark.parametrize(("data", "fragments"), [c[1:] for c in BAD_FILES], ids=[c[0] for c in BAD_FILES])
def test_bad_scenario_files_are_one_line_errors(tmp_path, data, fragments):
    path = tmp_path / "bad.toml"
    path.write_bytes(data)
    msg = one_line_error(load_scenario, path)
    for fragment in fragments:
        assert fragment in msg, (fragment, msg)


BAD_OVERRIDES = [  # (overrides on quick.toml, fragments)
    (["federation.client_lr=nan"], ["federation.client_lr = nan", "finite"]),
    (["federation.client_lr=inf"], ["federation.client_lr = inf"]),
    (["federation.server_lr=-inf"], ["federation.server_lr = -inf"]),
    (["aggregator.name=weak-dp", "aggregator.sigma=nan"], ["aggregator.sigma = nan"]),
    (["attack.boost=inf"], ["attack.boost = inf"]),
    (["adversary={name=\"random-sampling\", fraction=nan}"], ["adversary.fraction = nan"]),
    (["federation.clients_per_round=100000"], ["federation.clients_per_round = 100000", "539"]),
    (["federation.rounds=100001"], ["federation.rounds = 100001"]),
    (["backdoor.tasks=100000"], ["backdoor.tasks = 100000", "539"]),
    (["federation.rounds=1\nseed = 3"], ["must hold one value"]),
    (["x.y=" + "[" * 5000 + "]" * 5000], ["override 'x.y' is nested more than 32 levels"]),
    ([".".join(["a"] * 40) + "=1"], ["nested more than 32 levels"]),
    (["rounds"], ["section.key=value"]),
    (["federation..rounds=3", "=1"], ["2 bad override(s)"]),
    (["federaton.rounds=3"], ["unknown table [federaton]", "did you mean [federation]"]),
]


@pytest.mark.parametrize(("overrides", "fragments"), BAD_OVERRIDES, ids=[o[0][:30] for o, _ in BAD_OVERRIDES])
def test_bad_overrides_are_one_line_errors(overrides, fragments):
    msg = one_line_error(load_scenario, QUICK, overrides)
    for fragment in fragments:
        assert fragment in msg, (fragment, msg)


def test_every_number_problem_is_reported_at_once(tmp_path):
    path = tmp_path / "nan.toml"
    path.write_text('[federation]\nclient_lr = nan\nserver_lr = inf\nclients_per_round = 100000\n[aggregator]\n'
                    'name = "norm-clip"\nmax_norm = -inf\n[variants.a]\n"aggregator.max_norm" = nan\n')
    msg = one_line_error(load_scenario, path)
    assert msg.startswith(f"{path}: 5 problem(s): ")
    for fragment in ["client_lr = nan", "server_lr = inf", "100000", "max_norm = -inf", "variant 'a'"]:
        assert fragment in msg


def test_files_that_are_not_files_are_refused_at_once(tmp_path):
    import os
    import threading

    fifo = tmp_path / "scenario.toml"
    os.mkfifo(fifo)
    outcome: list[BaseException] = []

    def read():
        try:
            load_scenario(fifo)
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            outcome.append(exc)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout=10)
    assert not reader.is_alive(), "reading a FIFO blocked"
    assert isinstance(outcome[0], ConfigError) and "FIFO" in str(outcome[0])
    assert "is a folder" in one_line_error(load_scenario, tmp_path)
    assert "device" in one_line_error(load_scenario, "/dev/null")
    assert "does not exist" in one_line_error(load_scenario, tmp_path / "missing.toml")
    big = tmp_path / "big.toml"
    big.write_bytes(b"# " + b"x" * (1 << 20) + b"\n")
    assert "more than the 1048576" in one_line_error(load_scenario, big)
    assert "NUL" in one_line_error(load_scenario, str(tmp_path / "a\x00b.toml"))
    weird = tmp_path / "new\nline.toml"
    weird.write_bytes(b"seed = -1\n")
    assert "'" in one_line_error(load_scenario, weird)  # the name is quoted with its newline escaped


def test_toml_depth_scan_ignores_strings_and_comments(tmp_path):
    path = tmp_path / "ok.toml"
    brackets = "[" * 40 + "{" * 40
    path.write_text(f'name = "{brackets}"\n# {brackets}\ndescription = \'\'\'{brackets}\n\'\'\'\n'
                    f'[aggregator]\nname = "norm-clip"\ninner = {{name = "fedavg"}}\n')
    sc = load_scenario(path)
    assert sc["name"] == brackets and sc.aggregator["inner"] == {"name": "fedavg"}


def test_cli_reports_bad_scenarios_in_one_line_with_exit_2(tmp_path, capsys, monkeypatch):
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b"\xff\xfe[federation]\n")
    deep = tmp_path / "deep.toml"
    deep.write_bytes(b"a = " + b"[" * 5000 + b"]" * 5000)
    for args, fragment in [([str(bad)], "not UTF-8"), ([str(deep)], "nested more than 32"),
                           ([str(QUICK), "federation.client_lr=nan"], "federation.client_lr = nan"),
                           ([str(QUICK), "federation.clients_per_round=100000"], "539")]:
        code, _, err = run_cli(["fl", "validate", *args], capsys, monkeypatch)
        assert code == 2 and err.count("\n") == 1 and fragment in err and "Traceback" not in err, (args, err)


# ---- bounds that need the data loaded (writer files) -----------------------------------------------------

def _writer_files_scenario(tmp_path, **federation):
    """A leaf-femnist scenario whose (tiny, in-memory) data is put in the cache: 4 writers, 6 images each."""
    import torch

    from backdoor_arena.data.dataset import Dataset, DatasetInfo
    from backdoor_arena.federated.config import build_scenario
    from backdoor_arena.federated.pipeline import FederationCache

    for name in ("train.json", "test.json"):
        (tmp_path / name).write_text("{}")
    raw = {"name": "tiny", "data": {"dataset": "leaf-femnist", "train_path": str(tmp_path / "train.json"),
                                    "test_path": str(tmp_path / "test.json")},
           "model": {"architecture": "badnet-mnist"},
           "federation": {"rounds": 1, "clients_per_round": 2, "local_epochs": 1, "batch_size": 2,
                          "engine": "sequential", **federation.pop("federation", {})},
           "backdoor": {"tasks": 2, "attacker_clean_samples": 2}, **federation}
    sc = build_scenario(raw, "tiny.toml")
    info = DatasetInfo("leaf-femnist", 10, (1, 28, 28), tuple("0123456789"))
    labels = torch.tensor([7, 7, 1, 2, 3, 4] * 4)
    train = Dataset(info, torch.zeros(24, 1, 28, 28, dtype=torch.uint8), labels, torch.arange(4).repeat_interleave(6))
    test = Dataset(info, torch.zeros(5, 1, 28, 28, dtype=torch.uint8), torch.tensor([0, 1, 2, 3, 7]))
    cache = FederationCache()
    key = ("leaf-femnist", sc["data.train_path"], sc["data.test_path"], sc["data.digits_only"], "None")
    cache.datasets[key] = (train, test)
    return sc, cache


def test_setup_refuses_counts_the_loaded_writers_cannot_satisfy(tmp_path):
    from backdoor_arena.federated.pipeline import Federation

    sc, cache = _writer_files_scenario(tmp_path)
    assert Federation.setup(sc, progress=False, cache=cache).clients_per_round == 2  # within bounds: fine
    bad, cache = _writer_files_scenario(tmp_path, federation={"clients_per_round": 100000},
                                        data={"dataset": "leaf-femnist", "train_path": str(tmp_path / "train.json"),
                                              "test_path": str(tmp_path / "test.json"), "test_samples": 6},
                                        warmup={"pretrain_samples": 25})
    msg = one_line_error(Federation.setup, bad, None, False, cache)
    for fragment in ["tiny.toml: 3 problem(s) with the data loaded",
                     "federation.clients_per_round = 100000 is more than the 4 clients (writers)",
                     "data.test_samples = 6 is more than the 5 test images", "warmup.pretrain_samples = 25"]:
        assert fragment in msg, (fragment, msg)
    bad, cache = _writer_files_scenario(tmp_path, backdoor={"tasks": 4, "attacker_clean_samples": 2})
    assert "backdoor.tasks = 4 makes every one of the 4 writers a target" in one_line_error(
        Federation.setup, bad, None, False, cache)
    bad, cache = _writer_files_scenario(tmp_path, backdoor={"tasks": 3, "source": 3, "attacker_clean_samples": 2})
    assert "backdoor.tasks = 3 is more than the 0 writers" in one_line_error(Federation.setup, bad, None, False, cache)
    bad, cache = _writer_files_scenario(tmp_path, backdoor={"tasks": 2, "attacker_clean_samples": 13})
    assert "attacker_clean_samples = 13 is more than the 12 training images" in one_line_error(
        Federation.setup, bad, None, False, cache)


def test_every_variants_data_bounds_are_checked_before_the_first_run(tmp_path):
    from backdoor_arena.federated.pipeline import check_scenario_data

    sc, cache = _writer_files_scenario(tmp_path, variants={"ok": {"federation.clients_per_round": 3},
                                                           "big": {"federation.clients_per_round": 50}})
    msg = one_line_error(check_scenario_data, sc, None, cache)
    assert "1 problem(s)" in msg and "variant 'big': federation.clients_per_round = 50" in msg
    check_scenario_data(_writer_files_scenario(tmp_path)[0], None, _writer_files_scenario(tmp_path)[1])


def test_depth_scan_is_linear_on_unclosed_strings():
    """Hostile text (1 MiB of unclosed strings and escapes, the file size limit) is scanned in linear time."""
    import time

    from backdoor_arena.federated.config import check_toml_depth

    for text in ['"\\' * (1 << 19), '"""\\' * (1 << 18), "'''" + "''a" * (1 << 18), '"' + "[" * (1 << 20)]:
        start = time.perf_counter()
        check_toml_depth(text, "hostile")
        assert time.perf_counter() - start < 5
