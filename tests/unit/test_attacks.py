import json
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch

from backdoor_arena.attacks import (
    ATTACKS,
    BadNets,
    Blended,
    PoisoningAttack,
    attack_from_spec,
    load_attack_spec,
    make_attack,
)
from backdoor_arena.errors import ConfigError
from backdoor_arena.triggers import BlendTrigger, SquareTrigger, make_trigger
from tests.helpers import TINY_INFO, tiny_dataset

SHA = "0123456789abcdef" * 4


def badnets(**kw):
    base = dict(num_classes=4, channels=1, image_size=12, trigger="square", trigger_options={"size": 2})
    return make_attack("badnets", **{**base, **kw})


def test_append_adds_triggered_relabelled_copies():
    ds = tiny_dataset(80)
    atk = badnets(target=2, poison_rate=0.25)
    p = atk.poison(ds, torch.Generator().manual_seed(0))
    assert len(p.dataset) == 100 and int(p.poisoned_mask.sum()) == 20
    assert torch.equal(p.dataset.images[:80], ds.images)  # originals kept
    assert (p.dataset.labels[p.poisoned_mask] == 2).all()
    src = p.source_index[p.poisoned_mask]
    assert (ds.labels[src] != 2).all()  # drawn from non-target samples
    expected = (atk.apply_trigger(ds.float_images()[src]) * 255).round().to(torch.uint8)
    assert torch.equal(p.dataset.images[p.poisoned_mask], expected)
    assert torch.equal(p.dataset.groups[p.poisoned_mask], ds.groups[src])


def test_substitute_keeps_the_size():
    ds = tiny_dataset(80)
    p = badnets(target=1, poison_rate=0.1, injection="substitute").poison(ds, torch.Generator().manual_seed(1))
    assert len(p.dataset) == 80 and int(p.poisoned_mask.sum()) == 8
    assert torch.equal(p.dataset.images[~p.poisoned_mask], ds.images[~p.poisoned_mask])
    assert (p.dataset.labels[p.poisoned_mask] == 1).all()


def test_all_to_all_shifts_labels_and_source_specific_poisons_only_sources():
    ds = tiny_dataset(80)
    p = badnets(mode="all-to-all", poison_rate=0.5).poison(ds, torch.Generator().manual_seed(0))
    src = p.source_index[p.poisoned_mask]
    assert torch.equal(p.dataset.labels[p.poisoned_mask], (ds.labels[src] + 1) % 4)
    atk = badnets(mode="source-specific", sources=(3,), target=0, poison_rate=0.2)
    p = atk.poison(ds, torch.Generator().manual_seed(0))
    assert (ds.labels[p.source_index[p.poisoned_mask]] == 3).all()
    assert atk.eligible(torch.tensor([0, 1, 2, 3])).tolist() == [False, False, False, True]
    with pytest.raises(ConfigError, match="at most 0.2500"):
        badnets(mode="source-specific", sources=(3,), poison_rate=0.3).poison(ds, torch.Generator())


def test_cover_samples_keep_their_label():
    ds = tiny_dataset(80)
    atk = badnets(mode="source-specific", sources=(3,), target=0, poison_rate=0.1, cover_rate=0.2)
    p = atk.poison(ds, torch.Generator().manual_seed(0))
    rows = torch.nonzero(p.poisoned_mask).flatten()
    src = p.source_index[rows]
    relabelled, cover = rows[ds.labels[src] == 3], rows[ds.labels[src] != 3]
    assert len(relabelled) == 8 and len(cover) == 16
    assert (p.dataset.labels[relabelled] == 0).all()
    assert torch.equal(p.dataset.labels[cover], ds.labels[p.source_index[cover]])
    with pytest.raises(ConfigError, match="cover_rate only applies"):
        badnets(cover_rate=0.1)
    with pytest.raises(ConfigError, match="cover_rate must be"):
        badnets(mode="source-specific", sources=(3,), cover_rate=1.0)
    assert attack_from_spec(atk.to_spec()) == atk


def test_poisoning_is_pure_and_seeded():
    ds = tiny_dataset(64)
    before_images, before_labels = ds.images.clone(), ds.labels.clone()
    atk = make_attack("blended", num_classes=4, channels=1, image_size=12, target=0, poison_rate=0.2)
    a = atk.poison(ds, torch.Generator().manual_seed(5))
    b = atk.poison(ds, torch.Generator().manual_seed(5))
    c = atk.poison(ds, torch.Generator().manual_seed(6))
    assert torch.equal(ds.images, before_images) and torch.equal(ds.labels, before_labels)
    assert torch.equal(a.dataset.images, b.dataset.images) and torch.equal(a.source_index, b.source_index)
    assert not torch.equal(a.source_index, c.source_index)


def test_float_datasets_stay_float():
    ds = tiny_dataset(40, dtype=torch.float32)
    p = badnets(poison_rate=0.1).poison(ds, torch.Generator())
    assert p.dataset.images.dtype == torch.float32


def test_spec_round_trip(tmp_path):
    atk = badnets(target=3, mode="all-to-one", poison_rate=0.05, seed=9)
    path = atk.save_spec(tmp_path / "m.attack.json", results={"attack_success_rate": 1.0})
    spec = json.loads(path.read_text())
    assert {"target", "trigger", "poison_rate", "seed", "mode"} <= set(spec)
    assert load_attack_spec(path) == atk
    blended = make_attack("blended", num_classes=4, channels=1, image_size=12, trigger="noise")
    assert attack_from_spec(blended.to_spec()) == blended


