"""Seeing inside a run: CLIP's pair set in TensorBoard and the tracked layer-product bound."""

from pathlib import Path

import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lipreg.callbacks import PairSetImages, UpperBoundTracking
from lipreg.callbacks.insight import pair_figure, pair_set_quotients
from lipreg.errors import LipregError
from lipreg.functional import lipschitz_upper_bound, tracked_upper_bound
from lipreg.methods import CLIP, Standard
from lipreg.nets import MLP, MadryCNN

from ..helpers import BlobsDataModule, quiet_trainer


def test_the_pair_figure_shows_the_steepest_pairs_with_their_quotients():
    torch.manual_seed(0)
    pairs = torch.rand(2, 12, 1, 8, 8)
    quotients = torch.rand(12)
    figure = pair_figure(pairs, quotients, count=4)
    titles = [axis.get_title() for axis in figure.axes if axis.get_title()]
    steepest = quotients.topk(4).values
    assert titles == [f"L={q:.3g}" for q in steepest.tolist()]
    assert len(figure.axes) == 12  # u, v and u − v for each of the 4 pairs
    difference = figure.axes[8].get_images()[0].get_array()  # row 3 holds the magnified differences
    assert abs(difference).max() == pytest.approx(1.0)


def test_pair_set_quotients_match_one_pass_over_every_pair():
    net = MLP([2, 8, 3])
    pairs = torch.rand(2, 5000, 2)
    from lipreg.functional import pair_quotients

    with torch.no_grad():
        assert torch.allclose(pair_set_quotients(net, pairs), pair_quotients(net, pairs))


def test_clip_runs_log_the_histogram_of_their_pair_quotients(tmp_path: Path):
    module = CLIP(MLP([2, 16, 3], activation="tanh"), lam=0.1, pair_init="heldout")
    trainer = quiet_trainer(max_epochs=2, limit_train_batches=3, logger=TensorBoardLogger(tmp_path),
                            callbacks=[PairSetImages(every_n_epochs=1)])
    trainer.fit(module, BlobsDataModule())
    events = EventAccumulator(str(tmp_path / "lightning_logs" / "version_0"), size_guidance={"histograms": 0})
    events.Reload()
    histograms = events.Histograms("pairs/quotients")
    assert len(histograms) == 2 and histograms[-1].histogram_value.num == 40  # every held-out pair


def test_pair_images_refuse_a_method_without_pairs():
    with pytest.raises(LipregError, match="Standard has none"):
        quiet_trainer(max_epochs=1, limit_train_batches=1, callbacks=[PairSetImages(every_n_epochs=1)]).fit(
            Standard(MLP([2, 8, 3])), BlobsDataModule())


def test_the_tracked_upper_bound_is_logged_each_epoch_and_meets_the_full_computation():
    torch.manual_seed(0)
    module = Standard(MLP([2, 32, 32, 3], activation="tanh"))
    tracker = UpperBoundTracking()
    trainer = quiet_trainer(max_epochs=4, limit_train_batches=4, callbacks=[tracker])
    trainer.fit(module, BlobsDataModule())
    logged = trainer.callback_metrics["train/lip_upper"].item()
    exact = lipschitz_upper_bound(module.net.layers, (2,))
    assert logged <= exact * (1 + 1e-4) and logged == pytest.approx(exact, rel=0.02)
    assert set(tracker.state_dict()["vectors"]) == {2, 4, 6}  # the three Linear layers' vectors, checkpointed


def test_warm_started_power_iteration_converges_to_the_convolution_bound():
    torch.manual_seed(0)
    net = MadryCNN()
    vectors: dict[int, torch.Tensor] = {}
    estimates = [tracked_upper_bound(net.layers, (1, 28, 28), vectors, iterations=10) for _ in range(10)]
    proven = lipschitz_upper_bound(net.layers, (1, 28, 28))  # each convolution's DFT bound: a little above
    assert estimates[0] <= estimates[-1] * (1 + 1e-3)  # from below
    assert 0.95 * proven <= estimates[-1] <= proven * (1 + 1e-6)
