"""SumFLIP: CLIP with the mean instead of the maximum over the pair set (FLIP slides, "Max & Sum")."""

from torch import Tensor

from lipreg.functional import mean_quotient
from lipreg.methods.clip import CLIP


class SumFLIP(CLIP):
    """``min_θ mean loss + λ · (1/|X_Lip|) Σ_{(x,x') ∈ X_Lip} ‖f(x) − f(x')‖ / ‖x − x'‖`` (SumLip).

    Every pair contributes a gradient, not only the steepest one; otherwise as :class:`CLIP`
    (same pair sets, ascent and options; ``squared=True`` averages ``L²``).
    """

    def reduce(self, quotients: Tensor, maxima: Tensor | None = None) -> Tensor:
        # a mean of equal shares needs no collective: DDP's gradient averaging gives the global mean
        return mean_quotient(quotients.square() if self.squared else quotients)
