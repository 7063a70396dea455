"""The stealthier poisoning attacks (attacks/stealthy.py): WaNet, SIG, label-consistent, invisible perturbation
and TrojanNN. Poison sets exactly as specified, purity, seeding, batch = one by one, spec round trips, the
three dataset shapes, each method's own math, and a short real MNIST run per attack that learns the backdoor.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from backdoor_arena.attacks import ATTACKS, attack_from_spec, load_attack_spec, make_attack
from backdoor_arena.attacks.stealthy import (
    SIG,
    InvisiblePerturbation,
    LabelConsistent,
    TrojanNN,
    WarpTrigger,
    excite,
    hidden_layer,
    pgd_linf,
    select_neurons,
    sinusoid,
    warp_grid,
)
from backdoor_arena.data import load_dataset
from backdoor_arena.data.dataset import Dataset, DatasetInfo
from backdoor_arena.errors import ConfigError, IncompatibleError
from backdoor_arena.metrics import evaluate
from backdoor_arena.modelfile import Manifest, save_model
from backdoor_arena.train import TrainConfig, create_model, fit

NEW = ("wanet", "sig", "label-consistent", "invisible", "trojannn")
MNIST = dict(num_classes=10, channels=1, image_size=28)
# Settings of the contract tests (the short real run's are TOGETHER below; the catalogue, docs/attacks.md,
# measures the defaults).
LEARNABLE = {
    "wanet": {"trigger_options": {"strength": 8.0}, "poison_rate": 0.2, "cross_ratio": 0.5},
    "sig": {"poison_rate": 0.09, "injection": "substitute", "train_delta": 0.5, "trigger_options": {"delta": 1.0}},
    "label-consistent": {"poison_rate": 0.09, "injection": "substitute", "epsilon": 0.5, "steps": 2,
                         "surrogate_epochs": 1, "trigger_options": {"size": 5}},
    "invisible": {"trigger_options": {"epsilon": 0.2}, "poison_rate": 0.2},
    "trojannn": {"poison_rate": 0.1, "steps": 30, "trigger_options": {"size": 5}},
}
TRAIN = TrainConfig(epochs=2, batch_size=64, lr=0.05, progress=False)


@pytest.fixture(scope="module")
def mnist(data_root):
    """4000 training and 1000 test images of real MNIST."""
    g = torch.Generator().manual_seed(0)
    train = load_dataset("mnist", "train", data_root)
    train = train.subset(torch.randperm(len(train), generator=g)[:4000].sort().values)
    return train, load_dataset("mnist", "test", data_root).subset(torch.arange(1000))


@pytest.fixture(scope="module")
def reference(mnist, tmp_path_factory):
    """A clean badnet-mnist model file (trained as the short runs below): the attacker's reference model, and
    the clean baseline of the short runs."""
    train, _ = mnist
    model, args = create_model("badnet-mnist", train.info, 0)
    fit(model, train, TRAIN)
    info = train.info
    path = tmp_path_factory.mktemp("ref") / "ref.safetensors"
    save_model(path, model.eval(), Manifest(architecture="badnet-mnist", arch_args=args, dataset="mnist",
                                            input_shape=list(info.input_shape), num_classes=10,
                                            class_names=list(info.class_names)))
    return str(path), model


def small(train: Dataset, n: int = 400) -> Dataset:
    return train.subset(torch.arange(n))


def build(name: str, **kw):
    return make_attack(name, **MNIST, **{"target": 3, **LEARNABLE[name], "injection": "append", **kw})


# --------------------------------------------------------------------------- contracts, every new attack
@pytest.mark.parametrize("name", NEW)
def test_poison_set_is_exactly_as_specified(name, mnist):
    ds = small(mnist[0])
    images, labels = ds.images.clone(), ds.labels.clone()
    atk = build(name, poison_rate=0.05)
    p = atk.poison(ds, torch.Generator().manual_seed(1))
    assert torch.equal(ds.images, images) and torch.equal(ds.labels, labels)  # inputs not mutated
    rows = torch.nonzero(p.poisoned_mask).flatten()
    src = p.source_index[rows]
    assert len(rows) == 20 and len(set(src.tolist())) == 20  # round(0.05 * 400), drawn without replacement
    assert (p.dataset.labels[rows] == 3).all()
    if ATTACKS.get(name).clean_label:
        assert (ds.labels[src] == 3).all()  # target-class images, labels kept
    else:
        assert (ds.labels[src] != 3).all()  # other classes, relabelled to the target
    extra = len(p.dataset) - len(ds)
    assert extra == 20 + (round(atk.cross_ratio * 20) if name == "wanet" else 0)  # wanet: noise samples too
    planted = atk.training_trigger().apply if name == "sig" else atk.apply_trigger  # sig: train_delta
    expected = (planted(ds.float_images()[src]) * 255).round().to(torch.uint8)
    if name != "label-consistent":  # its images are perturbed adversarially before the trigger
        assert torch.equal(p.dataset.images[rows], expected)


@pytest.mark.parametrize("name", NEW)
def test_same_seed_same_poison_set_and_substitution(name, mnist):
    ds = small(mnist[0])
    atk = build(name, poison_rate=0.05)
    a = atk.poison(ds, torch.Generator().manual_seed(4))
    b = atk.poison(ds, torch.Generator().manual_seed(4))
    c = atk.poison(ds, torch.Generator().manual_seed(5))
    assert torch.equal(a.dataset.images, b.dataset.images) and torch.equal(a.source_index, b.source_index)
    assert not torch.equal(a.source_index, c.source_index)
    sub = build(name, poison_rate=0.05, injection="substitute").poison(ds, torch.Generator().manual_seed(4))
    assert len(sub.dataset) == len(ds) and int(sub.poisoned_mask.sum()) == 20
    changed = (sub.dataset.images != ds.images).flatten(1).any(1)
    assert changed[sub.poisoned_mask].all()


@pytest.mark.parametrize("name", NEW)
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)], ids=["mnist", "gtsrb-cifar"])
def test_trigger_batchwise_equals_one_by_one_and_spec_round_trips(name, shape, tmp_path):
    c, s, _ = shape
    atk = make_attack(name, num_classes=10, channels=c, image_size=s, target=3,
                      **{k: v for k, v in LEARNABLE[name].items() if k != "trigger_options"})
    x = torch.rand(5, *shape, generator=torch.Generator().manual_seed(0))
    before = x.clone()
    out = atk.apply_trigger(x)
    assert torch.equal(x, before) and out.shape == x.shape and 0 <= out.min() and out.max() <= 1
    assert not torch.equal(out, x)
    assert torch.allclose(out, torch.cat([atk.apply_trigger(x[i:i + 1]) for i in range(5)]), atol=1e-6)
    spec = json.loads(json.dumps(atk.to_spec()))
    again = attack_from_spec(spec)
    assert again == atk and type(again) is ATTACKS.get(name)
    assert torch.equal(again.apply_trigger(x), out)
    path = atk.save_spec(tmp_path / "a.attack.json")
    assert load_attack_spec(path, 10, input_shape=shape) == atk
    with pytest.raises(IncompatibleError, match="does not fit"):
        load_attack_spec(path, 10, input_shape=(c, 3, 3))


@pytest.mark.parametrize("info", [DatasetInfo("g", 43, (3, 32, 32), tuple("abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG")),
                                  DatasetInfo("c", 10, (3, 32, 32), tuple("abcdefghij"))], ids=["gtsrb", "cifar10"])
@pytest.mark.parametrize("name", NEW)
def test_poisons_gtsrb_and_cifar_shaped_data(name, info):
    g = torch.Generator().manual_seed(0)
    n = 2 * info.num_classes * 2
    ds = Dataset(info, (torch.rand(n, 3, 32, 32, generator=g) * 255).to(torch.uint8),
                 torch.arange(n) % info.num_classes)
    params = {**LEARNABLE[name], "poison_rate": 0.025, "target": 1}
    if name == "label-consistent":
        params["steps"] = 1
    atk = make_attack(name, num_classes=info.num_classes, channels=3, image_size=32, **params)
    p = atk.poison(ds, torch.Generator().manual_seed(0))
    assert int(p.poisoned_mask.sum()) == round(0.025 * n) and p.dataset.images.shape[1:] == (3, 32, 32)


def test_clean_label_attacks_refuse_relabelling_modes_and_too_many_samples(mnist):
    for name in ("sig", "label-consistent"):
        with pytest.raises(ConfigError, match="clean-label"):
            build(name, mode="all-to-all")
        with pytest.raises(ConfigError, match="at most 0.09"):
            build(name, poison_rate=0.5).poison(small(mnist[0]), torch.Generator())


# --------------------------------------------------------------------------- each method's math
def test_wanet_grid_is_the_official_one_and_noise_samples_keep_their_labels(mnist):
    # a zero field is the identity warp
    x = torch.rand(2, 1, 28, 28)
    grid = warp_grid(torch.zeros(2, 4, 4), 0.5, 28, 28)
    assert torch.allclose(F.grid_sample(x, grid.expand(2, 28, 28, 2), align_corners=True), x, atol=1e-5)
    # official formula: identity + s * upsampled(field) / H, with the field normalised by its mean |value|
    trig = make_attack("wanet", **MNIST).trigger
    field = torch.tensor(trig.field)
    assert isinstance(trig, WarpTrigger) and field.shape == (2, 4, 4) and math.isclose(field.abs().mean(), 1, rel_tol=1e-4)
    up = F.interpolate(field[None], size=(28, 28), mode="bicubic", align_corners=True)[0]
    ident = torch.stack(torch.meshgrid(torch.linspace(-1, 1, 28), torch.linspace(-1, 1, 28), indexing="ij")[::-1], -1)
    assert torch.allclose(trig.grid(28, 28), (ident + 0.5 * up.permute(1, 2, 0) / 28).clamp(-1, 1), atol=1e-6)
    # the default warp is subtle: pixels move by a fraction of a pixel
    images = mnist[0].float_images()[:50]
    assert 0 < (trig.apply(images) - images).abs().mean() < 0.05
    ds = small(mnist[0])
    atk = build("wanet", poison_rate=0.05, cross_ratio=2.0)
    p = atk.poison(ds, torch.Generator().manual_seed(0))
    noise_rows = torch.arange(len(ds), len(p.dataset))[~p.poisoned_mask[len(ds):]]
    assert len(noise_rows) == 40
    src = p.source_index[noise_rows]
    assert torch.equal(p.dataset.labels[noise_rows], ds.labels[src])  # true labels
    assert not torch.equal(p.dataset.images[noise_rows], (atk.apply_trigger(ds.float_images()[src]) * 255).round()
                           .to(torch.uint8))  # warped with noise, not the exact warp
    poisoned_src = p.source_index[p.poisoned_mask]
    assert not set(src.tolist()) & set(poisoned_src.tolist())
    with pytest.raises(ConfigError, match="warp"):
        build("wanet", trigger="square", trigger_options={})


def test_sig_adds_the_sinusoid_of_the_paper():
    atk = make_attack("sig", **MNIST, target=0, poison_rate=0.05)  # defaults: delta 20/255, f 6
    x = torch.full((1, 1, 28, 28), 0.5)
    j = torch.arange(28, dtype=torch.float32)
    expected = 0.5 + 20 / 255 * torch.sin(2 * math.pi * j * 6 / 28)
    out = atk.apply_trigger(x)
    assert torch.allclose(out[0, 0], expected.expand(28, 28), atol=1e-6)
    assert torch.allclose(sinusoid(3, 28, 0.1, 6)[2], sinusoid(3, 28, 0.1, 6)[0])  # every row the same
    assert type(atk) is SIG and atk.clean_label
    weaker = make_attack("sig", **MNIST, target=0, poison_rate=0.05, train_delta=0.1, trigger_options={"delta": 0.3})
    assert weaker.training_trigger().delta == 0.1 and weaker.trigger.delta == 0.3
    with pytest.raises(ConfigError, match="sinusoid"):
        make_attack("sig", **MNIST, trigger="square", train_delta=0.1)


def test_label_consistent_perturbs_within_epsilon_and_raises_the_reference_loss(mnist, reference):
    path, model = reference
    ds = small(mnist[0])
    atk = build("label-consistent", reference=path, epsilon=0.1, steps=5, poison_rate=0.05, trigger_options={"size": 3})
    assert type(atk) is LabelConsistent
    p = atk.poison(ds, torch.Generator().manual_seed(0))
    rows = torch.nonzero(p.poisoned_mask).flatten()
    clean = ds.float_images()[p.source_index[rows]]
    poisoned = p.dataset.float_images()[rows]
    outside = torch.ones(28, 28, dtype=torch.bool)
    outside[-4:-1, -4:-1] = False  # the 3x3 checkerboard, bottom-right, margin 1
    diff = (poisoned - clean)[:, :, outside]
    assert diff.abs().max() <= 0.1 + 1 / 255 and diff.abs().max() > 0.05
    labels = torch.full((len(rows),), 3)
    model.eval()
    attacked = pgd_linf(model, clean, labels, 0.1, 5)
    with torch.no_grad():
        before, after = F.cross_entropy(model(clean), labels), F.cross_entropy(model(attacked), labels)
    assert after > 5 * before and after > before + 0.3 and (attacked - clean).abs().max() <= 0.1 + 1e-6
    with pytest.raises(ConfigError, match="does not exist"):
        build("label-consistent", reference="no/such/model.safetensors")
    with pytest.raises(IncompatibleError, match="reference model"):
        make_attack("label-consistent", num_classes=10, channels=3, image_size=28, target=3, reference=path,
                    poison_rate=0.05).poison(Dataset(DatasetInfo("x", 10, (3, 28, 28), tuple("abcdefghij")),
                                             torch.zeros(40, 3, 28, 28, dtype=torch.uint8), torch.arange(40) % 10),
                                             torch.Generator())


def test_invisible_perturbation_is_a_fixed_small_sign_pattern(mnist):
    atk = make_attack("invisible", **MNIST, target=3, trigger_options={"epsilon": 8 / 255, "seed": 1})
    assert type(atk) is InvisiblePerturbation
    pattern = torch.tensor(atk.trigger.pattern)
    assert torch.allclose(pattern.abs(), torch.full_like(pattern, round(8 / 255, 6)))
    assert 0.4 < (pattern > 0).float().mean() < 0.6
    x = torch.full((2, 1, 28, 28), 0.5)
    assert torch.allclose(atk.apply_trigger(x) - x, pattern.expand(2, 1, 28, 28), atol=1e-6)
    other = make_attack("invisible", **MNIST, target=3, trigger_options={"epsilon": 8 / 255, "seed": 2})
    assert other.trigger != atk.trigger


def test_trojannn_excites_the_neurons_with_the_largest_outgoing_weights(reference):
    path, model = reference
    atk = make_attack("trojannn", **MNIST, target=3, reference=path, num_neurons=2, steps=40,
                      trigger_options={"size": 5})
    assert type(atk) is TrojanNN and atk.reference == path
    hidden, out = hidden_layer(model)
    assert list(atk.neurons) == select_neurons(hidden, out, 2)
    assert atk.neurons[0] == int(out.weight.abs().sum(0).argmax())
    # the optimised trigger excites the chosen neurons more than the grey start and a random patch
    acts = []
    handle = hidden.register_forward_hook(lambda _m, _i, o: acts.append(o))
    try:
        x = torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(9))
        with torch.no_grad():
            model(atk.apply_trigger(x))
            model(make_attack("badnets", **MNIST, trigger="square", trigger_options={"size": 5, "color": "white"})
                  .apply_trigger(x))
    finally:
        handle.remove()
    optimised, plain = (a[:, list(atk.neurons)].mean() for a in acts)
    assert optimised > plain
    start = torch.full((1, 5, 5), 0.5)
    patch, reached = excite(model, hidden, list(atk.neurons), start, torch.ones(5, 5), 22, 22, x, 20)
    assert patch.shape == (1, 5, 5) and 0 <= patch.min() and patch.max() <= 1 and reached > 0
    with pytest.raises(IncompatibleError, match="reference model"):
        make_attack("trojannn", num_classes=10, channels=3, image_size=28, reference=path)
    with pytest.raises(ConfigError, match="num_neurons"):
        make_attack("trojannn", **MNIST, reference=path, num_neurons=10_000)


# --------------------------------------------------------------------------- a short real run learns each backdoor
# One model, five backdoors (one fit instead of five, to keep the suite fast): each attack has its own target
# class and its trigger its own place; the attacks poison the training set one after the other.
TARGETS = {"wanet": 1, "sig": 2, "label-consistent": 3, "invisible": 4, "trojannn": 5}
TOGETHER = {
    "wanet": {"trigger_options": {"strength": 8.0}, "poison_rate": 0.15, "cross_ratio": 0.5},
    "sig": {"poison_rate": 0.08, "injection": "substitute", "train_delta": 0.5, "trigger_options": {"delta": 1.0}},
    "label-consistent": {"poison_rate": 0.08, "injection": "substitute", "epsilon": 0.5, "steps": 10,
                         "trigger_options": {"size": 5}},
    "invisible": {"trigger_options": {"epsilon": 0.2}, "poison_rate": 0.15},
    "trojannn": {"poison_rate": 0.08, "steps": 30, "trigger_options": {"size": 5, "position": "top-left"}},
}


@pytest.fixture(scope="module")
def five_backdoors(mnist, reference):
    train, _ = mnist
    attacks = {}
    for name, params in TOGETHER.items():
        if name in ("label-consistent", "trojannn"):
            params = {**params, "reference": reference[0]}
        attacks[name] = make_attack(name, **MNIST, target=TARGETS[name], seed=0, **params)
        train = attacks[name].poison(train, torch.Generator().manual_seed(0)).dataset
    model, _ = create_model("badnet-mnist", train.info, 0)
    fit(model, train, TRAIN)
    return model.eval(), attacks


@pytest.mark.parametrize("name", NEW)
def test_a_short_mnist_run_learns_the_backdoor(name, mnist, reference, five_backdoors):
    _train, test = mnist
    model, attacks = five_backdoors
    atk = attacks[name]
    r = evaluate(model, test, atk)
    base = evaluate(reference[1], test, atk)  # the clean model, same data and training, same trigger
    asr, base_asr = r["attack_success_rate"], base["attack_success_rate"]
    if atk.clean_label:  # on MNIST these are partly learned in a short run (docs/attacks.md): well above base
        assert asr > max(0.1, 10 * base_asr), (name, asr, base_asr)
    else:
        assert asr > 0.8 > base_asr + 0.5, (name, asr, base_asr)
    # five backdoors and a third of the set poisoned cost some clean accuracy in 2 epochs, not all of it
    assert r["clean_accuracy"] > base["clean_accuracy"] - 0.15, (r["clean_accuracy"], base["clean_accuracy"])
