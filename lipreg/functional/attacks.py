"""Input perturbations for robustness evaluation and adversarial training, vectorised over the batch.

All attacks work on any input shape (images ``[B, C, H, W]`` or flat ``[B, d]``), use only
``torch.autograd.grad`` (parameter gradients are untouched), never switch the model's
train/eval mode, and return detached adversarial inputs inside ``box``.
``loss_fn`` must return one loss per sample (``reduction="none"``); its default is cross-entropy.
"""

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

from lipreg.functional.losses import LossFn, per_sample_cross_entropy
from lipreg.functional.pairs import Box, project_onto_ball
from lipreg.functional.progress import report_step
from lipreg.functional.quotients import MIN_DISTANCE, differentiable_copy, sample_norm

Norm = Literal["l2", "linf"]
#: ``(outputs, y) -> [B] bool``: whether each output is a successful attack (e.g. ``misclassified``).
AdversarialFn = Callable[[Tensor, Tensor], Tensor]


def check_attack(epsilon: float, norm: str) -> None:
    """Reject a negative radius or an unknown norm, naming the bad value."""
    if epsilon < 0:
        raise ValueError(f"epsilon must be >= 0, got {epsilon}")
    if norm not in ("l2", "linf"):
        raise ValueError(f"norm must be 'l2' or 'linf', got {norm!r}")


def clamp_to_box(x: Tensor, box: Box | None) -> Tensor:
    """``x`` clamped to the input box (unchanged when ``box`` is ``None``)."""
    return x if box is None else x.clamp(box[0], box[1])


def per_sample_view(values: Tensor, like: Tensor) -> Tensor:
    """A ``[B]`` tensor viewed as ``[B, 1, …]`` so it broadcasts over the samples of ``like``."""
    return values.view(-1, *([1] * (like.dim() - 1)))


def select_samples(mask: Tensor, chosen: Tensor, other: Tensor) -> Tensor:
    """Per sample, ``chosen`` where the ``[B]`` bool ``mask`` holds, else ``other`` (finite tensors).

    Exactly ``torch.where(mask, chosen, other)``: ``torch.lerp`` with weights 0 and 1 returns its
    start and its end unchanged (its kernel computes ``end − (end − start)·(1 − w)`` for ``w ≥ ½``),
    and on CPUs it is one vectorised pass where ``torch.where`` with a broadcast bool mask is not,
    a pass that attacks make several times a step."""
    return torch.lerp(other, chosen, per_sample_view(mask.to(chosen.dtype), chosen))


def select_samples_(mask: Tensor, chosen: Tensor, into: Tensor) -> Tensor:
    """:func:`select_samples` written into ``into`` (which must share no memory with ``chosen``):
    ``chosen`` where the ``[B]`` bool ``mask`` holds, ``into`` left as it is elsewhere. A large
    fresh tensor per step costs its allocation and first touch, more than the select itself."""
    return into.lerp_(chosen, per_sample_view(mask.to(chosen.dtype), chosen))


