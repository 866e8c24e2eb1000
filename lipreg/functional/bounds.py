"""Lower and upper bounds of a network's Lipschitz constant (L2 norms)."""

import math
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
    should_stop: Callable[[], bool] | None = None,
) -> Tensor:
    """The largest difference quotient found by adaptive pair ascent from the pair set ``pairs`` (``[2, P, ...]``).

    Every quotient is attained, so the result is a certified lower bound of ``Lip(f)`` (eq. (3)) after
    any number of steps: with ``should_stop`` (asked before each step; e.g. a time budget that is
    spent) the ascent ends early and returns the bound reached so far.
    """
    result = ascend_pairs(model, pairs, step_size, steps=steps, box=box, adaptive=True, should_stop=should_stop)
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


def linear_operator_norm(weight: Tensor) -> float:
    """``σ_max(W)``, the exact L2 operator norm of a ``Linear`` layer, from an SVD in float64."""
    return torch.linalg.matrix_norm(weight.detach().double(), ord=2).item()


def convolution_operator_norm(conv: nn.Conv2d, input_shape: tuple[int, ...]) -> float:
    """A proven upper bound of a ``Conv2d`` layer's L2 operator norm on inputs of ``input_shape``.

    Zero padding, stride and dilation make the layer ``S·C·E``: ``E`` embeds the image, padded with
    zeros, isometrically into a torus of ``N × M = (H + 2p_h) × (W + 2p_w)`` pixels (no window of
    the layer wraps around it), ``C`` is the circular convolution on that torus and ``S`` keeps the
    output pixels the layer computes (a coordinate projection, norm ≤ 1). So ``‖conv‖ ≤ ‖C‖``, and a
    circular convolution is block-diagonalised by the 2-D DFT (Sedghi et al., 2019):

    .. math:: ‖C‖ = \\max_{u,v} σ_{max}\\Big(\\sum_{a,b} K_{:,:,a,b}\\, e^{-2πi(u·a·d_h/N + v·b·d_w/M)}\\Big)

    an exact maximum over ``N·M`` small ``C_out × C_in`` matrices, computed in float64 — never a
    power iteration, which approaches the norm from below and can read low. A strided convolution
    (dilation 1) is first written as a stride-1 convolution of the input's ``s_h·s_w`` polyphase
    components (an orthogonal split of the pixels: ``C_in·s_h·s_w`` channels on a ``⌈N/s_h⌉ × ⌈M/s_w⌉``
    torus), so the stride costs no tightness. Grouped convolutions are bounded group by group
    (their matrix is block diagonal).
    """
    weight = conv.weight.detach().double()
    kernel = weight.shape[2:]
    if isinstance(conv.padding, tuple):
        padding = conv.padding
    else:  # "same"/"valid" given as a string: at most (k − 1)·d per side
        padding = tuple(conv.dilation[i] * (kernel[i] - 1) for i in range(2))
    padded = [input_shape[i + 1] + 2 * padding[i] for i in range(2)]
    if conv.dilation == (1, 1) and conv.stride != (1, 1):
        s_h, s_w = conv.stride
        phases_h, phases_w = -(-kernel[0] // s_h), -(-kernel[1] // s_w)
        grown = weight.new_zeros(*weight.shape[:2], phases_h * s_h, phases_w * s_w)
        grown[:, :, : kernel[0], : kernel[1]] = weight
        # W'[o, (c, r, t), a, b] = w[o, c, a·s_h + r, b·s_w + t]
        weight = grown.reshape(*weight.shape[:2], phases_h, s_h, phases_w, s_w).permute(0, 1, 3, 5, 2, 4)
        weight = weight.reshape(weight.shape[0], -1, phases_h, phases_w)
        padded = [-(-padded[0] // s_h), -(-padded[1] // s_w)]
        dilation, kernel = (1, 1), weight.shape[2:]
    else:  # the stride only drops output pixels: bounded by the stride-1 convolution
        dilation = conv.dilation
    torus = [max(padded[i], dilation[i] * (kernel[i] - 1) + 1) for i in range(2)]
    spread = weight.new_zeros(*weight.shape[:2], *torus)
    spread[:, :, :: dilation[0], :: dilation[1]][:, :, : kernel[0], : kernel[1]] = weight
    spectrum = torch.fft.fft2(spread).permute(2, 3, 0, 1)  # [N, M, C_out, C_in / groups]
    out_per_group = weight.shape[0] // conv.groups
    norms = [torch.linalg.matrix_norm(spectrum[..., g * out_per_group : (g + 1) * out_per_group, :], ord=2).amax()
             for g in range(conv.groups)]
    return max(norm.item() for norm in norms)


def layer_operator_norm(layer: nn.Module, input_shape: tuple[int, ...]) -> float:
    """A proven upper bound of one layer's L2 Lipschitz constant, for an input of ``input_shape``
    (no batch dimension).

    ``Linear``: the largest singular value of the weight (exact, SVD). ``Conv2d``: the exact norm of
    the circular convolution that contains it (:func:`convolution_operator_norm`). Biases do not
    change a Lipschitz constant.
    """
    if isinstance(layer, nn.Linear):
        return linear_operator_norm(layer.weight)
    if isinstance(layer, nn.Conv2d):
        return convolution_operator_norm(layer, input_shape)
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
    bound = 1.0
    x = torch.zeros(1, *input_shape, device=_device(layers))
    with torch.no_grad():
        for index, layer in enumerate(_flatten_sequential(layers)):
            bound *= layer_norm(index, layer, tuple(x.shape[1:]))
            x = layer(x)
    return bound


def lipschitz_upper_bound(layers: nn.Sequential, input_shape: tuple[int, ...]) -> float:
    """The layer-product upper bound ``Lip(f) ≤ Π_l Lip(Φ_l)`` (CLIP paper, eq. (4)), every factor a
    proven bound (:func:`layer_operator_norm`).

    ``layers`` must be a chain (an ``nn.Sequential``, nested ones are flattened); each layer's
    input shape is found by one forward pass of a zero input of ``input_shape``.
    """
    return _layer_product(layers, input_shape, lambda _, layer, shape: layer_operator_norm(layer, shape))


def class_pair_bounds(layers: nn.Sequential, input_shape: tuple[int, ...]) -> Tensor:
    """``B[y, j]``: an upper bound of the L2 Lipschitz constant of the logit difference ``f_y − f_j``.

    With the last layer ``Linear`` (rows ``w_k``) over a body ``g``, ``f_y − f_j = (w_y − w_j)·g + c``,
    so ``B[y, j] = ‖w_y − w_j‖₂ · Π Lip(g's layers)`` (the body by :func:`lipschitz_upper_bound`'s
    product): at most, and usually well below, the ``√2·Π_l Lip(Φ_l)`` of the whole-network
    argument (Tsuzuku et al., 2018), which bounds every pair alike. Otherwise ``√2·L`` for every pair.
    A ``[C, C]`` float64 tensor on the CPU, 0 on the diagonal.
    """
    chain = _flatten_sequential(layers)
    last = chain[-1]
    if not isinstance(last, nn.Linear):
        bound = lipschitz_upper_bound(layers, input_shape)
        with torch.no_grad():
            classes = layers(torch.zeros(1, *input_shape, device=_device(layers))).shape[1]
        return (1.0 - torch.eye(classes, dtype=torch.float64)) * (2.0**0.5) * bound
    body = lipschitz_upper_bound(nn.Sequential(*chain[:-1]), input_shape) if len(chain) > 1 else 1.0
    rows = last.weight.detach().double().cpu()
    differences = rows[:, None, :] - rows[None, :, :]  # [C, C, d]
    return torch.linalg.vector_norm(differences, dim=2) * body


def rival_radii(logits: Tensor, target: Tensor, pair_bounds: Tensor) -> Tensor:
    """Per sample and class, the L2 radius within which that class provably cannot overtake the label.

    .. math:: r_j = \\frac{f_y(x) − f_j(x)}{B[y, j]}

    with ``B`` from :func:`class_pair_bounds`; ``inf`` at the label and where ``B[y, j] = 0`` with a
    positive gap, ``-inf`` where ``B[y, j] = 0`` and class ``j`` already wins. Float64, ``[B, C]``.
    A targeted attack toward ``j`` inside a ball of L2 radius at most ``r_j`` cannot succeed.
    """
    logits = logits.detach().double()
    bounds = pair_bounds.to(logits.device)[target]  # [B, C]
    gaps = logits.gather(1, target[:, None]) - logits  # [B, C], 0 at the label
    with torch.no_grad():
        ratios = torch.where(bounds > 0, gaps / bounds.clamp_min(torch.finfo(torch.float64).tiny),
                             torch.where(gaps > 0, torch.inf, -torch.inf))
        return ratios.scatter_(1, target[:, None], torch.inf)


def certified_radius(logits: Tensor, target: Tensor, pair_bounds: Tensor) -> Tensor:
    """Per sample, the L2 radius within which its prediction provably stays the label (0 if wrong).

    .. math:: r = \\min_{j ≠ y} \\frac{f_y(x) − f_j(x)}{B[y, j]}

    with ``B`` from :func:`class_pair_bounds`: no perturbation shorter than ``r`` can close any
    rival's gap (the smallest of :func:`rival_radii`). Computed in float64, ``[B]``; ``inf`` where
    every bound is 0 (a constant network).
    """
    return rival_radii(logits, target, pair_bounds).amin(dim=1).clamp_min(0.0)


def l2_reach(epsilon: float, norm: str, dimension: int) -> float:
    """The L2 radius of the smallest L2 ball around ``x`` that holds its ``norm`` ε-ball in
    ``dimension`` inputs: ε for L2, ``ε·√d`` for L∞. An L2 certificate beyond it proves the ε-ball safe."""
    if norm == "l2":
        return epsilon
    if norm == "linf":
        return epsilon * math.sqrt(dimension)
    raise ValueError(f"norm must be 'l2' or 'linf', got {norm!r}")


def _device(layers: nn.Module) -> torch.device:
    return next((t.device for t in layers.parameters()), torch.device("cpu"))


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
    """Whether each prediction provably survives every L2 perturbation of norm ≤ ``radius``, from one
    bound ``L`` of the network's L2 Lipschitz constant: each logit difference ``f_y − f_j`` is then
    ``√2·L``-Lipschitz, so a margin above ``√2·L·ε`` cannot be closed within the ε-ball (Tsuzuku et al.,
    2018). :func:`certified_radius` with :func:`class_pair_bounds` is never looser. Returns ``[B]`` booleans.
    """
    return logit_margin(logits, target) > (2.0**0.5) * lipschitz_constant * radius
