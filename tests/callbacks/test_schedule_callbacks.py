"""Callbacks: the rules they apply, their checkpointed state, and their effect through a Trainer."""

import pytest
import torch

from lipreg.callbacks import EpsilonDecay, LambdaDiscrepancy, Warmup
from lipreg.errors import LipregError
from lipreg.methods import CLIP, PTV, TV, Standard
from lipreg.nets import MLP

from ..helpers import BlobsDataModule, quiet_trainer


def net() -> MLP:
    torch.manual_seed(0)
    return MLP([2, 16, 3], activation="tanh")


@pytest.mark.parametrize(
    "lam,accuracy,expected", [(1.0, 0.95, 1.25), (1.0, 0.85, 0.75), (0.1, 0.5, 0.0), (3.9, 0.99, 4.0)]
)
def test_discrepancy_update_moves_the_module_coefficient(lam, accuracy, expected):
    module = CLIP(net(), lam=lam, pair_init="batch")
    callback = LambdaDiscrepancy(target=0.9, step=0.25, maximum=4.0)
    callback.update(module, accuracy)
    assert module.lam.item() == pytest.approx(expected)


def test_discrepancy_step_decays_and_is_checkpointed():
    callback = LambdaDiscrepancy(target=0.9, step=1.0, step_decay=0.5)
    module = CLIP(net(), lam=0.0, pair_init="batch")
    callback.update(module, 0.95)
    callback.update(module, 0.95)
    assert module.lam.item() == pytest.approx(1.5) and callback.step == pytest.approx(0.25)
    restored = LambdaDiscrepancy(target=0.9, step=1.0, step_decay=0.5)
    restored.load_state_dict(callback.state_dict())
    assert restored.step == pytest.approx(0.25)


def test_warmup_state_round_trip():
    callback = Warmup(target=0.8)
    callback.epochs_done, callback.finished = 3, True
    restored = Warmup(target=0.8)
    restored.load_state_dict(callback.state_dict())
    assert (restored.epochs_done, restored.finished) == (3, True)


def test_lambda_rises_while_training_accuracy_beats_an_easy_target():
    module = CLIP(net(), lam=0.0, pair_init="batch", optimizer=lambda p: torch.optim.Adam(p, lr=0.05))
    trainer = quiet_trainer(max_epochs=4, callbacks=[LambdaDiscrepancy(target=0.05, step=0.1)])
    trainer.fit(module, BlobsDataModule())
    assert module.lam.item() == pytest.approx(0.4)
    assert trainer.callback_metrics["train/lambda"].item() == pytest.approx(0.4)


def test_lambda_falls_to_its_minimum_under_an_unreachable_target():
    module = CLIP(net(), lam=0.3, pair_init="batch")
    trainer = quiet_trainer(max_epochs=3, callbacks=[LambdaDiscrepancy(target=1.0, step=0.2, minimum=0.05)])
    trainer.fit(module, BlobsDataModule())
    assert module.lam.item() == pytest.approx(0.05)


def test_lambda_every_n_steps_acts_per_batch():
    module = CLIP(net(), lam=0.0, pair_init="batch")
    trainer = quiet_trainer(max_epochs=1, limit_train_batches=6,
                            callbacks=[LambdaDiscrepancy(target=0.01, step=0.1, every_n_steps=2)])
    trainer.fit(module, BlobsDataModule())
    assert module.lam.item() == pytest.approx(0.3)  # steps 2, 4, 6


def test_lambda_on_validation_accuracy():
    module = CLIP(net(), lam=0.0, pair_init="batch", optimizer=lambda p: torch.optim.Adam(p, lr=0.05))
    trainer = quiet_trainer(max_epochs=2, num_sanity_val_steps=1,
                            callbacks=[LambdaDiscrepancy(target=0.05, step=0.1, monitor="val")])
    trainer.fit(module, BlobsDataModule())
    assert module.lam.item() == pytest.approx(0.2)  # the sanity check does not count


def test_warmup_by_epochs_keeps_the_penalty_off_then_on():
    module = CLIP(net(), lam=1.0, pair_init="batch")
    seen = []
    original = module.penalty

    def spy(x, y):
        seen.append(module.current_epoch)
        return original(x, y)

    module.penalty = spy
    trainer = quiet_trainer(max_epochs=4, limit_train_batches=2, callbacks=[Warmup(epochs=2)])
    trainer.fit(module, BlobsDataModule())
    assert sorted(set(seen)) == [2, 3]


def test_warmup_by_accuracy_holds_the_discrepancy_rule_back():
    module = CLIP(net(), lam=0.5, pair_init="batch")
    trainer = quiet_trainer(max_epochs=3, callbacks=[Warmup(target=1.0), LambdaDiscrepancy(target=0.01, step=0.1)])
    trainer.fit(module, BlobsDataModule())
    assert not module.regularise and module.lam.item() == pytest.approx(0.5)
    assert trainer.callback_metrics["train/warmup"] == 1.0


def test_epsilon_decays_geometrically_to_its_floor():
    module = PTV(net(), lam=0.1, epsilon=1.0)
    trainer = quiet_trainer(max_epochs=3, limit_train_batches=2, callbacks=[EpsilonDecay(factor=0.5, minimum=0.2)])
    trainer.fit(module, BlobsDataModule())
    assert module.epsilon.item() == pytest.approx(0.2)
    module = TV(net(), lam=0.1, epsilon=1.0)
    quiet_trainer(max_epochs=2, limit_train_batches=2, callbacks=[EpsilonDecay()]).fit(module, BlobsDataModule())
    assert module.epsilon.item() == pytest.approx(0.81)


@pytest.mark.parametrize(
    "module,callback,match",
    [
        (lambda: Standard(net()), lambda: EpsilonDecay(), "ε-ball"),
        (lambda: Standard(net()), lambda: LambdaDiscrepancy(target=0.9, step=0.1), "no regularisation coefficient"),
        (lambda: CLIP(MLP([2, 4, 3]), task="regression", pair_init="batch"),
         lambda: LambdaDiscrepancy(target=0.9, step=0.1), "classification"),
    ],
)
def test_callbacks_refuse_methods_they_cannot_drive(module, callback, match):
    with pytest.raises(LipregError, match=match):
        quiet_trainer(max_epochs=1, callbacks=[callback()]).fit(module(), BlobsDataModule())


@pytest.mark.parametrize(
    "build,match",
    [
        (lambda: Warmup(), "target accuracy"),
        (lambda: Warmup(target=1.5), "accuracy"),
        (lambda: LambdaDiscrepancy(target=0.9, step=0.0), "step"),
        (lambda: LambdaDiscrepancy(target=0.9, step=0.1, minimum=1.0, maximum=0.5), "maximum"),
        (lambda: EpsilonDecay(factor=1.5), "factor"),
    ],
)
def test_bad_callback_arguments(build, match):
    with pytest.raises(LipregError, match=match):
        build()
