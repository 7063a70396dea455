"""MNTD, Meta Neural Trojan Detection (Xu, Wang, Li, Borisov, Gunter, Li; IEEE S&P 2021).

The defender trains shadow models on its own clean set (clean ones, and backdoored ones by jumbo learning:
mntd_shadows.py), then learns a meta-classifier over the shadows' outputs on a few query inputs, tuning the
queries jointly with it: the queries become inputs on which backdoored and clean models answer differently.
A suspect model is scored by running it on the queries alone (one forward pass of n_queries inputs).

- Two-class (the paper's main MNTD): FC(n_queries * K -> 20) -> ReLU -> FC(20 -> 1) on the concatenated
  logits, BCE loss, Adam; score = the meta-classifier's logit, flagged above 0 (probability 0.5).
- One-class (`one_class=True`: no backdoored shadows): h = ReLU(FC(outputs)), s = <w, h>, loss
  1/2 |w|^2 + 1/2 |theta_fc|^2 + (1/nu) ReLU(r - s) - r with r reset to the nu-quantile of the clean
  shadows' s each epoch (a one-class SVM); score = r - s, flagged above 0.

The fitted meta-model (queries, weights, r) is saved as safetensors plus a JSON description (never a
pickle) under `cache_dir`, keyed by the clean set and every parameter that shapes it; the shadows under
`cache_dir/shadows-KEY/`, resumable. Without a cache_dir it is kept in memory for the session. The paper
keeps the epoch of best validation AUC over 5 runs; with a handful of shadows there is no validation set,
so the last epoch is kept (documented deviation).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..data.dataset import Dataset
from ..errors import ConfigError
from ..nn_tools import model_copy
from ..runtime import resolve_device
from ..safeio import atomic_write_text
from ..sweep import Executor
from . import MODEL_DETECTORS
from .base import ModelVerdict, check_clean_set
from .mntd_shadows import (
    JUMBO_FAMILIES,
    POISON_RATES,
    SHADOW_LR,
    build_shadows,
    check_shadow_counts,
    data_digest,
    shadow_plan,
)

HIDDEN = 20
MIN_PER_CLASS = 10  # clean images per class the shadows need, at the least



class MetaClassifier(nn.Module):
    """Learnable query inputs and the meta-network over a model's logits on them."""

    def __init__(self, queries: torch.Tensor, num_classes: int, one_class: bool) -> None:
        super().__init__()
        self.queries = nn.Parameter(queries.clone())
        self.fc = nn.Linear(queries.shape[0] * num_classes, HIDDEN)
        self.out = nn.Linear(HIDDEN, 1, bias=not one_class)  # one-class: s = <w, h>, r is the offset
        self.register_buffer("r", torch.zeros(()))
        self.one_class = one_class

    def raw(self, model: nn.Module) -> torch.Tensor:
        """The meta-network's output s (two-class: the logit) for one model."""
        logits = model(self.queries)
        return self.out(torch.relu(self.fc(logits.reshape(1, -1)))).reshape(())

    def suspicion(self, model: nn.Module) -> torch.Tensor:
        """Higher = more suspicious; 0 is the threshold."""
        s = self.raw(model)
        return self.r - s if self.one_class else s


def meta_loss(meta: MetaClassifier, s: torch.Tensor, backdoored: bool, nu: float) -> torch.Tensor:
    if meta.one_class:
        reg = 0.5 * meta.out.weight.pow(2).sum() + 0.5 * sum(p.pow(2).sum() for p in meta.fc.parameters())
        return reg + torch.relu(meta.r - s) / nu - meta.r
    return nn.functional.binary_cross_entropy_with_logits(s, torch.tensor(float(backdoored)))


