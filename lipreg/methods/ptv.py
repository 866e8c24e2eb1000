"""pTV: Projected Finite Lipschitz Total Variation (FLIP slides, the algorithm of that name)."""

from typing import Any

import torch
from torch import Tensor, nn

from lipreg.errors import LipregError
from lipreg.functional import ascend_pairs, mean_quotient, pair_quotients, project_onto_sphere, stack_pairs
from lipreg.methods.base import LipRegModule, Penalty


class PTV(LipRegModule):
    """``min_θ mean loss + λ · (1/|B|) Σ_{(x₁,x₂)} ‖f(x₁) − f(x₂)‖/‖x₁ − x₂‖`` over pairs on ε-spheres.

    Each step: the batch is the pair set (``x₁ = x_i``, ``x₂`` = another image of the batch, a
    random pairing without fixed points); one ascent step on ``Lip(x₁, x₂)²`` moves both points; then **each** point is
    projected onto the ε-sphere around its own centre ``x = x_i``,
    ``x₁, x₂ ← x + ε (x₁ − x)/‖x₁ − x‖, x + ε (x₂ − x)/‖x₂ − x‖`` (per sample, not one norm over the
    batch). The penalty is the mean quotient of the projected pairs. ε (buffer ``epsilon``) shrinks
    each epoch with the ``EpsilonDecay`` callback (the slides: ε ← 0.9·ε). The slides' step
    ``τ ∇ Lip²`` equals ``ascend_pairs``' ``τ' L ∇L`` with ``τ' = 2τ``; ``step_size`` is ``τ'``.

    Args:
        epsilon: the radius ε of the spheres the pairs are projected onto (shrunk by ``EpsilonDecay``).
        step_size: the ascent's step size τ'.
    """

    def __init__(
        self,
        net: nn.Module,
        epsilon: float = 0.5,
        step_size: float = 0.01,
        **kwargs: Any,
    ) -> None:
        """``kwargs``: the options every method has (``task``, ``lam``, ``optimizer``, …; see LipRegModule)."""
        super().__init__(net, **kwargs)
        if epsilon <= 0 or step_size <= 0:
            raise LipregError(f"need epsilon > 0 and step_size > 0; got {epsilon}, {step_size}")
        self.register_buffer("epsilon", torch.tensor(float(epsilon)))
        self.step_size = step_size

    def penalty(self, x: Tensor, y: Tensor) -> Penalty:
        generator = self.step_generator(x.device)
        # pair each point with the next one along a random cycle through the batch (never itself)
        order = torch.randperm(len(x), generator=generator, device=x.device)
        partner_index = torch.empty_like(order)
        partner_index[order] = order.roll(-1)
        partner = x[partner_index]
        centres = torch.cat([x, x])

        def onto_sphere(points: Tensor) -> Tensor:
            return project_onto_sphere(points, centres, self.epsilon)

        moved = ascend_pairs(self.net, stack_pairs(x, partner), self.step_size, steps=1, box=self.input_box,
                             project=onto_sphere)
        quotients = pair_quotients(self.net, moved.pairs)  # [B]
        return Penalty(mean_quotient(quotients), quotients.detach().max())
