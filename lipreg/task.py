"""What a learning task is to lipreg: its losses, its score and their names, in one place.

A method, a data module and the evaluation each hold a :class:`TaskSpec` and ask it, instead of
comparing the task's name: ``spec.loss`` trains, ``spec.per_sample_loss`` is what attacks raise,
``spec.score`` is what metrics average, ``spec.is_adversarial`` says when an attack may stop on a
sample (classification only: a squared error has no "broken").
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch.nn.functional as F
from torch import Tensor
from torchmetrics import MeanMetric, MeanSquaredError, Metric

from lipreg.functional.losses import misclassified, per_sample_cross_entropy, per_sample_squared_error

Task = Literal["classification", "regression"]


def correct(outputs: Tensor, target: Tensor) -> Tensor:
    """Per-sample correctness, ``1.0`` where the top logit is the label's: ``[B, C], [B] -> [B]``."""
    return (outputs.argmax(dim=1) == target).float()


@dataclass(frozen=True)
class TaskSpec:
    """A task's losses, score and names.

    Attributes:
        name: ``classification`` or ``regression``.
        metric: the score's name in results (``accuracy``, ``mse``).
        short: its name in logged keys (``test/pgd_acc@1``, ``val/pgd_mse``).
        loss_name: the training loss as attacks are labelled with it (``CE``, ``MSE``).
        loss: the batch-mean training loss ``(outputs, target) -> []``.
        per_sample_loss: ``(outputs, target) -> [B]``, the objective attacks raise.
        score: ``(outputs, target) -> [B]``: correctness (higher is better) or squared error.
        is_adversarial: ``(outputs, target) -> [B]`` booleans, when an attack may stop on a sample;
            ``None`` when every attack must run to its end (regression).
    """

    name: Task
    metric: str
    short: str
    loss_name: str
    loss: Callable[[Tensor, Tensor], Tensor]
    per_sample_loss: Callable[[Tensor, Tensor], Tensor]
    score: Callable[[Tensor, Tensor], Tensor]
    is_adversarial: Callable[[Tensor, Tensor], Tensor] | None

    @property
    def classification(self) -> bool:
        """Whether the score is an accuracy (higher is better, the attacks can break samples)."""
        return self.is_adversarial is not None

    def score_metric(self) -> Metric:
        """The epoch metric of the score: the mean of per-sample correctness (torchmetrics' micro
        accuracy) or torchmetrics' MSE. Neither syncs with the host on update."""
        if self.classification:
            return MeanMetric(nan_strategy="disable")
        return MeanSquaredError()


CLASSIFICATION = TaskSpec("classification", "accuracy", "acc", "CE", F.cross_entropy, per_sample_cross_entropy,
                          correct, misclassified)
REGRESSION = TaskSpec("regression", "mse", "mse", "MSE", F.mse_loss, per_sample_squared_error,
                      per_sample_squared_error, None)

#: Every task by name.
TASKS: dict[str, TaskSpec] = {spec.name: spec for spec in (CLASSIFICATION, REGRESSION)}


def task_spec(name: str) -> TaskSpec:
    """The specification of the task ``name``; a ``ValueError`` naming the choices otherwise."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose from {', '.join(TASKS)}")
    return TASKS[name]