def train_meta(shadows: list[nn.Module], labels: list[bool], clean_images: torch.Tensor, num_classes: int, *,
               n_queries: int, epochs: int, lr: float, one_class: bool, nu: float, tune_queries: bool,
               seed: int) -> MetaClassifier:
    """Fit queries and meta-network jointly on the frozen shadows (one shadow per step, a seeded order)."""
    g = torch.Generator().manual_seed(seed)
    mean, std = clean_images.mean(0), clean_images.std(0)
    queries = mean + std * torch.randn((n_queries, *clean_images.shape[1:]), generator=g)
    with torch.random.fork_rng():
        torch.manual_seed(seed)  # the meta-network's initialisation
        meta = MetaClassifier(queries, num_classes, one_class)
    meta.queries.requires_grad_(tune_queries)
    frozen = [model_copy(m) for m in shadows]
    for m in frozen:
        m.requires_grad_(False)
    optimizer = torch.optim.Adam([p for p in meta.parameters() if p.requires_grad], lr=lr)
    for _epoch in range(epochs):
        for i in torch.randperm(len(frozen), generator=g).tolist():
            loss = meta_loss(meta, meta.raw(frozen[i]), labels[i], nu)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if one_class:
            with torch.no_grad():
                scores = torch.stack([meta.raw(m) for m in frozen])
                meta.r.fill_(float(torch.quantile(scores, nu)))
    return meta.eval().requires_grad_(False)


