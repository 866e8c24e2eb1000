"""Robustness evaluation at test time, and PGD robustness on the validation split during training."""

from pathlib import Path
from typing import Any

import lightning as L
import matplotlib.pyplot as plt
import torch
from torch import Tensor
from torchmetrics import SumMetric

from lipreg.errors import LipregError
from lipreg.functional import certified, fgsm, gaussian_noise, lipschitz_lower_bound, lipschitz_upper_bound, pgd
from lipreg.functional.attacks import Norm, per_sample_cross_entropy, per_sample_squared_error
from lipreg.functional.pairs import noisy_pairs
from lipreg.methods.base import LipRegModule, epoch_mean
from lipreg.report import format_table, robustness_figure, write_results

INFERENCE_MODE_MESSAGE = (
    "{name} attacks the network and needs input gradients, but the trainer runs {stage} under "
    "torch.inference_mode(): set --trainer.inference_mode false (lipreg's CLI default)"
)


def _require_gradients(callback: L.Callback, stage: str) -> None:
    if torch.is_inference_mode_enabled():
        raise LipregError(INFERENCE_MODE_MESSAGE.format(name=type(callback).__name__, stage=stage))


def _scores(module: LipRegModule, outputs: Tensor, y: Tensor) -> Tensor:
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


class RobustnessEvaluation(L.Callback):
    """Everything ``lipreg test`` reports besides clean accuracy (CLIP paper Table 1, FLIP slides Figs. 13–15).

    On the first ``sample_size`` test samples (all when ``None``): accuracy (regression: MSE)
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
    only rank 0 writes files.
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

    # ------------------------------------------------------------------ hooks
    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not isinstance(pl_module, LipRegModule):
            raise LipregError(f"RobustnessEvaluation works with lipreg methods, not {type(pl_module).__name__}")
        _require_gradients(self, "testing")
        device = pl_module.device
        self.metrics = {(c, p): epoch_mean().to(device) for c, values in self.curves().items() for p in values}
        self.clean_subset = epoch_mean().to(device)
        self.test_samples = SumMetric(nan_strategy="disable").to(device)
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
        self.test_samples.update(torch.tensor(float(len(x)), device=x.device))
        x, y = self.budget.take(x, y)
        if len(x) == 0:
            return
        module: LipRegModule = pl_module
        with torch.no_grad():
            logits = module.net(x)
        self.clean_subset.update(_scores(module, logits, y))
        for radius, metric in self.certified_metrics.items():
            metric.update(certified(logits, y, self.upper, radius).float())
        for (curve, parameter), metric in self.metrics.items():
            perturbed = self.perturb(module, curve, parameter, x, y, self.generator)
            with torch.no_grad():
                metric.update(_scores(module, module.net(perturbed), y))

    def _train_score(self, trainer: L.Trainer, module: LipRegModule) -> float | None:
        splits = getattr(trainer.datamodule, "splits", None)
        if not self.train_accuracy or splits is None:
            return None
        x, y = splits.train
        metric = epoch_mean().to(module.device)
        with torch.no_grad():
            for start in range(trainer.global_rank * 1000, len(x), 1000 * trainer.world_size):
                xb, yb = x[start : start + 1000].to(module.device), y[start : start + 1000].to(module.device)
                metric.update(_scores(module, module.net(xb), yb))
        return float(metric.compute())

    def _lower_bound(self, trainer: L.Trainer, module: LipRegModule) -> float:
        splits = getattr(trainer.datamodule, "splits", None)
        x = splits.test[0][: self.lipschitz_pairs].to(module.device)
        box = module.input_box
        scale = 0.05 * (box[1] - box[0]) if box is not None else 0.05
        generator = torch.Generator(device=module.device).manual_seed(self.seed)
        u, v = noisy_pairs(x, scale, box=box, generator=generator)
        return float(lipschitz_lower_bound(module.net, u, v, steps=self.lipschitz_steps, step_size=1.0, box=box))

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
            "attack_samples": int(self.clean_subset.weight.sum().item()),
            "clean": float(clean.compute()),
            "clean_subset": float(self.clean_subset.compute()),
            "train": self._train_score(trainer, module),
            "curves": {},
            "lipschitz": {"lower": self._lower_bound(trainer, module), "upper": self.upper},
            "certified": [[r, float(m.compute())] for r, m in self.certified_metrics.items()],
            "coefficient": {module.coefficient_name: float(module.lam)} if module.is_regularised else {},
            "settings": {"pgd_steps": self.pgd_steps, "pgd_step_size": self.pgd_step_size, "pgd_norm": self.pgd_norm,
                         "fgsm_norm": self.fgsm_norm, "pgd_restarts": self.pgd_restarts},
        }
        logged = {}
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

    def _publish(self, trainer: L.Trainer, result: dict[str, Any], directory: Path) -> None:
        paths = write_results(result, directory)
        print(f"\nRobustness of {result['method']} ({result['checkpoint'] or 'current weights'})")
        print(format_table([result]))
        print("wrote " + ", ".join(str(p) for p in paths))
        figure = robustness_figure([result])
        for logger in trainer.loggers:
            experiment = getattr(logger, "experiment", None)
            if hasattr(experiment, "add_figure"):
                experiment.add_figure("test/robustness", figure, global_step=trainer.global_step)
        plt.close(figure)


class PGDValidation(L.Callback):
    """PGD accuracy on the validation split, logged as ``val/pgd_acc`` (regression: ``val/pgd_mse``).

    Runs at every validation (choose how often with ``trainer.check_val_every_n_epoch``), on the
    first ``sample_size`` validation samples. A ``ModelCheckpoint`` monitoring ``val/pgd_acc`` (mode
    ``max``) then keeps the most robust checkpoint, as the CLIP paper does. Needs
    ``trainer.inference_mode: false``.
    """

    def __init__(
        self,
        epsilon: float = 2.0,
        step_size: float = 0.25,
        steps: int = 7,
        norm: Norm = "l2",
        sign_steps: bool = False,
        sample_size: int | None = None,
    ) -> None:
        if epsilon < 0 or step_size <= 0 or steps < 1:
            raise LipregError(f"need epsilon >= 0, step_size > 0, steps >= 1; got {epsilon}, {step_size}, {steps}")
        if sample_size is not None and sample_size < 1:
            raise LipregError(f"sample_size must be >= 1, got {sample_size}")
        self.epsilon = epsilon
        self.step_size = step_size
        self.steps = steps
        self.norm = norm
        self.sign_steps = sign_steps
        self.sample_size = sample_size

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        _require_gradients(self, "validation")
        self.metric = epoch_mean().to(pl_module.device)
        self.budget = SampleBudget(self.sample_size, trainer)

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                                batch: tuple[Tensor, Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        x, y = self.budget.take(*batch)
        if len(x) == 0:
            return
        module: LipRegModule = pl_module
        loss = per_sample_cross_entropy if module.task == "classification" else per_sample_squared_error
        adversarial = pgd(module.net, x, y, self.epsilon, self.step_size, self.steps, self.norm,
                          "sign" if self.sign_steps else "steepest", loss, module.input_box)
        with torch.no_grad():
            self.metric.update(_scores(module, module.net(adversarial), y))

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.metric.update_count == 0:
            return
        name = "val/pgd_acc" if pl_module.task == "classification" else "val/pgd_mse"
        pl_module.log(name, self.metric.compute(), sync_dist=True)
