"""EpochTimer: training time per epoch, with the validation Lightning runs inside the epoch left out."""

import time

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from lipreg.callbacks import EpochTimer


class SlowValidation(L.LightningModule):
    """Training steps take about 20 ms each, a validation step 500 ms."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch: list[torch.Tensor], index: int) -> torch.Tensor:
        time.sleep(0.02)
        return self.layer(batch[0]).sum()

    def validation_step(self, batch: list[torch.Tensor], index: int) -> None:
        time.sleep(0.5)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_epoch_timer_counts_training_and_leaves_out_validation_also_mid_epoch():
    data = DataLoader(TensorDataset(torch.randn(40, 2)), batch_size=4)  # 10 training steps ≈ 0.2 s
    timer = EpochTimer()
    trainer = L.Trainer(max_epochs=2, val_check_interval=5, limit_val_batches=2, num_sanity_val_steps=0,
                        callbacks=[timer], logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(SlowValidation(), data, data)  # each epoch validates twice: 2 × 2 × 0.5 s = 2 s
    assert len(timer.times) == 2
    assert all(0.19 <= t < 1.5 for t in timer.times), timer.times