@MODEL_DETECTORS.register("mntd")
class MNTD:
    """Model detector: inspect(model, clean) -> ModelVerdict; the meta-classifier is fitted on the clean set
    the first time it is needed (or loaded from cache_dir)."""

    example_params: ClassVar[dict[str, Any]] = {"n_clean": 3, "n_backdoored": 3, "shadow_epochs": 1,
                                                "meta_epochs": 5, "n_queries": 4}
    bad_params: ClassVar[tuple[tuple[dict[str, Any], str], ...]] = (
        ({"n_clean": 1}, "n_clean"), ({"n_backdoored": 0}, "n_backdoored"), ({"families": ("mask", "laser")}, "families"),
        ({"nu": 1.5}, "nu"), ({"n_queries": 0}, "n_queries"), ({"shadow_epochs": 0}, "shadow_epochs"),
        ({"architecture": "resnet-9000"}, "unknown model"), ({"optimizers": ("rmsprop",)}, "optimizers"),
        ({"poison_rates": (0.5, 0.1)}, "poison_rates"), ({"executor": "threads"}, "executor"))
    param_help: ClassVar[dict[str, str]] = {
        "cache_dir": "Folder of the shadow models and fitted meta-classifiers (reused and resumed); none: memory.",
        "architecture": "Architecture of the shadow models (the paper: the suspect's own).",
        "n_clean": "Clean shadow models.",
        "n_backdoored": "Jumbo-backdoored shadow models (ignored by the one-class variant).",
        "families": f"Jumbo trigger families of the backdoored shadows ({', '.join(JUMBO_FAMILIES)}).",
        "optimizers": "Optimisers the shadows alternate (sgd, adam), for variety.",
        "poison_rates": "Range (low, high) of the jumbo shadows' poisoning rate (the paper: 0.05, 0.5 with 100 "
                        "epochs; lower it for short training, or the shadows learn the target alone).",
        "shadow_epochs": "Training epochs of each shadow.",
        "n_queries": "Learnable query inputs.",
        "meta_epochs": "Epochs of joint query / meta-classifier training (one shadow per step).",
        "meta_lr": "Adam learning rate of the meta-training.",
        "tune_queries": "Tune the queries (false: the paper's no-query-tuning ablation).",
        "one_class": "The one-class variant: trained on clean shadows only.",
        "nu": "One-class: the share of clean shadows allowed above the threshold, in (0, 1).",
        "seed": "Seed of the shadow plan, the queries and the meta-training.",
        "device": "Where the shadow models train: cpu, cuda[:N] or mps (meta-training runs on the CPU).",
        "executor": "How the shadow models train: local (one at a time), processes (a pool of `jobs`) or ray.",
        "jobs": "Parallel shadow trainings for the processes or ray executor (default: one per core).",
    }

    def __init__(self, cache_dir: str | Path | None = None, *, architecture: str = "badnet-mnist",
                 n_clean: int = 16, n_backdoored: int = 16, families: tuple[str, ...] = JUMBO_FAMILIES,
                 optimizers: tuple[str, ...] = ("sgd", "adam"), poison_rates: tuple[float, float] = POISON_RATES,
                 shadow_epochs: int = 2, n_queries: int = 10,
                 meta_epochs: int = 30, meta_lr: float = 1e-3, tune_queries: bool = True, one_class: bool = False,
                 nu: float = 0.1, seed: int = 0, device: str = "cpu", executor: str | Executor = "local",
                 jobs: int | None = None) -> None:
        from ..models import MODELS

        MODELS.get(architecture)
        families, optimizers = tuple(families), tuple(optimizers)
        problems = check_shadow_counts(n_clean, n_backdoored, one_class)
        if not families or any(f not in JUMBO_FAMILIES for f in families):
            problems.append(f"families must be a non-empty subset of {', '.join(JUMBO_FAMILIES)}, got {families!r}")
        if not optimizers or any(o not in SHADOW_LR for o in optimizers):
            problems.append(f"optimizers must be a non-empty subset of {', '.join(SHADOW_LR)}, got {optimizers!r}")
        rates = tuple(poison_rates) if isinstance(poison_rates, (list, tuple)) else ()
        if not (len(rates) == 2 and all(isinstance(r, (int, float)) and not isinstance(r, bool) for r in rates)
                and 0 < rates[0] <= rates[1] < 1):
            problems.append(f"poison_rates must be two rates 0 < low <= high < 1, got {poison_rates!r}")
        for name, v in (("shadow_epochs", shadow_epochs), ("n_queries", n_queries), ("meta_epochs", meta_epochs)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                problems.append(f"{name} must be a positive integer, got {v!r}")
        if not (isinstance(meta_lr, (int, float)) and not isinstance(meta_lr, bool) and meta_lr > 0):
            problems.append(f"meta_lr must be positive, got {meta_lr!r}")
        if not (isinstance(nu, (int, float)) and not isinstance(nu, bool) and 0 < nu < 1):
            problems.append(f"nu must be in (0, 1), got {nu!r}")
        try:
            # a caller already holding an Executor (a sweep's) passes it through as is
            self.executor = executor if isinstance(executor, Executor) else Executor(executor, jobs=jobs)
        except ConfigError as exc:
            problems.append(str(exc))
        if problems:
            raise ConfigError("mntd: " + "; ".join(problems))
        self.device = resolve_device(device, what="mntd")
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.fitted: dict[str, MetaClassifier] = {}  # meta-models this detector fitted, by key (no cache_dir)
        self.architecture, self.n_clean = architecture, n_clean
        self.n_backdoored = 0 if one_class else n_backdoored
        self.families, self.optimizers, self.shadow_epochs = families, optimizers, shadow_epochs
        self.poison_rates = (float(rates[0]), float(rates[1]))
        self.n_queries, self.meta_epochs, self.meta_lr = n_queries, meta_epochs, float(meta_lr)
        self.tune_queries, self.one_class, self.nu, self.seed = bool(tune_queries), bool(one_class), float(nu), int(seed)

    def params(self) -> dict[str, Any]:
        return {"cache_dir": str(self.cache_dir) if self.cache_dir else None, **self._shadow_params(),
                **self._meta_params()}

    def _shadow_params(self) -> dict[str, Any]:
        return {"architecture": self.architecture, "n_clean": self.n_clean, "n_backdoored": self.n_backdoored,
                "families": list(self.families), "optimizers": list(self.optimizers),
                "poison_rates": list(self.poison_rates),
                "shadow_epochs": self.shadow_epochs, "seed": self.seed}

    def _meta_params(self) -> dict[str, Any]:
        return {"n_queries": self.n_queries, "meta_epochs": self.meta_epochs, "meta_lr": self.meta_lr,
                "tune_queries": self.tune_queries, "one_class": self.one_class, "nu": self.nu}

    # -- fitting -------------------------------------------------------------------------------------
    def _keys(self, clean: Dataset) -> tuple[str, str]:
        """(the shadows' folder key: data and training; the meta-model's key: that and every parameter)."""
        training = {"data": data_digest(clean), "architecture": self.architecture, "shadow_epochs": self.shadow_epochs}
        zoo_key = hashlib.sha256(json.dumps(training, sort_keys=True).encode()).hexdigest()[:16]
        meta = json.dumps({"zoo": zoo_key, **self._shadow_params(), **self._meta_params()}, sort_keys=True)
        return zoo_key, hashlib.sha256(meta.encode()).hexdigest()[:16]

    def _check_clean_size(self, clean: Dataset) -> None:
        need = MIN_PER_CLASS * clean.num_classes
        if len(clean) < need:
            raise ConfigError(f"mntd: the clean set has {len(clean)} images; training shadow models needs at least "
                              f"{MIN_PER_CLASS} per class ({need}); give the defender more clean data")

    def fit(self, clean: Dataset) -> MetaClassifier:
        """The meta-classifier for this clean set: from memory or cache_dir if there, else shadows (cached,
        resumable) and meta-training."""
        self._check_clean_size(clean)
        zoo_key, meta_key = self._keys(clean)
        if self.cache_dir is None and meta_key in self.fitted:
            return self.fitted[meta_key]
        if self.cache_dir is not None:
            loaded = self._load(meta_key, clean)
            if loaded is not None:
                return loaded
        plan = shadow_plan(self.n_clean, self.n_backdoored, self.families, clean.num_classes,
                           clean.info.input_shape[-1], self.optimizers, self.seed, self.poison_rates)
        folder = self.cache_dir / f"shadows-{zoo_key}" if self.cache_dir is not None else None
        shadows = build_shadows(clean, plan, self.architecture, self.shadow_epochs, zoo_key, folder,
                                executor=self.executor, device=self.device)
        labels = [e["backdoored"] for e in plan]
        meta = train_meta(shadows, labels, clean.float_images(), clean.num_classes, n_queries=self.n_queries,
                          epochs=self.meta_epochs, lr=self.meta_lr, one_class=self.one_class, nu=self.nu,
                          tune_queries=self.tune_queries, seed=self.seed)
        if self.cache_dir is None:
            self.fitted[meta_key] = meta
        else:
            self._save(meta, meta_key, zoo_key, plan)
        return meta

    def _paths(self, meta_key: str) -> tuple[Path, Path]:
        assert self.cache_dir is not None
        return self.cache_dir / f"meta-{meta_key}.safetensors", self.cache_dir / f"meta-{meta_key}.json"

    def _save(self, meta: MetaClassifier, meta_key: str, zoo_key: str, plan: list[dict[str, Any]]) -> None:
        weights, desc = self._paths(meta_key)
        tensors = {k: v.detach().clone().contiguous() for k, v in meta.state_dict().items()}
        weights.parent.mkdir(parents=True, exist_ok=True)
        tmp = weights.with_suffix(".tmp")
        save_file(tensors, str(tmp))
        tmp.replace(weights)
        atomic_write_text(desc, json.dumps({"key": meta_key, "zoo_key": zoo_key, "params": self.params(),
                                            "shadows": plan, "sha256": _file_sha256(weights)}, indent=1))

    def _load(self, meta_key: str, clean: Dataset) -> MetaClassifier | None:
        """The saved meta-model if its description names this key and its weights match their hash."""
        weights, desc = self._paths(meta_key)
        if not (weights.is_file() and desc.is_file()):
            return None
        try:
            info = json.loads(desc.read_text())
            if info.get("key") != meta_key or info.get("sha256") != _file_sha256(weights):
                return None
            tensors = load_file(str(weights))
            meta = MetaClassifier(tensors["queries"], clean.num_classes, self.one_class)
            meta.load_state_dict(tensors, strict=True)
        except (ValueError, KeyError, RuntimeError, OSError):
            return None
        return meta.eval().requires_grad_(False)

    # -- detection -----------------------------------------------------------------------------------
    def inspect(self, model: nn.Module, clean: Dataset) -> ModelVerdict:
        check_clean_set(model, clean, "mntd")
        meta = self.fit(clean)
        net = model_copy(model)
        with torch.no_grad():
            score = float(meta.suspicion(net))
        return ModelVerdict(score=score, flagged=score > 0.0, threshold=0.0,
                            details={"variant": "one-class" if self.one_class else "two-class",
                                     "probability": float(torch.sigmoid(torch.tensor(score)))
                                     if not self.one_class else None, "params": self.params()},
                            artefacts={"queries": meta.queries.detach().clone()})


def _file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
