"""The attacks and certificates ``lipreg test`` can run, by name: one registration line each.

An attack is a function of ``lipreg.functional`` with the batch, the radius and the budget as
arguments; registering it here (``ATTACKS``) makes it an ``evaluation.ensemble`` member. A
certificate maps the network to a per-image certified radius; registering it (``CERTIFICATES``)
makes it the evaluation's ``certificate``.
"""

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from lipreg.functional.apgd import apgd, apgd_targeted
from lipreg.functional.attacks import Norm, pgd
from lipreg.functional.bounds import certified_radius, class_pair_bounds, rival_radii
from lipreg.functional.ensemble import Attack, EnsembleBudget
from lipreg.functional.losses import dlr_loss, margin_loss, per_sample_squared_error
from lipreg.functional.pairs import Box
from lipreg.functional.smoothing import smoothed_certify
from lipreg.functional.square import square


@dataclass(frozen=True)
class Work:
    """An attack's work on one image at one radius when no image leaves it early: ``passes`` in
    forward+backward passes (a forward pass alone counts ⅓) and the ``steps`` it reports
    (``lipreg.functional.progress.report_step``). The progress line weighs the stages of a chunk by it
    until one chunk was timed, and counts the steps of the stage in progress."""

    passes: float
    steps: int = 0


@dataclass(frozen=True)
class AttackEntry:
    """How to build a registered attack and how to name it with its budget.

    ``build(model, budget, epsilon=…, norm=…, box=…, generator=…)`` returns ``(x, y) -> adversarial x``;
    ``images_only``: it needs ``[C, H, W]`` inputs (Square's windows); ``regression``: it attacks a
    squared error (the regression ensemble); ``targeted``: it runs once per rival class and takes
    ``reachable`` (``(logits, y) -> [B, C] bool``), the rivals a certificate cannot rule out at ε;
    ``radii_at_once``: it takes one radius per sample (``epsilon`` a ``[B]`` tensor), so where it closes
    the ensemble it runs once over every radius (``EvaluationPlan.closing_members``); ``work``: its
    :class:`Work` on one image at one radius under a budget."""

    build: Callable[..., Attack]
    label: Callable[[EnsembleBudget], str]
    work: Callable[[EnsembleBudget], Work]
    images_only: bool = False
    regression: bool = False
    targeted: bool = False
    radii_at_once: bool = False


def _gradient_steps(steps: int) -> Work:
    """``steps`` forward+backward passes, one reported step each."""
    return Work(steps, steps)


ATTACKS: dict[str, AttackEntry] = {
    "apgd-ce": AttackEntry(lambda m, b, **c: partial(apgd, m, steps=b.apgd_steps, **c),
                           lambda b: f"APGD-CE ({b.apgd_steps} steps)", lambda b: _gradient_steps(b.apgd_steps)),
    "apgd-dlr": AttackEntry(lambda m, b, **c: partial(apgd, m, steps=b.apgd_steps, loss_fn=dlr_loss, **c),
                            lambda b: f"APGD-DLR ({b.apgd_steps} steps)", lambda b: _gradient_steps(b.apgd_steps)),
    "apgd-t": AttackEntry(lambda m, b, **c: partial(apgd_targeted, m, steps=b.apgd_steps, targets=b.apgd_targets, **c),
                          lambda b: f"APGD-T ({b.apgd_steps} steps, {b.apgd_targets} targets)",
                          lambda b: _gradient_steps(b.apgd_steps * b.apgd_targets), targeted=True),
    "square": AttackEntry(lambda m, b, **c: partial(square, m, queries=b.square_queries, **c),
                          lambda b: f"Square ({b.square_queries} queries)",
                          lambda b: Work(b.square_queries / 3, b.square_queries), images_only=True, radii_at_once=True),
    "pgd-margin": AttackEntry(lambda m, b, **c: partial(pgd, m, step_size=b.pgd_step_size, steps=b.pgd_steps,
                                                        loss_fn=margin_loss, **c),
                              lambda b: f"PGD-margin ({b.pgd_steps} steps of {b.pgd_step_size:g})",
                              lambda b: _gradient_steps(b.pgd_steps)),
    "apgd-mse": AttackEntry(lambda m, b, **c: partial(apgd, m, steps=b.apgd_steps, loss_fn=per_sample_squared_error,
                                                      is_adversarial=None, **c),
                            lambda b: f"APGD-MSE ({b.apgd_steps} steps)", lambda b: _gradient_steps(b.apgd_steps),
                            regression=True),
}

#: The members an ``evaluation.ensemble`` may name (classification).
CLASSIFICATION_ATTACKS = tuple(name for name, entry in ATTACKS.items() if not entry.regression)
#: The regression ensemble (APGD on the squared error).
REGRESSION_ATTACKS = tuple(name for name, entry in ATTACKS.items() if entry.regression)


