"""What a training run tells its user: a line per epoch, a stop at divergence, and always a latest checkpoint."""

import time
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only

from lipreg.errors import LipregError, TrainingDiverged

#: Metrics the per-epoch line shows first, in this order, when the run logs them.
LEADING_METRICS = ("train/loss", "train/acc", "train/mse", "train/lambda", "train/mu", "train/lip", "val/acc",
                   "val/mse", "val/pgd_acc", "val/pgd_mse")


def parameters_finite(module: torch.nn.Module) -> bool:
    """Whether every parameter of ``module`` is finite (one reduction, one host read)."""
    flags = [torch.isfinite(p).all() for p in module.parameters()]
    return bool(torch.stack(flags).all()) if flags else True


def _format(value: float) -> str:
    return f"{value:.4g}"


class EpochTimer(L.Callback):
    """Wall time of every training epoch in ``times`` (seconds), validation excluded.

    Lightning validates inside the training epoch (before ``on_train_epoch_end``), so the clock is
    paused from ``on_validation_start`` to ``on_validation_end``.
    """

    def __init__(self) -> None:
        self.times: list[float] = []
        self._start: float | None = None  # set while the clock runs
        self._paused = False
        self._elapsed = 0.0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._elapsed, self._start, self._paused = 0.0, time.perf_counter(), False

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._start is not None:
            self._elapsed += time.perf_counter() - self._start
            self._start, self._paused = None, True

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._paused:
            self._start, self._paused = time.perf_counter(), False

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._start is not None:
            self._elapsed += time.perf_counter() - self._start
        self._start, self._paused = None, False
        self.times.append(self._elapsed)


class ProgressLine(L.Callback):
    """Prints one line per epoch with the run's metrics, e.g.
    ``epoch 3/50  train/loss 0.3121  train/acc 0.9121  train/lambda 0.15  val/acc 0.9012  val/pgd_acc 0.3412  12.3 s``.

    A line is printed for every epoch that ran validation and otherwise at most every
    ``interval`` seconds (a regression run of 1,500 one-batch epochs prints a few dozen lines),
    always for the last epoch. ``lipreg fit`` adds it unless ``--quiet true``.

    Args:
        interval: seconds between lines for epochs without validation.
    """

    def __init__(self, interval: float = 10.0) -> None:
        self.interval = interval
        self._pending: tuple[int, float, dict[str, float]] | None = None
        self._validated = False
        self._last_print = 0.0
        self._epoch_start = 0.0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._flush(trainer, final=False)
        self._epoch_start = time.perf_counter()
        self._validated = False

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._validated = True

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # the module logs its epoch metrics after this hook: the line is printed when the next epoch starts
        self._pending = (trainer.current_epoch, time.perf_counter() - self._epoch_start, {})

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._flush(trainer, final=True)

    @rank_zero_only
    def _flush(self, trainer: L.Trainer, final: bool) -> None:
        if self._pending is None:
            return
        epoch, seconds, _ = self._pending
        self._pending = None
        now = time.perf_counter()
        if not (final or self._validated or now - self._last_print >= self.interval):
            return
        self._last_print = now
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()
                   if k.startswith(("train/", "val/")) and torch.as_tensor(v).numel() == 1}
        ordered = [k for k in LEADING_METRICS if k in metrics] + sorted(k for k in metrics if k not in LEADING_METRICS)
        total = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        cells = "  ".join(f"{k} {_format(metrics[k])}" for k in ordered)
        print(f"epoch {epoch + 1}{total}  {cells}  {seconds:.1f} s", flush=True)


