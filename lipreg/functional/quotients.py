"""Difference quotients of a model over pairs of inputs (CLIP paper, eqs. (3) and (5))."""

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from lipreg.devices import float32_maths

#: Distances below this count as zero: the quotient of a coincident pair is defined as 0.
MIN_DISTANCE = 1e-12


def differentiable_copy(x: Tensor) -> Tensor:
    """A detached copy of ``x`` to take ``torch.autograd.grad`` with respect to (call under grad mode).

    The result is a view of a fresh leaf, so a non-leaf that costs no copy:
    ``torch.utils.flop_counter`` cannot follow ``autograd.grad`` with respect to leaf tensors.
    """
    return x.detach().requires_grad_(True).view_as(x)


def sample_norm(x: Tensor, p: float = 2.0) -> Tensor:
    """The p-norm of each sample over all its non-batch dimensions: ``[B, ...] -> [B]``."""
    return torch.linalg.vector_norm(x.flatten(1), ord=p, dim=1)


class _PairDistance(torch.autograd.Function):
    """``‖u_i − v_i‖₂`` of a stacked pair set ``[2, P, ...] -> [P]``, with the gradient written out:
    ``±(u_i − v_i)/‖u_i − v_i‖`` in one ``[2, P, ...]`` tensor. Autograd through ``pairs[0] − pairs[1]``
    would zero-fill a full-size gradient for each slice and add them (measured: a sixth of a CLIP
    step with 6,000 pairs)."""

    @staticmethod
    def forward(ctx: Any, pairs: Tensor) -> Tensor:
        difference = pairs[0] - pairs[1]
        distance = sample_norm(difference)
        ctx.save_for_backward(difference, distance)
        return distance

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        difference, distance = ctx.saved_tensors
        scale = grad / distance.clamp_min(MIN_DISTANCE)  # coincident pairs have difference 0, so gradient 0
        signed = torch.stack([scale, -scale]).view(2, -1, *([1] * (difference.dim() - 1)))  # [2, P, 1, ...]
        return difference.unsqueeze(0) * signed


def pair_quotients(
    model: Callable[[Tensor], Tensor],
    pairs: Tensor,
    p: float = 2.0,
    output_p: float | None = None,
) -> Tensor:
    """Difference quotient of ``model`` for each pair of a stacked pair set ``pairs = [u, v]``.

    .. math:: q_i = \\frac{\\|f(u_i) - f(v_i)\\|_{p'}}{\\|u_i - v_i\\|_p}

    the quantity whose supremum is the Lipschitz constant (CLIP paper, eq. (3)). Both points go
    through the model in one batched forward pass over ``pairs.flatten(0, 1)``, a view (no copy).
    Under autocast (``bf16-mixed``, ``16-mixed``) the pass still runs in float32
    (:func:`~lipreg.devices.float32_maths`): a quotient of rounded logits keeps few digits.
    A pair whose points coincide (distance below ``MIN_DISTANCE``) has quotient 0 and a zero
    gradient, never NaN/Inf.

    Args:
        model: maps ``[2P, ...]`` inputs to ``[2P, ...]`` outputs (logits for classifiers).
        pairs: ``[2, P, ...]``: ``pairs[0]`` the points ``u``, ``pairs[1]`` their partners ``v``.
        p: norm on the input space (default Euclidean).
        output_p: norm on the output space (default: the same as ``p``).

    Returns:
        ``[P]`` quotients, differentiable with respect to ``pairs`` and the model's parameters.
    """
    if pairs.dim() < 2 or pairs.shape[0] != 2:
        raise ValueError(f"a pair set is a [2, P, ...] tensor, got shape {tuple(pairs.shape)}")
    num_pairs = pairs.shape[1]
    with float32_maths(pairs.device):
        outputs = model(pairs.flatten(0, 1))  # [2P, out]
        output_gap = sample_norm(outputs[:num_pairs] - outputs[num_pairs:], p if output_p is None else output_p)
        input_gap = _PairDistance.apply(pairs) if p == 2.0 else sample_norm(pairs[0] - pairs[1], p)  # [P]
        coincident = input_gap < MIN_DISTANCE
        # where the points coincide the numerator is 0 too; divide by 1 there so no Inf/NaN appears.
        return torch.where(coincident, torch.zeros_like(output_gap), output_gap / input_gap.clamp_min(MIN_DISTANCE))


def stack_pairs(u: Tensor, v: Tensor) -> Tensor:
    """The pair set ``[2, P, ...]`` of points ``u`` and partners ``v`` (``[P, ...]`` each)."""
    if u.shape != v.shape:
        raise ValueError(f"pair points must have the same shape, got {tuple(u.shape)} and {tuple(v.shape)}")
    return torch.stack([u, v])


def difference_quotients(
    model: Callable[[Tensor], Tensor],
    u: Tensor,
    v: Tensor,
    p: float = 2.0,
    output_p: float | None = None,
) -> Tensor:
    """:func:`pair_quotients` of the pairs ``(u_i, v_i)`` given as two ``[P, ...]`` tensors.

    Example:
        >>> f = torch.nn.Linear(2, 1, bias=False)
        >>> with torch.no_grad():
        ...     _ = f.weight.copy_(torch.tensor([[3.0, 4.0]]))
        >>> difference_quotients(f, torch.tensor([[0.0, 0.0]]), torch.tensor([[0.6, 0.8]]))
        tensor([5.], grad_fn=<WhereBackward0>)
    """
    return pair_quotients(model, stack_pairs(u, v), p, output_p)
