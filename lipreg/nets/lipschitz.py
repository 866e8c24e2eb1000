"""Networks that are 1-Lipschitz by construction (L2): orthogonal or AOL-rescaled layers, MaxMin activations.

The layers are stock ``nn.Linear`` modules with a parametrisation on their weight
(``torch.nn.utils.parametrize``), so ``layer.weight`` is always the effective, norm-1 weight:
lipreg's bounds read it exactly (SVD), and :func:`plain_layers` turns the trained network into
ordinary ``Linear`` layers for testing and attacking at an ordinary network's cost.
"""

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrizations, parametrize

from lipreg.nets.normalize import Normalize

LayerKind = Literal["orthogonal", "aol"]


class MaxMin(nn.Module):
    """GroupSort with groups of two (Anil et al., 2019): ``(a, b) ↦ (max(a, b), min(a, b))`` over
    feature pairs. A permutation of its input on every region, so it preserves gradient norms and
    is 1-Lipschitz (L2), unlike ReLU, which loses the norm of the negative part."""

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] % 2:
            raise ValueError(f"MaxMin needs an even number of features, got {x.shape[-1]}")
        pairs = x.unflatten(-1, (-1, 2))
        return torch.cat([pairs.amax(dim=-1), pairs.amin(dim=-1)], dim=-1)

    def lipschitz_constant(self) -> float:
        """1: used by :func:`lipreg.functional.lipschitz_upper_bound`."""
        return 1.0


class AOLRescaling(nn.Module):
    """The almost-orthogonal rescaling (Prach & Lampert, 2022, Theorem 1) as a weight parametrisation:

    .. math:: W' = W\\,D, \\quad D_{ii} = \\Big(\\sum_j |W^\\top W|_{ij}\\Big)^{-1/2}

    so that ``‖W'‖₂ ≤ 1`` for every ``W`` (a Gershgorin bound on ``D WᵀW D``): one ``WᵀW`` per
    forward, far cheaper than an orthogonal map, and exactly orthogonal when ``W`` has orthogonal columns.
    """

    def forward(self, weight: Tensor) -> Tensor:
        gram = (weight.T @ weight).abs().sum(dim=0)  # [in]
        return weight * gram.clamp_min(1e-12).rsqrt()


def lipschitz_linear(n_in: int, n_out: int, kind: LayerKind) -> nn.Linear:
    """A ``Linear`` layer whose weight has L2 norm at most 1: ``orthogonal`` (PyTorch's stock
    ``parametrizations.orthogonal`` with the Cayley map: orthonormal rows or columns) or ``aol``."""
    layer = nn.Linear(n_in, n_out)
    if kind == "orthogonal":
        return parametrizations.orthogonal(layer, orthogonal_map="cayley")
    if kind == "aol":
        parametrize.register_parametrization(layer, "weight", AOLRescaling())
        return layer
    raise ValueError(f"unknown layer kind {kind!r}; choose 'orthogonal' or 'aol'")


class LipschitzMLP(nn.Module):
    """``Normalize → Flatten → (1-Lipschitz Linear → MaxMin)* → 1-Lipschitz Linear``: a network whose
    L2 Lipschitz constant is at most ``1 / std`` by construction, whatever the weights.

    Every layer's weight is parametrised to norm ≤ 1 (``layer``: ``orthogonal``, the Cayley map of
    stock PyTorch, or ``aol``, the almost-orthogonal rescaling), and MaxMin keeps gradient norms, so
    certificates from the class-pair bound (``lipreg test``) are as tight as the margins allow. Train
    it with a margin loss (``lipreg.methods.LipschitzMargin``) for a target radius.

    Args:
        widths: every layer size from input to output; hidden widths must be even (MaxMin pairs).
        layer: ``orthogonal`` or ``aol``.
        mean: subtracted from the input.
        std: the input is divided by it (so the network is ``1/std``-Lipschitz; keep 1 for certificates
            in pixel units).
    """

    def __init__(self, widths: Sequence[int], layer: LayerKind = "aol", mean: float | Sequence[float] = 0.0,
                 std: float | Sequence[float] = 1.0) -> None:
        super().__init__()
        if len(widths) < 2 or any(w < 1 for w in widths) or any(w % 2 for w in widths[1:-1]):
            raise ValueError(f"widths needs an input and an output size, even hidden widths; got {list(widths)}")
        layers: list[nn.Module] = [Normalize(mean, std), nn.Flatten()]
        for i, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
            layers.append(lipschitz_linear(n_in, n_out, layer))
            if i < len(widths) - 2:
                layers.append(MaxMin())
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


def plain_layers(net: nn.Module) -> nn.Module:
    """``net`` with every weight parametrisation replaced by its current value (in place): plain
    ``Linear``/``Conv2d`` layers that compute the same function at an ordinary network's cost."""
    for module in net.modules():
        if parametrize.is_parametrized(module):
            for name in list(module.parametrizations):
                parametrize.remove_parametrizations(module, name, leave_parametrized=True)
    return net
