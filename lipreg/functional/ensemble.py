"""Robustness as the worst case per sample over an ensemble of attacks (Croce & Hein, 2020).

A sample counts as robust at ε only if it is classified correctly and every attack of the ensemble
fails on it. The attacks run in turn, each on the samples still robust (AutoAttack's protocol), so
the ensemble costs little more than its strongest member. For regression the same idea gives the
worst-case error: per sample the largest squared error any attack reached.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor

from lipreg.functional.apgd import apgd, apgd_targeted
from lipreg.functional.attacks import Norm, pgd
from lipreg.functional.losses import dlr_loss, margin_loss, misclassified, per_sample_squared_error
from lipreg.functional.pairs import Box
from lipreg.functional.square import square

#: An attack with everything but the batch bound: ``(x, y) -> adversarial x``.
Attack = Callable[[Tensor, Tensor], Tensor]

#: The members ``ensemble_attack`` can build for classification (regression: ``apgd-mse``).
CLASSIFICATION_ATTACKS = ("apgd-ce", "apgd-dlr", "apgd-t", "square", "pgd-margin")


@dataclass(frozen=True)
class EnsembleBudget:
    """The budgets of the ensemble's members: APGD steps, APGD-T's rival classes, Square's queries,
    and the step count and size of the margin-loss PGD."""

    apgd_steps: int = 100
    apgd_targets: int = 9
    square_queries: int = 5000
    pgd_steps: int = 100
    pgd_step_size: float = 0.25

    def __post_init__(self) -> None:
        if min(self.apgd_steps, self.apgd_targets, self.square_queries, self.pgd_steps) < 1 or self.pgd_step_size <= 0:
            raise ValueError(f"every ensemble budget must be positive, got {self}")

    def describe(self, name: str) -> str:
        """The member's name with its budget, e.g. ``APGD-T (100 steps, 9 targets)``."""
        budgets = {
            "apgd-ce": f"APGD-CE ({self.apgd_steps} steps)",
            "apgd-dlr": f"APGD-DLR ({self.apgd_steps} steps)",
            "apgd-t": f"APGD-T ({self.apgd_steps} steps, {self.apgd_targets} targets)",
            "square": f"Square ({self.square_queries} queries)",
            "pgd-margin": f"PGD-margin ({self.pgd_steps} steps of {self.pgd_step_size:g})",
            "apgd-mse": f"APGD-MSE ({self.apgd_steps} steps)",
        }
        return budgets[name]


def ensemble_attack(
    name: str,
    model: Callable[[Tensor], Tensor],
    epsilon: float,
    norm: Norm,
    budget: EnsembleBudget,
    box: Box | None = (0.0, 1.0),
    generator: torch.Generator | None = None,
) -> Attack:
    """One member of the ensemble, bound to its model, radius, norm and budget.

    ``apgd-ce`` / ``apgd-dlr``: APGD on cross-entropy / DLR; ``apgd-t``: targeted APGD over the
    top rival classes; ``square``: the gradient-free Square Attack on the margin; ``pgd-margin``:
    PGD on the margin loss; ``apgd-mse`` (regression): APGD on the squared error.
    """
    common = {"epsilon": epsilon, "norm": norm, "box": box, "generator": generator}
    members: dict[str, Attack] = {
        "apgd-ce": partial(apgd, model, steps=budget.apgd_steps, **common),
        "apgd-dlr": partial(apgd, model, steps=budget.apgd_steps, loss_fn=dlr_loss, **common),
        "apgd-t": partial(apgd_targeted, model, steps=budget.apgd_steps, targets=budget.apgd_targets, **common),
        "square": partial(square, model, queries=budget.square_queries, **common),
        "pgd-margin": partial(pgd, model, step_size=budget.pgd_step_size, steps=budget.pgd_steps,
                              loss_fn=margin_loss, **common),
        "apgd-mse": partial(apgd, model, steps=budget.apgd_steps, loss_fn=per_sample_squared_error,
                            is_adversarial=None, **common),
    }
    if name not in members:
        raise ValueError(f"unknown attack {name!r}; choose from {', '.join(members)}")
    return members[name]


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
