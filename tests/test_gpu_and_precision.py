"""Mixed precision on the CPU, and the GPU path (skipped where there is no CUDA device)."""

from pathlib import Path

import pytest
import torch

from lipreg.cli import run

REPO = Path(__file__).resolve().parents[1]


def test_bf16_mixed_precision_trains_a_regulariser():
    cli = run(["fit", "--config", str(REPO / "configs" / "regression_clip.yaml"), "--trainer.precision", "bf16-mixed",
               "--trainer.max_epochs", "3", "--trainer.check_val_every_n_epoch", "1"])
    metrics = cli.trainer.callback_metrics
    assert torch.isfinite(metrics["train/loss"]) and metrics["train/penalty"] > 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_clip_trains_on_the_gpu_with_data_held_there(data_dir: Path):
    cli = run(["fit", "--config", str(REPO / "configs" / "mnist_clip.yaml"), "--data.init_args.data_dir", str(data_dir),
               "--trainer.accelerator", "gpu", "--trainer.devices", "1", "--trainer.max_epochs", "1",
               "--trainer.limit_train_batches", "20"])
    assert cli.datamodule.splits.train[0].is_cuda  # the splits moved to the GPU once
    assert cli.trainer.callback_metrics["train/lip"] > 0
