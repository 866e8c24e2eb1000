"""Sums of chunk scores over an evaluation epoch and over processes (torchmetrics, reduced under DDP)."""

import torch
from torchmetrics import MeanMetric, Metric, SumMetric

from lipreg.evaluation.plan import EvaluationPlan
from lipreg.evaluation.result import EnsembleRecord
from lipreg.evaluation.suite import ChunkScores
from lipreg.task import TaskSpec

#: The two counts of APGD-T's rival runs per ε (``ChunkScores.rivals``).
RIVAL_PARTS = ("ruled out", "in all")


def _mean() -> MeanMetric:
    return MeanMetric(nan_strategy="disable")  # no host sync on update


def _sum() -> SumMetric:
    return SumMetric(nan_strategy="disable")


class ScoreAccumulator:
    """The epoch's metrics of an evaluation, one per figure of the result.

    Every process creates the same metrics (the stages are known from the plan), so the reduction
    over processes lines up even where a process broke no image at some stage.
    """

    def __init__(self, plan: EvaluationPlan, task: TaskSpec, members: list[str], certified: bool,
                 device: torch.device, prunes_rivals: bool = False) -> None:
        self.plan = plan
        self.test_samples = _sum().to(device)
        self.attacked = _sum().to(device)
        self.clean_subset = _mean().to(device)
        self.curves = {(c, p): _mean().to(device) for c, values in plan.curves().items() for p in values}
        self.robust = {e: _mean().to(device) for e in plan.pgd_epsilons}
        stages = ["clean", "pgd", "smaller ε", *members] if task.classification else []
        smallest = min(plan.pgd_epsilons, default=None)
        self.broken = {(e, stage): _sum().to(device) for e in plan.pgd_epsilons for stage in stages
                       if stage != "smaller ε" or e != smallest}
        self.certified = {r: _mean().to(device) for r in plan.certified_radii} if certified else {}
        self.radius = _mean().to(device) if certified else None
        self.rivals = {(e, part): _sum().to(device) for e in plan.pgd_epsilons for part in RIVAL_PARTS
                       } if prunes_rivals else {}

    def count_test_samples(self, count: int, device: torch.device) -> None:
        """``count`` more test samples were scored clean (attacked or not)."""
        self.test_samples.update(torch.full((), float(count), device=device))

    def add(self, scores: ChunkScores) -> None:
        """A finished chunk's scores (all at once, so an interrupted evaluation keeps whole chunks)."""
        clean = scores.clean
        updates: list[tuple[Metric, torch.Tensor]] = [
            (self.attacked, torch.full((), float(len(clean)), device=clean.device)), (self.clean_subset, clean)]
        updates += [(self.curves[key], value) for key, value in scores.curves.items()]
        updates += [(self.robust[epsilon], value) for epsilon, value in scores.robust.items()]
        updates += [(self.broken[key], count.float().to(clean.device)) for key, count in scores.broken.items()]
        updates += [(self.rivals[(epsilon, part)], count.float()) for epsilon, counts in scores.rivals.items()
                    for part, count in zip(RIVAL_PARTS, counts, strict=True)]
        if self.radius is not None and scores.radius is not None:
            updates.append((self.radius, scores.radius))
            updates += [(metric, (scores.radius > r).float()) for r, metric in self.certified.items()]
        for metric, value in updates:
            metric.update(value)

    @property
    def any_attacked(self) -> bool:
        """Whether this process finished any chunk."""
        return self.attacked.update_count > 0

    def curves_computed(self) -> dict[str, list[tuple[float, float]]]:
        """``robust`` first, then every curve in the plan's order."""
        curves: dict[str, list[tuple[float, float]]] = {}
        if self.robust:
            curves["robust"] = [(e, float(m.compute())) for e, m in self.robust.items()]
        for (curve, parameter), metric in self.curves.items():
            curves.setdefault(curve, []).append((parameter, float(metric.compute())))
        return curves

    def ensemble_record(self, described: list[str]) -> EnsembleRecord:
        """The attacks (``described``) and per ε what each stage broke first."""
        broken_by = {f"{e:g}": {stage: int(m.compute()) for (eps, stage), m in self.broken.items() if eps == e}
                     for e in self.plan.pgd_epsilons} if self.broken else {}
        rivals = {f"{e:g}": [int(self.rivals[(e, part)].compute()) for part in RIVAL_PARTS]
                  for e in self.plan.pgd_epsilons} if self.rivals else {}
        return EnsembleRecord(norm=self.plan.pgd_norm, attacks=described, broken_by=broken_by,
                              rivals_ruled_out=rivals)

    def certified_computed(self) -> tuple[list[tuple[float, float]], float | None]:
        """Certified accuracy per radius and the mean certified radius."""
        if self.radius is None:
            return [], None
        return [(r, float(m.compute())) for r, m in self.certified.items()], float(self.radius.compute())
