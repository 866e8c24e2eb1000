import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from lipreg.functional import lipschitz_upper_bound
from lipreg.functional.bounds import layer_operator_norm
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


def _settle(net: nn.Module, shape: tuple[int, ...], forwards: int = 30) -> None:
    """Training-mode forwards: each runs one power-iteration step of every spectral_norm."""
    net.train()
    with torch.no_grad():
        for _ in range(forwards):
            net(torch.rand(4, *shape))
    net.eval()


def test_a_spectrally_normalised_mlp_has_a_layer_product_bound_of_one():
    torch.manual_seed(0)
    net = MLP([784, 64, 64, 10], spectral_norm=True)
    with torch.no_grad():  # whatever the raw weights, the normalised ones have norm 1
        for module in net.modules():
            if isinstance(module, nn.Linear):
                module.parametrizations.weight.original.mul_(10.0)
    _settle(net, (1, 28, 28), forwards=400)  # power iteration converges within the first epoch
    assert all(parametrize.is_parametrized(m, "weight") for m in net.modules() if isinstance(m, nn.Linear))
    assert lipschitz_upper_bound(net.layers, (1, 28, 28)) == pytest.approx(1.0, abs=1e-4)


def test_a_spectrally_normalised_convolution_is_bounded_by_its_kernel_size():
    # spectral_norm normalises the kernel as a C_out × (C_in·k·k) matrix; the convolution as an
    # operator on images is then at most k (every pixel lies in k·k patches), not 1
    torch.manual_seed(0)
    net = MadryCNN(spectral_norm=True)
    _settle(net, (1, 28, 28), forwards=60)
    convolutions = [(m, shape) for m, shape in zip(
        [m for m in net.layers if isinstance(m, nn.Conv2d)], [(1, 28, 28), (32, 14, 14)], strict=True)]
    for conv, shape in convolutions:
        matrix = conv.weight.detach().flatten(1)
        assert torch.linalg.matrix_norm(matrix, ord=2).item() == pytest.approx(1.0, abs=1e-2)
        operator = layer_operator_norm(conv, shape)
        assert 1.0 - 1e-2 <= operator <= 5.0 + 1e-3
    bound = lipschitz_upper_bound(net.layers, (1, 28, 28))
    assert 1.0 < bound <= 25.0 + 1e-2  # not 1: the convolutions' operator norms exceed their matrices'
