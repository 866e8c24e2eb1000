"""Behaviour the CLIP paper proves (Propositions 2 and 4), and exact resumption from checkpoints."""

from pathlib import Path

import lightning as L
import pytest
import torch

from lipreg.callbacks import EpsilonDecay, LambdaDiscrepancy
from lipreg.data import RegressionDataModule
from lipreg.methods import CLIP, PTV
from lipreg.nets import MLP

from ..helpers import BlobsDataModule, quiet_trainer


def exact_lipschitz_1d(net: torch.nn.Module, low: float = -4.0, high: float = 4.0) -> float:
    """On 1-D inputs the Lipschitz constant is the largest slope on a fine grid."""
    grid = torch.linspace(low, high, 4001).unsqueeze(1)
    with torch.no_grad():
        values = net(grid)
    return ((values[1:] - values[:-1]).abs() / (grid[1:] - grid[:-1])).max().item()


def train_regression(lam: float, epochs: int = 400) -> tuple[CLIP, float, float]:
    L.seed_everything(0)
    data = RegressionDataModule(problem="clip", num_samples=100, noise_std=0.05, seed=0)
    module = CLIP(
        MLP([1, 64, 64, 1], activation="sigmoid"), task="regression", lam=lam,
        optimizer=lambda p: torch.optim.Adam(p, lr=0.01), pair_init="box", num_pairs=200, noise_scale=0.2,
        step_size=0.1, reinit_every_n_steps=1,
    )
    quiet_trainer(max_epochs=epochs, limit_val_batches=0).fit(module, data)
    x, y = data.splits.train
    with torch.no_grad():
        loss = torch.nn.functional.mse_loss(module.net(x), y).item()
    return module, exact_lipschitz_1d(module.net), loss


@pytest.mark.slow
def test_larger_lambda_gives_smaller_lipschitz_constant_and_larger_loss():
    """Proposition 2: λ ↦ Lip(f_λ) non-increasing, λ ↦ empirical risk non-decreasing."""
    results = [train_regression(lam)[1:] for lam in (0.0, 0.01, 1.0)]
    lips, losses = [r[0] for r in results], [r[1] for r in results]
    assert lips[0] > lips[1] > lips[2] - 1e-3, lips
    assert losses[0] < losses[1] < losses[2] + 1e-6, losses


@pytest.mark.slow
def test_a_very_large_lambda_gives_the_constant_network_at_the_mean_target():
    """Proposition 4 with Remark 2: as λ → ∞ the network tends to the barycentre of the targets."""
    module, lip, _ = train_regression(100.0, epochs=200)
    data = RegressionDataModule(problem="clip", num_samples=100, noise_std=0.05, seed=0)
    data.setup()
    mean_target = data.splits.train[1].mean().item()
    grid = torch.linspace(-4, 4, 101).unsqueeze(1)
    with torch.no_grad():
        values = module.net(grid)
    assert lip < 0.01
    assert (values - mean_target).abs().max().item() < 0.02


def fit_for(module_factory, epochs: int, root: Path, callbacks_factory, ckpt_path: str | None = None) -> L.Trainer:
    L.seed_everything(0)
    module = module_factory()
    trainer = quiet_trainer(
        max_epochs=epochs, limit_train_batches=5, default_root_dir=root, enable_checkpointing=True,
        callbacks=[*callbacks_factory(), L.pytorch.callbacks.ModelCheckpoint(dirpath=root, save_top_k=-1)],
    )
    trainer.fit(module, BlobsDataModule(), ckpt_path=ckpt_path)
    return trainer


@pytest.mark.parametrize("method", ["CLIP", "PTV"])
def test_resuming_from_a_checkpoint_gives_the_uninterrupted_run(tmp_path: Path, method: str):
    def build():
        if method == "CLIP":
            return CLIP(MLP([2, 16, 3], "tanh"), lam=0.1, pair_init="heldout", adaptive_step=True,
                        optimizer=lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9))
        return PTV(MLP([2, 16, 3], "tanh"), lam=0.1, epsilon=0.2,
                   optimizer=lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9))

    def callbacks():
        schedule = [LambdaDiscrepancy(target=0.5, step=0.05, step_decay=0.9)]
        return schedule + ([EpsilonDecay(factor=0.8)] if method == "PTV" else [])

    straight = fit_for(build, 4, tmp_path / "straight", callbacks).lightning_module
    fit_for(build, 2, tmp_path / "first", callbacks)
    (halfway,) = (tmp_path / "first").glob("epoch=1-*.ckpt")
    resumed = fit_for(build, 4, tmp_path / "resumed", callbacks, ckpt_path=str(halfway)).lightning_module
    for name, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[name]), name
    assert resumed.lam.item() == straight.lam.item() and straight.lam.item() > 0
    if method == "CLIP":
        assert straight.pairs.numel() > 0 and torch.equal(straight.pairs, resumed.pairs)
    else:
        assert resumed.epsilon.item() == pytest.approx(0.2 * 0.8**4)
