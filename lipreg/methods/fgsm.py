"""Adversarial training on FGSM examples (Goodfellow et al., 2015; Wong et al., 2020 with random start)."""

from typing import Any

import torch
from torch import Tensor, nn

from lipreg.errors import LipregError
from lipreg.functional import fgsm
from lipreg.functional.attacks import Norm
from lipreg.functional.losses import per_sample_cross_entropy, per_sample_squared_error
from lipreg.methods.base import LipRegModule


class FGSMTraining(LipRegModule):
    """``min_θ (1 − w) · loss(f(x), y) + w · loss(f(x_adv), y)``, ``x_adv = FGSM_ε(x)``.

    ``adversarial_weight`` w = 1 trains on adversarial examples only; 0.5 is the classic
    clean/adversarial mix. ``norm`` chooses sign steps (``linf``) or normalised gradient steps
    (``l2``); ``random_start`` starts from a uniform point of the ε-ball ("fast is better than
    free"). Accuracy metrics are on the clean batch. There is no λ.

    Args:
        epsilon: the attack radius ε.
        norm: ``linf`` (sign steps) or ``l2`` (normalised gradient steps).
        random_start: start from a uniform point of the ε-ball.
        adversarial_weight: the weight w of the adversarial loss (1: adversarial examples only).
    """

    def __init__(
        self,
        net: nn.Module,
        epsilon: float = 0.1,
        norm: Norm = "linf",
        random_start: bool = False,
        adversarial_weight: float = 1.0,
        **kwargs: Any,
    ) -> None:
        """``kwargs``: the options every method has but λ (``task``, ``optimizer``, …; see LipRegModule)."""
        super().__init__(net, lam=0.0, **kwargs)
        self.hparams.pop("lam", None)  # FGSM training has no λ
        if epsilon <= 0 or not 0 <= adversarial_weight <= 1 or norm not in ("l2", "linf"):
            raise LipregError(
                f"need epsilon > 0, 0 <= adversarial_weight <= 1 and norm 'l2' or 'linf'; got {epsilon}, "
                f"{adversarial_weight}, {norm!r}"
            )
        self.epsilon = epsilon
        self.norm = norm
        self.random_start = random_start
        self.adversarial_weight = adversarial_weight

    def data_term(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        per_sample = per_sample_cross_entropy if self.task == "classification" else per_sample_squared_error
        adversarial = fgsm(
            self.net, x, y, self.epsilon, self.norm, per_sample, self.input_box, self.random_start,
            self.step_generator(x.device),
        )
        clean_output, adversarial_output = self.net(torch.cat([x, adversarial])).split(len(x))
        adversarial_loss = self.loss(adversarial_output, y)
        if self.adversarial_weight == 1.0:
            return clean_output, adversarial_loss
        clean_loss = self.loss(clean_output, y)
        return clean_output, (1 - self.adversarial_weight) * clean_loss + self.adversarial_weight * adversarial_loss