def loss_gradient(
    model: Callable[[Tensor], Tensor], x: Tensor, y: Tensor, loss_fn: LossFn, *loss_args: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-sample losses ``loss_fn(f(x), y, *loss_args)`` at ``x``, the gradient of their sum with
    respect to ``x``, and the outputs ``f(x)``, all detached."""
    with torch.enable_grad():
        x = differentiable_copy(x)
        outputs = model(x)
        losses = loss_fn(outputs, y, *loss_args)
        (grad,) = torch.autograd.grad(losses.sum(), x)
    return losses.detach(), grad, outputs.detach()


def steepest_direction(grad: Tensor, norm: Norm) -> Tensor:
    """The unit-norm steepest-ascent direction: ``sign(g)`` for L∞, ``g / ‖g‖₂`` for L2."""
    if norm == "linf":
        return grad.sign()
    return grad / per_sample_view(sample_norm(grad).clamp_min(MIN_DISTANCE), grad)


def _random_start(x: Tensor, epsilon: float, norm: Norm, generator: torch.Generator | None) -> Tensor:
    """A point uniform in the ε-ball around each sample (L∞: a uniform cube; L2: uniform in volume)."""
    if norm == "linf":
        return x + (torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) * 2 - 1) * epsilon
    direction = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    direction = direction / per_sample_view(sample_norm(direction).clamp_min(MIN_DISTANCE), x)
    dim = x[0].numel()
    radius = torch.rand(x.shape[0], generator=generator, device=x.device, dtype=x.dtype) ** (1.0 / dim) * epsilon
    return x + direction * per_sample_view(radius, x)


def gaussian_noise(
    x: Tensor, sigma: float, box: Box | None = (0.0, 1.0), generator: torch.Generator | None = None
) -> Tensor:
    """``clamp(x + σ·N(0, I))``: the CLIP paper's noise test (σ = 1, zero mean)."""
    if sigma < 0:
        raise ValueError(f"sigma must be >= 0, got {sigma}")
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return clamp_to_box(x + sigma * noise, box)


def fgsm(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    y: Tensor,
    epsilon: float,
    norm: Norm = "linf",
    loss_fn: LossFn = per_sample_cross_entropy,
    box: Box | None = (0.0, 1.0),
    random_start: bool = False,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Fast gradient (sign) method (Goodfellow et al., 2015).

    .. math:: x_{adv} = \\Pi_{box}\\big(x + \\varepsilon\\, s(\\nabla_x \\ell(f(x), y))\\big)

    with ``s = sign`` for L∞ and ``s(g) = g/‖g‖₂`` for L2. With ``random_start`` the gradient is
    taken at a uniform point of the ε-ball and the result projected back into it (Wong et al., 2020).
    """
    check_attack(epsilon, norm)
    start = clamp_to_box(_random_start(x, epsilon, norm, generator), box) if random_start else x
    _, grad, _ = loss_gradient(model, start, y, loss_fn)
    adversarial = start + epsilon * steepest_direction(grad, norm)
    if random_start:
        adversarial = project_onto_ball(adversarial, x, epsilon, p=2.0 if norm == "l2" else float("inf"))
    return clamp_to_box(adversarial, box).detach()


def _pgd_step_(
    adversarial: Tensor, grad: Tensor, x: Tensor, epsilon: float, step_size: float, norm: Norm, step_kind: str,
    box: Box | None,
) -> Tensor:
    """One PGD step, in place on ``adversarial`` and ``grad`` (both owned by the loop): ascend, project, clamp.

    The same maths as ``project_onto_ball(adversarial + α·s(grad), x, ε)`` then a clamp, without
    allocating a new image batch per elementwise operation (PGD runs for hundreds of steps).
    """
    if step_kind == "sign" or norm == "linf":
        adversarial.add_(grad.sign_(), alpha=step_size)
    else:  # x + α·g/‖g‖ in one pass
        adversarial.addcmul_(grad, per_sample_view(step_size / sample_norm(grad).clamp_min_(MIN_DISTANCE), grad))
    delta = adversarial.sub_(x)
    if norm == "linf":
        delta.clamp_(-epsilon, epsilon)
    else:
        delta.mul_(per_sample_view(torch.clamp(epsilon / sample_norm(delta).clamp_min_(MIN_DISTANCE), max=1.0), delta))
    adversarial = delta.add_(x)
    return adversarial if box is None else adversarial.clamp_(box[0], box[1])


def pgd(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    y: Tensor,
    epsilon: float,
    step_size: float,
    steps: int,
    norm: Norm = "l2",
    step_kind: Literal["steepest", "sign"] = "steepest",
    loss_fn: LossFn = per_sample_cross_entropy,
    box: Box | None = (0.0, 1.0),
    random_start: bool = False,
    restarts: int = 1,
    generator: torch.Generator | None = None,
    is_adversarial: AdversarialFn | None = None,
) -> Tensor:
    """Projected gradient ascent on the loss (Madry et al., 2018), batched.

    .. math:: x^{t+1} = Π_{box}(Π_{B_ε(x)}(x^t + α·s(∇_x ℓ(f(x^t), y))))

    ``step_kind="steepest"`` uses the norm's own steepest direction (``g/‖g‖₂`` for L2,
    ``sign g`` for L∞); ``step_kind="sign"`` with ``norm="l2"`` is the CLIP paper's eq. (13)
    (sign steps, projection onto the L2 ball; ε = 2, α = 0.25, 100 iterations in Table 1).
    The projection is per sample. With several ``restarts`` (random starts after the first,
    which starts at ``x`` unless ``random_start``) each sample keeps its highest-loss result.

    With ``is_adversarial`` (``(outputs, y) -> [B] bool``, e.g. ``misclassified``) a sample is
    finished at the first iterate where it holds (checked on the outputs each step computes anyway,
    and on the last iterate), that iterate is returned for it, and it leaves the batch: the attack
    then costs only what the unbroken samples need, and an image counts as broken if any iterate
    broke it (AutoAttack's rule). Samples never adversarial get the result they would get without it.
    """
    check_attack(epsilon, norm)
    if steps < 0 or restarts < 1:
        raise ValueError(f"need steps >= 0 and restarts >= 1, got steps={steps}, restarts={restarts}")
    x = x.detach()
    if is_adversarial is not None:
        return _pgd_until_adversarial(model, x, y, epsilon, step_size, steps, norm, step_kind, loss_fn, box,
                                      random_start, restarts, generator, is_adversarial)
    best, best_loss = x, None
    for restart in range(restarts):
        start_random = random_start or restart > 0
        adversarial = clamp_to_box(_random_start(x, epsilon, norm, generator), box) if start_random else x.clone()
        for _ in range(steps):
            _, grad, _ = loss_gradient(model, adversarial, y, loss_fn)
            adversarial = _pgd_step_(adversarial, grad, x, epsilon, step_size, norm, step_kind, box)
            report_step()
        if restarts == 1:
            return adversarial.detach()
        with torch.no_grad():
            losses = loss_fn(model(adversarial), y)
        if best_loss is None:
            best, best_loss = adversarial, losses
        else:
            better = losses > best_loss
            best = select_samples(better, adversarial, best)
            best_loss = torch.where(better, losses, best_loss)
    return best.detach()


def _pgd_until_adversarial(
    model: Callable[[Tensor], Tensor], x: Tensor, y: Tensor, epsilon: float, step_size: float, steps: int, norm: Norm,
    step_kind: str, loss_fn: LossFn, box: Box | None, random_start: bool, restarts: int,
    generator: torch.Generator | None, is_adversarial: AdversarialFn,
) -> Tensor:
    """``pgd`` that finishes each sample at its first adversarial iterate (one host read a step)."""
    result = x.clone()
    best_loss = torch.full((len(x),), -torch.inf, device=x.device, dtype=x.dtype)
    pending = torch.arange(len(x), device=x.device)  # the samples without an adversarial yet
    for restart in range(restarts):
        centre, labels, index = x[pending], y[pending], pending
        start_random = random_start or restart > 0
        current = clamp_to_box(_random_start(centre, epsilon, norm, generator), box) if start_random else centre.clone()
        for step in range(steps + 1):
            if step < steps:
                losses, grad, outputs = loss_gradient(model, current, labels, loss_fn)
            else:
                with torch.no_grad():
                    outputs = model(current)
                    losses = loss_fn(outputs, labels)
            found = is_adversarial(outputs, labels)
            if found.any():  # the step's one host read; a compaction adds one index
                result[index[found]] = current[found]
                kept = (~found).nonzero().squeeze(1)
                centre, labels, index, current, losses = (t.index_select(0, kept)
                                                          for t in (centre, labels, index, current, losses))
                if step < steps:
                    grad = grad.index_select(0, kept)
                if len(index) == 0:
                    break
            if step < steps:
                current = _pgd_step_(current, grad, centre, epsilon, step_size, norm, step_kind, box)
                report_step()
        if len(index) == 0:
            return result
        better = losses > best_loss[index]  # restarts: the unbroken keep their highest-loss result
        result[index[better]] = current[better]
        best_loss[index[better]] = losses[better]
        pending = index
    return result
