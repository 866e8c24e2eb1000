"""Pair sets for Lipschitz estimation and their adversarial update (CLIP paper, Algorithm 1).

A pair set is two tensors ``u, v`` of shape ``[P, ...]``. The functions here build pair sets,
move them uphill on the difference quotient, and project them back into ε-balls, all with
``torch.autograd.grad`` so nothing reaches the parameters' ``.grad`` fields.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from lipreg.functional.quotients import MIN_DISTANCE, difference_quotients, differentiable_copy, sample_norm

NoiseKind = Literal["gaussian", "uniform"]
Box = tuple[float, float]


def _per_sample(scale: Tensor, like: Tensor) -> Tensor:
    """Reshape a ``[B]`` tensor so it broadcasts over the sample dimensions of ``like``."""
    return scale.view(-1, *([1] * (like.dim() - 1)))


def _clamp(x: Tensor, box: Box | None) -> Tensor:
    return x if box is None else x.clamp(box[0], box[1])


def noisy_pairs(
    x: Tensor,
    scale: float,
    kind: NoiseKind = "gaussian",
    box: Box | None = None,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Pairs ``(x, x + noise)``: the CLIP paper's Lipschitz set of images and their noisy copies.

    ``gaussian`` noise has standard deviation ``scale``; ``uniform`` noise lies in
    ``[-scale, scale]``. The noisy copy is clamped to ``box`` when one is given.
    """
    if scale <= 0:
        raise ValueError(f"noise scale must be positive, got {scale}")
    if kind == "gaussian":
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype) * scale
    elif kind == "uniform":
        noise = (torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) * 2 - 1) * scale
    else:
        raise ValueError(f"unknown noise kind {kind!r}; choose 'gaussian' or 'uniform'")
    return x.clone(), _clamp(x + noise, box)


def box_pairs(
    num_pairs: int,
    sample_shape: tuple[int, ...],
    box: Box,
    scale: float,
    kind: NoiseKind = "gaussian",
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor]:
    """Pairs with ``u`` uniform in the box and ``v`` a noisy perturbation of ``u``.

    The CLIP paper's regression experiment (§4.1): x ∈ [−4, 4], x' a noise perturbation of x.
    """
    low, high = box
    if not high > low:
        raise ValueError(f"box must have low < high, got {box}")
    u = low + (high - low) * torch.rand((num_pairs, *sample_shape), generator=generator, device=device)
    return noisy_pairs(u, scale, kind, box, generator)


def random_direction_pairs(x: Tensor, epsilon: Tensor | float, generator: torch.Generator | None = None) -> Tensor:
    """The point ``x + ε·d`` for each sample, ``d`` a uniformly random unit direction (L2)."""
    d = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    d = d / _per_sample(sample_norm(d).clamp_min(MIN_DISTANCE), d)
    return x + epsilon * d


def project_onto_ball(points: Tensor, centres: Tensor, epsilon: Tensor | float, p: float = 2.0) -> Tensor:
    """Project each point onto the closed L_p ε-ball around its own centre, per sample.

    .. math:: \\Pi(x) = c + (x - c)\\,\\min\\left(1, \\frac{\\varepsilon}{\\|x - c\\|}\\right)

    For ``p = inf`` this is the exact projection (a clamp); for other ``p`` it is the radial
    rescaling, which is the exact projection for ``p = 2``.
    """
    delta = points - centres
    if p == float("inf"):
        return centres + delta.clamp(-epsilon, epsilon)
    radius = sample_norm(delta, p)
    factor = torch.clamp(epsilon / radius.clamp_min(MIN_DISTANCE), max=1.0)
    return centres + delta * _per_sample(factor, delta)


def project_onto_sphere(points: Tensor, centres: Tensor, epsilon: Tensor | float, p: float = 2.0) -> Tensor:
    """Move each point radially onto the L_p ε-sphere around its own centre, per sample.

    .. math:: x \\leftarrow c + \\varepsilon \\frac{x - c}{\\|x - c\\|}

    (the projection step of the FLIP slides' pTV algorithm). A point sitting exactly on its
    centre has no direction and stays where it is.
    """
    delta = points - centres
    radius = sample_norm(delta, p)
    factor = torch.where(radius < MIN_DISTANCE, torch.zeros_like(radius), epsilon / radius.clamp_min(MIN_DISTANCE))
    return centres + delta * _per_sample(factor, delta)


