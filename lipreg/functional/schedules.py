"""Schedules of the regularisation coefficient and the ε-ball as plain ``float -> float`` functions (and the
discrepancy step on tensors, for updates that must not wait for the device)."""

import torch
from torch import Tensor


def discrepancy_step(
    coefficient: float,
    accuracy: float,
    target: float,
    step: float,
    minimum: float = 0.0,
    maximum: float | None = None,
) -> float:
    """One update of the discrepancy principle (CLIP paper, Algorithm 2).

    .. math:: \\lambda \\leftarrow \\begin{cases} \\lambda + d\\lambda & A(f_\\theta; T) > \\alpha \\\\
              \\max(\\lambda - d\\lambda, \\lambda_{min}) & \\text{otherwise} \\end{cases}

    capped at ``maximum`` when one is given. λ lives in a float32 buffer, so a value read back from it
    may exceed the sum of its steps by rounding; a decrease that lands within ``1e-6·dλ`` of the
    minimum is the minimum (0.1 stored in float32, less 0.1, is 0, not 1.5e-9).

    >>> discrepancy_step(1.0, accuracy=0.95, target=0.9, step=0.5)
    1.5
    >>> discrepancy_step(0.2, accuracy=0.80, target=0.9, step=0.5)
    0.0
    >>> discrepancy_step(0.10000000149011612, accuracy=0.80, target=0.9, step=0.1)
    0.0
    """
    exact = [torch.tensor(value, dtype=torch.float64) for value in (coefficient, accuracy)]  # Python floats' precision
    return float(discrepancy_step_tensor(*exact, target, step, minimum, maximum))


def discrepancy_step_tensor(
    coefficient: Tensor,
    accuracy: Tensor,
    target: float,
    step: float,
    minimum: float = 0.0,
    maximum: float | None = None,
) -> Tensor:
    """The discrepancy step on 0-d tensors, computed where they are (no value is read back to the host);
    :func:`discrepancy_step` is this rule on Python floats.

    A step-wise rule (the pTV algorithm updates λ after every minibatch) would otherwise make the
    host wait for the GPU every step.

    >>> discrepancy_step_tensor(torch.tensor(0.2), torch.tensor(0.8), target=0.9, step=0.5)
    tensor(0.)
    """
    raised = coefficient + step
    lowered = coefficient - step
    lowered = torch.where(lowered - minimum <= 1e-6 * step, torch.full_like(lowered, minimum), lowered)
    updated = torch.where(accuracy > target, raised, lowered)
    return updated if maximum is None else updated.clamp(max=maximum)


def decay_epsilon(epsilon: float, factor: float = 0.9, minimum: float = 0.0) -> float:
    """ε ← max(γ·ε, ε_min): the shrinking ball of TV/pTV (FLIP slides, "ε ← ε × 0.9").

    >>> round(decay_epsilon(1.0), 10)
    0.9
    >>> decay_epsilon(0.1, factor=0.5, minimum=0.08)
    0.08
    """
    return max(factor * epsilon, minimum)


def warmup_finished(
    accuracy: float | None,
    epochs_done: int,
    target: float | None = None,
    epochs: int | None = None,
) -> bool:
    """Whether the warm-up phase (FLIP slides, "Warm-up Phase") is over.

    It ends when the training accuracy reaches ``target`` (α) or after ``epochs`` epochs,
    whichever is given (both: whichever comes first).

    >>> warmup_finished(0.85, 3, target=0.9)
    False
    >>> warmup_finished(0.91, 3, target=0.9)
    True
    >>> warmup_finished(None, 2, epochs=2)
    True
    """
    if target is None and epochs is None:
        raise ValueError("warm-up needs a target accuracy, a number of epochs, or both")
    by_accuracy = target is not None and accuracy is not None and accuracy >= target
    by_epochs = epochs is not None and epochs_done >= epochs
    return by_accuracy or by_epochs
