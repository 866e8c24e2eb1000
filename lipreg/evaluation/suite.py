"""Scoring one chunk of test images under every attack of a plan: tensors in, tensors out, no Lightning.

Work goes only where it can change the answer (classification): every attack stops on an image
at its first adversarial iterate and keeps it; the radii run from small to large and each attacks
only the images still robust at the radius below (an adversarial inside the smaller ball lies
inside the larger one); the ensemble's members run in turn on the survivors, and the closing ones that take a radius per
image (Square) once over every radius, on what the others left at each (:meth:`EvaluationSuite.ensemble_scores`);
an image whose certified radius exceeds ε is not attacked at ε, and a targeted attack skips the rival classes
that the certificate proves cannot win inside the ε-ball (the class-pair radii). For L∞ attacks
an L2 certificate counts only beyond ``ε·√d``, the L2 radius of the L∞ ball.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from lipreg.evaluation.plan import PGD_CURVES, EvaluationPlan
from lipreg.evaluation.registry import CERTIFICATES, Certifier, RivalCertifier, build_attack
from lipreg.functional import fgsm, gaussian_noise, lipschitz_lower_bound, lipschitz_upper_bound, pgd
from lipreg.functional.bounds import l2_reach
from lipreg.functional.ensemble import Attack, first_breakers, worst_case_error
from lipreg.functional.pairs import Box, noisy_pairs
from lipreg.task import TaskSpec

#: At most this much image data (each image and its iterate) in one call of a closing member: the pairs
#: of a chunk are split into as many equal groups as that takes, so that a call's random window reads
#: stay within a server CPU's last-level cache while its steps stay large enough to cost little each
#: (on MNIST, calls of a few thousand pairs ran fastest per pair in scratch timings).
CLOSING_GROUP_BYTES = 32 * 2**20


@dataclass
class ChunkScores:
    """Per-image scores of one chunk (``[B]`` tensors) and per-stage counts.

    Attributes:
        clean: correctness (regression: squared error) on the clean images.
        curves: per (curve, σ or ε), the score under that attack.
        robust: per ε, robust correctness (regression: worst-case squared error).
        broken: per (ε, stage), how many images that stage was the first to break.
        radius: the certified radius per image (``None`` without a certificate).
        rivals: per ε where the certificate prunes APGD-T's rivals, ``[ruled out, in all]``: of the
            rival runs APGD-T makes on the images the ensemble attacks, those the certificate rules out.
    """

    clean: Tensor
    curves: dict[tuple[str, float], Tensor] = field(default_factory=dict)
    robust: dict[float, Tensor] = field(default_factory=dict)
    broken: dict[tuple[float, str], Tensor] = field(default_factory=dict)
    radius: Tensor | None = None
    rivals: dict[float, Tensor] = field(default_factory=dict)


@dataclass
class EvaluationSuite:
    """A plan bound to a network, a task and an input range: :meth:`score` scores a chunk.

    Args:
        plan: what to attack and certify.
        net: the network (left in its mode; parametrised weights are computed once per chunk).
        task: the task's losses and score.
        box: the valid input range (attacks are clamped to it; ``None``: unbounded).
        certifier: the per-image certified radius (``None``: no certificate); a
            :class:`~lipreg.evaluation.registry.RivalCertifier` (``ClassPairCertifier``) also prunes APGD-T's rivals.
        certifies_network: whether the certificate proves the network itself robust (then an image
            certified beyond ε is not attacked at ε); a smoothed classifier's is not.
        image_inputs: whether inputs are images ``[C, H, W]`` (Square needs them).
        generator: the random draws of noise, restarts and Square.
        stage: told the name of each stage as it starts (a progress line).
    """

    plan: EvaluationPlan
    net: nn.Module
    task: TaskSpec
    box: Box | None
    certifier: Certifier | None = None
    certifies_network: bool = True
    image_inputs: bool = True
    generator: torch.Generator | None = None
    stage: Callable[[str], None] = lambda name: None

    @classmethod
    def for_network(cls, plan: EvaluationPlan, net: nn.Module, task: TaskSpec, input_shape: tuple[int, ...] | None,
                    box: Box | None, generator: torch.Generator | None = None,
                    stage: Callable[[str], None] = lambda name: None) -> "EvaluationSuite":
        """The suite of ``plan`` for ``net`` on inputs of ``input_shape`` (``None``: unknown), with the
        plan's certificate prepared for it (classification with certified radii and a known shape)."""
        certificate = CERTIFICATES[plan.certificate]
        certifier = None
        if task.classification and input_shape is not None and plan.certified_radii:
            certifier = certificate.prepare(net, tuple(input_shape), plan)
        image_inputs = input_shape is None or len(input_shape) == 3
        return cls(plan, net, task, box, certifier, certificate.of_network, image_inputs, generator, stage)

    def _scores(self, x: Tensor, y: Tensor) -> Tensor:
        with torch.no_grad():
            return self.task.score(self.net(x), y)

    def perturb(self, curve: str, parameter: float, x: Tensor, y: Tensor) -> Tensor:
        """The perturbed images for one point of one curve (PGD on classification stops on each image
        at its first adversarial iterate)."""
        plan, loss = self.plan, self.task.per_sample_loss
        if curve == "noise":
            return gaussian_noise(x, parameter, self.box if plan.noise_clamp else None, self.generator)
        if curve == "fgsm":
            return fgsm(self.net, x, y, parameter, plan.fgsm_norm, loss, self.box)
        step_kind = "sign" if curve == "pgd_sign" else "steepest"
        return pgd(self.net, x, y, parameter, plan.pgd_step_size, plan.pgd_steps, plan.pgd_norm, step_kind, loss,
                   self.box, random_start=False, restarts=plan.pgd_restarts, generator=self.generator,
                   is_adversarial=self.task.is_adversarial)

    def score(self, x: Tensor, y: Tensor) -> ChunkScores:
        """Every score of the plan on the images ``x`` with labels ``y``."""
        with torch.no_grad():
            logits = self.net(x)
        scores = ChunkScores(clean=self.task.score(logits, y))
        if self.certifier is not None and self.task.classification:
            self.stage("certificate")  # a stage of its own: the smoothed one's noise draws can take long
            scores.radius = self.certifier(x, y, logits)
        with parametrize.cached():
            pgd_scores = self.curve_scores(x, y, scores)
            if self.task.classification:
                self.ensemble_scores(x, y, logits, scores, pgd_scores)
            else:
                for epsilon in sorted(self.plan.pgd_epsilons):
                    worst = torch.stack([scores.clean, *pgd_scores[epsilon]]).amax(dim=0)
                    scores.robust[epsilon] = worst_case_error(self.net, x, y, self.members(epsilon, x), worst)
        return scores

    def curve_scores(self, x: Tensor, y: Tensor, scores: ChunkScores) -> dict[float, list[Tensor]]:
        """Score every curve point into ``scores.curves``; returns the PGD columns' scores per ε.

        Classification: each PGD curve runs its radii from small to large, attacking only the
        images still correct at the radius below (the others count as broken)."""
        pgd_scores: dict[float, list[Tensor]] = {epsilon: [] for epsilon in self.plan.pgd_epsilons}
        for curve, parameters in self.plan.curves().items():
            ordered = curve in PGD_CURVES and self.task.classification
            correct = scores.clean.bool()
            for parameter in sorted(parameters) if ordered else parameters:
                self.stage(f"{curve} ε={parameter:g}" if curve in PGD_CURVES else f"{curve} {parameter:g}")
                if ordered:
                    score = torch.zeros_like(scores.clean)
                    index = correct.nonzero().squeeze(1)
                    if len(index):
                        score[index] = self._scores(self.perturb(curve, parameter, x[index], y[index]), y[index])
                    correct = score.bool()
                else:
                    score = self._scores(self.perturb(curve, parameter, x, y), y)
                scores.curves[(curve, parameter)] = score
                if curve in PGD_CURVES:
                    pgd_scores[parameter].append(score)
        return pgd_scores

    def reach(self, epsilon: float, x: Tensor) -> float:
        """The L2 radius a certificate must exceed to prove the attacks' ε-ball safe (ε·√d for L∞)."""
        return l2_reach(epsilon, self.plan.pgd_norm, x[0].numel())

    @property
    def prunes_rivals(self) -> bool:
        """Whether the ensemble has APGD-T and a certificate of the network with per-class radii, which
        rule rivals out of its runs."""
        return (isinstance(self.certifier, RivalCertifier) and self.certifies_network
                and "apgd-t" in self.plan.members(self.task, self.image_inputs))

    def reachable(self, epsilon: float, x: Tensor) -> Callable[[Tensor, Tensor], Tensor] | None:
        """``(logits, y) -> [B, C]``: the rival classes the certificate cannot rule out at ε (``None``:
        no certificate of the network with per-class radii, so every rival is attacked)."""
        certifier = self.certifier
        if not isinstance(certifier, RivalCertifier) or not self.certifies_network:
            return None
        reach = self.reach(epsilon, x)
        return lambda logits, y: certifier.rival_radii(logits, y) <= reach

    def rivals_ruled_out(self, epsilon: float, x: Tensor, logits: Tensor, y: Tensor, attacked: Tensor) -> Tensor | None:
        """``[ruled out, in all]`` of the rival runs APGD-T makes on the ``attacked`` images of ``x``
        (clean ``logits``; its ``apgd_targets`` highest-ranked rivals each) that the certificate rules out
        at ε; ``None`` where it rules none out (:attr:`prunes_rivals`)."""
        reachable = self.reachable(epsilon, x) if self.prunes_rivals else None
        if reachable is None:
            return None
        logits, y = logits[attacked], y[attacked]
        targets = min(self.plan.apgd_targets, logits.shape[1] - 1)
        ranked = logits.argsort(dim=1, descending=True)[:, 1 : targets + 1]
        open_rivals = reachable(logits, y).gather(1, ranked)
        return torch.stack([(~open_rivals).sum(), torch.tensor(open_rivals.numel(), device=logits.device)])

    def _announcing(self, stage: str, attack: Callable[..., Tensor]) -> Callable[..., Tensor]:
        """``attack`` telling :attr:`stage` its name when it starts."""
        def run(*args: Tensor) -> Tensor:
            self.stage(stage)
            return attack(*args)

        return run

    def members(self, epsilon: float, x: Tensor) -> list[tuple[str, Attack]]:
        """The ensemble's attacks that run at ε (all but the closing ones, :meth:`EvaluationPlan.radius_members`)
        on images like ``x``, each announcing its stage when it starts."""
        plan, reachable = self.plan, self.reachable(epsilon, x)
        return [(name, self._announcing(f"{name} ε={epsilon:g}", build_attack(
                    name, self.net, epsilon, plan.pgd_norm, plan.budget, self.box, self.generator, reachable)))
                for name in plan.radius_members(self.task, self.image_inputs)]

    def closing_members(self) -> list[tuple[str, Callable[[Tensor, Tensor, Tensor], Tensor]]]:
        """The ensemble's closing attacks (:meth:`EvaluationPlan.closing_members`), ``(x, y, ε per image) ->
        adversarial x``, each announcing its stage when it starts."""
        plan = self.plan
        return [(name, self._announcing(f"{name} {plan.radii_label()}", partial(self._closing_attack, name)))
                for name in plan.closing_members(self.task, self.image_inputs)]

    def _closing_attack(self, name: str, x: Tensor, y: Tensor, epsilon: Tensor) -> Tensor:
        """The closing member ``name`` on ``x`` with a radius per image."""
        plan = self.plan
        return build_attack(name, self.net, epsilon, plan.pgd_norm, plan.budget, self.box, self.generator)(x, y)

    def ensemble_scores(self, x: Tensor, y: Tensor, logits: Tensor, scores: ChunkScores,
                        pgd_scores: dict[float, list[Tensor]]) -> None:
        """Robust correctness per ε, how many images each stage broke first (``clean``: misclassified
        already, ``pgd``: the PGD columns, ``smaller ε``: broken at a smaller radius, then each member)
        and :meth:`rivals_ruled_out`, into ``scores`` (``logits``: the clean ones).

        The radii run from small to large: at ε the members attack the images that survived the PGD
        columns and were robust at the radius below, unless certified beyond ε (a proven radius: no
        attack can break them). The closing members (Square) then run once over every radius, each
        image at each ε its radius's members left (one call instead of one per radius: an attack's
        step costs nearly as much on a few images as on thousands); an image they break at a radius
        counts as broken at every larger one. Their images at ε are those robust at the radius below
        under the other members: a superset of those robust under the whole ensemble, so no image is
        left out."""
        radii = sorted(self.plan.pgd_epsilons)
        proven_radius = scores.radius is not None and self.certifies_network
        survived, breakers, left = {}, {}, {}
        robust_below = None
        for epsilon in radii:
            survived[epsilon] = torch.stack([scores.clean, *pgd_scores[epsilon]]).amin(dim=0).bool()
            candidates = survived[epsilon] if robust_below is None else survived[epsilon] & robust_below
            proven = torch.zeros_like(candidates)
            if proven_radius:
                proven = candidates & (scores.radius > self.reach(epsilon, x))
            attacked = candidates & ~proven
            rivals = self.rivals_ruled_out(epsilon, x, logits, y, attacked)
            if rivals is not None:
                scores.rivals[epsilon] = rivals
            breakers[epsilon] = first_breakers(self.net, x, y, self.members(epsilon, x), attacked)
            left[epsilon] = attacked.clone()
            for broken in breakers[epsilon].values():
                left[epsilon] &= ~broken
            robust_below = left[epsilon] | proven
        for epsilon, closing in self.closing_breakers(x, y, left).items():
            breakers[epsilon].update(closing)
        robust_below = None
        for epsilon in radii:  # the first stage to break each image, in the ensemble's order
            robust = survived[epsilon] if robust_below is None else survived[epsilon] & robust_below
            counts = {"clean": (scores.clean == 0).sum(), "pgd": (scores.clean.bool() & ~survived[epsilon]).sum()}
            if robust_below is not None:
                counts["smaller ε"] = (survived[epsilon] & ~robust_below).sum()
            for name, broken in breakers[epsilon].items():
                counts[name] = (robust & broken).sum()
                robust = robust & ~broken
            scores.robust[epsilon] = robust.float()
            scores.broken.update({(epsilon, stage): count for stage, count in counts.items()})
            robust_below = robust


    def closing_breakers(self, x: Tensor, y: Tensor, left: dict[float, Tensor]) -> dict[float, dict[str, Tensor]]:
        """Per ε, per closing member, the images it was the first of them to break among those ``left`` at ε
        (``[B]`` bool each): one call over every radius, each image once per radius with its own ε, in
        equal groups of at most :data:`CLOSING_GROUP_BYTES` of image data ({} without closing members)."""
        closing = self.closing_members()
        if not closing:
            return {}
        radii = list(left)
        images = [left[epsilon].nonzero().squeeze(1) for epsilon in radii]  # each image once per radius
        which = torch.cat([torch.full_like(index, k) for k, index in enumerate(images)])  # its radius
        radius = torch.tensor(radii, dtype=x.dtype, device=x.device)[which]
        images = torch.cat(images)
        data = len(images) * 2 * x[0].numel() * x.element_size()  # the pairs' images and iterates
        groups = torch.arange(len(images), device=x.device).tensor_split(max(1, -(-data // CLOSING_GROUP_BYTES)))
        found = [first_breakers(self.net, x[images[g]], y[images[g]], closing, torch.ones_like(g, dtype=torch.bool),
                                radius[g]) for g in groups]
        pairs = {name: torch.cat([part[name] for part in found]) for name, _ in closing}
        return {epsilon: {name: torch.zeros_like(left[epsilon]).index_put_((images[which == k],), broken[which == k])
                          for name, broken in pairs.items()} for k, epsilon in enumerate(radii)}


def split_scores(net: nn.Module, task: TaskSpec, x: Tensor, y: Tensor, rank: int = 0, world_size: int = 1,
                 batch: int = 1000) -> Tensor:
    """Per-sample scores of this process's share (batches ``rank, rank + world_size, …``) of a whole
    split, for a mean over processes (the paper's "Train" column)."""
    device = next(net.parameters()).device
    scores = []
    with torch.no_grad():
        for start in range(rank * batch, len(x), batch * world_size):
            xb, yb = x[start : start + batch].to(device), y[start : start + batch].to(device)
            scores.append(task.score(net(xb), yb))
    return torch.cat(scores) if scores else torch.zeros(0, device=device)


def upper_bound(net: nn.Module, input_shape: tuple[int, ...] | None) -> float | None:
    """The proven layer-product bound of the network's ``layers`` (``None``: no chain lipreg can bound)."""
    layers = getattr(net, "layers", None)
    if layers is None or input_shape is None:
        return None
    try:
        return lipschitz_upper_bound(layers, tuple(input_shape))
    except ValueError:
        return None


def lower_bound(net: nn.Module, x: Tensor, box: Box | None, steps: int, seed: int = 0,
                should_stop: Callable[[], bool] | None = None) -> float:
    """The Lipschitz lower bound by adaptive pair ascent from the points ``x`` and noisy copies of
    them (5 % of the input range), stopped early when ``should_stop`` says so (a bound after any step)."""
    scale = 0.05 * (box[1] - box[0]) if box is not None else 0.05
    generator = torch.Generator(device=x.device).manual_seed(seed)
    pairs = noisy_pairs(x, scale, box=box, generator=generator)
    return float(lipschitz_lower_bound(net, pairs, steps=steps, step_size=1.0, box=box, should_stop=should_stop))
