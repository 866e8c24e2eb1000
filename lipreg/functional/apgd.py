"""Auto-PGD (Croce & Hein, 2020, "Reliable evaluation of adversarial robustness with an ensemble of
diverse parameter-free attacks", Algorithm 1), L2 and L∞, batched, with any per-sample loss.

PGD with a fixed step size needs tuning per network; APGD starts with the step ``η = 2ε`` and
halves it, per sample, at checkpoints where the loss has stopped rising, restarting from the best
point found so far; its steps carry momentum 0.25. Samples for which ``is_adversarial`` holds are
finished: they are dropped from the batch as the attack goes (it never changes the other samples'
trajectories, which are independent), so an attack on a weak network costs little.
"""

from collections.abc import Callable

import torch
from torch import Tensor

from lipreg.functional.attacks import (
    AdversarialFn,
    Norm,
    check_attack,
    clamp_to_box,
    loss_gradient,
    per_sample_view,
    select_samples,
    select_samples_,
    steepest_direction,
)
from lipreg.functional.losses import LossFn, misclassified, per_sample_cross_entropy, targeted_dlr_loss
from lipreg.functional.pairs import Box, project_onto_ball
from lipreg.functional.progress import report_step
from lipreg.functional.quotients import MIN_DISTANCE, sample_norm

#: APGD's momentum weight α (the step is α·(z − x) + (1 − α)·(x − x_prev); Croce & Hein use 0.75).
MOMENTUM_WEIGHT = 0.75
#: Compact the batch once this share of it is finished (and at every checkpoint where any sample is).
COMPACT_SHARE = 0.125


def apgd_checkpoints(steps: int) -> list[int]:
    """The step counts after which APGD checks each sample's progress (Croce & Hein, 2020, §3.2).

    The first check comes after ``0.22·N`` steps; each interval is ``0.03·N`` shorter than the last
    but at least ``0.06·N`` (in whole steps, at least 1), as in the authors' reference code.

    Example:
        >>> apgd_checkpoints(100)
        [22, 41, 57, 70, 80, 87, 93, 99]
    """
    interval, shrink, shortest = max(int(0.22 * steps), 1), max(int(0.03 * steps), 1), max(int(0.06 * steps), 1)
    checkpoints, at = [], interval
    while at <= steps:
        checkpoints.append(at)
        interval = max(interval - shrink, shortest)
        at += interval
    return checkpoints


def _random_start_on_boundary(x: Tensor, epsilon: float, norm: Norm, generator: torch.Generator | None) -> Tensor:
    """A random point on the boundary of each ε-ball: ``ε·t/‖t‖₂`` (Gaussian ``t``) or ``ε·t/‖t‖∞`` (uniform)."""
    if norm == "l2":
        t = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    else:
        t = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) * 2 - 1
    size = sample_norm(t, 2.0 if norm == "l2" else float("inf")).clamp_min(1e-12)
    return x + t * per_sample_view(epsilon / size, x)


class _State:
    """The per-sample tensors of one APGD run, all ``[n, ...]`` over the samples still attacked."""

    def __init__(self, **tensors: Tensor | None) -> None:
        self.__dict__.update(tensors)

    def keep(self, mask: Tensor) -> None:
        """Drop every sample where ``mask`` is false (one host synchronisation: the kept rows' index)."""
        rows = mask.nonzero().squeeze(1)
        for name, value in self.__dict__.items():
            if value is not None:
                setattr(self, name, value.index_select(0, rows))


