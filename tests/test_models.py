"""Shapes and parameter layout of the models every learner relies on."""

import torch
from torch import nn

from fedmeta.models import MLP, Conv4, build_model
from fedmeta.models.episode_norm import EpisodeBatchNorm2d
from fedmeta.errors import ConfigError
import pytest


def test_conv4_shapes_and_parts() -> None:
    model = Conv4(n_way=5)
    x = torch.randn(7, 1, 28, 28)
    assert model.body(x).shape == (7, 64)
    assert model(x).shape == (7, 5)
    convs = [m for m in model.body.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 4 and all(c.kernel_size == (3, 3) and c.out_channels == 64 for c in convs)
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.body.modules()) == 4
    assert not list(model.buffers()), "no running statistics: batch-norm is per episode"


def test_episode_batchnorm_equals_native_batch_statistics() -> None:
    torch.manual_seed(0)
    ours, native = EpisodeBatchNorm2d(6), nn.BatchNorm2d(6, track_running_stats=False)
    with torch.no_grad():
        for m in (ours, native):
            m.weight.copy_(torch.linspace(0.5, 2, 6))
            m.bias.copy_(torch.linspace(-1, 1, 6))
    x = torch.randn(4, 6, 5, 5) * 3 + 1
    torch.testing.assert_close(ours(x), native(x))


def test_mlp_is_1_40_40_1() -> None:
    model = MLP()
    shapes = [tuple(p.shape) for p in model.parameters()]
    assert shapes == [(40, 1), (40,), (40, 40), (40,), (1, 40), (1,)]
    assert model(torch.zeros(3, 1)).shape == (3, 1)


def test_unknown_model_names_the_choices() -> None:
    with pytest.raises(ConfigError, match="model='resnet'.*conv4.*mlp"):
        build_model("resnet")


@pytest.mark.parametrize("size, features", [(28, 64), (32, 256), (84, 1600)])
def test_conv4_head_input_follows_the_image_size(size: int, features: int) -> None:
    model = Conv4(n_way=5, in_channels=3, image_size=size)
    assert model.head.in_features == features
    assert model.body(torch.zeros(2, 3, size, size)).shape == (2, features)
    assert model(torch.zeros(2, 3, size, size)).shape == (2, 5)


def test_conv4_refuses_images_too_small_for_four_poolings() -> None:
    with pytest.raises(ConfigError, match="image_size=8 .* an integer >= 16"):
        Conv4(image_size=8)
