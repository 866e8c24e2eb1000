"""Lower and upper bounds of a network's Lipschitz constant (L2 norms)."""

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lipreg.functional.losses import logit_margin
from lipreg.functional.pairs import Box, ascend_pairs
from lipreg.functional.quotients import MIN_DISTANCE, pair_quotients

#: Lipschitz constants of parameter-free layers with respect to the L2 norm.
_ACTIVATION_CONSTANTS: dict[type[nn.Module], float] = {
    nn.ReLU: 1.0,
    nn.LeakyReLU: 1.0,
    nn.Tanh: 1.0,
    nn.Sigmoid: 0.25,
    nn.Flatten: 1.0,
    nn.Identity: 1.0,
    nn.Dropout: 1.0,
}


def lipschitz_lower_bound(
    model: Callable[[Tensor], Tensor],
    pairs: Tensor,
    steps: int = 50,
    step_size: float = 1.0,
    box: Box | None = None,
) -> Tensor:
    """The largest difference quotient found by adaptive pair ascent from the pair set ``pairs`` (``[2, P, ...]``).

    Every quotient is attained, so the result is a certified lower bound of ``Lip(f)`` (eq. (3)).
    """
    result = ascend_pairs(model, pairs, step_size, steps=steps, box=box, adaptive=True)
    if result.quotients is not None:
        return result.quotients.max()
    with torch.no_grad():
        return pair_quotients(model, result.pairs).max()


def _power_iteration(
    apply: Callable[[Tensor], Tensor], apply_transpose: Callable[[Tensor], Tensor], start: Tensor, iterations: int
) -> tuple[Tensor, Tensor]:
    """Largest singular value of a linear operator given ``A x`` and ``Aᵀ y`` (power iteration on
    AᵀA from ``start``), and the last unit vector, to start the next estimate from."""
    x = start
    for _ in range(iterations):
        x = x / x.norm().clamp_min(MIN_DISTANCE)
        x = apply_transpose(apply(x))
    x = x / x.norm().clamp_min(MIN_DISTANCE)
    return apply(x).norm(), x


def _weight_operator(
    layer: nn.Module, input_shape: tuple[int, ...]
) -> tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor], tuple[int, ...]] | None:
    """``(A, Aᵀ, shape of A's input)`` of a ``Linear`` or ``Conv2d`` layer (padding and stride
    included, bias left out: it does not change a Lipschitz constant), else ``None``."""
    if isinstance(layer, nn.Linear):
        weight = layer.weight.detach()
        return (lambda x: x @ weight.T), (lambda y: y @ weight), (1, weight.shape[1])
    if isinstance(layer, nn.Conv2d):
        weight = layer.weight.detach()
        conv = dict(stride=layer.stride, padding=layer.padding, dilation=layer.dilation, groups=layer.groups)
        out_shape = F.conv2d(torch.zeros(1, *input_shape, device=weight.device), weight, **conv).shape
        extra = [
            input_shape[i + 1] - ((out_shape[i + 2] - 1) * layer.stride[i] - 2 * layer.padding[i]
                                  + layer.dilation[i] * (weight.shape[i + 2] - 1) + 1)
            for i in range(2)
        ]

        def apply(x: Tensor) -> Tensor:
            return F.conv2d(x, weight, **conv)

        def apply_transpose(y: Tensor) -> Tensor:
            return F.conv_transpose2d(y, weight, output_padding=extra, **conv)

        return apply, apply_transpose, (1, *input_shape)
    return None


