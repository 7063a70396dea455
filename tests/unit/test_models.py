import pytest
import torch

from backdoor_arena.errors import ConfigError, IncompatibleError
from backdoor_arena.models import MODELS, architecture_args, build_model
from tests.helpers import TINY_RGB_INFO


@pytest.mark.parametrize(
    "name, shape, classes, params",
    [("badnet-mnist", (1, 28, 28), 10, 281_034), ("emnist-cnn", (1, 28, 28), 10, 1_199_882),
     ("gtsrb-cnn", (3, 32, 32), 43, None), ("resnet18-cifar", (3, 32, 32), 10, None)],
)
def test_registered_architectures_build_and_run(name, shape, classes, params):
    args = {"in_channels": shape[0], "num_classes": classes, "image_size": shape[1],
            "mean": [0.5] * shape[0], "std": [0.25] * shape[0]}
    model = build_model(name, args).eval()
    assert model(torch.rand(3, *shape)).shape == (3, classes)
    if params is not None:  # the papers' architectures, layer for layer
        assert sum(p.numel() for p in model.parameters()) == params


def test_badnet_mnist_layers_match_the_paper():
    model = build_model("badnet-mnist", {"in_channels": 1, "num_classes": 10, "image_size": 28,
                                         "mean": [0.1307], "std": [0.3081]})
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    pools = [m for m in model.modules() if isinstance(m, torch.nn.AvgPool2d)]
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert [(c.out_channels, c.kernel_size) for c in convs] == [(16, (5, 5)), (32, (5, 5))]
    assert len(pools) == 2
    assert [(m.in_features, m.out_features) for m in linears] == [(512, 512), (512, 10)]


def test_normalisation_lives_inside_the_model():
    model = build_model("gtsrb-cnn", architecture_args(TINY_RGB_INFO)).eval()
    x = torch.rand(2, 3, 16, 16)
    expected = (x - 0.5) / 0.25
    assert torch.allclose(model.normalize(x), expected)
    # normalisation statistics are derived from arch args, so they are not stored as tensors
    assert not any("normalize" in k for k in model.state_dict())


def test_unknown_architecture_and_bad_args():
    with pytest.raises(ConfigError, match="Did you mean 'badnet-mnist'"):
        build_model("badnet-mnis", {})
    with pytest.raises(ConfigError, match="missing"):
        build_model("badnet-mnist", {"in_channels": 1})
    with pytest.raises(ConfigError, match="one value per input channel"):
        build_model("badnet-mnist", {"in_channels": 3, "num_classes": 10, "image_size": 28, "mean": [0.1],
                                     "std": [0.3]})
    with pytest.raises(IncompatibleError, match="too small"):
        build_model("badnet-mnist", {"in_channels": 1, "num_classes": 10, "image_size": 8, "mean": [0.1],
                                     "std": [0.3]})


def test_every_registered_model_is_listed():
    assert set(MODELS.names()) >= {"badnet-mnist", "emnist-cnn", "gtsrb-cnn", "resnet18-cifar"}
