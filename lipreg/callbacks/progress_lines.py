"""What a run prints while it runs: a line per training epoch with the time left, and testing's progress."""

import math
import time
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only

from lipreg.timing import duration

LEADING_METRICS = ("train/loss", "train/acc", "train/mse", "train/lambda", "train/mu", "train/lip", "val/acc",
                   "val/mse", "val/pgd_acc", "val/pgd_mse")


def format_value(value: float) -> str:
    return f"{value:.4g}"


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
            line += f"; {to_go:,} steps to go: about {duration(per_step * to_go)} of training (validation not counted)"
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
        cells = "  ".join(f"{k} {format_value(metrics[k])}" for k in ordered)
        remaining = f", about {duration(left)} left" if left is not None else ""
        print(f"epoch {epoch + 1}{total}  {cells}  {seconds:.1f} s{remaining}", flush=True)


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
        rank_zero_only(print)(f"testing: batch {done}/{total}  {duration(elapsed)}, about {duration(left)} left",
                              flush=True)

    @staticmethod
    def _attacked_batches(trainer: L.Trainer, batch_size: int, total: int) -> int:
        """How many of this process's test batches hold images that are attacked."""
        # a callback that attacks only the first ``sample_size`` test images says so (RobustnessEvaluation)
        sizes = [c.sample_size for c in trainer.callbacks if getattr(c, "attacks_test_images", False)]
        if not sizes or sizes[0] is None:
            return total
        per_process = -(-sizes[0] // trainer.world_size)
        return min(total, -(-per_process // batch_size))
