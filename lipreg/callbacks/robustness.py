"""Robustness evaluation at test time: the suite behind ``lipreg test``."""

import json
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor
from torch.nn.utils import parametrize
from torchmetrics import Metric, SumMetric

from lipreg.callbacks.attack_support import SampleBudget, TimeBudget, per_sample_scores, require_gradients
from lipreg.callbacks.evaluation_progress import EvaluationProgress
from lipreg.errors import LipregError
from lipreg.functional import fgsm, gaussian_noise, lipschitz_lower_bound, lipschitz_upper_bound, pgd
from lipreg.functional.attacks import Norm
from lipreg.functional.bounds import certified_radius, class_pair_bounds
from lipreg.functional.ensemble import (
    CLASSIFICATION_ATTACKS,
    EnsembleBudget,
    ensemble_attack,
    robust_under_ensemble,
    worst_case_error,
)
from lipreg.functional.losses import misclassified, per_sample_cross_entropy, per_sample_squared_error
from lipreg.functional.pairs import noisy_pairs
from lipreg.functional.progress import reporting
from lipreg.methods.base import LipRegModule, epoch_mean
from lipreg.report import (
    close_figure,
    ensemble_summary,
    format_table,
    robustness_figure,
    wilson_interval,
    write_results,
)

#: The file that marks a results folder whose ``lipreg test`` did not finish.
INCOMPLETE_MARKER = "INCOMPLETE"
#: What an interrupted ``lipreg test`` had finished (whole batches).
PARTIAL_RESULT_FILE = "robustness.partial.json"

#: The curves whose per-sample results at ε feed the worst case (they use ``pgd_norm``).
PGD_CURVES = ("pgd", "pgd_sign")


def accuracy_intervals(result: dict[str, Any]) -> dict[str, Any]:
    """95 % Wilson intervals of a classification result's accuracies: ``clean`` over all test samples,
    ``clean_subset``, every curve point and every certified accuracy over the attacked ones."""
    attacked = result["attack_samples"]
    return {
        "clean": wilson_interval(result["clean"], result["samples"]),
        "clean_subset": wilson_interval(result["clean_subset"], attacked),
        "curves": {curve: [[parameter, *wilson_interval(value, attacked)] for parameter, value in points]
                   for curve, points in result["curves"].items()},
        "certified": [[radius, *wilson_interval(value, attacked)] for radius, value in result["certified"]],
    }


