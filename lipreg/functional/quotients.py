"""Difference quotients of a model over pairs of inputs (CLIP paper, eqs. (3) and (5))."""

from collections.abc import Callable

import torch
from torch import Tensor

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


def difference_quotients(
    model: Callable[[Tensor], Tensor],
    u: Tensor,
    v: Tensor,
    p: float = 2.0,
    output_p: float | None = None,
) -> Tensor:
    """Difference quotient of ``model`` for each pair ``(u_i, v_i)``.

    .. math:: q_i = \\frac{\\|f(u_i) - f(v_i)\\|_{p'}}{\\|u_i - v_i\\|_p}

    the quantity whose supremum is the Lipschitz constant (CLIP paper, eq. (3)). Both points go
    through the model in one batched forward pass over ``cat([u, v])``. A pair whose points
    coincide (distance below ``MIN_DISTANCE``) has quotient 0 and a zero gradient, never NaN/Inf.

    Args:
        model: maps ``[2P, ...]`` inputs to ``[2P, ...]`` outputs (logits for classifiers).
        u, v: the pair points, ``[P, ...]`` each, same shape.
        p: norm on the input space (default Euclidean).
        output_p: norm on the output space (default: the same as ``p``).

    Returns:
        ``[P]`` quotients, differentiable with respect to ``u``, ``v`` and the model's parameters.

    Example:
        >>> f = torch.nn.Linear(2, 1, bias=False)
        >>> with torch.no_grad():
        ...     _ = f.weight.copy_(torch.tensor([[3.0, 4.0]]))
        >>> difference_quotients(f, torch.tensor([[0.0, 0.0]]), torch.tensor([[0.6, 0.8]]))
        tensor([5.0000], grad_fn=<DivBackward0>)
    """
    if u.shape != v.shape:
        raise ValueError(f"pair points must have the same shape, got {tuple(u.shape)} and {tuple(v.shape)}")
    num_pairs = u.shape[0]
    outputs = model(torch.cat([u, v]))  # [2P, out]
    output_gap = sample_norm(outputs[:num_pairs] - outputs[num_pairs:], p if output_p is None else output_p)
    input_gap = sample_norm(u - v, p)  # [P]
    coincident = input_gap < MIN_DISTANCE
    # where the points coincide the numerator is 0 too; divide by 1 there so no Inf/NaN appears.
    return torch.where(coincident, torch.zeros_like(output_gap), output_gap / input_gap.clamp_min(MIN_DISTANCE))
