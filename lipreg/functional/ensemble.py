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
    x, y = x.detach(), y.detach()
    with torch.no_grad():
        still = ~misclassified(model(x), y)
    if robust is not None:
        still &= robust
    broken_by: dict[str, int] = {}
    for name, attack in attacks:
        index = still.nonzero().squeeze(1)
        if len(index) == 0:
            broken_by[name] = 0
            continue
        adversarial = attack(x[index], y[index])
        with torch.no_grad():
            broken = misclassified(model(adversarial), y[index])
        still[index[broken]] = False
        broken_by[name] = int(broken.sum())
    return still, broken_by


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
