"""Plain empirical risk minimisation: the unregularised baseline."""

from typing import Any

from torch import nn

from lipreg.methods.base import LipRegModule


class Standard(LipRegModule):
    """``min_θ mean loss(f_θ(x), y)``: eq. (2) of the CLIP paper with λ = 0, no penalty."""

    def __init__(self, net: nn.Module, **kwargs: Any) -> None:
        """``kwargs``: the options every method has but λ (``task``, ``optimizer``, …; see LipRegModule)."""
        super().__init__(net, lam=0.0, **kwargs)
        self.hparams.pop("lam", None)  # the plain method has no λ
