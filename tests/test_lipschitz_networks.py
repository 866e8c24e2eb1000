"""Networks that are 1-Lipschitz by construction, and margin training for a certified radius."""

import pytest
import torch
from torch import nn

from lipreg.callbacks import CertifiedValidation
from lipreg.errors import LipregError
from lipreg.functional import lipschitz_lower_bound, lipschitz_upper_bound, noisy_pairs
from lipreg.functional.bounds import certified_radius, class_pair_bounds, layer_operator_norm
from lipreg.methods import LipschitzMargin, Standard
from lipreg.nets import MLP, LipschitzCNN, LipschitzMLP, MaxMin, plain_layers
from lipreg.nets.lipschitz import lipschitz_conv

from .helpers import BlobsDataModule, quiet_trainer


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
    with pytest.raises(LipregError, match="'ce' or 'hkr'"):
        LipschitzMargin(LipschitzMLP([2, 4, 3]), loss="hinge")
    with pytest.raises(LipregError, match="temperature > 0"):
        LipschitzMargin(LipschitzMLP([2, 4, 3]), temperature=0.0)
    with pytest.raises(ValueError, match="one stride"):
        LipschitzCNN(channels=(16, 32), strides=(1,))


def dense_operator_norm(conv: nn.Module, shape: tuple[int, ...]) -> float:
    """The exact L2 operator norm of a (bias-free part of a) convolution on images of ``shape``: the
    largest singular value of its matrix, built column by column."""
    inputs = torch.eye(int(torch.tensor(shape).prod())).view(-1, *shape).double()
    with torch.no_grad():
        columns = nn.functional.conv2d(inputs, conv.weight.double(), None, conv.stride, conv.padding)
    return torch.linalg.matrix_norm(columns.flatten(1).T, 2).item()


@pytest.mark.parametrize(("n_in", "n_out", "kernel", "stride"), [(1, 8, 3, 1), (4, 6, 3, 1), (4, 8, 4, 2)])
def test_aol_convolutions_have_operator_norm_at_most_one_whatever_the_kernel(n_in, n_out, kernel, stride):
    torch.manual_seed(0)
    conv = lipschitz_conv(n_in, n_out, kernel, stride)
    shape = (n_in, 6, 6)
    assert dense_operator_norm(conv, shape) == pytest.approx(1.0, abs=1e-5)  # orthogonal centre tap
    with torch.no_grad():
        conv.parametrizations.weight.original.normal_().mul_(10)
    exact = dense_operator_norm(conv, shape)
    assert exact <= 1 + 1e-6
    assert exact <= layer_operator_norm(conv, shape) + 1e-6  # lipreg's DFT bound is sound here too


def test_a_lipschitz_cnn_is_one_lipschitz_and_certifies_with_its_own_bound():
    torch.manual_seed(0)
    net = LipschitzCNN(channels=(8, 16), strides=(1, 2), widths=(32, 10), input_shape=(1, 12, 12))
    x = torch.rand(16, 1, 12, 12)
    assert net(x).shape == (16, 10)
    upper = lipschitz_upper_bound(net.layers, (1, 12, 12))
    lower = lipschitz_lower_bound(net, noisy_pairs(x, 0.05), steps=20)
    assert lower <= upper <= 1 + 1e-5
    channels = MaxMin()(torch.randn(2, 4, 3, 3))
    assert torch.equal(channels[:, :2], channels[:, :2].maximum(channels[:, 2:]))  # maxima first, per channel pair


def test_certified_validation_logs_the_certificate_of_the_current_weights():
    torch.manual_seed(0)
    net = LipschitzMLP([2, 16, 3], layer="orthogonal")
    module = LipschitzMargin(net, epsilon=0.05, optimizer=lambda p: torch.optim.Adam(p, lr=0.01))
    data = BlobsDataModule()
    trainer = quiet_trainer(max_epochs=2, callbacks=[CertifiedValidation(radii=[0.01, 0.05, 0.2])])
    trainer.fit(module, data)
    logged = {r: float(trainer.callback_metrics[f"val/certified_acc@{r:g}"]) for r in (0.01, 0.05, 0.2)}
    x, y = data.splits.val
    with torch.no_grad():
        radius = certified_radius(net(x), y, class_pair_bounds(net.layers, (2,)))
    for r, value in logged.items():
        assert value == pytest.approx((radius > r).float().mean().item(), abs=1e-6)
    assert logged[0.01] >= logged[0.05] >= logged[0.2] and logged[0.01] > 0.5
    assert float(trainer.callback_metrics["val/mean_certified_radius"]) == pytest.approx(radius.mean().item(), rel=1e-5)
    with pytest.raises(LipregError, match="no certificate"):
        quiet_trainer(max_epochs=1, callbacks=[CertifiedValidation()]).fit(
            Standard(_NoLayers()), data)


class _NoLayers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


def test_aol_layers_start_orthogonal_so_square_ones_keep_every_norm():
    torch.manual_seed(0)
    net = LipschitzMLP([32, 32, 32, 10], layer="aol")
    square = [m for m in net.modules() if isinstance(m, nn.Linear) and m.in_features == m.out_features]
    assert len(square) == 2
    for layer in square:
        singular = torch.linalg.svdvals(layer.weight.double())
        assert torch.allclose(singular, torch.ones_like(singular), atol=1e-5)  # the rescaling is the identity here