def layer_operator_norm(
    layer: nn.Module, input_shape: tuple[int, ...], iterations: int = 100, generator: torch.Generator | None = None
) -> float:
    """The L2 operator norm of one layer, for an input of ``input_shape`` (no batch dimension).

    ``Linear``: the largest singular value of the weight (exact). ``Conv2d``: power iteration on
    the convolution as an operator on ``input_shape`` (padding and stride included), via
    ``conv2d`` and ``conv_transpose2d``. Biases do not change a Lipschitz constant.
    """
    if isinstance(layer, nn.Linear):
        return torch.linalg.matrix_norm(layer.weight.detach(), ord=2).item()
    operator = _weight_operator(layer, input_shape)
    if operator is not None:
        apply, apply_transpose, shape = operator
        start = torch.randn(shape, generator=generator).to(layer.weight.device)
        return _power_iteration(apply, apply_transpose, start, iterations)[0].item()
    for kind, constant in _ACTIVATION_CONSTANTS.items():
        if isinstance(layer, kind):
            return constant
    if isinstance(layer, nn.MaxPool2d):
        kernel = nn.modules.utils._pair(layer.kernel_size)
        stride = nn.modules.utils._pair(layer.stride)
        # each input lies in at most ceil(k/s) windows per axis; disjoint windows give 1
        overlap = 1
        for k, s in zip(kernel, stride, strict=True):
            overlap *= -(-k // s)
        return float(overlap) ** 0.5
    if hasattr(layer, "lipschitz_constant"):
        return float(layer.lipschitz_constant())
    raise ValueError(
        f"no Lipschitz bound known for layer {type(layer).__name__}; the upper bound supports "
        "Linear, Conv2d, MaxPool2d, ReLU, LeakyReLU, Tanh, Sigmoid, Flatten, Dropout and layers "
        "with a lipschitz_constant() method"
    )


def _layer_product(
    layers: nn.Module, input_shape: tuple[int, ...], layer_norm: Callable[[int, nn.Module, tuple[int, ...]], float]
) -> float:
    """``Π_l layer_norm(l, Φ_l, input shape of Φ_l)`` over the flattened chain ``layers``; each layer's input
    shape is found by one forward pass of a zero input of ``input_shape``."""
    device = next((t.device for t in layers.parameters()), torch.device("cpu"))
    bound = 1.0
    x = torch.zeros(1, *input_shape, device=device)
    with torch.no_grad():
        for index, layer in enumerate(_flatten_sequential(layers)):
            bound *= layer_norm(index, layer, tuple(x.shape[1:]))
            x = layer(x)
    return bound


def lipschitz_upper_bound(
    layers: nn.Sequential, input_shape: tuple[int, ...], iterations: int = 100, seed: int = 0
) -> float:
    """The layer-product upper bound ``Lip(f) ≤ Π_l Lip(Φ_l)`` (CLIP paper, eq. (4)).

    ``layers`` must be a chain (an ``nn.Sequential``, nested ones are flattened); each layer's
    input shape is found by one forward pass of a zero input of ``input_shape``.
    """
    generator = torch.Generator().manual_seed(seed)
    return _layer_product(layers, input_shape,
                          lambda _, layer, shape: layer_operator_norm(layer, shape, iterations, generator))


def tracked_upper_bound(
    layers: nn.Sequential, input_shape: tuple[int, ...], vectors: dict[int, Tensor], iterations: int = 3
) -> float:
    """The layer-product bound ``Π_l Lip(Φ_l)`` (eq. (4)) with ``iterations`` power-iteration steps per
    ``Linear``/``Conv2d``, each started from its vector of the previous call (kept in ``vectors``).

    For tracking the bound while training: weights move little between calls, so a few steps
    from the last vectors keep up with :func:`lipschitz_upper_bound`'s 100 from a random start.
    Power iteration approaches each norm from below, so the first calls can read low.
    """

    def warm_started_norm(index: int, layer: nn.Module, shape: tuple[int, ...]) -> float:
        operator = _weight_operator(layer, shape)
        if operator is None:
            return layer_operator_norm(layer, shape)
        apply, apply_transpose, vector_shape = operator
        start = vectors.get(index)
        if start is None or start.shape != vector_shape:
            start = torch.randn(vector_shape, generator=torch.Generator().manual_seed(index))
        sigma, vectors[index] = _power_iteration(apply, apply_transpose, start.to(layer.weight.device), iterations)
        return sigma.item()

    return _layer_product(layers, input_shape, warm_started_norm)


def _flatten_sequential(layers: nn.Module) -> list[nn.Module]:
    if isinstance(layers, nn.Sequential):
        return [leaf for child in layers for leaf in _flatten_sequential(child)]
    return [layers]


def certified(logits: Tensor, target: Tensor, lipschitz_constant: float, radius: float) -> Tensor:
    """Whether each prediction provably survives every L2 perturbation of norm ≤ ``radius``.

    With ``L`` an upper bound of the network's L2 Lipschitz constant, each logit difference
    ``f_y − f_j`` is ``√2·L``-Lipschitz, so a margin above ``√2·L·ε`` cannot be closed within the
    ε-ball (Tsuzuku et al., 2018). Returns a ``[B]`` boolean tensor.
    """
    return logit_margin(logits, target) > (2.0**0.5) * lipschitz_constant * radius
