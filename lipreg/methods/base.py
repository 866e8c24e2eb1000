"""The LightningModule every lipreg method extends: steps, metrics, logging, optimisers."""

import importlib
import sys
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from torchmetrics import MeanMetric

from lipreg.devices import check_precision, weights_device
from lipreg.errors import LipregError
from lipreg.task import TASKS, Task, TaskSpec

# The CLI stores the network's config in the hyperparameters and rebuilds it on load, so the
# module instance Lightning warns about is never pickled.
warnings.filterwarnings("ignore", message="Attribute 'net' is an instance of `nn.Module`")


def epoch_mean() -> MeanMetric:
    """An epoch mean whose update never syncs with the host (no NaN check: a NaN shows in the log)."""
    return MeanMetric(nan_strategy="disable")


class Penalty(NamedTuple):
    """What a method's :meth:`LipRegModule.penalty` returns.

    ``value`` is the differentiable regulariser that is multiplied by λ; ``lip`` is the current
    largest difference quotient (detached, not squared) for logging, or ``None``.
    """

    value: Tensor
    lip: Tensor | None = None


class LipRegModule(L.LightningModule):
    """Training objective ``mean loss(f(x), y) + λ · penalty`` (CLIP paper, eq. (2)).

    Subclasses implement :meth:`penalty` (and rarely :meth:`data_term`); this class owns the
    steps, the metrics and the optimiser. ``task`` chooses cross-entropy with accuracy
    (``classification``, the network outputs logits) or mean squared error (``regression``).
    λ lives in the buffer ``lam`` so checkpoints restore it; callbacks change it between steps.
    ``regularise`` is switched off by the warm-up callback, which skips the penalty entirely.

    Logged once per epoch: ``train/loss``, ``train/acc`` (or ``train/mse``), ``val/…``,
    ``test/…`` and, for regularised methods, ``train/lambda`` (or ``train/mu``),
    ``train/penalty`` and ``train/lip``.

    Args:
        net: the network, any ``torch.nn.Module`` (``lipreg.nets.MLP``, ``lipreg.nets.MadryCNN``, …).
        task: ``classification`` (cross-entropy, accuracy) or ``regression`` (squared error, MSE).
        lam: the regularisation coefficient λ at the start (callbacks may move it).
        optimizer: the optimiser class and its options, e.g. ``torch.optim.SGD`` with ``lr``.
        lr_scheduler: an optional learning-rate schedule over that optimiser.
        seed: seeds the method's own random draws (pair noise, attack starts) per step.
        input_noise: the std σ of Gaussian noise added to every training input (Cohen et al., 2019: the
            training for a randomized-smoothing certificate, ``--evaluation.certificate smoothing``); 0: none.
    """

    #: The name λ is logged under (weight decay calls it μ).
    coefficient_name = "lambda"

    def __init__(
        self,
        net: nn.Module,
        task: Task = "classification",
        lam: float = 0.0,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: LRSchedulerCallable | None = None,
        seed: int = 0,
        input_noise: float = 0.0,
    ) -> None:
        super().__init__()
        if task not in TASKS:
            raise LipregError(f"task must be one of {tuple(TASKS)}, got {task!r}")
        if input_noise < 0:
            raise LipregError(f"input_noise must be >= 0 (the std of the training inputs' Gaussian noise), got "
                              f"{input_noise}")
        if lam < 0:
            raise LipregError(f"lam, the regularisation coefficient, must be >= 0, got {lam}; "
                              "set --model.init_args.lam to 0 or more")
        self.save_hyperparameters()
        for key in [k for k, v in self.hparams.items() if isinstance(v, nn.Module) or callable(v)]:
            # built in Python rather than from a config: keep live objects out of the checkpoint
            # (pass them again to load_from_checkpoint); the CLI stores their configs instead
            self.hparams.pop(key)
        self.net = net
        self.task = task
        #: the task's losses, score and names (:mod:`lipreg.task`)
        self.task_spec: TaskSpec = TASKS[task]
        self.seed = seed
        self.input_noise = input_noise
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.register_buffer("lam", torch.tensor(float(lam)))
        self.regularise = True
        #: the valid input range (clamps attacks and pairs), taken from the data module in ``setup``
        self.input_box: tuple[float, float] | None = None
        self.score_name = self.task_spec.short
        self.metrics = nn.ModuleDict(
            {f"{stage}_{name}": (self.task_spec.score_metric() if name == "score" else epoch_mean())
             for stage in ("train", "val", "test") for name in ("loss", "score")}
        )
        if self.is_regularised:
            self.metrics["train_penalty"] = epoch_mean()
            self.metrics["train_lip"] = epoch_mean()

    def __setattr__(self, name: str, value: Any) -> None:
        # Lightning sets ``_current_fx_name`` (a string) around every hook call, many times a
        # training step; nn.Module.__setattr__ would check it against the parameters, buffers
        # and submodules each time, for an attribute that is never one of them.
        if name == "_current_fx_name":
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    # ----------------------------------------------------------------- hooks for subclasses
    def penalty(self, x: Tensor, y: Tensor) -> Penalty:
        """The regulariser on the batch ``(x, y)``; the plain method has none."""
        return Penalty(torch.zeros((), device=x.device))

    def data_term(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """The network's outputs on the clean batch and the data loss to minimise."""
        output = self.net(x)
        return output, self.loss(output, y)

    @property
    def world_size(self) -> int:
        """The number of processes this module trains in (1 without a trainer)."""
        return self.trainer.world_size if self._trainer is not None else 1

    @property
    def distributed(self) -> bool:
        """Whether this module trains in several processes (DDP)."""
        return self.world_size > 1

    @property
    def is_regularised(self) -> bool:
        """Whether this method has a penalty (it overrides :meth:`penalty`)."""
        return type(self).penalty is not LipRegModule.penalty

    # ----------------------------------------------------------------- shared pieces
    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        """The task's batch-mean loss: cross-entropy (classification) or squared error (regression)."""
        return self.task_spec.loss(output, target)

    def step_generator(self, device: torch.device, stream: int = 0) -> torch.Generator:
        """A random generator seeded by ``(seed, global step, rank, stream)``: a resumed run draws the same
        noise; distinct ``stream``s of one step draw independent noise."""
        rank = self.global_rank if self._trainer is not None else 0
        return torch.Generator(device=device).manual_seed(
            self.seed + 1_000_003 * (self.global_step * self.world_size + rank) + 7_919 * stream)

    def _update_score(self, stage: str, output: Tensor, target: Tensor) -> None:
        if self.task_spec.classification:
            self.metrics[f"{stage}_score"].update(self.task_spec.score(output, target))
        else:
            self.metrics[f"{stage}_score"].update(output, target)

    def _evaluate(self, stage: str, batch: tuple[Tensor, Tensor]) -> Tensor:
        x, y = batch
        output = self.net(x)
        loss = self.loss(output, y)
        self.metrics[f"{stage}_loss"].update(loss)
        self._update_score(stage, output, y)
        return loss

    def _log_and_reset(self, stage: str) -> None:
        names = [key for key in self.metrics if key.startswith(f"{stage}_")]
        updated = [self.metrics[key].update_count > 0 for key in names]
        if self.distributed and names:
            # every process computes (a collective) what any process updated: one without samples
            # must not skip the reductions the others wait in
            flags = torch.tensor(updated, dtype=torch.int32, device=weights_device(self.net))  # once an epoch
            updated = self.all_gather(flags).amax(dim=0).bool().tolist()
        values = {}
        for key, any_updates in zip(names, updated, strict=True):
            metric = self.metrics[key]
            if any_updates:
                label = self.score_name if key.endswith("_score") else key.split("_", 1)[1]
                values[f"{stage}/{label}"] = metric.compute()
            metric.reset()
        if values:
            # already reduced over processes by torchmetrics; sync_dist only averages equal numbers
            self.log_dict(values, sync_dist=True)

    # ----------------------------------------------------------------- Lightning steps
    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        if self.input_noise > 0:  # Gaussian data augmentation (Cohen et al., 2019), the training of smoothing
            generator = self.step_generator(x.device, stream=1)
            noise = torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=generator)
            x = x + self.input_noise * noise
        output, data_loss = self.data_term(x, y)
        objective = data_loss
        if self.is_regularised and self.regularise:
            penalty = self.penalty(x, y)
            objective = data_loss + self.lam * penalty.value
            self.metrics["train_penalty"].update(penalty.value.detach())
            if penalty.lip is not None:
                self.metrics["train_lip"].update(penalty.lip)
        self.metrics["train_loss"].update(data_loss.detach())
        self._update_score("train", output.detach(), y)
        return objective

    def on_train_epoch_end(self) -> None:
        self._log_and_reset("train")
        if self.is_regularised:
            self.log(f"train/{self.coefficient_name}", self.lam, sync_dist=True)
            if hasattr(self, "epsilon"):
                self.log("train/epsilon", self.epsilon, sync_dist=True)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._evaluate("val", batch)

    def on_validation_epoch_end(self) -> None:
        self._log_and_reset("val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._evaluate("test", batch)

    def on_test_epoch_end(self) -> None:
        self._log_and_reset("test")

    def predict_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> dict[str, Tensor]:
        """The network's outputs and, when the batch carries them, the true targets."""
        step = {"outputs": self.net(batch[0])}
        if len(batch) > 1:
            step["targets"] = batch[1]
        return step

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(self.net.parameters())
        if self.lr_scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": self.lr_scheduler_factory(optimizer)}

    # ----------------------------------------------------------------- checks and state
    @classmethod
    def load_from_checkpoint(  # type: ignore[override]
        cls, checkpoint_path: str | Path, map_location: Any = None, **kwargs: Any
    ) -> "LipRegModule":
        """Load a checkpoint; called on ``LipRegModule`` itself it returns the method that was trained.

        ``LipRegModule.load_from_checkpoint(path)`` reads the method's class from the checkpoint
        (``CLIP``, ``Standard``, …) and rebuilds its network from the saved config.
        """
        target = cls
        if cls is LipRegModule:
            checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
            class_path = checkpoint.get("hyper_parameters", {}).get("_class_path") or checkpoint.get(
                "lipreg", {}
            ).get("class_path")
            if class_path:
                module_name, _, class_name = class_path.rpartition(".")
                # only lipreg's own modules or ones the user already imported, never an arbitrary import
                module = sys.modules.get(module_name)
                if module is None and module_name.split(".")[0] == "lipreg":
                    module = importlib.import_module(module_name)
                target = getattr(module, class_name, None)
                if not (isinstance(target, type) and issubclass(target, LipRegModule)):
                    raise LipregError(f"checkpoint {checkpoint_path} names {class_path}, not a lipreg method")
        return super(LipRegModule, target).load_from_checkpoint(checkpoint_path, map_location, **kwargs)

    def setup(self, stage: str) -> None:
        check_precision(str(self.trainer.precision))
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None or not hasattr(datamodule, "num_outputs"):
            return
        name = type(datamodule).__name__
        self.input_box = getattr(datamodule, "input_box", None)
        if datamodule.task != self.task:
            raise LipregError(
                f"model task is {self.task!r} but {name} is a {datamodule.task} dataset; "
                f"set --model.init_args.task {datamodule.task}"
            )
        # the device of the weights themselves: during ``setup`` Lightning fakes ``self.device`` as the
        # accelerator's while the weights are still on the CPU (``lightning.pytorch.trainer.call._call_setup_hook``)
        probe = torch.zeros(2, *datamodule.input_shape, device=weights_device(self.net))
        try:
            with torch.no_grad():
                outputs = self.net(probe)
        except RuntimeError as error:
            raise LipregError(
                f"network {type(self.net).__name__} cannot take {name}'s inputs of shape "
                f"{tuple(datamodule.input_shape)}: {str(error).splitlines()[0]}"
            ) from None
        if outputs.shape[-1] != datamodule.num_outputs:
            raise LipregError(
                f"network {type(self.net).__name__} outputs {outputs.shape[-1]} values per sample but {name} "
                f"needs {datamodule.num_outputs}; make the network's last layer {datamodule.num_outputs} wide"
            )

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["lipreg"] = {
            "regularise": self.regularise,
            "class_path": f"{type(self).__module__}.{type(self).__qualname__}",
        }
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        if datamodule is not None:  # what it was trained on: evaluating it on other data is refused
            checkpoint["lipreg"]["data_class_path"] = f"{type(datamodule).__module__}.{type(datamodule).__qualname__}"

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.regularise = checkpoint.get("lipreg", {}).get("regularise", True)
