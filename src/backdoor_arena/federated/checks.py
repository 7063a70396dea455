"""Conformance checks that every registered federated plugin passes (scikit-learn's `check_estimator`, for
aggregators, client attacks, adversary models and engines). Each check takes a registered name, builds the
plugin from its own `example_params` on a tiny model and tiny data, and raises AssertionError saying what is
wrong. The test suite enrols every registered name automatically (tests/conformance/); a new plugin is
tested by registering it, with no table to edit:

    from backdoor_arena.federated import checks
    for check in checks.AGGREGATOR_CHECKS:
        check("my-rule")
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..registry import Registry
from ..runtime import seeded
from .adversaries import ADVERSARIES
from .aggregators import AGGREGATORS, AggregationResult, make_aggregator
from .attacks import CLIENT_ATTACKS, AttackContext, AttackResult
from .components import constructor_params, make_component
from .engines import ENGINES, LocalTraining, flat_params, sgd_local
from .task import AttackerData

KINDS: dict[str, tuple[Registry, str]] = {
    "aggregator": (AGGREGATORS, "aggregator"), "client attack": (CLIENT_ATTACKS, "attack"),
    "adversary model": (ADVERSARIES, "adversary"), "engine": (ENGINES, "engine"),
}

# ---- tiny inputs ------------------------------------------------------------------------------------------

TINY_SHAPE = (1, 12, 12)
TINY_CLASSES = 4


def tiny_model(seed: int = 0) -> nn.Module:
    """A dropout-free, BatchNorm-free classifier of 1x12x12 images into 4 classes (about 1,200 parameters)."""
    with seeded(seed):
        return nn.Sequential(nn.Flatten(), nn.Linear(144, 8), nn.ReLU(), nn.Linear(8, TINY_CLASSES))


def tiny_data(n: int = 40, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images [n, 1, 12, 12] in which class k is a bright band at height 3k, and int64 labels."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % TINY_CLASSES
    images = torch.rand(n, *TINY_SHAPE, generator=g) * 0.2
    for k in range(TINY_CLASSES):
        images[labels == k, :, 3 * k : 3 * k + 2, :8] += 0.7
    return (images.clamp(0, 1) * 255).round().to(torch.uint8), labels


def tiny_stack(seed: int = 0, n: int = 7, d: int = 13) -> tuple[torch.Tensor, torch.Tensor]:
    """Updates [n, d] with row scales 0.1 .. 4 (some above, some below a clipping bound) and integer weights."""
    g = torch.Generator().manual_seed(seed)
    updates = torch.randn(n, d, generator=g) * torch.linspace(0.1, 4.0, n).unsqueeze(1)
    weights = torch.randint(19, 131, (n,), generator=g).double()
    return updates, weights


def build(kind: str, name: str, params: Mapping[str, Any] | None = None) -> Any:
    """A registered plugin of `kind` from `params` (default: its own example_params)."""
    registry, label = KINDS[kind]
    spec = {"name": name, **(registry.get(name).example_params if params is None else params)}
    return make_component(registry, spec, label)


def _json_scalars(mapping: Any, what: str) -> None:
    assert isinstance(mapping, dict), f"{what} must be a dict, got {type(mapping).__name__}"
    for k, v in mapping.items():
        assert isinstance(k, str) and (v is None or isinstance(v, (bool, int, float, str))), \
            f"{what} must be flat with JSON scalar values; {k!r} = {v!r}"


# ---- every kind ---------------------------------------------------------------------------------------------

def check_declarations(kind: str, name: str) -> None:
    """example_params builds; bad_params (at least one) each raise ConfigError containing their substring;
    param_help has one sentence per constructor parameter; an unknown parameter is named in a ConfigError."""
    registry, _ = KINDS[kind]
    cls = registry.get(name)
    for attr in ("example_params", "bad_params", "param_help"):
        assert hasattr(cls, attr), f"{kind} {name!r} must declare {attr}"
    assert isinstance(cls.example_params, dict), f"{kind} {name!r}: example_params must be a dict"
    params = constructor_params(cls)
    help_ = cls.param_help
    assert isinstance(help_, dict) and set(help_) == set(params), \
        f"{kind} {name!r}: param_help must describe exactly {sorted(params)}, has {sorted(help_)}"
    assert all(isinstance(v, str) and v.strip() for v in help_.values()), f"{kind} {name!r}: empty param_help"
    build(kind, name)
    bad = cls.bad_params
    assert isinstance(bad, tuple) and bad, f"{kind} {name!r} must declare at least one bad_params entry"
    for params_, fragment in bad:
        try:
            build(kind, name, params_)
        except ConfigError as exc:
            assert fragment in str(exc), f"{kind} {name!r} {params_}: {fragment!r} not in {str(exc)!r}"
        else:
            raise AssertionError(f"{kind} {name!r} accepted bad parameters {params_}")
    try:
        build(kind, name, {**cls.example_params, "not_a_parameter": 1})
    except ConfigError as exc:
        assert "not_a_parameter" in str(exc), str(exc)
    else:
        raise AssertionError(f"{kind} {name!r} accepted an unknown parameter")


# ---- aggregators --------------------------------------------------------------------------------------------

def round_inputs(updates: torch.Tensor, seed: int = 11) -> dict[str, torch.Tensor]:
    """What the pipeline puts in an aggregator's state before a round: the global weights w_t and the
    server's own update (FLTrust), here a noisy copy of the mean update."""
    g = torch.Generator().manual_seed(seed)
    d = updates.shape[1]
    return {"global_weights": torch.randn(d, generator=g, dtype=updates.dtype),
            "server_update": updates.mean(0) + 0.3 * torch.randn(d, generator=g, dtype=updates.dtype)}


