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