class RobustnessEvaluation(L.Callback):
    """Everything ``lipreg test`` reports besides clean accuracy (CLIP paper Table 1, FLIP slides Figs. 13–15).

    First, at each of ``pgd_epsilons`` (norm ``pgd_norm``), the **robust accuracy**: the share of
    samples classified correctly that every attack fails on — the PGD columns below at that ε and
    then the ``ensemble`` (run in turn on the samples still robust; Croce & Hein, 2020). For
    regression it is the worst-case MSE: per sample the largest squared error over PGD and APGD.

    Then, on the first ``sample_size`` test samples (all when ``None``): accuracy (regression: MSE)
    under Gaussian noise for each σ (clamped to the input range unless ``noise_clamp`` is false),
    FGSM for each ε, PGD for each ε (``pgd_steps`` steps of size ``pgd_step_size``,
    normalised-gradient steps for L2) and, with ``sign_pgd``, the CLIP paper's
    eq. (13) variant (sign steps, L2-ball projection). Then the Lipschitz lower bound (adaptive pair
    ascent from ``lipschitz_pairs`` test points and noisy copies), the layer-product upper bound
    (every factor a proven bound: exact SVD norms of ``Linear`` layers, the DFT bound of each
    convolution), and, per image, the **certified radius** ``min_{j≠y} (f_y − f_j) / B[y, j]`` with
    ``B[y, j]`` a bound of the class pair's logit difference (``class_pair_bounds``): certified
    accuracy at each of ``certified_radii`` and the mean certified radius. With ``train_accuracy``
    the accuracy on the training split is reported too (the paper's "Train" column).

    Work goes only where it can change the answer (classification): every attack stops on an image
    at its first adversarial iterate and keeps it, so an image counts as broken if any step broke
    it; the radii run from small to large and each attacks only the images still robust at the
    radius below (an adversarial inside the smaller ball lies inside the larger one). Every
    accuracy from the attacked sample carries a 95 % Wilson interval (``intervals`` in the JSON).
    A progress line comes at the start and then at least every ``progress_every`` seconds, inside
    long attacks too: the stage (attack, ε), images done and the time left.

    Results are logged (``test/pgd_acc@2`` …), printed as a table, and written as
    ``robustness.json``, ``.csv`` and ``.png`` (curves against ε) into ``output_dir`` (default: the
    run's log directory); the curves also go to TensorBoard. All metrics are reduced over processes;
    only rank 0 writes files. A test stopped before the end (Ctrl-C, SIGTERM, an error) leaves an
    ``INCOMPLETE`` file in that folder instead, and says so in one line; in one process the chunks
    it finished go to ``robustness.partial.json``.

    Args:
        ensemble: the attacks behind the robust accuracy besides the PGD columns, in the order they
            run: ``apgd-ce``, ``apgd-dlr``, ``apgd-t``, ``square``, ``pgd-margin`` (classification;
            regression always uses APGD on the squared error). Empty: the PGD columns alone.
        apgd_steps: steps of every APGD run.
        apgd_targets: rival classes APGD-T attacks in turn (the top ones by clean logit).
        square_queries: queries of the Square attack per image.
        progress_every: seconds between progress lines (0: none).
        time_budget: minutes the evaluation may take (null: no limit). The first ``sample_size``
            test images (all when null) are attacked in turn, in chunks, until the next chunk would
            not fit into 80 % of the budget; the table and the JSON say how many were, with the 95 %
            intervals that gives. The Lipschitz lower bound's ascent stops when the whole budget is
            spent (it is a bound after any step). Images a certificate already proves robust at ε
            are not attacked at ε.
    """

    def __init__(
        self,
        noise_sigmas: list[float] = [0.25, 0.5, 1.0],  # noqa: B006  (jsonargparse shows list defaults)
        noise_clamp: bool = True,
        fgsm_epsilons: list[float] = [0.05, 0.1, 0.2, 0.3],  # noqa: B006
        fgsm_norm: Norm = "linf",
        pgd_epsilons: list[float] = [0.5, 1.0, 1.5, 2.0],  # noqa: B006
        pgd_norm: Norm = "l2",
        pgd_steps: int = 100,
        pgd_step_size: float = 0.25,
        pgd_restarts: int = 1,
        sign_pgd: bool = True,
        ensemble: list[str] = ["apgd-ce", "apgd-t", "square"],  # noqa: B006
        apgd_steps: int = 100,
        apgd_targets: int = 9,
        square_queries: int = 5000,
        certified_radii: list[float] = [0.1, 0.3, 0.5, 1.0, 1.58, 2.0],  # noqa: B006
        lipschitz_pairs: int = 1000,
        lipschitz_steps: int = 50,
        train_accuracy: bool = True,
        sample_size: int | None = None,
        seed: int = 0,
        output_dir: str | None = None,
        progress_every: float = 30.0,
        time_budget: float | None = 15.0,
    ) -> None:
        lists = {"noise_sigmas": noise_sigmas, "fgsm_epsilons": fgsm_epsilons, "pgd_epsilons": pgd_epsilons,
                 "certified_radii": certified_radii}
        for name, values in lists.items():
            if any(v < 0 for v in values):
                raise LipregError(f"evaluation.{name} must be >= 0, got {values}")
        if pgd_steps < 0 or pgd_step_size <= 0 or pgd_restarts < 1 or lipschitz_pairs < 1 or lipschitz_steps < 0:
            raise LipregError(
                f"need pgd_steps >= 0, pgd_step_size > 0, pgd_restarts >= 1, lipschitz_pairs >= 1 and "
                f"lipschitz_steps >= 0; got {pgd_steps}, {pgd_step_size}, {pgd_restarts}, {lipschitz_pairs}, "
                f"{lipschitz_steps}"
            )
        if sample_size is not None and sample_size < 1:
            raise LipregError(f"evaluation.sample_size must be >= 1, got {sample_size}")
        unknown = [name for name in ensemble if name not in CLASSIFICATION_ATTACKS]
        if unknown:
            raise LipregError(f"evaluation.ensemble: unknown attack(s) {unknown}; choose from "
                              f"{', '.join(CLASSIFICATION_ATTACKS)}")
        try:
            self.attack_budget = EnsembleBudget(apgd_steps, apgd_targets, square_queries, max(pgd_steps, 1),
                                                pgd_step_size)
        except ValueError as error:
            raise LipregError(f"evaluation: {error}") from None
        self.ensemble = list(ensemble)
        self.noise_sigmas = list(noise_sigmas)
        self.noise_clamp = noise_clamp
        self.fgsm_epsilons = list(fgsm_epsilons)
        self.fgsm_norm = fgsm_norm
        self.pgd_epsilons = list(pgd_epsilons)
        self.pgd_norm = pgd_norm
        self.pgd_steps = pgd_steps
        self.pgd_step_size = pgd_step_size
        self.pgd_restarts = pgd_restarts
        self.sign_pgd = sign_pgd
        self.certified_radii = list(certified_radii)
        self.lipschitz_pairs = lipschitz_pairs
        self.lipschitz_steps = lipschitz_steps
        self.train_accuracy = train_accuracy
        self.sample_size = sample_size
        self.seed = seed
        self.output_dir = output_dir
        self.progress_every = progress_every
        if time_budget is not None and time_budget <= 0:
            raise LipregError(f"evaluation.time_budget must be > 0 minutes (or null: no limit), got {time_budget}")
        self.time_budget = time_budget
        self.result: dict[str, Any] | None = None
        self.image_inputs = True

    # ------------------------------------------------------------------ pieces
    def curves(self) -> dict[str, list[float]]:
        """The attack families and their parameters (σ or ε)."""
        curves = {"noise": self.noise_sigmas, "fgsm": self.fgsm_epsilons, "pgd": self.pgd_epsilons}
        if self.sign_pgd and self.pgd_norm == "l2":
            curves["pgd_sign"] = self.pgd_epsilons
        return {name: values for name, values in curves.items() if values}

    def perturb(self, module: LipRegModule, curve: str, parameter: float, x: Tensor, y: Tensor,
                generator: torch.Generator) -> Tensor:
        """The perturbed batch for one point of one curve (PGD on classification stops on each image
        at its first misclassified iterate)."""
        box = module.input_box
        classification = module.task == "classification"
        loss = per_sample_cross_entropy if classification else per_sample_squared_error
        if curve == "noise":
            return gaussian_noise(x, parameter, box if self.noise_clamp else None, generator)
        if curve == "fgsm":
            return fgsm(module.net, x, y, parameter, self.fgsm_norm, loss, box)
        step_kind = "sign" if curve == "pgd_sign" else "steepest"
        return pgd(module.net, x, y, parameter, self.pgd_step_size, self.pgd_steps, self.pgd_norm, step_kind, loss,
                   box, random_start=False, restarts=self.pgd_restarts, generator=generator,
                   is_adversarial=misclassified if classification else None)

    def members(self, task: str) -> list[str]:
        """The ensemble's attacks for ``task`` (regression: APGD on the squared error). Square needs
        image inputs ``[C, H, W]`` and is left out for flat ones."""
        if not self.pgd_epsilons:
            return []
        if task == "regression":
            return ["apgd-mse"]
        return [name for name in self.ensemble if name != "square" or self.image_inputs]

    def describe_ensemble(self, task: str) -> list[str]:
        """What the robust accuracy is the worst case over, with budgets, in the order they run."""
        norm = self.pgd_norm.upper().replace("INF", "∞")
        loss = "CE" if task == "classification" else "MSE"
        described = []
        if self.pgd_steps > 0:
            described.append(f"PGD-{norm} ({loss}, {self.pgd_steps} steps of {self.pgd_step_size:g})")
            if "pgd_sign" in self.curves():
                described.append(f"PGD-{norm} sign steps, eq. (13) ({loss}, {self.pgd_steps} steps)")
        return described + [self.attack_budget.describe(name) for name in self.members(task)]

    def robust_samples(self, module: LipRegModule, epsilon: float, x: Tensor, y: Tensor, clean: Tensor,
                       pgd_scores: list[Tensor], robust_below: Tensor | None,
                       certified_here: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """Per-sample robust correctness (regression: worst-case squared error) at ε, and how many
        samples each stage broke (``clean``: misclassified already, ``pgd``: the PGD columns,
        ``smaller ε``: broken by the ensemble at a smaller radius, which ``robust_below`` holds).

        The ensemble attacks only the samples that survived everything so far and are not
        ``certified_here`` (a proven radius above ε: no attack can break them)."""
        attacks = [(name, self.progress.staged(f"{name} ε={epsilon:g}", ensemble_attack(
            name, module.net, epsilon, self.pgd_norm, self.attack_budget, module.input_box, self.generator)))
            for name in self.members(module.task)]
        if module.task == "regression":
            worst = torch.stack([clean, *pgd_scores]).amax(dim=0)
            return worst_case_error(module.net, x, y, attacks, worst), {}
        survived_pgd = torch.stack([clean, *pgd_scores]).amin(dim=0).bool()
        candidates = survived_pgd if robust_below is None else survived_pgd & robust_below
        proven = torch.zeros_like(candidates) if certified_here is None else candidates & certified_here
        robust, broken_by = robust_under_ensemble(module.net, x, y, attacks, candidates & ~proven)
        robust = robust | proven
        counts = {"clean": (clean == 0).sum(), "pgd": (clean.bool() & ~survived_pgd).sum()}
        if robust_below is not None:
            counts["smaller ε"] = (survived_pgd & ~robust_below).sum()
        counts.update({name: torch.tensor(count) for name, count in broken_by.items()})
        return robust.float(), counts

    def stages(self, task: str) -> list[str]:
        """The evaluation's stages on one batch, in order (for the progress line)."""
        pgd_last = [(c, e) for c, values in self.curves().items() for e in values if c in PGD_CURVES]
        others = [f"{c} {p:g}" for c, values in self.curves().items() for p in values if c not in PGD_CURVES]
        return ([*others, *(f"{c} ε={e:g}" for c, e in pgd_last)]
                + [f"{m} ε={e:g}" for e in sorted(self.pgd_epsilons) for m in self.members(task)])

    # ------------------------------------------------------------------ hooks
    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not isinstance(pl_module, LipRegModule):
            raise LipregError(f"RobustnessEvaluation works with lipreg methods, not {type(pl_module).__name__}")
        require_gradients(self, "testing")
        device = pl_module.device
        self.image_inputs = len(getattr(trainer.datamodule, "input_shape", (1, 1, 1))) == 3
        self.metrics = {(c, p): epoch_mean().to(device) for c, values in self.curves().items() for p in values}
        self.robust_metrics = {e: epoch_mean().to(device) for e in self.pgd_epsilons}
        stages = ["clean", "pgd", "smaller ε", *self.members(pl_module.task)] \
            if pl_module.task == "classification" else []
        smallest = min(self.pgd_epsilons, default=None)
        self.broken_metrics = {(e, stage): SumMetric(nan_strategy="disable").to(device)
                               for e in self.pgd_epsilons for stage in stages
                               if stage != "smaller ε" or e != smallest}
        self.clean_subset = epoch_mean().to(device)
        self.test_samples = SumMetric(nan_strategy="disable").to(device)
        self.attacked_samples = SumMetric(nan_strategy="disable").to(device)  # summed over processes
        self.certified_metrics = {r: epoch_mean().to(device) for r in self.certified_radii}
        self.radius_metric = epoch_mean().to(device)
        self.budget = SampleBudget(self.sample_size, trainer)
        self.clock = TimeBudget(self.time_budget)
        self.generator = torch.Generator(device=device).manual_seed(self.seed + trainer.global_rank)
        datamodule = trainer.datamodule
        layers = getattr(pl_module.net, "layers", None)
        self.upper: float | None = None
        self.pair_bounds: Tensor | None = None
        if layers is not None and hasattr(datamodule, "input_shape"):
            try:
                self.upper = lipschitz_upper_bound(layers, tuple(datamodule.input_shape))
                if pl_module.task == "classification":
                    self.pair_bounds = class_pair_bounds(layers, tuple(datamodule.input_shape))
            except ValueError:
                self.upper = None
        if self.pair_bounds is None:
            self.certified_metrics = {}
        splits = getattr(datamodule, "splits", None)
        total = None if splits is None else len(splits.test[0])
        batches = sum(trainer.num_test_batches) if trainer.num_test_batches else None
        eval_batch = getattr(datamodule, "eval_batch_size", None)
        if total is not None and batches is not None and eval_batch:  # limit_test_batches
            total = min(total, int(batches) * eval_batch)
        attacked = total if self.sample_size is None or total is None else min(self.sample_size, total)
        self.progress = EvaluationProgress(attacked, self.stages(pl_module.task), self.progress_every,
                                           enabled=trainer.is_global_zero, budget_minutes=self.time_budget)
        self.progress.start(self.describe_ensemble(pl_module.task))

    def on_test_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                          batch: tuple[Tensor, Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        x, y = batch
        self.test_samples.update(torch.full((), float(len(x)), device=x.device))
        x, y = self.budget.take(x, y)
        start = 0
        while start < len(x):
            size = self.clock.next_chunk(len(x) - start)
            if size == 0:  # the time budget is spent: no more images are attacked
                self.budget.remaining = 0
                return
            self.attack_chunk(pl_module, x[start : start + size], y[start : start + size])
            self.clock.record(size)
            start += size

    def attack_chunk(self, module: LipRegModule, x: Tensor, y: Tensor) -> None:
        """Every score of the evaluation on the images ``x``; the metrics are updated at the end, so
        an interrupted test keeps whole chunks."""
        self.updates: list[tuple[Metric, Tensor]] = [
            (self.attacked_samples, torch.full((), float(len(x)), device=x.device))]
        with torch.no_grad():
            logits = module.net(x)
        clean = per_sample_scores(module, logits, y)
        self.updates.append((self.clean_subset, clean))
        radius = None
        if self.certified_metrics:
            radius = certified_radius(logits, y, self.pair_bounds).float()
            self.updates.append((self.radius_metric, radius))
            self.updates += [(metric, (radius > epsilon).float()) for epsilon, metric in self.certified_metrics.items()]
        self.progress.begin_batch(len(x))
        # parametrised weights (spectral norm, orthogonal, AOL layers) computed once for the chunk
        with reporting(self.progress.tick), parametrize.cached():
            pgd_scores = self.curve_scores(module, x, y, clean)
            robust_below = None
            for epsilon in sorted(self.pgd_epsilons):
                certified_here = None if radius is None else radius > epsilon
                robust, broken = self.robust_samples(module, epsilon, x, y, clean, pgd_scores[epsilon],
                                                     None if module.task == "regression" else robust_below,
                                                     certified_here)
                self.updates.append((self.robust_metrics[epsilon], robust))
                self.updates += [(self.broken_metrics[(epsilon, stage)], count.float().to(x.device))
                                 for stage, count in broken.items()]
                robust_below = robust.bool()
        for metric, value in self.updates:
            metric.update(value)
        self.progress.end_batch()

    def curve_scores(self, module: LipRegModule, x: Tensor, y: Tensor, clean: Tensor) -> dict[float, list[Tensor]]:
        """Score every curve point on the batch; returns the PGD columns' per-sample scores per ε.

        Classification: each PGD curve runs its radii from small to large, attacking only the
        images still correct at the radius below (the others count as broken)."""
        pgd_scores: dict[float, list[Tensor]] = {epsilon: [] for epsilon in self.pgd_epsilons}
        classification = module.task == "classification"
        for curve, parameters in self.curves().items():
            ordered = curve in PGD_CURVES and classification
            correct = clean.bool()
            for parameter in sorted(parameters) if ordered else parameters:
                self.progress.stage(f"{curve} ε={parameter:g}" if curve in PGD_CURVES else f"{curve} {parameter:g}")
                if ordered:
                    scores = torch.zeros_like(clean)
                    index = correct.nonzero().squeeze(1)
                    if len(index):
                        perturbed = self.perturb(module, curve, parameter, x[index], y[index], self.generator)
                        with torch.no_grad():
                            scores[index] = per_sample_scores(module, module.net(perturbed), y[index])
                    correct = scores.bool()
                else:
                    perturbed = self.perturb(module, curve, parameter, x, y, self.generator)
                    with torch.no_grad():
                        scores = per_sample_scores(module, module.net(perturbed), y)
                self.updates.append((self.metrics[(curve, parameter)], scores))
                if curve in PGD_CURVES:
                    pgd_scores[parameter].append(scores)
        return pgd_scores

    def _train_score(self, trainer: L.Trainer, module: LipRegModule) -> float | None:
        splits = getattr(trainer.datamodule, "splits", None)
        if not self.train_accuracy or splits is None:
            return None
        x, y = splits.train
        metric = epoch_mean().to(module.device)
        with torch.no_grad():
            for start in range(trainer.global_rank * 1000, len(x), 1000 * trainer.world_size):
                xb, yb = x[start : start + 1000].to(module.device), y[start : start + 1000].to(module.device)
                metric.update(per_sample_scores(module, module.net(xb), yb))
        return float(metric.compute())

    def _lower_bound(self, trainer: L.Trainer, module: LipRegModule) -> float:
        splits = getattr(trainer.datamodule, "splits", None)
        x = splits.test[0][: self.lipschitz_pairs].to(module.device)
        box = module.input_box
        scale = 0.05 * (box[1] - box[0]) if box is not None else 0.05
        generator = torch.Generator(device=module.device).manual_seed(self.seed)
        pairs = noisy_pairs(x, scale, box=box, generator=generator)
        return float(lipschitz_lower_bound(module.net, pairs, steps=self.lipschitz_steps, step_size=1.0, box=box,
                                           should_stop=self.clock.spent))

    def build_result(self, trainer: L.Trainer, module: LipRegModule, finished: bool = True) -> dict[str, Any]:
        """The result of the batches done; ``finished=False`` (an interrupted test) leaves out the
        Lipschitz lower bound and the training accuracy, which need passes of their own."""
        metric_name = "accuracy" if module.task == "classification" else "mse"
        clean = module.metrics["test_score"]
        result: dict[str, Any] = {
            "method": type(module).__name__,
            "task": module.task,
            "metric": metric_name,
            "checkpoint": trainer.ckpt_path,
            "samples": int(self.test_samples.compute()),
            "attack_samples": int(self.attacked_samples.compute()),
            "clean": float(clean.compute()),
            "clean_subset": float(self.clean_subset.compute()),
            "train": self._train_score(trainer, module) if finished else None,
            "curves": {"robust": [[e, float(m.compute())] for e, m in self.robust_metrics.items()]}
            if self.robust_metrics else {},
            "ensemble": {
                "norm": self.pgd_norm,
                "attacks": self.describe_ensemble(module.task),
                "broken_by": {f"{e:g}": {stage: int(m.compute()) for (eps, stage), m in self.broken_metrics.items()
                                         if eps == e} for e in self.pgd_epsilons} if self.broken_metrics else {},
            },
            "lipschitz": {"lower": self._lower_bound(trainer, module) if finished else None, "upper": self.upper},
            "certified": [[r, float(m.compute())] for r, m in self.certified_metrics.items()],
            "mean_certified_radius": float(self.radius_metric.compute()) if self.certified_metrics else None,
            "coefficient": {module.coefficient_name: float(module.lam)} if module.is_regularised else {},
            "settings": {"pgd_steps": self.pgd_steps, "pgd_step_size": self.pgd_step_size, "pgd_norm": self.pgd_norm,
                         "fgsm_norm": self.fgsm_norm, "pgd_restarts": self.pgd_restarts,
                         "apgd_steps": self.attack_budget.apgd_steps, "apgd_targets": self.attack_budget.apgd_targets,
                         "square_queries": self.attack_budget.square_queries},
        }
        for (curve, parameter), metric in self.metrics.items():
            result["curves"].setdefault(curve, []).append([parameter, float(metric.compute())])
        if module.task == "classification":
            result["intervals"] = accuracy_intervals(result)
        if self.clock.reached:
            result["time_budget_minutes"] = self.time_budget
        if not finished:
            result["incomplete"] = True
        return result

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        module: LipRegModule = pl_module
        short = "acc" if module.task == "classification" else "mse"
        result = self.build_result(trainer, module)
        logged = {f"test/{curve}_{short}@{parameter:g}": value
                  for curve, points in result["curves"].items() for parameter, value in points}
        logged["test/lip_lower"] = result["lipschitz"]["lower"]
        if self.upper is not None:
            logged["test/lip_upper"] = self.upper
        for radius, value in result["certified"]:
            logged[f"test/certified_acc@{radius:g}"] = value
        if result["mean_certified_radius"] is not None:
            logged["test/mean_certified_radius"] = result["mean_certified_radius"]
        if result["train"] is not None:
            logged[f"test/train_{short}"] = result["train"]
        module.log_dict(logged, sync_dist=True)
        self.result = result
        directory = Path(self.output_dir or trainer.log_dir or "robustness")  # log_dir: a collective under DDP
        if trainer.is_global_zero:
            self._publish(trainer, result, directory)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        """An interrupted ``lipreg test`` leaves its folder marked ``INCOMPLETE`` and keeps what was
        finished: in one process, the batches done go to ``robustness.partial.json`` (and the table)."""
        if not trainer.testing or not trainer.is_global_zero:
            return
        log_dir = trainer.loggers[0].log_dir if trainer.loggers else None  # no collective: the others may be gone
        directory = Path(self.output_dir or log_dir or "robustness")
        if not directory.is_dir() or (directory / "robustness.json").is_file():
            return
        reason = "interrupted" if isinstance(exception, KeyboardInterrupt) else f"stopped by {type(exception).__name__}"
        (directory / INCOMPLETE_MARKER).write_text(f"lipreg test was {reason} before its results were written\n")
        kept = None
        attacked = getattr(self, "attacked_samples", None)
        if trainer.world_size == 1 and attacked is not None and attacked.update_count > 0:
            partial = self.build_result(trainer, pl_module, finished=False)
            kept = directory / PARTIAL_RESULT_FILE
            kept.write_text(json.dumps(partial, indent=2))
            print(f"\nRobustness of the {partial['attack_samples']} images finished before the test was {reason}")
            print(format_table([partial]))
        try:  # as the user would type it
            directory = directory.resolve().relative_to(Path.cwd().resolve())
        except ValueError:
            pass
        what = "holds no results" if kept is None else f"holds the finished images' results in {PARTIAL_RESULT_FILE}"
        print(f"lipreg test {reason}: {directory} {what} and is marked {INCOMPLETE_MARKER}", flush=True)

    def _publish(self, trainer: L.Trainer, result: dict[str, Any], directory: Path) -> None:
        for stale in (INCOMPLETE_MARKER, PARTIAL_RESULT_FILE):  # a finished run over an interrupted one
            (directory / stale).unlink(missing_ok=True)
        paths = write_results(result, directory)
        print(f"\nRobustness of {result['method']} ({result['checkpoint'] or 'current weights'})")
        print(format_table([result]))
        summary = ensemble_summary(result)
        if summary:
            print(summary)
        if result.get("time_budget_minutes"):
            print(f"the {result['time_budget_minutes']:g}-minute time budget stopped the attacks after "
                  f"{result['attack_samples']:,} of {result['samples']:,} test images (intervals above); "
                  "--evaluation.time_budget null attacks all of them")
        print("wrote " + ", ".join(str(p) for p in paths))
        figure = robustness_figure([result])
        for logger in trainer.loggers:
            experiment = getattr(logger, "experiment", None)
            if hasattr(experiment, "add_figure"):
                experiment.add_figure("test/robustness", figure, global_step=trainer.global_step)
        close_figure(figure)