class DivergenceGuard(L.Callback):
    """Stops training at a non-finite loss or parameter, before any checkpoint of it is written.

    Every step records, on the device, the first step whose training objective is not finite
    (no host synchronisation). The record is read on the host every ``check_every`` steps (default:
    every step on a single CPU process, where reading it costs nothing; every 50 steps on an
    accelerator or under DDP, where the processes also agree by one all-reduce so that they stop
    together), before validation and at the end of each epoch, with one finiteness check of the
    parameters.
    A divergence ends the run with ``lipreg: error: training diverged …`` naming the epoch, the
    step and the quantity. Checkpoint callbacks run after this one, so no checkpoint of the
    diverged weights is written and the last good one stays the newest. ``lipreg fit`` adds it.

    Args:
        check_every: steps between host reads (``None``: 1 on CPU, 50 otherwise).
    """

    def __init__(self, check_every: int | None = None) -> None:
        if check_every is not None and check_every < 1:
            raise LipregError(f"DivergenceGuard check_every must be >= 1, got {check_every}")
        self.check_every = check_every
        self._first_bad: torch.Tensor | None = None
        self._first_value: torch.Tensor | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        device = pl_module.device
        self._first_bad = torch.full((), -1, dtype=torch.long, device=device)
        self._first_value = torch.zeros((), device=device)
        if self.check_every is None:
            self.check_every = 1 if device.type == "cpu" and trainer.world_size == 1 else 50

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is None or self._first_bad is None:
            return
        loss = loss.detach().float().reshape(())
        new = (~torch.isfinite(loss)) & (self._first_bad < 0)
        self._first_bad = torch.where(new, trainer.global_step, self._first_bad)
        self._first_value = torch.where(new, loss, self._first_value)
        if trainer.global_step % self.check_every == 0:
            self._check(trainer, pl_module, parameters=False)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._check(trainer, pl_module, parameters=True)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._check(trainer, pl_module, parameters=True)

    def _check(self, trainer: L.Trainer, pl_module: L.LightningModule, parameters: bool) -> None:
        if self._first_bad is None:
            return
        step = int(self._first_bad)
        if step >= 0:
            quantity = f"the training loss is {float(self._first_value)}"
        elif parameters and not parameters_finite(pl_module):
            step, quantity = trainer.global_step, "a network parameter is not finite"
        else:
            quantity = ""
        if trainer.world_size > 1:  # every process stops together, or none waits for the others forever
            if not trainer.strategy.reduce_boolean_decision(bool(quantity), all=False):
                return
            quantity = quantity or "another process's training loss or parameters are not finite"
        elif not quantity:
            return
        raise TrainingDiverged(
            f"training diverged at epoch {trainer.current_epoch}, step {max(step, 0)}: {quantity}; no checkpoint of "
            "it was written. Lower the learning rate (--model.init_args.optimizer.init_args.lr) or the "
            "regularisation coefficient"
        )


class LatestCheckpoint(ModelCheckpoint):
    """The newest weights as ``latest-{epoch}-{step}.ckpt``, to resume from: saved every
    ``every_n_epochs`` training epochs (whether or not validation ran), at the end of training
    and when the run is interrupted (Ctrl-C), never with non-finite weights. ``lipreg fit`` adds
    one (every epoch, or every validation interval for configs that validate rarely) when the
    config has none.

    Args:
        every_n_epochs: epochs between checkpoints (the last epoch is always saved).
    """

    def __init__(self, every_n_epochs: int = 1, dirpath: str | None = None,
                 filename: str = "latest-{epoch}-{step}") -> None:
        super().__init__(dirpath=dirpath, filename=filename, every_n_epochs=every_n_epochs,
                         save_on_train_epoch_end=True)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if parameters_finite(pl_module):
            super().on_train_epoch_end(trainer, pl_module)

    def _save_now(self, trainer: L.Trainer, pl_module: L.LightningModule) -> bool:
        if self._last_global_step_saved == trainer.global_step or not parameters_finite(pl_module):
            return False
        candidates = self._monitor_candidates(trainer)
        # after the last epoch Lightning's epoch counter is already one past it: name the epoch trained
        started = trainer.fit_loop.epoch_progress.current.started
        candidates["epoch"] = torch.tensor(max(started - 1, 0))
        self._save_none_monitor_checkpoint(trainer, candidates)
        return True

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._save_now(trainer, pl_module)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, KeyboardInterrupt) and self._save_now(trainer, pl_module):
            rank_zero_only(print)(f"interrupted: saved {self.best_model_path}", flush=True)
