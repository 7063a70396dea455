import json

import pytest
import torch

from backdoor_arena.attacks import ATTACKS, attack_from_spec, load_attack_spec, make_attack
from backdoor_arena.errors import ConfigError
from tests.helpers import TINY_INFO, tiny_dataset


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
    with pytest.raises(ConfigError, match="missing keys"):
        attack_from_spec({k: v for k, v in spec.items() if k != "target"})
    with pytest.raises(ConfigError, match="unknown attack"):
        attack_from_spec({**spec, "attack": "trojannn"})
    with pytest.raises(ConfigError, match="noise"):
        make_attack("blended", num_classes=4, channels=1, image_size=12, trigger="square")
    with pytest.raises(ConfigError, match="built for 4 classes"):
        make_attack("badnets", num_classes=4, channels=1, image_size=12).poison(
            tiny_dataset(8, info=TINY_INFO.__class__("x", 2, (1, 12, 12), ("a", "b"))), torch.Generator())


def test_registry():
    assert ATTACKS.names() == ["badnets", "blended"]
