"""EpochTimer: training time per epoch, with the validation Lightning runs inside the epoch left out; ProgressLine:
the cost of a run, forecast within its first seconds."""

import re
import time

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from lipreg.callbacks import EpochTimer, ProgressLine
from lipreg.methods import CLIP, SumFLIP
from lipreg.nets import MLP
from lipreg.timing import duration as _duration


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


def test_a_run_forecasts_its_cost_early_and_each_epoch_line_says_the_time_left(capsys: pytest.CaptureFixture):
    data = DataLoader(TensorDataset(torch.randn(40, 2)), batch_size=4)  # 10 steps of 20 ms an epoch
    trainer = L.Trainer(max_epochs=3, callbacks=[ProgressLine(interval=0, projection_after=0.1)], logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(SlowValidation(), data)
    lines = capsys.readouterr().out.splitlines()
    forecast = [line for line in lines if line.startswith("measured: ")]
    assert len(forecast) == 1, lines
    found = re.fullmatch(r"measured: ([\d.]+) s a training step; (\d+) steps to go: about (\d+) s of training "
                         r"\(validation not counted\)", forecast[0])
    assert found and 0.015 < float(found.group(1)) < 0.5 and 20 <= int(found.group(2)) < 30, forecast
    assert lines.index(forecast[0]) < next(i for i, line in enumerate(lines) if line.startswith("epoch 2/3"))
    epochs = [line for line in lines if line.startswith("epoch ")]
    assert [line.endswith(" left") for line in epochs] == [True, True, False]


def test_durations_read_in_the_unit_that_fits():
    assert [_duration(s) for s in (45, 250, 3 * 3600, 5.2 * 86400)] == ["45 s", "4.2 min", "3.0 h", "5.2 days"]


def test_clip_names_the_active_pair_set_when_it_ascends_thousands_of_pairs_a_step():
    def with_pairs(module: CLIP, count: int) -> CLIP:
        module.pairs = torch.zeros(2, count, 784)
        return module

    hint = with_pairs(CLIP(MLP([784, 10])), 6000).cost_hint()
    assert hint.startswith("CLIP ascends all 6,000 pairs every step") and "--model.init_args.active_pairs 32" in hint
    assert "ascends about 62 a step" in hint
    assert with_pairs(CLIP(MLP([784, 10]), active_pairs=32), 6000).cost_hint() is None
    assert with_pairs(CLIP(MLP([784, 10])), 500).cost_hint() is None  # cheap enough as it is
    assert with_pairs(SumFLIP(MLP([784, 10])), 6000).cost_hint() is None  # needs every pair: no such option
