"""Networks that are 1-Lipschitz by construction (L2): orthogonal or AOL-rescaled layers, MaxMin activations.

The layers are stock ``nn.Linear`` modules with a parametrisation on their weight
(``torch.nn.utils.parametrize``), so ``layer.weight`` is always the effective, norm-1 weight:
lipreg's bounds read it exactly (SVD), and :func:`plain_layers` turns the trained network into
ordinary ``Linear`` layers for testing and attacking at an ordinary network's cost.
"""

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrizations, parametrize

from lipreg.nets.normalize import Normalize

LayerKind = Literal["orthogonal", "aol"]


class MaxMin(nn.Module):
    """GroupSort with groups of two (Anil et al., 2019): ``(a, b) ↦ (max(a, b), min(a, b))`` over
    pairs of features (dimension 1: the features of ``[B, F]``, the channels of ``[B, C, H, W]``).
    A permutation of its input on every region, so it preserves gradient norms and is 1-Lipschitz
    (L2), unlike ReLU, which loses the norm of the negative part."""

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[1] % 2:
            raise ValueError(f"MaxMin needs an even number of features, got {x.shape[1]}")
        pairs = x.unflatten(1, (-1, 2))
        return torch.cat([pairs.amax(dim=2), pairs.amin(dim=2)], dim=1)

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


class AOLConvRescaling(nn.Module):
    """The almost-orthogonal rescaling of a convolution kernel ``K`` (Prach & Lampert, 2022, Theorem 2):

    .. math:: K' = K\\,D, \\quad D_{ii} = \\Big(\\sum_j \\sum_{s} |(K^\top \\star K)_{ij}(s)|\\Big)^{-1/2}

    with ``K^T ⋆ K`` the correlation of the kernel with itself over the output channels and every
    offset ``s``. The stride-1 convolution with ``K'`` has L2 operator norm ≤ 1; padding restricts it
    and a stride subsamples its output, neither raises the norm.
    """

    def forward(self, kernel: Tensor) -> Tensor:
        size = kernel.shape[-1]
        by_input = kernel.transpose(0, 1)  # [in, out, k, k]
        gram = F.conv2d(by_input, by_input, padding=size - 1)  # [in, in, 2k-1, 2k-1]
        return kernel * gram.abs().sum(dim=(1, 2, 3)).clamp_min(1e-12).rsqrt()[None, :, None, None]


def lipschitz_conv(n_in: int, n_out: int, kernel_size: int, stride: int = 1) -> nn.Conv2d:
    """A ``Conv2d`` (padding ``(k − 1) // 2``) whose operator has L2 norm at most 1 (:class:`AOLConvRescaling`),
    started from an orthogonal centre tap (every other tap 0), where the rescaled convolution is orthogonal."""
    layer = nn.Conv2d(n_in, n_out, kernel_size, stride=stride, padding=(kernel_size - 1) // 2)
    with torch.no_grad():
        layer.weight.zero_()
        nn.init.orthogonal_(layer.weight[:, :, kernel_size // 2, kernel_size // 2])
        layer.bias.zero_()
    parametrize.register_parametrization(layer, "weight", AOLConvRescaling())
    return layer


def lipschitz_linear(n_in: int, n_out: int, kind: LayerKind) -> nn.Linear:
    """A ``Linear`` layer whose weight has L2 norm at most 1: ``orthogonal`` (PyTorch's stock
    ``parametrizations.orthogonal`` with the Cayley map: orthonormal rows or columns) or ``aol``.

    The AOL layer starts from an orthogonal weight (``nn.init.orthogonal_``), where the rescaling is
    the identity for square layers: from PyTorch's default initialisation the rescaled layers
    shrink the signal instead."""
    layer = nn.Linear(n_in, n_out)
    if kind == "orthogonal":
        return parametrizations.orthogonal(layer, orthogonal_map="cayley")
    if kind == "aol":
        nn.init.orthogonal_(layer.weight)
        parametrize.register_parametrization(layer, "weight", AOLRescaling())
        return layer
    raise ValueError(f"unknown layer kind {kind!r}; choose 'orthogonal' or 'aol'")


def dense_chain(widths: Sequence[int], kind: LayerKind) -> list[nn.Module]:
    """``(1-Lipschitz Linear → MaxMin)* → 1-Lipschitz Linear`` through ``widths`` (no activation after the last)."""
    chain: list[nn.Module] = []
    for n_in, n_out in zip(widths[:-1], widths[1:], strict=True):
        chain += [lipschitz_linear(n_in, n_out, kind), MaxMin()]
    return chain[:-1]


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
        self.layers = nn.Sequential(Normalize(mean, std), nn.Flatten(), *dense_chain(widths, layer))

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class LipschitzCNN(nn.Module):
    """``Normalize → (AOL Conv → MaxMin)* → Flatten → (1-Lipschitz Linear → MaxMin)* → 1-Lipschitz Linear``,
    1-Lipschitz by construction (``1/std`` with normalisation): the convolutional counterpart of
    :class:`LipschitzMLP` for images.

    Each convolution is AOL-rescaled (:class:`AOLConvRescaling`); a stride-2 convolution halves the
    image where max-pooling would (pooling is 1-Lipschitz too, but wastes gradient norm); MaxMin
    pairs the channels. ``lipreg test`` bounds each convolution by the DFT of its kernel, so the
    certificate does not rest on the rescaling's bound.

    Args:
        channels: the output channels of each convolution (even: MaxMin pairs them).
        strides: each convolution's stride (1 or 2; kernel 3 for stride 1, 4 for stride 2).
        widths: the hidden widths of the dense layers after flattening, then the classes.
        input_shape: ``[C, H, W]`` of the images.
        layer: the dense layers' kind (``orthogonal`` or ``aol``).
        mean: subtracted from the input; std: the input is divided by it.
    """

    def __init__(self, channels: Sequence[int] = (32, 64, 64), strides: Sequence[int] = (1, 2, 2),
                 widths: Sequence[int] = (256, 10), input_shape: Sequence[int] = (1, 28, 28),
                 layer: LayerKind = "aol", mean: float | Sequence[float] = 0.0,
                 std: float | Sequence[float] = 1.0) -> None:
        super().__init__()
        if len(channels) != len(strides) or any(c % 2 for c in channels) or any(s not in (1, 2) for s in strides):
            raise ValueError(f"need one stride (1 or 2) per convolution and even channels; got channels "
                             f"{list(channels)}, strides {list(strides)}")
        if len(widths) < 1 or any(w % 2 for w in widths[:-1]):
            raise ValueError(f"widths needs the classes last and even hidden widths; got {list(widths)}")
        layers: list[nn.Module] = [Normalize(mean, std)]
        n_in, height, width = input_shape
        for n_out, stride in zip(channels, strides, strict=True):
            layers += [lipschitz_conv(n_in, n_out, 3 if stride == 1 else 4, stride), MaxMin()]
            n_in, height, width = n_out, height // stride, width // stride
        self.layers = nn.Sequential(*layers, nn.Flatten(), *dense_chain([n_in * height * width, *widths], layer))

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
