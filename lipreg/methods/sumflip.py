"""SumFLIP: CLIP with the mean instead of the maximum over the pair set (FLIP slides, "Max & Sum")."""

from lipreg.functional import mean_quotient, pair_quotients
from lipreg.functional.pairs import AscentResult
from lipreg.methods.base import Penalty
from lipreg.methods.clip import CLIP


class SumFLIP(CLIP):
    """``min_θ mean loss + λ · (1/|X_Lip|) Σ_{(x,x') ∈ X_Lip} ‖f(x) − f(x')‖ / ‖x − x'‖`` (SumLip).

    Every pair contributes a gradient, not only the steepest one; otherwise as :class:`CLIP`
    (same pair sets, ascent and options, except the active pair set; ``squared=True`` averages ``L²``).
    """

    maximum_penalty = False

    def reduce(self, moved: AscentResult) -> Penalty:
        """The mean over every pair, each through the network with a graph.

        A mean of equal shares needs no collective for its gradient: DDP's averaging gives the
        global mean; the logged maximum is gathered over processes.
        """
        quotients = pair_quotients(self.net, moved.pairs, self.p)  # [P]
        lip = quotients.detach().max()
        if self.distributed:
            lip = self.all_gather(lip).max()
        return Penalty(mean_quotient(quotients.square() if self.squared else quotients), lip)
