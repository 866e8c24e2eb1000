"""Adversarial training on PGD examples (Madry et al., 2018); FGSM training is its one-step case."""

from typing import Any

import torch
from torch import Tensor, nn

from lipreg.errors import LipregError
from lipreg.functional import pgd
from lipreg.functional.attacks import Norm
from lipreg.methods.base import LipRegModule


class AdversarialTraining(LipRegModule):
    """``min_θ (1 − w) · loss(f(x), y) + w · loss(f(x_adv), y)``, ``x_adv = PGD_ε(x)`` (Madry et al., 2018).

    ``x_adv`` takes ``steps`` projected steps of size ``step_size`` up the per-sample loss inside
    the ε-ball of norm ``norm`` (``linf``: sign steps; ``l2``: normalised gradient steps),
    optionally from a uniform ``random_start`` in the ball, clamped to the input box; it is the
    functional ``pgd``. ``adversarial_weight`` w = 1 trains on adversarial examples only, 0.5 is
    the classic clean/adversarial mix. Accuracy metrics are on the clean batch. There is no λ.

    Args:
        epsilon: the attack radius ε.
        norm: ``linf`` (sign steps) or ``l2`` (normalised gradient steps).
        steps: PGD steps per training batch.
        step_size: the size α of each step (Madry et al.: 2.5·ε/steps).
        random_start: start from a uniform point of the ε-ball.
        adversarial_weight: the weight w of the adversarial loss (1: adversarial examples only).
    """

    def __init__(
        self,
        net: nn.Module,
        epsilon: float = 0.3,
        norm: Norm = "linf",
        steps: int = 10,
        step_size: float = 0.075,
        random_start: bool = True,
        adversarial_weight: float = 1.0,
        **kwargs: Any,
    ) -> None:
        """``kwargs``: the options every method has but λ (``task``, ``optimizer``, …; see LipRegModule)."""
        super().__init__(net, lam=0.0, **kwargs)
        self.hparams.pop("lam", None)  # adversarial training has no λ
        if epsilon <= 0 or steps < 1 or step_size <= 0 or not 0 <= adversarial_weight <= 1 or norm not in ("l2",
                                                                                                           "linf"):
            raise LipregError(
                f"need epsilon > 0, steps >= 1, step_size > 0, 0 <= adversarial_weight <= 1 and norm 'l2' or "
                f"'linf'; got {epsilon}, {steps}, {step_size}, {adversarial_weight}, {norm!r}"
            )
        self.epsilon = epsilon
        self.norm = norm
        self.steps = steps
        self.step_size = step_size
        self.random_start = random_start
        self.adversarial_weight = adversarial_weight

    def data_term(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        adversarial = pgd(self.net, x, y, self.epsilon, self.step_size, self.steps, self.norm, "steepest",
                          self.task_spec.per_sample_loss, self.input_box, self.random_start,
                          generator=self.step_generator(x.device))
        clean_output, adversarial_output = self.net(torch.cat([x, adversarial])).split(len(x))
        adversarial_loss = self.loss(adversarial_output, y)
        if self.adversarial_weight == 1.0:
            return clean_output, adversarial_loss
        clean_loss = self.loss(clean_output, y)
        return clean_output, (1 - self.adversarial_weight) * clean_loss + self.adversarial_weight * adversarial_loss


class FGSMTraining(AdversarialTraining):
    """Adversarial training on FGSM examples (Goodfellow et al., 2015; Wong et al., 2020 with random
    start): :class:`AdversarialTraining` with one step of size ε,
    ``x_adv = Π_box(Π_{B_ε(x)}(x₀ + ε·s(∇_x loss(f(x₀), y))))`` with ``x₀ = x`` or a random point of the ball.

    Args:
        epsilon: the attack radius ε (and the step size).
        norm: ``linf`` (sign step) or ``l2`` (normalised gradient step).
        random_start: start from a uniform point of the ε-ball ("fast is better than free").
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
        super().__init__(net, epsilon, norm, 1, epsilon, random_start, adversarial_weight, **kwargs)
        for fixed in ("steps", "step_size"):  # FGSM's one step of size ε is not an option
            self.hparams.pop(fixed, None)
