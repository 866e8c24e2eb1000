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

    The file holds a dict: ``outputs`` (logits, or the regression outputs) in the split's order
    and, for classification, ``labels`` (their argmax). Under DDP every process predicts its own
    shard; the shards are gathered so the one file (written by rank 0) covers the whole split in
    order. ``output_dir`` defaults to the run's log directory. ``lipreg predict`` adds this
    writer unless the trainer already has a prediction writer.
    """

    def __init__(self, output_dir: str | None = None) -> None:
        super().__init__(write_interval="epoch")
        self.output_dir = output_dir

    def write_on_epoch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, predictions: Any, batch_indices: Any
    ) -> None:
        if not predictions:
            raise LipregError("no predictions were kept; run predict with return_predictions=True")
        outputs = torch.cat(predictions)
        if trainer.world_size > 1:
            total = int(pl_module.all_gather(torch.tensor(len(outputs), device=pl_module.device)).sum())
            longest = -(-total // trainer.world_size)
            padded = outputs.new_zeros(longest, *outputs.shape[1:])
            padded[: len(outputs)] = outputs
            outputs = interleave_shards(pl_module.all_gather(padded), total)
        directory = Path(self.output_dir or trainer.log_dir or "predictions")  # log_dir: a collective under DDP
        if not trainer.is_global_zero:
            return
        result = {"outputs": outputs.cpu()}
        if getattr(pl_module, "task", None) == "classification":
            result["labels"] = outputs.argmax(dim=1).cpu()
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / "predictions.pt"
        torch.save(result, path)
        print(f"wrote {path} ({len(outputs)} samples)")
