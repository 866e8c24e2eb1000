from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from lipreg.data import (
    FashionMNISTDataModule,
    MNISTDataModule,
    RegressionDataModule,
    ShuffledBatches,
    TensorBatches,
)
from lipreg.data.regression import clip_target, polynomial_target
from lipreg.errors import LipregError


def test_clip_regression_matches_its_formula():
    dm = RegressionDataModule(problem="clip", num_samples=100, noise_std=0.0, seed=3)
    dm.setup()
    x, y = dm.splits.train
    assert x.shape == (100, 1) and y.shape == (100, 1)
    assert torch.allclose(y, 0.5 * torch.clamp(x.abs() - 3, min=0))
    inside = ((x >= -4) & (x <= -3)) | ((x >= -0.3) & (x <= 0.3)) | ((x >= 3) & (x <= 4))
    assert inside.all()
    # every interval gets samples
    assert (x < -3).any() and (x.abs() <= 0.3).any() and (x > 3).any()
    grid, clean = dm.splits.test
    assert grid.min() == -4 and grid.max() == 4 and torch.allclose(clean, clip_target(grid))


def test_polynomial_regression_matches_its_formula():
    dm = RegressionDataModule(problem="polynomial", num_samples=50, noise_std=0.0, polynomial_scale=0.01)
    dm.setup()
    x, y = dm.splits.train
    assert ((x.abs() >= 2) & (x.abs() <= 3)).all()
    assert torch.allclose(y, 0.01 * (0.5 + 0.01 * x + x**6))
    assert torch.allclose(polynomial_target(torch.tensor([1.0]), 2.0), torch.tensor([2 * 1.51]))


def test_regression_noise_is_seeded_and_has_the_requested_level():
    a = RegressionDataModule(num_samples=2000, noise_std=0.1, seed=1)
    b = RegressionDataModule(num_samples=2000, noise_std=0.1, seed=1)
    a.setup()
    b.setup()
    assert torch.equal(a.splits.train[1], b.splits.train[1])
    residual = a.splits.train[1] - clip_target(a.splits.train[0])
    assert residual.std().item() == pytest.approx(0.1, rel=0.1)


def test_regression_rejects_unknown_problem():
    with pytest.raises(ValueError, match="sine"):
        RegressionDataModule(problem="sine")


def test_tensor_batches_gathers_a_whole_batch_at_once():
    x, y = torch.arange(10.0).unsqueeze(1), torch.arange(10)
    xb, yb = TensorBatches(x, y).__getitems__([3, 1, 4])
    assert xb.flatten().tolist() == [3.0, 1.0, 4.0] and yb.tolist() == [3, 1, 4]


def test_shuffled_batches_follow_the_sampler_in_slices():
    x, y = torch.arange(10.0).unsqueeze(1), torch.arange(10)
    batches = ShuffledBatches((x, y), batch_size=4, sampler=[9, 2, 5, 0, 7, 1, 3])
    assert len(batches) == 2
    assert [yb.tolist() for _, yb in batches] == [[9, 2, 5, 0], [7, 1, 3]]
    assert [xb.flatten().tolist() for xb, _ in batches][1] == [7.0, 1.0, 3.0]
    with pytest.raises(ValueError, match="batch_size"):
        ShuffledBatches((x, y), batch_size=0, sampler=[0])


def test_train_loader_shards_without_overlap_under_ddp():
    dm = RegressionDataModule(num_samples=37, batch_size=8, seed=0)
    dm.setup()
    shards = []
    for rank in range(2):
        dm.trainer = SimpleNamespace(world_size=2, global_rank=rank, strategy=None)
        shards.append(torch.cat([xb for xb, _ in dm.train_dataloader()]).flatten().tolist())
    assert len(shards[0]) == len(shards[1]) == 19  # DistributedSampler pads 37 to 38
    assert set(shards[0]) | set(shards[1]) == set(dm.splits.train[0].flatten().tolist())


def test_train_loader_covers_every_sample_once_and_is_seeded():
    dm = RegressionDataModule(num_samples=37, batch_size=8, seed=0)
    dm.setup()
    seen = torch.cat([xb for xb, _ in dm.train_dataloader()])
    assert sorted(seen.flatten().tolist()) == sorted(dm.splits.train[0].flatten().tolist())
    first = [xb for xb, _ in dm.train_dataloader()][0]
    loader = dm.train_dataloader()
    loader.sampler.set_epoch(1)
    assert not torch.equal(first, next(iter(loader))[0])  # a new epoch draws a new order
    loader.sampler.set_epoch(0)
    assert torch.equal(first, next(iter(loader))[0])  # and the same epoch the same order


def test_missing_mnist_files_give_one_clear_error(tmp_path: Path):
    dm = MNISTDataModule(data_dir=str(tmp_path / "nowhere"))
    with pytest.raises(LipregError) as info:
        dm.setup()
    message = str(info.value)
    assert "nowhere" in message and "train-images-idx3-ubyte" in message and "--data.data_dir" in message
    assert "\n" not in message


def test_mnist_splits_from_the_real_files(data_dir: Path):
    dm = MNISTDataModule(data_dir=str(data_dir), val_size=6000, lipschitz_size=1000, seed=0)
    dm.setup()
    s = dm.splits
    assert s.train[0].shape == (53000, 1, 28, 28) and s.val[0].shape == (6000, 1, 28, 28)
    assert s.test[0].shape == (10000, 1, 28, 28) and s.lipschitz.shape == (1000, 1, 28, 28)
    assert s.train[0].dtype == torch.float32 and s.train[0].min() == 0 and s.train[0].max() == 1
    whole = MNISTDataModule(data_dir=str(data_dir), val_size=6000, seed=0)
    whole.setup()
    counts = torch.bincount(torch.cat([whole.splits.train[1], whole.splits.val[1]]), minlength=10)
    assert counts.tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]  # as published
    again = MNISTDataModule(data_dir=str(data_dir), val_size=6000, lipschitz_size=1000, seed=0)
    again.setup()
    assert torch.equal(again.splits.val[1], s.val[1])


def test_fashion_mnist_reads_its_own_files(data_dir: Path):
    dm = FashionMNISTDataModule(data_dir=str(data_dir), val_size=0)
    dm.setup()
    assert torch.bincount(dm.splits.train[1]).tolist() == [6000] * 10


def test_data_dir_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv("LIPREG_DATA_DIR", str(tmp_path))
    assert MNISTDataModule().data_dir == tmp_path
