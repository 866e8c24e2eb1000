"""What a run tells its user: a line per epoch, progress while testing, a stop at divergence, and always a
latest checkpoint."""

import math
import time
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only

from lipreg.callbacks.robustness import RobustnessEvaluation
from lipreg.devices import synchronize
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
    paused from ``on_validation_start`` to ``on_validation_end``. On a GPU every reading first
    waits for the queued kernels (``torch.cuda.synchronize``), so the time is that of the work,
    not of its launches.
    """

    def __init__(self) -> None:
        self.times: list[float] = []
        self._start: float | None = None  # set while the clock runs
        self._paused = False
        self._elapsed = 0.0

    @staticmethod
    def _now(pl_module: L.LightningModule) -> float:
        synchronize(pl_module.device)
        return time.perf_counter()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._elapsed, self._start, self._paused = 0.0, self._now(pl_module), False

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._start is not None:
            self._elapsed += self._now(pl_module) - self._start
            self._start, self._paused = None, True

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._paused:
            self._start, self._paused = self._now(pl_module), False

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._start is not None:
            self._elapsed += self._now(pl_module) - self._start
        self._start, self._paused = None, False
        self.times.append(self._elapsed)


class ProgressLine(L.Callback):
    """Prints what a run will cost, then one line per epoch with the run's metrics and the time left, e.g.
    ``epoch 3/50  train/loss 0.3121  train/acc 0.9121  val/acc 0.9012  val/pgd_acc 0.3412  12.3 s, about 9.6 min left``.

    Once ``projection_after`` seconds or 50 steps of training have passed after the first step
    (whichever comes first; the first step is left out because it can do one-off work, such as
    CLIP's first ascent of every pair; a step slower than that is measured by itself), it prints
    the measured seconds per training
    step and the projected training time of the whole run, e.g. ``measured: 40.1 s a training step;
    11,250 steps to go: about 5.2 days of training (validation not counted)``, followed by the
    method's own advice where it has one (:meth:`~lipreg.methods.CLIP.cost_hint`); a run whose rest
    takes less than ``projection_after`` seconds gets no forecast. The first line of output is then
    never hours away.

    An epoch line is printed for every epoch that ran validation and otherwise at most every
    ``interval`` seconds (a regression run of 1,500 one-batch epochs prints a few dozen lines),
    always for the last epoch; its time left is the run's mean epoch so far times the epochs to go.
    ``lipreg fit`` adds it unless ``--quiet true``.

    Args:
        interval: seconds between lines for epochs without validation.
        projection_after: seconds of training after which the cost line is printed.
    """

    def __init__(self, interval: float = 10.0, projection_after: float = 10.0) -> None:
        self.interval = interval
        self.projection_after = projection_after
        self._pending: tuple[int, float, float | None] | None = None
        self._validated = False
        self._last_print = 0.0
        self._epoch_start = 0.0
        self._run_start = 0.0
        self._first_epoch = 0
        self._projected = False
        self._measured_from: tuple[float, int] | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._run_start = time.perf_counter()
        self._first_epoch, self._projected = trainer.current_epoch, False
        self._measured_from = None

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._flush(trainer, final=False)
        self._epoch_start = time.perf_counter()
        self._validated = False

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self._projected:
            return
        if self._measured_from is None:  # the first step does one-off work (CLIP ascends every pair): not counted
            self._measured_from = (time.perf_counter(), trainer.global_step)
            return
        started, first = self._measured_from
        elapsed, steps = time.perf_counter() - started, trainer.global_step - first
        if steps >= 1 and (elapsed >= self.projection_after or steps >= 50):
            self._projected = True
            self._project(trainer, pl_module, elapsed / steps)

    @rank_zero_only
    def _project(self, trainer: L.Trainer, pl_module: L.LightningModule, per_step: float) -> None:
        total = trainer.estimated_stepping_batches
        hint = getattr(pl_module, "cost_hint", None)
        advice = hint() if callable(hint) else None
        line = f"measured: {per_step:.3g} s a training step"
        if math.isfinite(total):
            to_go = max(int(total) - trainer.global_step, 0)
            if per_step * to_go < self.projection_after and not advice:
                return  # a run that ends in seconds needs no forecast
            line += f"; {to_go:,} steps to go: about {_duration(per_step * to_go)} of training (validation not counted)"
        print(line, flush=True)
        if advice:
            print(advice, flush=True)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._validated = True

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # the module logs its epoch metrics after this hook: the line is printed when the next epoch starts
        now = time.perf_counter()
        done = trainer.current_epoch + 1 - self._first_epoch
        planned = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else 0
        remaining = planned - trainer.current_epoch - 1 if planned else 0
        left = (now - self._run_start) / done * remaining if remaining > 0 and done > 0 else None
        self._pending = (trainer.current_epoch, now - self._epoch_start, left)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._flush(trainer, final=True)

    @rank_zero_only
    def _flush(self, trainer: L.Trainer, final: bool) -> None:
        if self._pending is None:
            return
        epoch, seconds, left = self._pending
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
        remaining = f", about {_duration(left)} left" if left is not None else ""
        print(f"epoch {epoch + 1}{total}  {cells}  {seconds:.1f} s{remaining}", flush=True)


def _duration(seconds: float) -> str:
    """``45 s``, ``4.1 min``, ``3.2 h`` or ``5.2 days``."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.1f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


class TestProgress(L.Callback):
    """Prints how far testing has come, at most every ``interval`` seconds, e.g.
    ``testing: batch 12/79  48 s, about 4.1 min left``.

    ``lipreg test`` attacks every test image (several minutes on MNIST with a CPU) and is otherwise
    silent until its table. When ``RobustnessEvaluation`` attacks only the first ``sample_size``
    images, the estimate counts the batches that hold them (the rest are only classified).
    ``lipreg test`` adds it unless ``--quiet true``.

    Args:
        interval: seconds between lines.
    """

    __test__ = False  # not a pytest test class, whatever its name

    def __init__(self, interval: float = 10.0) -> None:
        self.interval = interval
        self._start = 0.0
        self._last_print = 0.0

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = self._last_print = time.perf_counter()

    def on_test_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        now = time.perf_counter()
        if now - self._last_print < self.interval:
            return
        self._last_print = now
        done, total = batch_idx + 1, trainer.num_test_batches[dataloader_idx]
        attacked = self._attacked_batches(trainer, len(batch[0]), total)
        elapsed = now - self._start
        left = elapsed / done * max(attacked - done, 0)
        rank_zero_only(print)(f"testing: batch {done}/{total}  {_duration(elapsed)}, about {_duration(left)} left",
                              flush=True)

    @staticmethod
    def _attacked_batches(trainer: L.Trainer, batch_size: int, total: int) -> int:
        """How many of this process's test batches hold images that are attacked."""
        sizes = [c.sample_size for c in trainer.callbacks if isinstance(c, RobustnessEvaluation)]
        if not sizes or sizes[0] is None:
            return total
        per_process = -(-sizes[0] // trainer.world_size)
        return min(total, -(-per_process // batch_size))


class DivergenceGuard(L.Callback):
    """Stops training at a non-finite or exploded loss, or a non-finite parameter, before any checkpoint of it
    is written. The loss has exploded when it exceeds ``explosion_factor`` × max(the run's first
    training loss, 1) (default 10⁴: a cross-entropy that starts at 2.3 is stopped above 23,000).

    In a single CPU process the training objective is read every step (a CPU tensor: reading it
    waits for nothing, and one read is cheaper than any bookkeeping). On an accelerator, under DDP,
    or with ``check_every`` above 1, every step instead records on the device the first step whose
    objective is not finite (no host synchronisation), and the record is read on the host every
    ``check_every`` steps (default 50), where DDP's processes also agree by one all-reduce so that
    they stop together. The parameters are checked for finiteness once before validation and at
    the end of each epoch.
    A divergence ends the run with ``lipreg: error: training diverged …`` naming the epoch, the
    step and the quantity. Checkpoint callbacks run after this one, so no checkpoint of the
    diverged weights is written and the last good one stays the newest. ``lipreg fit`` adds it.

    Args:
        check_every: steps between host reads (``None``: every step in a single CPU process, 50 otherwise).
        explosion_factor: how many times the first loss (at least 1) counts as exploded (``None``: never).
    """

    def __init__(self, check_every: int | None = None, explosion_factor: float | None = 1e4) -> None:
        if check_every is not None and check_every < 1:
            raise LipregError(f"DivergenceGuard check_every must be >= 1, got {check_every}")
        if explosion_factor is not None and explosion_factor <= 1:
            raise LipregError(f"DivergenceGuard explosion_factor must be > 1, got {explosion_factor}")
        self.check_every = check_every
        self.explosion_factor = explosion_factor
        self._first_bad: torch.Tensor | None = None
        self._first_value: torch.Tensor | None = None
        self._limit: torch.Tensor | None = None  # the exploded-loss threshold, set from the first step's loss
        self._read_every_step = False

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        device = pl_module.device
        self._first_bad = torch.full((), -1, dtype=torch.long, device=device)
        self._first_value = torch.zeros((), device=device)
        self._limit = torch.full((), float("nan"), device=device)
        single_cpu = device.type == "cpu" and trainer.world_size == 1
        self._read_every_step = single_cpu and self.check_every in (None, 1)
        if self.check_every is None:
            self.check_every = 1 if single_cpu else 50

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is None or self._first_bad is None:
            return
        if self._read_every_step:
            value = loss.item()
            if self.explosion_factor is not None and math.isnan(float(self._limit)) and math.isfinite(value):
                self._limit.fill_(self.explosion_factor * max(abs(value), 1.0))
            if not math.isfinite(value) or abs(value) > float(self._limit):
                self._first_bad.fill_(trainer.global_step)
                self._first_value.fill_(value)
                self._check(trainer, pl_module, parameters=False)
            return
        loss = loss.detach().float().reshape(())
        if self.explosion_factor is not None:
            first = self.explosion_factor * loss.abs().clamp_min(1.0)
            self._limit = torch.where(torch.isnan(self._limit) & torch.isfinite(loss), first, self._limit)
        new = (~torch.isfinite(loss) | (loss.abs() > self._limit)) & (self._first_bad < 0)
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
            value = float(self._first_value)
            quantity = f"the training loss is {value:.4g}"
            if math.isfinite(value):
                quantity += (f", over {self.explosion_factor:g}× its first value (the loss exploded; "
                             f"explosion_factor sets the bound)")
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
    and when a single-process run is interrupted (Ctrl-C), never with non-finite weights. Under
    DDP an interrupt saves nothing (the processes are not in step); the last epoch's file stays. ``lipreg fit`` adds
    one (every epoch, or every validation interval for configs that validate rarely) when the
    config has none.

    Args:
        every_n_epochs: epochs between checkpoints (the last epoch is always saved).
    """

    def __init__(self, every_n_epochs: int = 1, dirpath: str | None = None,
                 filename: str = "latest-{epoch}-{step}") -> None:
        super().__init__(dirpath=dirpath, filename=filename, every_n_epochs=every_n_epochs,
                         save_on_train_epoch_end=True)
        # Lightning reads ``state_key`` at every hook call; ModelCheckpoint rebuilds it from its settings
        # each time, and these settings never change
        self._state_key = super().state_key

    @property
    def state_key(self) -> str:
        return self._state_key

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        """Nothing: this checkpoint is never saved within an epoch (ModelCheckpoint's step bookkeeping is skipped)."""

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
        if not isinstance(exception, KeyboardInterrupt):
            return
        if trainer.world_size > 1:
            # Ctrl-C reaches every process at a different point of its step: a save now (a barrier,
            # CLIP's all-gathers) would meet the others in mismatched collectives and hang. The last
            # checkpoint written at an epoch's end, when all processes were in step, is the one to resume.
            latest = self.best_model_path or "none yet (interrupted in the first epoch)"
            rank_zero_only(print)(f"interrupted: under DDP no checkpoint is saved at the interrupt; the latest is "
                                  f"{latest}", flush=True)
            return
        if self._save_now(trainer, pl_module):
            rank_zero_only(print)(f"interrupted: saved {self.best_model_path}", flush=True)
