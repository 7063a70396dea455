"""Every registered plugin, enrolled automatically: a new registration is tested without a new test."""

from __future__ import annotations

import inspect

import pytest
import torch

from backdoor_arena.attacks import ATTACKS, attack_from_spec, make_attack
from backdoor_arena.data import DATASETS, dataset_info
from backdoor_arena.errors import ConfigError
from backdoor_arena.modelfile import Manifest, load_model, save_model
from backdoor_arena.models import MODELS, architecture_args
from backdoor_arena.train import create_model
from backdoor_arena.triggers import TRIGGERS, make_trigger
from tests.helpers import TINY_RGB_INFO, tiny_dataset


@pytest.mark.parametrize("name", ATTACKS.names())
def test_attack_contract(name):
    ds = tiny_dataset(60, info=TINY_RGB_INFO)
    images, labels = ds.images.clone(), ds.labels.clone()
    atk = make_attack(name, num_classes=3, channels=3, image_size=16, target=1, poison_rate=0.2, seed=2)
    a = atk.poison(ds, torch.Generator().manual_seed(0))
    b = atk.poison(ds, torch.Generator().manual_seed(0))
    assert torch.equal(ds.images, images) and torch.equal(ds.labels, labels)  # input never mutated
    assert torch.equal(a.dataset.images, b.dataset.images)  # same seed, same output
    assert a.poisoned_mask.shape == a.dataset.labels.shape
    assert attack_from_spec(atk.to_spec()) == atk  # the spec rebuilds the attack exactly
    x = torch.rand(4, 3, 16, 16)
    assert torch.equal(atk.apply_trigger(x), atk.apply_trigger(x.clone()))
    with pytest.raises(ConfigError, match="poison_rate"):
        make_attack(name, num_classes=3, channels=3, image_size=16, poison_rate=-1)


@pytest.mark.parametrize("kind", TRIGGERS.names())
def test_trigger_contract(kind, tmp_path):
    from PIL import Image

    options = {}
    if kind == "image":
        Image.new("RGB", (3, 3), (200, 10, 10)).save(tmp_path / "t.png")
        options = {"path": str(tmp_path / "t.png")}
    for channels in (1, 3):
        trig = make_trigger(kind, channels, 16, **options)
        x = torch.rand(5, channels, 16, 16)
        before = x.clone()
        out = trig.apply(x)
        assert torch.equal(x, before) and out.shape == x.shape
        assert out.min() >= 0 and out.max() <= 1 and not torch.equal(out, x)
    with pytest.raises(ConfigError):
        make_trigger(kind, 1, 16, no_such_option=1, **options)


@pytest.mark.parametrize("name", MODELS.names())
def test_model_contract(name, tmp_path):
    info = TINY_RGB_INFO if name != "badnet-mnist" else TINY_RGB_INFO.__class__(
        "tiny28", 3, (3, 28, 28), ("a", "b", "c"), (0.5,) * 3, (0.25,) * 3)
    a, args = create_model(name, info, seed=1)
    b, _ = create_model(name, info, seed=1)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    manifest = Manifest(architecture=name, arch_args=args, dataset=info.name, input_shape=list(info.input_shape),
                        num_classes=3, class_names=list(info.class_names))
    save_model(tmp_path / "m.safetensors", a, manifest)
    loaded = load_model(tmp_path / "m.safetensors").model
    a.eval()
    x = torch.rand(2, *info.input_shape)
    assert torch.allclose(loaded(x), a(x))


@pytest.mark.parametrize("name", DATASETS.names())
def test_dataset_registration(name):
    info = dataset_info(name)
    assert len(info.class_names) == info.num_classes
    assert len(info.mean) == len(info.std) == info.input_shape[0]
    assert architecture_args(info)["num_classes"] == info.num_classes
    loader = DATASETS.get(name).load
    assert {"download", "writers"} <= set(inspect.signature(loader).parameters)
