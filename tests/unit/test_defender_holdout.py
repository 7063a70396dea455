"""The defender's clean set is data the model never trained on: train/attack keep a seeded slice of the training
split out of training and record it in the manifest; defenses draw their clean set from it."""

from __future__ import annotations

import pytest
import torch

from backdoor_arena.api.training import defender_clean_set, split_holdout
from backdoor_arena.defenses import clean_holdout
from backdoor_arena.errors import ConfigError
from backdoor_arena.modelfile import Manifest
from tests.helpers import TINY_INFO, tiny_dataset


def _manifest(training: dict) -> Manifest:
    return Manifest(architecture="badnet-mnist", arch_args={}, dataset="tiny", input_shape=[1, 12, 12],
                    num_classes=4, class_names=list("abcd"), training=training)


def _rows(ds) -> set[bytes]:
    return {bytes(x.flatten().tolist()) for x in ds.images}


def test_the_holdout_is_disjoint_from_training_and_recorded():
    train = tiny_dataset(400, TINY_INFO, seed=3)
    rest, record = split_holdout(train, 0.1, seed=5)
    assert record == {"fraction": 0.1, "seed": 5, "split": "train", "n": 40} and len(rest) == 360
    clean, source = defender_clean_set(_manifest({"defender_holdout": record}), train, 0.1, seed=0)
    assert len(clean) == 40 and "never trained on" in source
    assert not (_rows(clean) & _rows(rest))  # no sample the model trained on
    smaller, _ = defender_clean_set(_manifest({"defender_holdout": record}), train, 0.05, seed=0)
    assert len(smaller) == 20 and _rows(smaller) <= _rows(clean)  # a seeded subset of the hold-out


def test_a_larger_clean_set_than_the_holdout_is_refused():
    train = tiny_dataset(400, TINY_INFO)
    _, record = split_holdout(train, 0.05, seed=0)
    with pytest.raises(ConfigError, match="kept only 20"):
        defender_clean_set(_manifest({"defender_holdout": record}), train, 0.2, seed=0)


def test_models_without_a_record_fall_back_and_say_so():
    train = tiny_dataset(400, TINY_INFO)
    clean, source = defender_clean_set(_manifest({}), train, 0.05, seed=1)
    assert torch.equal(clean.images, clean_holdout(train, 0.05, 1)[1].images)
    assert "may have trained on it" in source


def test_zero_keeps_nothing_back_and_bad_fractions_are_refused():
    train = tiny_dataset(100, TINY_INFO)
    rest, record = split_holdout(train, 0, seed=0)
    assert rest is train and record is None
    for bad in (-0.1, 1, 1.5, float("nan"), True):
        with pytest.raises(ConfigError, match="defender-holdout"):
            split_holdout(train, bad, seed=0)
