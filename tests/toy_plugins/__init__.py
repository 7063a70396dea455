"""Toy plugins, one file and one registration each: a model detector, a data-poisoning attack and an
aggregator. Importing this package registers all three (used as a pytest plugin: `-p tests.toy_plugins`, so
that the conformance suite collects them); `unregister_all()` takes them out again."""

from backdoor_arena.registries import AGGREGATORS, ATTACKS, MODEL_DETECTORS

from . import toy_aggregator, toy_attack, toy_detector  # noqa: F401  (registrations)

TOYS = ((MODEL_DETECTORS, "toy-logit-gap"), (ATTACKS, "toy-corner"), (AGGREGATORS, "toy-median"))


def unregister_all() -> None:
    for registry, name in TOYS:
        if name in registry:
            registry.unregister(name)
