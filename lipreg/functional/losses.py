"""Per-sample objectives of the attacks: ``[B, C] logits, [B] labels -> [B]``, higher means more adversarial.

Cross-entropy is a poor objective on a network with small logits: raising it spreads probability
over many classes instead of pushing one rival above the true class. The margin loss (Carlini &
Wagner, 2017) and the difference-of-logits ratio (DLR, Croce & Hein, 2020, eq. (5)) measure the
distance to the decision boundary directly; DLR is also invariant to shifting and scaling the logits.
"""

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

#: Added to the DLR denominators (Croce & Hein, 2020) so a flat logit vector gives no division by 0.
DLR_GUARD = 1e-12

LossFn = Callable[..., Tensor]


def per_sample_cross_entropy(logits: Tensor, target: Tensor) -> Tensor:
    """Cross-entropy of each sample: ``[B, C], [B] -> [B]``."""
    return F.cross_entropy(logits, target, reduction="none")


def per_sample_squared_error(prediction: Tensor, target: Tensor) -> Tensor:
    """Mean squared error of each sample over its output dimensions: ``[B, ...] -> [B]``."""
    return (prediction - target).square().flatten(1).mean(dim=1)


def logit_margin(logits: Tensor, target: Tensor, label_mask: Tensor | None = None) -> Tensor:
    """``f_y(x) − max_{j≠y} f_j(x)`` per sample: positive exactly when the sample is classified correctly.

    ``label_mask``: :func:`label_mask` of ``target``, where the caller scores the same samples many
    times (a search): adding it is one pass where writing ``−∞`` over each label is several."""
    true = logits.gather(1, target.unsqueeze(1)).squeeze(1)
    if label_mask is None:
        return true - logits.scatter(1, target.unsqueeze(1), float("-inf")).amax(dim=1)
    return true - (logits + label_mask).amax(dim=1)


def label_mask(target: Tensor, classes: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """``[B, C]``: ``−∞`` at each sample's label and 0 elsewhere (for :func:`logit_margin`).

    Example:
        >>> label_mask(torch.tensor([1]), 3)
        tensor([[0., -inf, 0.]])
    """
    mask = torch.zeros(len(target), classes, dtype=dtype, device=target.device)
    return mask.scatter_(1, target.unsqueeze(1), float("-inf"))


def margin_loss(logits: Tensor, target: Tensor) -> Tensor:
    """The Carlini–Wagner margin loss ``max_{j≠y} f_j(x) − f_y(x)``: positive exactly when misclassified.

    Example:
        >>> import torch
        >>> margin_loss(torch.tensor([[2.0, 0.5, 1.0]]), torch.tensor([0]))
        tensor([-1.])
    """
    return -logit_margin(logits, target)


def dlr_loss(logits: Tensor, target: Tensor) -> Tensor:
    """The difference-of-logits ratio (Croce & Hein, 2020, eq. (5)), per sample:

    .. math:: \\mathrm{DLR}(z, y) = -\\frac{z_y - \\max_{i \\ne y} z_i}{z_{\\pi_1} - z_{\\pi_3}}

    with ``π`` the logits sorted in decreasing order. With two classes there is no ``π₃``: the
    loss is then the margin loss.
    """
    if logits.shape[1] < 3:
        return margin_loss(logits, target)
    top = logits.topk(3, dim=1).values  # [B, 3]
    return margin_loss(logits, target) / (top[:, 0] - top[:, 2] + DLR_GUARD)


def targeted_dlr_loss(logits: Tensor, target: Tensor, rival: Tensor) -> Tensor:
    """The targeted DLR (Croce & Hein, 2020, eq. (6)): pushes the ``rival`` class above the true class.

    .. math:: -\\frac{z_y - z_t}{z_{\\pi_1} - (z_{\\pi_3} + z_{\\pi_4})/2}

    With three classes ``π₃`` stands in for the mean of ``π₃`` and ``π₄``; with two, the
    denominator is 1 (the loss is the margin loss towards the rival).
    """
    true = logits.gather(1, target.unsqueeze(1)).squeeze(1)
    rival_logit = logits.gather(1, rival.unsqueeze(1)).squeeze(1)
    if logits.shape[1] < 3:
        return rival_logit - true
    top = logits.topk(min(4, logits.shape[1]), dim=1).values  # [B, 3 or 4]
    return (rival_logit - true) / (top[:, 0] - top[:, 2:].mean(dim=1) + DLR_GUARD)


def misclassified(logits: Tensor, target: Tensor) -> Tensor:
    """Whether each sample's predicted class differs from its label: ``[B]`` booleans."""
    return logits.argmax(dim=1) != target


def raised_rival_logits(logits: Tensor, target: Tensor, offsets: Tensor) -> Tensor:
    """Every rival logit raised by the most a perturbation of the target radius can move it towards the label's:
    ``f(x) + O[y, :]`` with ``O = ε · B`` (``B[y, j]`` a bound of the class pair's logit-difference Lipschitz
    constant, ``O[y, y] = 0``). A sample whose raised logits are still won by its label is certified at ε."""
    return logits + offsets[target]


def lipschitz_margin_cross_entropy(logits: Tensor, target: Tensor, offsets: Tensor, temperature: float = 1.0) -> Tensor:
    """Lipschitz-margin cross-entropy (Tsuzuku et al., 2018, eq. (9); GloRo, Leino et al., 2021), batch mean:

    .. math:: \\frac{1}{B} \\sum_i \\mathrm{CE}\\big(\\tau\\,(f(x_i) + O[y_i, :]),\\ y_i\\big)

    The temperature ``τ`` scales the logits of a network whose logits cannot grow (a 1-Lipschitz one):
    a larger ``τ`` makes the loss sharper, closer to a hinge on the raised margin.
    """
    return F.cross_entropy(temperature * raised_rival_logits(logits, target, offsets), target)


def hkr_loss(logits: Tensor, target: Tensor, offsets: Tensor, alpha: float) -> Tensor:
    """The hinge–Kantorovich–Rubinstein loss (Serrurier et al., 2021, eq. (8)) in its multiclass form with the
    class pairs' margins, batch mean:

    .. math:: \\alpha \\sum_{j \\ne y} \\max\\big(0,\\ O[y, j] - (f_y - f_j)\\big)
              \\;-\\; \\Big(f_y - \\frac{1}{C-1} \\sum_{j \\ne y} f_j\\Big)

    The hinge asks every class pair for the margin that certifies the radius (``O = ε · B``); the
    Kantorovich–Rubinstein term (the dual of the Wasserstein-1 distance between a class and the
    others, for a 1-Lipschitz network) pushes all logits apart beyond it. ``alpha`` weighs the hinge.
    """
    true = logits.gather(1, target.unsqueeze(1))  # [B, 1]
    rivals = 1.0 - F.one_hot(target, logits.shape[1]).to(logits.dtype)  # [B, C]
    hinge = ((offsets[target] - (true - logits)).clamp_min(0) * rivals).sum(dim=1)
    kantorovich = true.squeeze(1) - (logits * rivals).sum(dim=1) / (logits.shape[1] - 1)
    return (alpha * hinge - kantorovich).mean()
