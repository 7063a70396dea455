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


def test_narrowed_draws_reach_every_family_and_leave_the_rest_of_the_plan_alone():
    """--poison-rates / --blend-alphas / --patch-sizes: every backdoored model draws from the narrowed values,
    and the rest of the plan (names, seeds, targets, positions, optimisers) is the default plan's."""
    families = ("pattern", "blended", "square", "nc-evasive", "tdc-evasive", "hollow-square")
    default = zoo_plan(ZooConfig(clean=2, backdoored=18, families=families, seed=9))
    narrow = zoo_plan(ZooConfig(clean=2, backdoored=18, families=families, seed=9, poison_rates=(0.1,),
                                blend_alphas=(0.3,), patch_sizes=(5, 7)))
    for d, n in zip(default, narrow, strict=True):
        varied = {"poison_rate", "alpha", "size"}
        assert {k: v for k, v in d.items() if k not in varied} == {k: v for k, v in n.items() if k not in varied}
        if not n["backdoored"]:
            continue
        assert n["poison_rate"] == 0.1
        assert n["alpha"] in ((0.3,) if n["attack"] == "blended" else (None,))
        assert n["size"] in ((5, 7) if n["trigger"] in ("pattern", "square", "hollow-square") else (None,))
    assert {e["poison_rate"] for e in default if e["backdoored"]} == {0.05, 0.1}  # the defaults still vary


@pytest.mark.parametrize("bad, match", [({"poison_rates": (0.0,)}, "poison_rates"), ({"poison_rates": ()}, "poison_rates"),
                                        ({"blend_alphas": (1.2,)}, "blend_alphas"), ({"patch_sizes": (3.5,)}, "patch_sizes"),
                                        ({"patch_sizes": (15,)}, "from 1 to 14")])
def test_bad_draws_are_one_line_errors(bad, match):
    with pytest.raises(api.ConfigError, match=match):
        ZooConfig(**bad)


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
