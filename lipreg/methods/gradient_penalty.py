"""Input-gradient penalty: double back-propagation (Drucker & LeCun, 1992)."""

from torch import Tensor

from lipreg.functional import input_gradient_penalty
from lipreg.methods.base import LipRegModule, Penalty


class GradientPenalty(LipRegModule):
    """``min_θ mean loss(f_θ(x), y) + λ · (1/|B|) Σ_{x ∈ B} ‖∇_x loss(f_θ(x), y)‖₂²``.

    The penalty flattens the loss around each training point; it is the squared form of TV's
    ε → 0 limit (FLIP slides, "Local Lipschitz to gradient") with the loss in place of the network.
    Each step costs a second backward pass through the input gradient (``create_graph``).
    """

    def penalty(self, x: Tensor, y: Tensor) -> Penalty:
        return Penalty(input_gradient_penalty(self.net, x, y, self.task_spec.per_sample_loss))