def _aggregate(name: str, updates: torch.Tensor, weights: torch.Tensor, seed: int) -> AggregationResult:
    return build("aggregator", name).aggregate(updates, weights, torch.Generator().manual_seed(seed),
                                               round_inputs(updates))


def check_aggregator_result(name: str) -> None:
    """Returns an AggregationResult: an update [d] of the input dtype, finite; per-client fields [n]; flat
    JSON-scalar info and public parameters; its example parameters fit the test round (`round_problems`)."""
    updates, weights = tiny_stack(0)
    res = _aggregate(name, updates, weights, 5)
    n, d = updates.shape
    assert isinstance(res, AggregationResult), f"aggregator {name!r} must return an AggregationResult"
    assert res.update.shape == (d,) and res.update.dtype == updates.dtype, f"{name!r}: update {res.update.shape}"
    assert bool(torch.isfinite(res.update).all()), f"aggregator {name!r}: non-finite update"
    for fld in ("weights", "scores", "clip_factors"):
        value = getattr(res, fld)
        assert value is None or tuple(value.shape) == (n,), f"aggregator {name!r}: {fld} must have shape [{n}]"
    if res.selected is not None:
        sel = res.selected
        assert sel.dtype == torch.int64 and bool(((sel >= 0) & (sel < n)).all()), f"{name!r}: bad selected {sel}"
    _json_scalars(res.info, f"aggregator {name!r} info")
    agg = build("aggregator", name)
    _json_scalars(agg.public_params(), f"aggregator {name!r} public_params()")
    problems = agg.round_problems(n)
    assert problems == [], f"aggregator {name!r}: its example_params must fit a round of {n} clients: {problems}"


def check_aggregator_reference(name: str) -> None:
    """Equals its own slow per-row loop reference (update and every per-client field it reports)."""
    for seed in (0, 1):
        updates, weights = tiny_stack(seed)
        agg = build("aggregator", name)
        fast = agg.aggregate(updates, weights, torch.Generator().manual_seed(5), round_inputs(updates))
        slow = agg.reference(updates, weights, torch.Generator().manual_seed(5), round_inputs(updates))
        scale = 1e-5 * max(1.0, float(updates.abs().max()))
        assert torch.allclose(fast.update, slow.update.to(fast.update.dtype), atol=scale, rtol=1e-5), \
            f"aggregator {name!r} differs from its reference by {float((fast.update - slow.update).abs().max())}"
        for fld in ("weights", "scores", "clip_factors"):
            ref = getattr(slow, fld)
            if ref is not None:
                got = getattr(fast, fld)
                assert got is not None and torch.allclose(got.double(), ref.double(), atol=1e-6, rtol=1e-5), \
                    f"aggregator {name!r}: {fld} differ from the reference"
        if slow.selected is not None:
            assert fast.selected is not None and sorted(fast.selected.tolist()) == sorted(slow.selected.tolist())


