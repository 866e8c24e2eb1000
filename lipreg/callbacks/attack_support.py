"""What the attacking callbacks share: the inference-mode check, per-sample scores, a sample budget."""

import time

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


class TimeBudget:
    """Decides how many images to attack next so that the evaluation fits ``minutes`` (``None``: no limit).

    The attacks get ``attack_share`` of the budget, the rest is kept for what follows them (the
    training accuracy, the Lipschitz lower bound, whose ascent stops when the whole budget is
    :meth:`spent`). Images go in chunks: the first of ``first_chunk`` images, then as many as the
    measured seconds per image say fit into a tenth of the budget (at most what is left of the
    attacks' share), so the decision to stop comes on time even when one batch would take longer
    than the whole budget. Without a budget a batch is one chunk.
    """

    def __init__(self, minutes: float | None, first_chunk: int = 32, share: float = 0.1,
                 attack_share: float = 0.8) -> None:
        self.total = None if minutes is None else 60.0 * minutes
        self.seconds = None if self.total is None else attack_share * self.total
        self.first_chunk, self.share = first_chunk, share
        self.started = time.monotonic()
        self.images = 0
        self.reached = False

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def next_chunk(self, remaining: int) -> int:
        """How many of the ``remaining`` images of a batch to attack next; 0 once the budget is spent."""
        if self.seconds is None or remaining == 0:
            return remaining
        if self.images == 0:
            return min(remaining, self.first_chunk)
        elapsed = self.elapsed()
        per_image = elapsed / self.images
        fitting = int((self.seconds - elapsed) / per_image)
        if fitting < 1:
            self.reached = True
            return 0
        return max(1, min(remaining, fitting, int(self.share * self.seconds / per_image)))

    def spent(self) -> bool:
        """Whether the whole budget (attacks and what follows) has run out."""
        return self.total is not None and self.elapsed() >= self.total

    def record(self, images: int) -> None:
        """``images`` more were attacked."""
        self.images += images