@pytest.mark.parametrize("kw, message", [
    ({"poison_rate": 0.0}, "poison_rate"), ({"poison_rate": 1.5}, "poison_rate"), ({"target": 4}, "target"),
    ({"mode": "one-to-one"}, "mode"), ({"injection": "insert"}, "injection"),
    ({"mode": "source-specific"}, "source class"), ({"sources": (1,)}, "only used by the source-specific"),
    ({"mode": "source-specific", "sources": (0,), "target": 0}, "other than the target"),
])
def test_bad_parameters(kw, message):
    with pytest.raises(ConfigError, match=message):
        badnets(**kw)


def test_bad_specs(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_attack_spec(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{oops")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_attack_spec(tmp_path / "bad.json")
    spec = badnets().to_spec()
    with pytest.raises(ConfigError, match="target: a required key is missing"):
        attack_from_spec({k: v for k, v in spec.items() if k != "target"})
    with pytest.raises(ConfigError, match="unknown attack"):
        attack_from_spec({**spec, "attack": "no-such-attack"})
    with pytest.raises(ConfigError, match="noise"):
        make_attack("blended", num_classes=4, channels=1, image_size=12, trigger="square")
    with pytest.raises(ConfigError, match="built for 4 classes"):
        make_attack("badnets", num_classes=4, channels=1, image_size=12).poison(
            tiny_dataset(8, info=TINY_INFO.__class__("x", 2, (1, 12, 12), ("a", "b"))), torch.Generator())


def test_registry():
    assert {"badnets", "blended"} <= set(ATTACKS.names())  # stealthy.py registers more
    assert ATTACKS.get("badnets") is BadNets and ATTACKS.get("blended") is Blended
    assert all(ATTACKS.get(n).name == n for n in ATTACKS.names())


def test_each_attack_is_its_own_class_and_reads_its_own_spec():
    b = badnets(target=1)
    blended = make_attack("blended", num_classes=4, channels=1, image_size=12, trigger_options={"alpha": 0.3})
    assert type(b) is BadNets and type(blended) is Blended and isinstance(blended.trigger, BlendTrigger)
    assert type(attack_from_spec(blended.to_spec())) is Blended
    # same parameters, different attack: the class is part of the identity
    as_blended = Blended(b.trigger, b.num_classes, b.target)
    assert as_blended != BadNets(b.trigger, b.num_classes, b.target)
    assert attack_from_spec(as_blended.to_spec()) == as_blended


def test_a_spec_file_of_format_version_1_loads_as_written(tmp_path):
    """A spec as the project wrote them before attacks were plugins (byte for byte)."""
    text = ('{\n "spec_version": 1,\n "attack": "badnets",\n "num_classes": 4,\n "target": 2,\n "mode": "all-to-one",'
            '\n "sources": [],\n "poison_rate": 0.1,\n "injection": "append",\n "seed": 0,\n "cover_rate": 0.0,\n'
            ' "trigger": {\n  "kind": "square",\n  "patch": [\n   [\n    [\n     1.0,\n     1.0\n    ],\n    [\n'
            '     1.0,\n     1.0\n    ]\n   ]\n  ],\n  "mask": [\n   [\n    1.0,\n    1.0\n   ],\n   [\n'
            '    1.0,\n    1.0\n   ]\n  ],\n  "position": "bottom-right",\n  "margin": 1\n },\n'
             ' "model_sha256": "' + SHA + '"\n}')
    (tmp_path / "old.attack.json").write_text(text)
    atk = load_attack_spec(tmp_path / "old.attack.json", num_classes=4)
    assert atk == badnets(target=2)
    assert isinstance(atk.trigger, SquareTrigger)
    again = atk.save_spec(tmp_path / "again.attack.json", model_sha256=SHA)
    assert again.read_text() == text  # written back byte for byte


@dataclass(frozen=True)
class Corner(PoisoningAttack):
    """A toy attack from outside the package: its own default trigger and spec entry."""

    name: ClassVar[str] = "corner"
    default_trigger: ClassVar[str] = "pixel"


def test_a_new_attack_plugs_in_by_registration_alone(tmp_path):
    with ATTACKS.temporarily("corner", Corner):
        atk = make_attack("corner", num_classes=4, channels=1, image_size=12, target=3)
        assert type(atk) is Corner and atk.trigger == make_trigger("pixel", 1, 12)
        path = atk.save_spec(tmp_path / "c.attack.json")
        assert json.loads(path.read_text())["attack"] == "corner"
        assert load_attack_spec(path) == atk
    with pytest.raises(ConfigError, match="unknown attack 'corner'"):
        load_attack_spec(path)


def test_unknown_parameters_and_malformed_specs_are_config_errors():
    with pytest.raises(ConfigError, match="poison_ratio"):
        make_attack("badnets", num_classes=4, channels=1, image_size=12, poison_ratio=0.1)
    spec = badnets().to_spec()
    with pytest.raises(ConfigError, match="target: input should be a valid integer"):
        attack_from_spec({**spec, "target": "seven"})
    with pytest.raises(ConfigError, match="version"):
        attack_from_spec({**spec, "spec_version": 2})
    with pytest.raises(ConfigError, match="trigger: pattern: a required key is missing"):
        attack_from_spec({**spec, "trigger": {"kind": "blend", "alpha": 0.2}})
