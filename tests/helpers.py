"""Small synthetic datasets and models for fast tests."""

from __future__ import annotations

import torch

from backdoor_arena.data.dataset import Dataset, DatasetInfo

TINY_INFO = DatasetInfo("tiny", 4, (1, 12, 12), ("a", "b", "c", "d"), (0.5,), (0.5,))
TINY_RGB_INFO = DatasetInfo("tiny-rgb", 3, (3, 16, 16), ("a", "b", "c"), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
TINY28_INFO = DatasetInfo("tiny28", 3, (3, 28, 28), ("a", "b", "c"), (0.5,) * 3, (0.25,) * 3)


def register_tiny_datasets() -> None:
    """Register the synthetic datasets by name, so model files made for them load (a model file must name a
    registered dataset); their `load` builds tiny_dataset, there are no files."""
    from backdoor_arena.data import DATASETS, DatasetLoader

    for info in (TINY_INFO, TINY_RGB_INFO, TINY28_INFO):
        if info.name not in DATASETS:
            def load(split, folder=None, *, download=True, writers=False, _info=info):
                return tiny_dataset(64 if split == "train" else 32, info=_info, seed=0 if split == "train" else 1)

            DATASETS.register(info.name)(DatasetLoader(info, load))


def tiny_dataset(n: int = 64, info: DatasetInfo = TINY_INFO, seed: int = 0, dtype=torch.uint8) -> Dataset:
    """Each class is a bright horizontal band at its own height: learnable in a few steps."""
    g = torch.Generator().manual_seed(seed)
    c, h, w = info.input_shape
    labels = torch.arange(n) % info.num_classes
    images = torch.rand(n, c, h, w, generator=g) * 0.2
    band = h // info.num_classes
    for k in range(info.num_classes):
        images[labels == k, :, k * band : (k + 1) * band - 1, : w - 4] += 0.7
    images = images.clamp(0, 1)
    if dtype == torch.uint8:
        images = (images * 255).round().to(torch.uint8)
    return Dataset(info, images, labels, groups=torch.arange(n) // 8)


def run_cli(args, capsys, monkeypatch):
    """Run `backdoor-arena ARGS` in-process; returns (exit code, stdout, stderr)."""
    import sys

    from backdoor_arena.cli import main

    monkeypatch.setattr(sys, "argv", ["backdoor-arena", *args])
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code or 0
    out = capsys.readouterr()
    return code, out.out, out.err


class Exploding(torch.nn.Module):
    """Wraps a model and fails on the n-th forward call (the count is shared by deep copies): conformance tests
    use it to check that plugins clean up (hooks, training mode) after a failure half-way."""

    calls = [0]

    def __init__(self, inner: torch.nn.Module, after: int) -> None:
        super().__init__()
        self.inner, self.after = inner, after

    def forward(self, x):
        Exploding.calls[0] += 1
        if Exploding.calls[0] > self.after:
            raise ValueError("injected failure")
        return self.inner(x)


def no_hooks(model: torch.nn.Module) -> bool:
    """No forward, backward or pre-forward hook left on any module or parameter."""
    return all(not (m._forward_hooks or m._backward_hooks or m._forward_pre_hooks) for m in model.modules()) and all(
        not p._backward_hooks for p in model.parameters() if getattr(p, "_backward_hooks", None) is not None)


def state_of(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
