"""Weight regularisation: the CLIP paper's baseline, eq. (6) with λ = 0."""

from typing import Any

from torch import Tensor, nn

from lipreg.functional import squared_parameter_norm
from lipreg.methods.base import LipRegModule, Penalty


class WeightDecay(LipRegModule):
    """``min_θ mean loss(f_θ(x), y) + μ · ‖θ‖²`` over all network parameters.

    An explicit penalty (not the optimiser's ``weight_decay``), so the ``LambdaDiscrepancy``
    callback can drive μ towards a target accuracy exactly as it drives CLIP's λ (the paper's
    "Weight Reg." rows of Table 1). Norms of the weights bound the Lipschitz constant layer by
    layer (eq. (4)). Logged as ``train/mu``.

    Args:
        mu: the coefficient μ at the start (``LambdaDiscrepancy`` may move it).
    """

    coefficient_name = "mu"

    def __init__(
        self,
        net: nn.Module,
        mu: float = 0.0,
        **kwargs: Any,
    ) -> None:
        """``kwargs``: the options every method has but λ (``task``, ``optimizer``, …; see LipRegModule)."""
        super().__init__(net, lam=mu, **kwargs)
        self.hparams.pop("lam", None)  # μ is the saved name

    def penalty(self, x: Tensor, y: Tensor) -> Penalty:
        return Penalty(squared_parameter_norm(self.net.parameters()))
