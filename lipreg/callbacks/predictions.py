"""What ``lipreg predict`` computes, written to one file in the run's log directory."""

from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from torch import Tensor

from lipreg.errors import LipregError


def interleave_shards(shards: Tensor, total: int) -> Tensor:
    """Undo the evaluation sharding, ``[W, M, …] -> [total, …]``: ``shards[r, i]`` is sample ``i·W + r``."""
    return shards.transpose(0, 1).reshape(-1, *shards.shape[2:])[:total]


class PredictionWriter(BasePredictionWriter):
    """Saves the network's outputs on the predict split (the test split) as ``predictions.pt``.

    The file holds a dict, every entry in the split's order: ``outputs`` (logits, or the regression
    outputs), ``targets`` (the true labels or values) and, for classification, ``predictions``
    (the predicted class, the argmax of ``outputs``). Under DDP every process predicts its own
    shard; the shards are gathered so the one file (written by rank 0) covers the whole split in
    order. ``output_dir`` defaults to the run's log directory (``lipreg predict``: beside the
    checkpoint, ``<run>/predict/<checkpoint>/``). ``lipreg predict`` adds this writer unless the
    trainer already has a prediction writer.

    Args:
        output_dir: where ``predictions.pt`` goes (default: the run's log directory).
    """

    def __init__(self, output_dir: str | None = None) -> None:
        super().__init__(write_interval="epoch")
        self.output_dir = output_dir

    def _gathered(self, trainer: L.Trainer, pl_module: L.LightningModule, local: Tensor) -> Tensor:
        if trainer.world_size == 1:
            return local
        total = int(pl_module.all_gather(torch.tensor(len(local), device=pl_module.device)).sum())
        longest = -(-total // trainer.world_size)
        padded = local.new_zeros(longest, *local.shape[1:])
        padded[: len(local)] = local
        return interleave_shards(pl_module.all_gather(padded), total)

    def write_on_epoch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, predictions: Any, batch_indices: Any
    ) -> None:
        if not predictions:
            raise LipregError("no predictions were kept; run predict with return_predictions=True")
        steps = [p if isinstance(p, dict) else {"outputs": p} for p in predictions]
        result = {key: self._gathered(trainer, pl_module, torch.cat([step[key] for step in steps]))
                  for key in steps[0]}
        if pl_module.task_spec.classification:
            result["predictions"] = result["outputs"].argmax(dim=1)
        directory = Path(self.output_dir or trainer.log_dir or "predictions")  # log_dir: a collective under DDP
        if not trainer.is_global_zero:
            return
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / "predictions.pt"
        torch.save({key: value.cpu() for key, value in result.items()}, path)
        print(f"wrote {path} ({len(result['outputs'])} samples)")