def check_aggregator_order_invariance(name: str) -> None:
    """Permuting the rows and weights together permutes the per-client fields and leaves the update."""
    updates, weights = tiny_stack(1)
    perm = torch.randperm(len(weights), generator=torch.Generator().manual_seed(2))
    a = _aggregate(name, updates, weights, 3)
    b = _aggregate(name, updates[perm], weights[perm], 3)
    assert torch.allclose(a.update, b.update, atol=1e-5, rtol=1e-5), f"aggregator {name!r} depends on client order"
    for fld in ("weights", "scores", "clip_factors"):
        x, y = getattr(a, fld), getattr(b, fld)
        if x is not None:
            assert y is not None and torch.allclose(x[perm].double(), y.double(), atol=1e-6), f"{name!r}: {fld} order"
    if a.selected is not None:
        assert sorted(perm[b.selected].tolist()) == sorted(a.selected.tolist()), f"{name!r}: selected order"


def check_aggregator_determinism(name: str) -> None:
    """The same generator seed gives the same result; inputs are never mutated."""
    updates, weights = tiny_stack(2)
    u0, w0 = updates.clone(), weights.clone()
    a = _aggregate(name, updates, weights, 9)
    b = _aggregate(name, updates, weights, 9)
    assert torch.equal(a.update, b.update), f"aggregator {name!r} is not deterministic for a seed"
    assert torch.equal(updates, u0) and torch.equal(weights, w0), f"aggregator {name!r} mutated its inputs"


def check_aggregator_declarations(name: str) -> None:
    check_declarations("aggregator", name)


AGGREGATOR_CHECKS: tuple[Callable[[str], None], ...] = (
    check_aggregator_declarations, check_aggregator_result, check_aggregator_reference,
    check_aggregator_order_invariance, check_aggregator_determinism)


# ---- client attacks -----------------------------------------------------------------------------------------

def tiny_context(omniscient: bool, n_malicious: int = 2, seed: int = 3) -> AttackContext:
    """A round's context on the tiny model: 2 attackers with 24 samples each reported, 5 benign clients."""
    model = tiny_model(0)
    w = flat_params(model)
    images, labels = tiny_data(24, seed=1)
    benign, _ = tiny_stack(4, n=5, d=w.numel())
    benign = benign * 0.05
    b_weights = torch.tensor([20.0, 31.0, 25.0, 40.0, 19.0], dtype=torch.float64)
    m_weights = torch.full((n_malicious,), 24.0, dtype=torch.float64)
    return AttackContext(
        model=model, global_weights=w, data=AttackerData(images, labels, 6), round=3, seed=seed,
        n_malicious=n_malicious, malicious_ids=tuple(range(100, 100 + n_malicious)), malicious_weights=m_weights,
        weight_sum=float(b_weights.sum() + m_weights.sum()), server_lr=1.0,
        aggregator_params={"max_norm": 1.0, "weighting": "samples", "f": 1},
        benign_updates=benign if omniscient else None, benign_weights=b_weights if omniscient else None,
        aggregator=make_aggregator({"name": "mixtailor", "pool": ["krum", "coordinate-median", "trimmed-mean"]}))


def _craft(name: str, ctx: AttackContext) -> AttackResult:
    with seeded(0):
        return build("client attack", name).craft(ctx)


def check_client_attack_result(name: str) -> None:
    """Returns [m, d] finite updates, one per malicious client, and flat JSON-scalar info; respects its
    own stated constraint (`constraint_violations`)."""
    attack = build("client attack", name)
    omniscient = bool(getattr(type(attack), "omniscient", False))
    for m in (1, 2):
        ctx = tiny_context(omniscient, n_malicious=m)
        res = _craft(name, ctx)
        assert isinstance(res, AttackResult), f"client attack {name!r} must return an AttackResult"
        res.check(m, ctx.n_params, name)
        assert bool(torch.isfinite(res.updates).all()), f"client attack {name!r}: non-finite update"
        _json_scalars(res.info, f"client attack {name!r} info")
        problems = attack.constraint_violations(ctx, res)
        assert not problems, f"client attack {name!r} breaks its own constraint: {'; '.join(problems)}"


def check_client_attack_determinism(name: str) -> None:
    """The same context (seed) gives the same updates; the context is never mutated."""
    omniscient = bool(getattr(CLIENT_ATTACKS.get(name), "omniscient", False))
    ctx = tiny_context(omniscient)
    before = {"w": ctx.global_weights.clone(), "x": ctx.data.images.clone(), "y": ctx.data.labels.clone(),
              "model": copy.deepcopy(ctx.model.state_dict()),
              "b": None if ctx.benign_updates is None else ctx.benign_updates.clone()}
    a = _craft(name, ctx)
    b = _craft(name, ctx)
    assert torch.equal(a.updates, b.updates), f"client attack {name!r} is not deterministic for a seed"
    assert torch.equal(ctx.global_weights, before["w"]), f"client attack {name!r} mutated the global weights"
    assert torch.equal(ctx.data.images, before["x"]) and torch.equal(ctx.data.labels, before["y"])
    assert all(torch.equal(v, before["model"][k]) for k, v in ctx.model.state_dict().items()), \
        f"client attack {name!r} changed the context's model"
    if before["b"] is not None:
        assert torch.equal(ctx.benign_updates, before["b"]), f"client attack {name!r} mutated the benign updates"


