"""TV: the mean local Lipschitz constant in a shrinking ε-ball (FLIP slides, "From Sum FLIP to TV")."""

from typing import Any

import torch
from torch import Tensor, nn

from lipreg.errors import LipregError
from lipreg.functional import (
    ascend_pairs,
    jacobian_spectral_norm,
    mean_quotient,
    pair_quotients,
    project_onto_ball,
    random_direction_pairs,
    stack_pairs,
)
from lipreg.methods.base import LipRegModule, Penalty


class TV(LipRegModule):
    """``min_θ mean loss + λ · (1/|B|) Σ_{x ∈ B} Lip_ε^loc(f_θ, x)``, which tends to ``λ ∫‖∇f_θ‖`` as ε → 0.

    For each training point x the pair ``(x, x + ε·d)`` (``d`` a random unit direction) takes
    ``ascent_steps`` ascent steps on its quotient, both points projected back onto the ε-ball
    around x after each step (per sample), and its quotient estimates the local Lipschitz
    constant ``Lip_ε^loc(f, x) = sup_{x₁,x₂ ∈ B_ε(x)} ‖f(x₁) − f(x₂)‖/‖x₁ − x₂‖``. ε lives in the
    buffer ``epsilon`` and shrinks under the ``EpsilonDecay`` callback, so the penalty tends to
    the total variation (slides: "Local Lipschitz to gradient", "From Sum to TV").

    ``exact=True`` is the ε → 0 limit itself: the mean operator norm ``‖∇f(x)‖₂`` of the input
    Jacobian by ``power_iterations`` steps of power iteration (double backpropagation).

    Args:
        epsilon: the radius ε of the balls around the training points (shrunk by ``EpsilonDecay``).
        ascent_steps: ascent steps of each pair inside its ball before the parameter step.
        step_size: the ascent's step size.
        exact: penalise the input Jacobian's norm itself (the ε → 0 limit) instead of pairs.
        power_iterations: power-iteration steps for that norm.
    """

    def __init__(
        self,
        net: nn.Module,
        epsilon: float = 0.5,
        ascent_steps: int = 1,
        step_size: float = 0.01,
        exact: bool = False,
        power_iterations: int = 3,
        **kwargs: Any,
    ) -> None:
        """``kwargs``: the options every method has (``task``, ``lam``, ``optimizer``, …; see LipRegModule)."""
        super().__init__(net, **kwargs)
        if epsilon <= 0 or step_size <= 0 or ascent_steps < 0 or power_iterations < 1:
            raise LipregError(
                f"need epsilon > 0, step_size > 0, ascent_steps >= 0, power_iterations >= 1; got {epsilon}, "
                f"{step_size}, {ascent_steps}, {power_iterations}"
            )
        self.register_buffer("epsilon", torch.tensor(float(epsilon)))
        self.ascent_steps = ascent_steps
        self.step_size = step_size
        self.exact = exact
        self.power_iterations = power_iterations

    def penalty(self, x: Tensor, y: Tensor) -> Penalty:
        generator = self.step_generator(x.device)
        if self.exact:
            norms = jacobian_spectral_norm(self.net, x, self.power_iterations, generator)  # [B]
            return Penalty(norms.mean(), norms.detach().max())
        centres = torch.cat([x, x])  # both points of pair i stay in the ball around x_i

        def into_ball(points: Tensor) -> Tensor:
            return project_onto_ball(points, centres, self.epsilon)

        partner = random_direction_pairs(x, self.epsilon, generator)
        moved = ascend_pairs(self.net, stack_pairs(x, partner), self.step_size, steps=self.ascent_steps,
                             box=self.input_box, project=into_ball)
        quotients = pair_quotients(self.net, moved.pairs)  # [B]
        return Penalty(mean_quotient(quotients), quotients.detach().max())
