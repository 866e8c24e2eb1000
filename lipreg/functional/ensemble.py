"""Robustness as the worst case per sample over an ensemble of attacks (Croce & Hein, 2020).

A sample counts as robust at ε only if it is classified correctly and every attack of the ensemble
fails on it. The attacks run in turn, each on the samples still robust (AutoAttack's protocol), so
the ensemble costs little more than its strongest member. For regression the same idea gives the
worst-case error: per sample the largest squared error any attack reached.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from lipreg.functional.losses import misclassified, per_sample_squared_error

#: An attack with everything but the batch bound: ``(x, y) -> adversarial x``.
Attack = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class EnsembleBudget:
    """The budgets of the ensemble's members: APGD steps, APGD-T's rival classes, Square's queries,
    and the step count and size of the margin-loss PGD (``lipreg.evaluation.registry`` builds the members)."""

    apgd_steps: int = 100
    apgd_targets: int = 9
    square_queries: int = 5000
    pgd_steps: int = 100
    pgd_step_size: float = 0.25

    def __post_init__(self) -> None:
        if min(self.apgd_steps, self.apgd_targets, self.square_queries, self.pgd_steps) < 1 or self.pgd_step_size <= 0:
            raise ValueError(f"every ensemble budget must be positive, got {self}")


def first_breakers(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    y: Tensor,
    attacks: Sequence[tuple[str, Callable[..., Tensor]]],
    attacked: Tensor,
    epsilon: Tensor | None = None,
) -> dict[str, Tensor]:
    """Per attack name, the ``[B]`` booleans of the samples it was the first to break: the attacks run in
    this order, each only on the ``attacked`` samples that no attack before it broke (the others are
    not read: clean misclassification is the caller's to exclude). With ``epsilon`` (a radius per
    sample) each attack is called as ``attack(x, y, epsilon)`` on its samples."""
    x, y = x.detach(), y.detach()
    still = attacked.clone()
    breakers: dict[str, Tensor] = {}
    for name, attack in attacks:
        breakers[name] = torch.zeros_like(still)
        index = still.nonzero().squeeze(1)
        if len(index) == 0:
            continue
        adversarial = attack(x[index], y[index], *([] if epsilon is None else [epsilon[index]]))
        with torch.no_grad():
            broken = index[misclassified(model(adversarial), y[index])]
        breakers[name][broken] = True
        still[broken] = False
    return breakers


def robust_under_ensemble(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    y: Tensor,
    attacks: Sequence[tuple[str, Attack]],
    robust: Tensor | None = None,
) -> tuple[Tensor, dict[str, int]]:
    """Which samples every attack fails on, and how many samples each attack broke.

    Args:
        attacks: ``(name, attack)`` pairs, run in this order, each only on the samples still robust.
        robust: samples already known to be broken (false) by attacks run elsewhere; default all true.

    Returns:
        ``[B]`` booleans (correct on the clean input and under every attack) and, per attack name,
        the number of samples it was the first to break.
    """
    with torch.no_grad():
        still = ~misclassified(model(x.detach()), y)
    if robust is not None:
        still &= robust
    breakers = first_breakers(model, x, y, attacks, still)
    for broken in breakers.values():
        still &= ~broken
    return still, {name: int(broken.sum()) for name, broken in breakers.items()}


def worst_case_error(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    y: Tensor,
    attacks: Sequence[tuple[str, Attack]],
    worst: Tensor | None = None,
) -> Tensor:
    """The largest per-sample squared error over the clean input and every attack (regression).

    Args:
        worst: per-sample errors already reached by attacks run elsewhere, to start from.
    """
    x, y = x.detach(), y.detach()
    with torch.no_grad():
        errors = per_sample_squared_error(model(x), y)
        worst = errors if worst is None else torch.maximum(worst, errors)
        for _, attack in attacks:
            adversarial = attack(x, y)
            worst = torch.maximum(worst, per_sample_squared_error(model(adversarial), y))
    return worst
