"""What the attacking callbacks share: the inference-mode check, per-sample scores, a sample budget."""

import lightning as L
import torch
from torch import Tensor

from lipreg.errors import LipregError
from lipreg.functional.losses import per_sample_squared_error
from lipreg.methods.base import LipRegModule

INFERENCE_MODE_MESSAGE = (
    "{name} attacks the network and needs input gradients, but the trainer runs {stage} under "
    "torch.inference_mode(): set --trainer.inference_mode false (lipreg's CLI default)"
)


def require_gradients(callback: L.Callback, stage: str) -> None:
    """Raise a one-line error when ``stage`` runs under ``torch.inference_mode()``."""
    if torch.is_inference_mode_enabled():
        raise LipregError(INFERENCE_MODE_MESSAGE.format(name=type(callback).__name__, stage=stage))


def per_sample_scores(module: LipRegModule, outputs: Tensor, y: Tensor) -> Tensor:
    """Per-sample correctness (classification) or squared error (regression)."""
    if module.task == "classification":
        return (outputs.argmax(dim=1) == y).float()
    return per_sample_squared_error(outputs, y)


class SampleBudget:
    """Lets through the first ``sample_size`` samples of an evaluation epoch (all when ``None``).

    lipreg's data modules shard evaluation data as ``rank, rank + world, …``; each process takes
    its part of the first ``sample_size``, so together they evaluate exactly the samples a single
    process would.
    """

    def __init__(self, sample_size: int | None, trainer: L.Trainer) -> None:
        self.remaining = (
            None if sample_size is None else len(range(trainer.global_rank, sample_size, trainer.world_size))
        )

    def take(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """The part of the batch still within the budget (possibly empty)."""
        if self.remaining is None:
            return x, y
        count = min(self.remaining, len(x))
        self.remaining -= count
        return x[:count], y[:count]