def check_client_attack_declarations(name: str) -> None:
    check_declarations("client attack", name)
    assert isinstance(getattr(CLIENT_ATTACKS.get(name), "omniscient", None), bool), \
        f"client attack {name!r} must declare omniscient: ClassVar[bool]"


CLIENT_ATTACK_CHECKS: tuple[Callable[[str], None], ...] = (
    check_client_attack_declarations, check_client_attack_result, check_client_attack_determinism)


# ---- adversary models ---------------------------------------------------------------------------------------

def check_adversary(name: str) -> None:
    """Deterministic for a generator seed; picks only sampled clients, never an excluded one, never twice;
    benign in warm-up rounds (attack_round < 0)."""
    num_clients, excluded = 40, [0, 3, 5, 11]

    def run() -> tuple[frozenset[int], list[list[int]]]:
        adv = build("adversary model", name)
        pool = adv.setup(num_clients, excluded, torch.Generator().manual_seed(1))
        g = torch.Generator().manual_seed(2)
        rounds = []
        for t in range(1, 13):
            sampled = torch.randperm(num_clients, generator=g)[:10].tolist()
            mal = adv.malicious(t, sampled, excluded, pool, t - 3)
            assert set(mal) <= set(sampled), f"adversary {name!r} picked unsampled clients {set(mal) - set(sampled)}"
            assert not set(mal) & set(excluded), f"adversary {name!r} picked excluded clients"
            assert len(set(mal)) == len(mal), f"adversary {name!r} picked a client twice"
            if t - 3 < 0:
                assert mal == [], f"adversary {name!r} attacked in a warm-up round"
            rounds.append(list(mal))
        return pool, rounds

    pool, rounds = run()
    assert isinstance(pool, frozenset) and pool <= set(range(num_clients)) and not pool & set(excluded)
    assert (pool, rounds) == run(), f"adversary {name!r} is not deterministic for a seed"


def check_adversary_declarations(name: str) -> None:
    check_declarations("adversary model", name)


ADVERSARY_CHECKS: tuple[Callable[[str], None], ...] = (check_adversary_declarations, check_adversary)


# ---- engines ------------------------------------------------------------------------------------------------

def check_engine(name: str) -> None:
    """Agrees with the sequential reference (`sgd_local` per client) to 1e-5 on a tiny dropout-free model,
    with unequal client sizes (a partial last batch); leaves the model and start weights as they were."""
    model = tiny_model(0)
    images, labels = tiny_data(60, seed=2)
    indices = [torch.arange(0, 7), torch.arange(7, 30), torch.arange(30, 43)]
    seeds = [11, 12, 13]
    cfg = LocalTraining(epochs=2, batch_size=5, lr=0.1)
    start = flat_params(model)
    w0, state0 = start.clone(), copy.deepcopy(model.state_dict())
    engine = build("engine", name)
    with seeded(0):
        got = engine.train(model, start, images, labels, indices, seeds, cfg)
    ref = torch.stack([sgd_local(model, start, images, labels, i, s, cfg) for i, s in zip(indices, seeds, strict=True)])
    assert got.shape == ref.shape, f"engine {name!r}: shape {tuple(got.shape)}, expected {tuple(ref.shape)}"
    assert float(ref.norm(dim=1).min()) > 1e-3, "the reference did not train"
    err = float((got - ref).abs().max())
    assert math.isfinite(err) and err <= 1e-5, f"engine {name!r} differs from the sequential reference by {err}"
    assert torch.equal(start, w0), f"engine {name!r} mutated the start weights"
    assert all(torch.equal(v, state0[k]) for k, v in model.state_dict().items()), f"engine {name!r} changed the model"
    empty = engine.train(model, start, images, labels, [], [], cfg)
    assert tuple(empty.shape) == (0, start.numel()), f"engine {name!r}: no clients must give [0, d]"


def check_engine_declarations(name: str) -> None:
    check_declarations("engine", name)


ENGINE_CHECKS: tuple[Callable[[str], None], ...] = (check_engine_declarations, check_engine)
