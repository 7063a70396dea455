import torch
from torch import nn

from backdoor_arena.attacks import make_attack
from backdoor_arena.metrics import evaluate, predict
from tests.helpers import tiny_dataset


class Oracle(nn.Module):
    """Predicts the true label of clean images and `backdoor(label)` of triggered ones (top-left pixel lit)."""

    def __init__(self, labels_by_row, backdoor):
        super().__init__()
        self.labels, self.backdoor = labels_by_row, backdoor

    def forward(self, x):
        # recover the sample id hidden in pixel (0, 1); the trigger lives at (11, 11)
        ids = (x[:, 0, 0, 1] * 255).round().long()
        y = self.labels[ids]
        hit = x[:, 0, 11, 11] > 0.99
        y = torch.where(hit, self.backdoor(y), y)
        return nn.functional.one_hot(y, 4).float()


def dataset():
    ds = tiny_dataset(40)
    images = ds.images.clone()
    images[:, 0, 0, 1] = torch.arange(40, dtype=torch.uint8)
    images[:, 0, 11, 11] = 0
    return ds.__class__(ds.info, images, ds.labels)


def pixel_attack(**kw):
    return make_attack("badnets", num_classes=4, channels=1, image_size=12, trigger="pixel",
                       trigger_options={"position": "bottom-right", "margin": 0}, **kw)


def test_asr_excludes_target_class_inputs():
    ds = dataset()
    atk = pixel_attack(target=2)
    model = Oracle(ds.labels, lambda y: torch.full_like(y, 2))
    r = evaluate(model, ds, atk)
    assert r["clean_accuracy"] == 1.0
    assert r["attack_success_rate"] == 1.0 and r["robust_accuracy"] == 0.0
    assert r["n_triggered"] == 30  # 10 of the 40 are already class 2
    assert r["per_class_attack_success_rate"][2] is None


def test_partial_backdoor_and_all_to_all():
    ds = dataset()
    # the backdoor only works on classes 0 and 1; others stay correct under the trigger
    model = Oracle(ds.labels, lambda y: torch.where(y < 2, torch.full_like(y, 3), y))
    r = evaluate(model, ds, pixel_attack(target=3))
    assert abs(r["attack_success_rate"] - 20 / 30) < 1e-6
    assert abs(r["robust_accuracy"] - 10 / 30) < 1e-6
    shift = Oracle(ds.labels, lambda y: (y + 1) % 4)
    r = evaluate(shift, ds, pixel_attack(mode="all-to-all"))
    assert r["n_triggered"] == 40 and r["attack_success_rate"] == 1.0


def test_predict_restores_training_mode():
    model = nn.Sequential(nn.Flatten(), nn.Linear(144, 4)).train()
    out = predict(model, tiny_dataset(10).images, batch_size=3)
    assert out.shape == (10,) and model.training
