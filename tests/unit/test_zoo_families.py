"""Zoo families beyond BadNets: outline triggers, the stealthy attacks, and the adaptive (model-level) attacks;
and the shared defenders' hold-out (`holdout_seed`) that lets several zoos be scored alike."""

from __future__ import annotations

import json

import pytest

from backdoor_arena import api
from backdoor_arena.api.zoo import DEFAULT_FAMILIES, EXTRA_FAMILIES, ZooConfig, zoo_plan
from backdoor_arena.modelfile import read_manifest


def test_default_plans_are_unchanged_by_the_new_families():
    """Older zoos resume only with the plan they were built with: default-family entries gain no keys."""
    plan = zoo_plan(ZooConfig(clean=2, backdoored=12, seed=5))
    assert ZooConfig().families == DEFAULT_FAMILIES
    assert all(not {"trigger_options", "attack_params", "model_attack"} & set(e) for e in plan)


def test_extra_families_plan_their_attacks():
    plan = zoo_plan(ZooConfig(clean=1, backdoored=2 * len(EXTRA_FAMILIES), families=EXTRA_FAMILIES, seed=7))
    bad = [e for e in plan if e["backdoored"]]
    assert sorted({e["family"] for e in bad}) == sorted(EXTRA_FAMILIES)
    for e in bad:
        fam = e["family"]
        if fam in ("hollow-square", "x"):
            assert e["trigger"] == fam and e["size"] >= 3 and e["model_attack"] is None
        elif fam == "wanet":
            assert e["attack"] == "wanet" and e["attack_params"] == {"cross_ratio": 0.0}
            assert e["trigger_options"]["strength"] in (4.0, 6.0)
        elif fam == "invisible":
            assert e["attack"] == "invisible" and 0 < e["trigger_options"]["epsilon"] <= 1
        else:
            assert e["model_attack"] == fam
            assert e["attack"] == ("badnets" if fam == "tdc-evasive" else "blended")
    with pytest.raises(api.ConfigError, match="holdout_seed"):
        ZooConfig(holdout_seed=-1)


def test_a_zoo_of_new_families_trains_and_records_its_holdout(tmp_path, data_root):
    config = ZooConfig(clean=0, backdoored=2, epochs=1, train_size=600, seed=3, holdout_seed=0,
                       families=("wanet", "nc-evasive"), optimizers=("sgd",))
    records = api.build_zoo(tmp_path / "zoo", config, data_root=data_root, progress=False)
    assert len(records) == 2  # (whether 600 images teach a backdoor is tests/unit/test_adaptive_attacks.py's)
    specs = {r["family"]: json.loads((tmp_path / "zoo" / "specs" / f"{r['name']}.attack.json").read_text())
             for r in records if r["backdoored"]}
    assert specs["wanet"]["attack"] == "wanet" and specs["wanet"]["cross_ratio"] == 0.0
    assert specs["wanet"]["trigger"]["strength"] in (4.0, 6.0)
    assert specs["nc-evasive"]["attack"] == "blended" and specs["nc-evasive"]["model_attack"]["name"] == "nc-evasive"
    # every model names the hold-out it never saw: zoo seed 3, hold-out seed 0
    for r in records:
        held = read_manifest(tmp_path / "zoo" / "models" / f"{r['name']}.safetensors").training["defender_holdout"]
        assert held["seed"] == 0 and held["fraction"] == 0.05 and held["n"] == 3000
