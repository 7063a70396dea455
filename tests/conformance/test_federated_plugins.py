"""Every registered federated client attack, adversary model and engine, enrolled automatically (no
per-plugin table): declarations (example/bad parameters, help), the result contract, determinism for a seed,
no mutation of what the plugin is given, the attack's own stated constraint, an adversary that never picks
an excluded or unsampled client, an engine that agrees with the sequential reference to 1e-5."""

from __future__ import annotations

import pytest

from backdoor_arena.federated import checks
from backdoor_arena.federated.adversaries import ADVERSARIES
from backdoor_arena.federated.attacks import CLIENT_ATTACKS, AttackResult, ClientAttack
from backdoor_arena.federated.engines import ENGINES


def _ids(prefix):
    return lambda c: c.__name__.removeprefix(prefix)


@pytest.mark.parametrize("check", checks.CLIENT_ATTACK_CHECKS, ids=_ids("check_client_attack_"))
@pytest.mark.parametrize("name", CLIENT_ATTACKS.names())
def test_client_attack_conformance(name, check):
    check(name)


@pytest.mark.parametrize("check", checks.ADVERSARY_CHECKS, ids=_ids("check_"))
@pytest.mark.parametrize("name", ADVERSARIES.names())
def test_adversary_conformance(name, check):
    check(name)


@pytest.mark.parametrize("check", checks.ENGINE_CHECKS, ids=_ids("check_"))
@pytest.mark.parametrize("name", ENGINES.names())
def test_engine_conformance(name, check):
    check(name)


class _Shout(ClientAttack):
    """A toy omniscient attack: every attacker sends -10 x the benign mean, but claims a norm bound of 1."""

    omniscient = True
    example_params: dict = {}
    bad_params = (({"x": 1}, "no parameter"),)
    param_help: dict = {}

    def craft(self, ctx):
        return AttackResult(-10 * ctx.benign_updates.mean(0).expand(ctx.n_malicious, -1).clone(), {})

    def constraint_violations(self, ctx, result):
        worst = float(result.updates.norm(dim=1).max())
        return [f"norm {worst} > 1"] if worst > 1 else []


def test_checks_see_the_benign_updates_of_an_omniscient_attack_and_its_broken_constraint():
    with CLIENT_ATTACKS.temporarily("toy-shout", _Shout):
        checks.check_client_attack_declarations("toy-shout")
        checks.check_client_attack_determinism("toy-shout")  # it really received benign updates
        with pytest.raises(AssertionError, match="breaks its own constraint"):
            checks.check_client_attack_result("toy-shout")
    assert "toy-shout" not in CLIENT_ATTACKS


def test_a_non_omniscient_attack_gets_no_benign_updates():
    ctx = checks.tiny_context(omniscient=False)
    assert ctx.benign_updates is None and ctx.benign_weights is None
    assert checks.tiny_context(omniscient=True).benign_updates.shape == (5, ctx.n_params)


def test_an_engine_that_drifts_fails_its_check():
    class Drifting(ENGINES.get("sequential")):
        def train(self, model, start, images, labels, indices, seeds, cfg, max_steps=None):
            return super().train(model, start, images, labels, indices, seeds, cfg, max_steps) * 1.001

    with ENGINES.temporarily("toy-drifting", Drifting), pytest.raises(AssertionError, match="sequential reference"):
        checks.check_engine("toy-drifting")
    assert "toy-drifting" not in ENGINES