@dataclass(frozen=True)
class AscentResult:
    """The outcome of :func:`ascend_pairs`: the moved pairs and the per-pair step sizes to reuse."""

    u: Tensor
    v: Tensor
    step_size: Tensor  # [P]


def _quotients_and_input_grads(
    model: Callable[[Tensor], Tensor], u: Tensor, v: Tensor, p: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Quotients of the pairs and the gradients of ``q²/2`` with respect to both points."""
    with torch.enable_grad():
        u, v = differentiable_copy(u), differentiable_copy(v)
        q = difference_quotients(model, u, v, p)
        grad_u, grad_v = torch.autograd.grad(0.5 * q.square().sum(), (u, v))
    return q.detach(), grad_u, grad_v


def ascend_pairs(
    model: Callable[[Tensor], Tensor],
    u: Tensor,
    v: Tensor,
    step_size: Tensor | float,
    steps: int = 1,
    p: float = 2.0,
    box: Box | None = None,
    project: Callable[[Tensor], Tensor] | None = None,
    adaptive: bool = False,
    grow: float = 1.5,
    shrink: float = 0.5,
) -> AscentResult:
    """Gradient ascent of every pair on its own difference quotient (CLIP paper, Algorithm 1).

    .. math::
        x \\leftarrow x + \\tau\\,L(x, x')\\,\\nabla_x L(x, x'), \\qquad
        x' \\leftarrow x' + \\tau\\,L(x, x')\\,\\nabla_{x'} L(x, x')

    i.e. ascent on ``L²/2``, for all pairs at once (one batched forward and backward a step).
    After each step the points are projected with ``project`` (e.g. onto an ε-ball; it is given
    the stacked ``cat([u, v])``) and clamped to ``box``.

    With ``adaptive=True`` each pair keeps its own step size: a step that raises the pair's
    quotient is accepted and its step size grows by ``grow``; one that does not is rejected
    (the pair stays put) and its step size shrinks by ``shrink``. This costs one extra forward.

    Only ``torch.autograd.grad`` is used, so the model's parameter gradients are untouched; the
    returned tensors are detached.
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    num_pairs = u.shape[0]
    tau = torch.as_tensor(step_size, dtype=u.dtype, device=u.device).expand(num_pairs).clone()
    u, v = u.detach(), v.detach()
    if steps == 0:
        return AscentResult(u, v, tau)

    def moved(a: Tensor, b: Tensor, grad_a: Tensor, grad_b: Tensor) -> tuple[Tensor, Tensor]:
        a = a + _per_sample(tau, a) * grad_a  # grad of q²/2 is q·∇q
        b = b + _per_sample(tau, b) * grad_b
        if project is not None:
            a, b = project(torch.cat([a, b])).split(num_pairs)
        return _clamp(a, box), _clamp(b, box)

    q, grad_u, grad_v = _quotients_and_input_grads(model, u, v, p)
    for step in range(steps):
        new_u, new_v = moved(u, v, grad_u, grad_v)
        if not adaptive:
            u, v = new_u, new_v
            if step + 1 < steps:
                q, grad_u, grad_v = _quotients_and_input_grads(model, u, v, p)
            continue
        new_q, new_grad_u, new_grad_v = _quotients_and_input_grads(model, new_u, new_v, p)
        accept = new_q >= q  # [P]
        keep = _per_sample(accept, u)
        u, v = torch.where(keep, new_u, u), torch.where(keep, new_v, v)
        grad_u, grad_v = torch.where(keep, new_grad_u, grad_u), torch.where(keep, new_grad_v, grad_v)
        q = torch.where(accept, new_q, q)
        tau = torch.where(accept, tau * grow, tau * shrink)
    return AscentResult(u.detach(), v.detach(), tau)
