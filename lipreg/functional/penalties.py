"""Regularisation terms: reductions of difference quotients, local Lipschitz norms, weight norms."""

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from lipreg.functional.quotients import MIN_DISTANCE, differentiable_copy, sample_norm


def max_quotient(quotients: Tensor, squared: bool = False) -> Tensor:
    """CLIP's regulariser: the largest difference quotient over the pair set (CLIP paper, eq. (5)).

    .. math:: \\mathrm{Lip}(f_\\theta, X_{Lip}) = \\max_{(x, x') \\in X_{Lip}} L(x, x')

    ``squared=True`` gives ``max L²``, the variant of the CLIP reference code.
    """
    top = quotients.max()
    return top.square() if squared else top


def mean_quotient(quotients: Tensor) -> Tensor:
    """SumFLIP's regulariser: the mean difference quotient over the pair set (FLIP slides, SumLip).

    .. math:: \\mathrm{SumLip}(f_\\theta) = \\frac{1}{|X_{Lip}|} \\sum_{(x, x') \\in X_{Lip}} L(x, x')
    """
    return quotients.mean()


class _SquaredNorm(torch.autograd.Function):
    """``Σ_i ‖θ_i‖²`` with the hand-written gradient ``2·θ_i``: one autograd node for all tensors.

    Autograd through ``square().sum()`` per tensor builds and runs a dozen nodes for a small
    network; this is the same value and gradient with less per-step overhead (measured with
    ``benchmarks/regularisers.py --methods WeightDecay``: README, Performance).
    """

    @staticmethod
    def forward(ctx: Any, *parameters: Tensor) -> Tensor:
        ctx.save_for_backward(*parameters)
        return torch.stack([parameter.square().sum() for parameter in parameters]).sum()

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        return tuple(
            parameter * (2 * grad) if needed else None
            for parameter, needed in zip(ctx.saved_tensors, ctx.needs_input_grad, strict=True)
        )


def squared_parameter_norm(parameters: Iterable[Tensor]) -> Tensor:
    """``‖θ‖² = Σ θ_i²`` over all given parameters: the weight penalty of eq. (6) with λ = 0.

    Differentiable (gradient ``2θ``, first order only); zero for no parameters.
    """
    parameters = tuple(parameters)
    if not parameters:
        return torch.zeros(())
    return _SquaredNorm.apply(*parameters)


def jacobian_spectral_norm(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    iterations: int = 5,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Per-sample operator norm ``‖∇f(x)‖₂`` of the input Jacobian by power iteration.

    The ε → 0 limit of the local Lipschitz constant (FLIP slides, "Local Lipschitz to gradient"),
    i.e. the integrand of the TV regulariser ``∫‖∇f(x)‖ dx``. Each iteration applies ``J`` and
    ``Jᵀ`` by double backpropagation (``v ← JᵀJv / ‖JᵀJv‖``); the returned ``‖J v‖`` is
    differentiable with respect to the model's parameters (``create_graph=True``).

    Returns:
        ``[B]`` estimates, each a lower bound of ``σ_max(J(x_i))`` that tightens with ``iterations``.
    """
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    with torch.enable_grad():
        x = differentiable_copy(x)
        outputs = model(x)  # [B, out]
        # Jᵀw is linear in w; differentiating <Jᵀw, v> by w gives Jv (the double-backward trick).
        w = differentiable_copy(torch.zeros_like(outputs))
        (jacobian_t_w,) = torch.autograd.grad(outputs, x, grad_outputs=w, create_graph=True)

        def jvp(v: Tensor, keep_graph: bool) -> Tensor:
            (jv,) = torch.autograd.grad(jacobian_t_w, w, grad_outputs=v, create_graph=keep_graph, retain_graph=True)
            return jv

        v = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        for _ in range(iterations):
            v = v / sample_norm(v).clamp_min(MIN_DISTANCE).view(-1, *([1] * (x.dim() - 1)))
            jv = jvp(v, keep_graph=False)
            (v,) = torch.autograd.grad(outputs, x, grad_outputs=jv, retain_graph=True)  # JᵀJv
        v = (v / sample_norm(v).clamp_min(MIN_DISTANCE).view(-1, *([1] * (x.dim() - 1)))).detach()
        return sample_norm(jvp(v, keep_graph=True))


def input_gradient_penalty(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    y: Tensor,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
) -> Tensor:
    """``(1/B) Σ_i ‖∇_{x_i} ℓ(f(x_i), y_i)‖₂²``, the input-gradient penalty of double back-propagation
    (Drucker & LeCun, 1992), differentiable with respect to the model's parameters.

    ``loss_fn`` is per sample (``[B, out], [B] -> [B]``), so the gradient of their sum with respect
    to the batch holds each sample's own input gradient. With the loss's gradient in place of the
    network's, it is the squared form of TV's ε → 0 limit ``∫‖∇f‖`` (FLIP slides).
    """
    with torch.enable_grad():
        x = differentiable_copy(x)
        losses = loss_fn(model(x), y)
        (grad,) = torch.autograd.grad(losses.sum(), x, create_graph=True)
    return grad.flatten(1).square().sum(dim=1).mean()
