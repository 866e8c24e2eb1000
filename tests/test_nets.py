import pytest
import torch
from torch import nn

from lipreg.nets import MLP, MadryCNN, Normalize


def test_mlp_shapes_and_layers():
    net = MLP([784, 64, 64, 10], activation="sigmoid")
    out = net(torch.rand(5, 1, 28, 28))
    assert out.shape == (5, 10)
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(784, 64), (64, 64), (64, 10)]
    assert sum(isinstance(m, nn.Sigmoid) for m in net.modules()) == 2  # hidden layers only, not the output


def test_regression_net_has_linear_output():
    net = MLP([1, 500, 200, 100, 1], activation="sigmoid")
    assert isinstance(net.layers[-1], nn.Linear)
    assert net(torch.zeros(3, 1)).shape == (3, 1)


@pytest.mark.parametrize("widths", [[10], [10, 0, 2], []])
def test_mlp_rejects_bad_widths(widths):
    with pytest.raises(ValueError, match="widths"):
        MLP(widths)


def test_mlp_rejects_unknown_activation():
    with pytest.raises(ValueError, match="softplus"):
        MLP([2, 2], activation="softplus")


def test_madry_cnn_shape_and_parameter_count():
    net = MadryCNN()
    assert net(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    expected = (5 * 5 * 32 + 32) + (5 * 5 * 32 * 64 + 64) + (7 * 7 * 64 * 1024 + 1024) + (1024 * 10 + 10)
    assert sum(p.numel() for p in net.parameters()) == expected


def test_normalize_is_inside_the_network_and_per_channel():
    layer = Normalize(mean=[0.5, 0.25], std=[0.5, 0.25])
    x = torch.ones(1, 2, 3, 3)
    assert torch.allclose(layer(x)[0, 0], torch.ones(3, 3))
    assert torch.allclose(layer(x)[0, 1], torch.full((3, 3), 3.0))
    assert layer.lipschitz_constant() == pytest.approx(4.0)
    with pytest.raises(ValueError, match="std"):
        Normalize(0.0, 0.0)
