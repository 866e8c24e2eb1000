"""Robustness evaluation at test time: the suite behind ``lipreg test``."""

from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor
from torchmetrics import SumMetric

from lipreg.callbacks.attack_support import SampleBudget, per_sample_scores, require_gradients
from lipreg.errors import LipregError
from lipreg.functional import certified, fgsm, gaussian_noise, lipschitz_lower_bound, lipschitz_upper_bound, pgd
from lipreg.functional.attacks import Norm
from lipreg.functional.ensemble import (
    CLASSIFICATION_ATTACKS,
    EnsembleBudget,
    ensemble_attack,
    robust_under_ensemble,
    worst_case_error,
)
from lipreg.functional.losses import per_sample_cross_entropy, per_sample_squared_error
from lipreg.functional.pairs import noisy_pairs
from lipreg.methods.base import LipRegModule, epoch_mean
from lipreg.report import close_figure, ensemble_summary, format_table, robustness_figure, write_results

#: The file that marks a results folder whose ``lipreg test`` did not finish.
INCOMPLETE_MARKER = "INCOMPLETE"

#: The curves whose per-sample results at ε feed the worst case (they use ``pgd_norm``).
PGD_CURVES = ("pgd", "pgd_sign")


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
    ascent from ``lipschitz_pairs`` test points and noisy copies), the layer-product upper bound,
    and certified accuracy at each radius (margin > √2·L_upper·ε). With ``train_accuracy`` the
    accuracy on the training split is reported too (the paper's "Train" column).

    Results are logged (``test/pgd_acc@2`` …), printed as a table, and written as
    ``robustness.json``, ``.csv`` and ``.png`` (curves against ε) into ``output_dir`` (default: the
    run's log directory); the curves also go to TensorBoard. All metrics are reduced over processes;
    only rank 0 writes files. A test stopped before the end (Ctrl-C, SIGTERM, an error) leaves an
    ``INCOMPLETE`` file in that folder instead, and says so in one line.

    Args:
        ensemble: the attacks behind the robust accuracy besides the PGD columns, in the order they
            run: ``apgd-ce``, ``apgd-dlr``, ``apgd-t``, ``square``, ``pgd-margin`` (classification;
            regression always uses APGD on the squared error). Empty: the PGD columns alone.
        apgd_steps: steps of every APGD run.
        apgd_targets: rival classes APGD-T attacks in turn (the top ones by clean logit).
        square_queries: queries of the Square attack per image.
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
        certified_radii: list[float] = [0.1, 0.25, 0.5],  # noqa: B006
        lipschitz_pairs: int = 1000,
        lipschitz_steps: int = 50,
        train_accuracy: bool = True,
        sample_size: int | None = None,
        seed: int = 0,
        output_dir: str | None = None,
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
        """The perturbed batch for one point of one curve."""
        box = module.input_box
        loss = per_sample_cross_entropy if module.task == "classification" else per_sample_squared_error
        if curve == "noise":
            return gaussian_noise(x, parameter, box if self.noise_clamp else None, generator)
        if curve == "fgsm":
            return fgsm(module.net, x, y, parameter, self.fgsm_norm, loss, box)
        step_kind = "sign" if curve == "pgd_sign" else "steepest"
        return pgd(module.net, x, y, parameter, self.pgd_step_size, self.pgd_steps, self.pgd_norm, step_kind, loss,
                   box, random_start=False, restarts=self.pgd_restarts, generator=generator)

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
                       pgd_scores: list[Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """Per-sample robust correctness (regression: worst-case squared error) at ε, and how many
        samples each stage broke (``clean``: misclassified already, ``pgd``: the PGD columns)."""
        attacks = [(name, ensemble_attack(name, module.net, epsilon, self.pgd_norm, self.attack_budget,
                                          module.input_box, self.generator)) for name in self.members(module.task)]
        if module.task == "regression":
            worst = torch.stack([clean, *pgd_scores]).amax(dim=0)
            return worst_case_error(module.net, x, y, attacks, worst), {}
        survived_pgd = torch.stack([clean, *pgd_scores]).amin(dim=0).bool()
        robust, broken_by = robust_under_ensemble(module.net, x, y, attacks, survived_pgd)
        counts = {"clean": (clean == 0).sum(), "pgd": (clean.bool() & ~survived_pgd).sum()}
        counts.update({name: torch.tensor(count) for name, count in broken_by.items()})
        return robust.float(), counts

    # ------------------------------------------------------------------ hooks
    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not isinstance(pl_module, LipRegModule):
            raise LipregError(f"RobustnessEvaluation works with lipreg methods, not {type(pl_module).__name__}")
        require_gradients(self, "testing")
        device = pl_module.device
        self.image_inputs = len(getattr(trainer.datamodule, "input_shape", (1, 1, 1))) == 3
        self.metrics = {(c, p): epoch_mean().to(device) for c, values in self.curves().items() for p in values}
        self.robust_metrics = {e: epoch_mean().to(device) for e in self.pgd_epsilons}
        stages = ["clean", "pgd", *self.members(pl_module.task)] if pl_module.task == "classification" else []
        self.broken_metrics = {(e, stage): SumMetric(nan_strategy="disable").to(device)
                               for e in self.pgd_epsilons for stage in stages}
        self.clean_subset = epoch_mean().to(device)
        self.test_samples = SumMetric(nan_strategy="disable").to(device)
        self.attacked_samples = SumMetric(nan_strategy="disable").to(device)  # summed over processes
        self.certified_metrics = {r: epoch_mean().to(device) for r in self.certified_radii}
        self.budget = SampleBudget(self.sample_size, trainer)
        self.generator = torch.Generator(device=device).manual_seed(self.seed + trainer.global_rank)
        datamodule = trainer.datamodule
        layers = getattr(pl_module.net, "layers", None)
        self.upper: float | None = None
        if layers is not None and hasattr(datamodule, "input_shape"):
            try:
                self.upper = lipschitz_upper_bound(layers, tuple(datamodule.input_shape))
            except ValueError:
                self.upper = None
        if pl_module.task != "classification" or self.upper is None:
            self.certified_metrics = {}

    def on_test_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                          batch: tuple[Tensor, Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        x, y = batch
        self.test_samples.update(torch.full((), float(len(x)), device=x.device))
        x, y = self.budget.take(x, y)
        if len(x) == 0:
            return
        self.attacked_samples.update(torch.full((), float(len(x)), device=x.device))
        module: LipRegModule = pl_module
        with torch.no_grad():
            logits = module.net(x)
        clean = per_sample_scores(module, logits, y)
        self.clean_subset.update(clean)
        for radius, metric in self.certified_metrics.items():
            metric.update(certified(logits, y, self.upper, radius).float())
        pgd_scores: dict[float, list[Tensor]] = {epsilon: [] for epsilon in self.pgd_epsilons}
        for (curve, parameter), metric in self.metrics.items():
            perturbed = self.perturb(module, curve, parameter, x, y, self.generator)
            with torch.no_grad():
                scores = per_sample_scores(module, module.net(perturbed), y)
            metric.update(scores)
            if curve in PGD_CURVES:
                pgd_scores[parameter].append(scores)
        for epsilon, metric in self.robust_metrics.items():
            robust, broken = self.robust_samples(module, epsilon, x, y, clean, pgd_scores[epsilon])
            metric.update(robust)
            for stage, count in broken.items():
                self.broken_metrics[(epsilon, stage)].update(count.float().to(x.device))

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
        return float(lipschitz_lower_bound(module.net, pairs, steps=self.lipschitz_steps, step_size=1.0, box=box))

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        module: LipRegModule = pl_module
        metric_name = "accuracy" if module.task == "classification" else "mse"
        short = "acc" if metric_name == "accuracy" else "mse"
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
            "train": self._train_score(trainer, module),
            "curves": {"robust": [[e, float(m.compute())] for e, m in self.robust_metrics.items()]}
            if self.robust_metrics else {},
            "ensemble": {
                "norm": self.pgd_norm,
                "attacks": self.describe_ensemble(module.task),
                "broken_by": {f"{e:g}": {stage: int(m.compute()) for (eps, stage), m in self.broken_metrics.items()
                                         if eps == e} for e in self.pgd_epsilons} if self.broken_metrics else {},
            },
            "lipschitz": {"lower": self._lower_bound(trainer, module), "upper": self.upper},
            "certified": [[r, float(m.compute())] for r, m in self.certified_metrics.items()],
            "coefficient": {module.coefficient_name: float(module.lam)} if module.is_regularised else {},
            "settings": {"pgd_steps": self.pgd_steps, "pgd_step_size": self.pgd_step_size, "pgd_norm": self.pgd_norm,
                         "fgsm_norm": self.fgsm_norm, "pgd_restarts": self.pgd_restarts,
                         "apgd_steps": self.attack_budget.apgd_steps, "apgd_targets": self.attack_budget.apgd_targets,
                         "square_queries": self.attack_budget.square_queries},
        }
        logged = {f"test/robust_{short}@{e:g}": value for e, value in result["curves"].get("robust", [])}
        for (curve, parameter), metric in self.metrics.items():
            value = float(metric.compute())
            result["curves"].setdefault(curve, []).append([parameter, value])
            logged[f"test/{curve}_{short}@{parameter:g}"] = value
        logged["test/lip_lower"] = result["lipschitz"]["lower"]
        if self.upper is not None:
            logged["test/lip_upper"] = self.upper
        for radius, value in result["certified"]:
            logged[f"test/certified_acc@{radius:g}"] = value
        if result["train"] is not None:
            logged[f"test/train_{short}"] = result["train"]
        module.log_dict(logged, sync_dist=True)
        self.result = result
        directory = Path(self.output_dir or trainer.log_dir or "robustness")  # log_dir: a collective under DDP
        if trainer.is_global_zero:
            self._publish(trainer, result, directory)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        """An interrupted ``lipreg test`` leaves its folder marked: ``INCOMPLETE`` beside what it did write."""
        if not trainer.testing or not trainer.is_global_zero:
            return
        log_dir = trainer.loggers[0].log_dir if trainer.loggers else None  # no collective: the others may be gone
        directory = Path(self.output_dir or log_dir or "robustness")
        if not directory.is_dir() or (directory / "robustness.json").is_file():
            return
        reason = "interrupted" if isinstance(exception, KeyboardInterrupt) else f"stopped by {type(exception).__name__}"
        (directory / INCOMPLETE_MARKER).write_text(f"lipreg test was {reason} before its results were written\n")
        try:  # as the user would type it
            directory = directory.resolve().relative_to(Path.cwd().resolve())
        except ValueError:
            pass
        print(f"lipreg test {reason}: {directory} holds no results and is marked {INCOMPLETE_MARKER}", flush=True)

    def _publish(self, trainer: L.Trainer, result: dict[str, Any], directory: Path) -> None:
        (directory / INCOMPLETE_MARKER).unlink(missing_ok=True)  # a finished run over an interrupted one
        paths = write_results(result, directory)
        print(f"\nRobustness of {result['method']} ({result['checkpoint'] or 'current weights'})")
        print(format_table([result]))
        summary = ensemble_summary(result)
        if summary:
            print(summary)
        print("wrote " + ", ".join(str(p) for p in paths))
        figure = robustness_figure([result])
        for logger in trainer.loggers:
            experiment = getattr(logger, "experiment", None)
            if hasattr(experiment, "add_figure"):
                experiment.add_figure("test/robustness", figure, global_step=trainer.global_step)
        close_figure(figure)