def build_attack(name: str, model: Callable[[Tensor], Tensor], epsilon: float | Tensor, norm: Norm,
                 budget: EnsembleBudget, box: Box | None = (0.0, 1.0), generator: torch.Generator | None = None,
                 reachable: Callable[[Tensor, Tensor], Tensor] | None = None) -> Attack:
    """The registered attack ``name`` bound to its model, radius (a ``[B]`` tensor for one with
    ``radii_at_once``), norm and budget; a targeted one also to ``reachable`` (which rival classes a
    certificate leaves open at ε; ``None``: all)."""
    if name not in ATTACKS:
        raise ValueError(f"unknown attack {name!r}; choose from {', '.join(ATTACKS)}")
    entry = ATTACKS[name]
    extra = {"reachable": reachable} if entry.targeted and reachable is not None else {}
    return entry.build(model, budget, epsilon=epsilon, norm=norm, box=box, generator=generator, **extra)


#: A certificate ready for a network: ``(x, y, logits) -> [B]`` certified L2 radii (0 where none).
Certifier = Callable[[Tensor, Tensor, Tensor], Tensor]


@runtime_checkable
class RivalCertifier(Protocol):
    """A :data:`Certifier` that also proves, per rival class, the L2 radius within which that class
    cannot overtake the label; with it the targeted attacks skip the rivals ruled out at ε."""

    def __call__(self, x: Tensor, y: Tensor, logits: Tensor) -> Tensor: ...

    def rival_radii(self, logits: Tensor, y: Tensor) -> Tensor:
        """``[B, C]`` radii (those of the label itself are not read)."""
        ...


@dataclass(frozen=True)
class ClassPairCertifier:
    """The class-pair certificate of one network (a :class:`RivalCertifier`): ``B`` its proven class-pair bounds
    (:func:`lipreg.functional.bounds.class_pair_bounds`). Called, the per-image radius
    ``min_{j≠y} (f_y − f_j) / B[y, j]``; :meth:`rival_radii` gives each class's term, with which the
    targeted attacks skip the rivals that cannot win inside the ball."""

    bounds: Tensor

    def __call__(self, x: Tensor, y: Tensor, logits: Tensor) -> Tensor:
        return certified_radius(logits, y, self.bounds).float()

    def rival_radii(self, logits: Tensor, y: Tensor) -> Tensor:
        """``[B, C]``: the L2 radius within which each class provably cannot overtake the label."""
        return rival_radii(logits, y, self.bounds)


@dataclass(frozen=True)
class CertificateEntry:
    """How to prepare a registered certificate for a network, and what it certifies.

    ``prepare(net, input_shape, plan)`` returns a :data:`Certifier` (``None``: not for this network);
    ``label(plan)`` names the certificate in the table; ``work(plan)``: its :class:`Work` per image (the
    progress line's weight of its stage); ``of_network``: it proves the network itself
    robust (a deterministic bound: the attacks skip images it certifies, and a test checks that no
    attack succeeds inside its radius); otherwise it is a certificate of another classifier (the
    smoothed one), which the attacks of the network do not test."""

    prepare: Callable[[nn.Module, tuple[int, ...], Any], Certifier | None]
    label: Callable[[Any], str]
    work: Callable[[Any], Work]
    of_network: bool = True


def class_pair_certifier(net: nn.Module, input_shape: tuple[int, ...], plan: Any = None) -> ClassPairCertifier | None:
    """Per image ``min_{j≠y} (f_y − f_j) / B[y, j]`` with ``B`` the proven class-pair bounds of the
    network's ``layers`` (:func:`lipreg.functional.bounds.class_pair_bounds`); ``None`` when the network
    has no ``layers`` chain lipreg can bound."""
    layers = getattr(net, "layers", None)
    if layers is None:
        return None
    try:
        bounds = class_pair_bounds(layers, input_shape)
    except ValueError:
        return None
    return ClassPairCertifier(bounds)


def smoothing_certifier(net: nn.Module, input_shape: tuple[int, ...], plan: Any) -> Certifier:
    """Randomized smoothing's CERTIFY (:func:`lipreg.functional.smoothing.smoothed_certify`) with the
    plan's σ, ``n₀``, ``n`` and ``α``: the smoothed classifier's radius where it predicts the label, else 0."""
    generator: dict[str, torch.Generator] = {}

    def certify(x: Tensor, y: Tensor, logits: Tensor) -> Tensor:
        if x.device not in generator:
            generator[x.device] = torch.Generator(device=x.device).manual_seed(plan.smoothing_seed)
        prediction, radius = smoothed_certify(net, x, plan.smoothing_sigma, logits.shape[1], plan.smoothing_selection,
                                              plan.smoothing_samples, plan.smoothing_alpha,
                                              generator=generator[x.device])
        return torch.where(prediction == y, radius, torch.zeros_like(radius)).float()

    return certify


#: Every certificate by name.
CERTIFICATES: dict[str, CertificateEntry] = {
    "class-pair": CertificateEntry(class_pair_certifier, lambda plan: "certified accuracy",
                                   lambda plan: Work(0.0)),  # the bounds are the network's: a few products per image
    "smoothing": CertificateEntry(
        smoothing_certifier, lambda plan: f"smoothed certified accuracy (σ={plan.smoothing_sigma:g}, "
        f"n={plan.smoothing_samples}, α={plan.smoothing_alpha:g}; probabilistic)",
        lambda plan: Work((plan.smoothing_selection + plan.smoothing_samples) / 3), of_network=False),
}