def apgd(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    y: Tensor,
    epsilon: float,
    norm: Norm = "l2",
    steps: int = 100,
    loss_fn: LossFn = per_sample_cross_entropy,
    rival: Tensor | None = None,
    is_adversarial: AdversarialFn | None = misclassified,
    box: Box | None = (0.0, 1.0),
    rho: float = MOMENTUM_WEIGHT,
    generator: torch.Generator | None = None,
) -> Tensor:
    """APGD (Croce & Hein, 2020, Algorithm 1) from a random point on the ε-sphere.

    .. math::
        z^{k+1} = P(x^k + η^k s(∇ℓ(x^k))), \\quad
        x^{k+1} = P(x^k + α(z^{k+1} − x^k) + (1 − α)(x^k − x^{k−1}))

    with ``P`` the projection onto the ε-ball and the input box, ``s`` the norm's steepest direction,
    ``α = 0.75`` (1 for the first step) and ``η⁰ = 2ε``. At each of :func:`apgd_checkpoints` a
    sample's step size is halved, and it restarts from its best point, when its loss rose in at most
    ``rho`` of the steps since the last checkpoint, or when its step size was not halved there and
    its best loss has not improved since (eq. (4)).

    Args:
        loss_fn: the per-sample objective, ``loss_fn(logits, y)``, or ``loss_fn(logits, y, rival)``
            when ``rival`` is given (targeted attacks, e.g. :func:`~lipreg.functional.losses.targeted_dlr_loss`).
        is_adversarial: ``(logits, y) -> [B] bool``; a sample is finished once it holds at any
            iterate, and that iterate is returned for it. ``None`` (regression): every sample runs
            all steps and its highest-loss iterate is returned.

    Returns:
        Detached adversarial inputs: the first adversarial iterate where one was found, else the
        iterate of highest loss.
    """
    check_attack(epsilon, norm)
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")

    def loss_and_gradient(points: Tensor, labels: Tensor, rivals: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        return loss_gradient(model, points, labels, loss_fn, *([] if rivals is None else [rivals]))

    def project(points: Tensor, centres: Tensor) -> Tensor:
        """``points`` (a fresh tensor, overwritten) projected onto the ε-balls and the box."""
        if norm == "linf":
            return clamp_to_box(project_onto_ball(points, centres, epsilon, float("inf")), box)
        delta = points.sub_(centres)
        factor = (epsilon / sample_norm(delta).clamp_min(MIN_DISTANCE)).clamp_(max=1.0)
        projected = delta.mul_(per_sample_view(factor, delta)).add_(centres)
        return projected if box is None else projected.clamp_(*box)

    x = x.detach()
    start = clamp_to_box(_random_start_on_boundary(x, epsilon, norm, generator), box)
    loss, grad, logits = loss_and_gradient(start, y, rival)
    result = start.clone()
    s = _State(
        centre=x, current=start, previous=start.clone(), stepped=torch.empty_like(start), grad=grad, loss=loss,
        best=start.clone(), best_grad=grad.clone(), best_loss=loss,
        step_size=torch.full_like(loss, 2 * epsilon), increases=torch.zeros_like(loss),
        best_loss_at_check=loss, reduced_at_check=torch.ones_like(loss, dtype=torch.bool),
        y=y, rival=rival, index=torch.arange(len(x), device=x.device),
        done=torch.zeros_like(loss, dtype=torch.bool), first=start.clone(),
    )  # previous, stepped, best, best_grad and first are written in place: none shares memory with another

    def record_adversarial(logits: Tensor) -> float:
        """Keep each sample's first adversarial iterate in ``s.first``; the share of samples finished (the
        one host read of a step, which also skips the copy when no sample is newly adversarial)."""
        if is_adversarial is None:
            return 0.0
        new = is_adversarial(logits, s.y) & ~s.done
        fresh, finished = torch.stack([new.sum(), (s.done | new).sum()]).tolist()
        if fresh:
            select_samples_(new, s.current, s.first)
            s.done = s.done | new
        return finished / len(new)

    def write_finished() -> None:
        """Copy the finished samples' first adversarial iterates into the result (at a compaction:
        without a host read, the others' rows written back unchanged)."""
        result.index_copy_(0, s.index, select_samples(s.done, s.first, result.index_select(0, s.index)))

    finished_share = record_adversarial(logits)
    checkpoints = set(apgd_checkpoints(steps))
    last_check = 0
    for k in range(steps):
        if finished_share >= 1.0:
            break
        with torch.no_grad():
            weight = 1.0 if k == 0 else rho
            if norm == "l2":  # x + η·g/‖g‖ in one pass
                scale = s.step_size / sample_norm(s.grad).clamp_min(MIN_DISTANCE)
                z = project(torch.addcmul(s.current, s.grad, per_sample_view(scale, s.grad), out=s.stepped), s.centre)
            else:
                z = project(s.current + steepest_direction(s.grad, norm) * per_sample_view(s.step_size, s.current),
                            s.centre)
            # x + α(z − x) + (1 − α)(x − x_prev) = lerp(2x − x_prev, z, α), written over x_prev
            moved = project(s.previous.neg_().add_(s.current, alpha=2.0).lerp_(z, weight), s.centre)
        s.previous, s.current = s.current, moved
        last_loss = s.loss
        s.loss, s.grad, logits = loss_and_gradient(s.current, s.y, s.rival)
        finished_share = record_adversarial(logits)
        report_step()
        s.increases = s.increases + (s.loss > last_loss)
        improved = s.loss > s.best_loss
        select_samples_(improved, s.current, s.best)
        select_samples_(improved, s.grad, s.best_grad)
        s.best_loss = torch.where(improved, s.loss, s.best_loss)
        if k + 1 in checkpoints:
            oscillating = s.increases <= rho * (k + 1 - last_check)
            stalled = ~s.reduced_at_check & (s.best_loss_at_check >= s.best_loss)
            reduce = oscillating | stalled
            s.step_size = torch.where(reduce, s.step_size / 2, s.step_size)
            select_samples_(reduce, s.best, s.current)
            select_samples_(reduce, s.best_grad, s.grad)
            s.loss = torch.where(reduce, s.best_loss, s.loss)
            s.reduced_at_check, s.best_loss_at_check = reduce, s.best_loss
            s.increases = torch.zeros_like(s.increases)
            last_check = k + 1
        if finished_share >= 1.0:
            break
        if finished_share > 0.0 and (k + 1 in checkpoints or finished_share >= COMPACT_SHARE):
            write_finished()
            s.keep(~s.done)
    # the finished samples get their first adversarial iterate, the others their best one
    result.index_copy_(0, s.index, select_samples(s.done, s.first, s.best))
    return result.detach()


def apgd_targeted(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    y: Tensor,
    epsilon: float,
    norm: Norm = "l2",
    steps: int = 100,
    targets: int = 9,
    box: Box | None = (0.0, 1.0),
    rho: float = MOMENTUM_WEIGHT,
    generator: torch.Generator | None = None,
    reachable: Callable[[Tensor, Tensor], Tensor] | None = None,
) -> Tensor:
    """APGD-T (Croce & Hein, 2020, §4): targeted APGD on the targeted DLR loss, one run per rival class.

    The rivals are the ``targets`` classes (at most classes − 1) with the highest clean logits after
    the top one (for a correctly classified sample: the other classes in order of their logits);
    each run attacks only the samples that no earlier run has misclassified.

    Args:
        reachable: ``(clean logits, y) -> [B, C] bool``, false where a sound bound proves that class
            cannot overtake the label inside the ε-ball (true where the class-pair radius of
            :func:`lipreg.functional.bounds.rival_radii` is at most ε): the run toward it is skipped
            for that sample, since it cannot make its target win (a class it might push the sample
            into on the way is reachable, and has its own run). ``None``: every rival is attacked.
    """
    if targets < 1:
        raise ValueError(f"targets must be >= 1, got {targets}")
    x = x.detach()
    with torch.no_grad():
        logits = model(x)
    targets = min(targets, logits.shape[1] - 1)
    ranked = logits.argsort(dim=1, descending=True)  # [B, C]
    open_rivals = None if reachable is None else reachable(logits, y).gather(1, ranked)  # [B, C] by rank
    result = x.clone()
    robust = ~misclassified(logits, y)
    for rank in range(1, targets + 1):
        attacked = robust if open_rivals is None else robust & open_rivals[:, rank]
        index = attacked.nonzero().squeeze(1)
        if len(index) == 0:
            if not robust.any():
                break
            continue
        adversarial = apgd(model, x[index], y[index], epsilon, norm, steps, targeted_dlr_loss, ranked[index, rank],
                           misclassified, box, rho, generator)
        with torch.no_grad():
            broken = misclassified(model(adversarial), y[index])
        result[index] = adversarial
        robust[index[broken]] = False
    return result
