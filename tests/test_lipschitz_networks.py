"""Networks that are 1-Lipschitz by construction, and margin training for a certified radius."""

import pytest
import torch
from torch import nn

from lipreg.errors import LipregError
from lipreg.functional import lipschitz_lower_bound, lipschitz_upper_bound, noisy_pairs
from lipreg.functional.bounds import class_pair_bounds
from lipreg.methods import LipschitzMargin
from lipreg.nets import MLP, LipschitzMLP, MaxMin, plain_layers


@pytest.mark.parametrize("layer", ["orthogonal", "aol"])
def test_every_layer_has_norm_at_most_one_whatever_the_weights(layer):
    torch.manual_seed(0)
    net = LipschitzMLP([784, 64, 32, 10], layer=layer)
    with torch.no_grad():  # scale the raw weights: the effective ones keep their norm
        for module in net.modules():
            if isinstance(module, nn.Linear):
                module.parametrizations.weight.original.mul_(25.0)
    norms = [torch.linalg.matrix_norm(m.weight.double(), 2).item() for m in net.modules() if isinstance(m, nn.Linear)]
    assert all(n <= 1 + 1e-5 for n in norms)
    if layer == "orthogonal":  # orthonormal rows or columns: exactly 1
        assert norms == pytest.approx([1.0, 1.0, 1.0], abs=1e-5)
    bound = lipschitz_upper_bound(net.layers, (1, 28, 28))
    lower = lipschitz_lower_bound(net, noisy_pairs(torch.rand(64, 1, 28, 28), 0.05), steps=20)
    assert lower <= bound <= 1 + 1e-5


def test_maxmin_is_a_permutation_on_each_region_so_it_keeps_gradient_norms():
    x = torch.randn(16, 8, requires_grad=True)
    out = MaxMin()(x)
    assert torch.equal(out.sort(dim=1).values, x.sort(dim=1).values)
    upstream = torch.randn_like(out)
    (grad,) = torch.autograd.grad(out, x, upstream)
    assert torch.allclose(grad.norm(dim=1), upstream.norm(dim=1))
    with pytest.raises(ValueError, match="even"):
        MaxMin()(torch.randn(2, 3))


def test_plain_layers_compute_the_same_function_without_parametrisations():
    torch.manual_seed(0)
    net = LipschitzMLP([20, 8, 4], layer="aol")
    x = torch.randn(5, 20)
    with torch.no_grad():
        before = net(x)
    plain = plain_layers(net)
    assert not any(hasattr(m, "parametrizations") for m in plain.modules())
    with torch.no_grad():
        assert torch.allclose(plain(x), before, atol=1e-6)


def test_margin_training_raises_every_rival_by_its_class_pair_bound():
    torch.manual_seed(0)
    net = LipschitzMLP([2, 16, 3], layer="aol")
    module = LipschitzMargin(net, epsilon=0.5)
    x, y = torch.rand(6, 2), torch.tensor([0, 1, 2, 0, 1, 2])
    output, loss = module.data_term(x, y)
    bounds = class_pair_bounds(net.layers, (2,)).float()
    expected = nn.functional.cross_entropy(output + 0.5 * bounds[y] * module.body_bound, y)
    assert torch.allclose(module.pair_bounds(), bounds, atol=1e-5)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters())  # no sqrt'(0) on the diagonal
    warm = LipschitzMargin(net, epsilon=1.0, warmup_epochs=4)
    assert warm.current_epsilon() == 1.0  # without a trainer: the target


def test_margin_training_refuses_what_it_cannot_bound():
    with pytest.raises(LipregError, match="chain ending in nn.Linear"):
        LipschitzMargin(nn.Sequential(nn.Linear(2, 2)))
    with pytest.raises(LipregError, match="classification"):
        LipschitzMargin(MLP([1, 4, 1]), task="regression")
    with pytest.raises(ValueError, match="even hidden widths"):
        LipschitzMLP([784, 15, 10])
