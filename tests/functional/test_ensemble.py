"""APGD, Square and the worst-case ensemble: known answers and torchattacks as the oracle."""

import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchattacks  # the oracle; installed by the README's test command (pip install --no-deps torchattacks)
from torch import nn

from lipreg.evaluation.registry import build_attack
from lipreg.functional import pgd
from lipreg.functional.apgd import apgd, apgd_checkpoints, apgd_targeted
from lipreg.functional.ensemble import EnsembleBudget, robust_under_ensemble, worst_case_error
from lipreg.functional.losses import (
    dlr_loss,
    margin_loss,
    misclassified,
    per_sample_squared_error,
    targeted_dlr_loss,
)
from lipreg.functional.square import square, square_pattern, window_share
from lipreg.nets import MLP

DATA_DIR = Path(os.environ.get("LIPREG_DATA_DIR", Path(__file__).resolve().parents[3] / "shared" / "datasets"))


def accuracy(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return 100 * (net(x).argmax(1) == y).float().mean().item()


# ---------------------------------------------------------------- losses and schedules
def test_losses_have_their_known_values():
    logits = torch.tensor([[3.0, 1.0, 0.0, -1.0], [0.0, 2.0, 2.5, 1.0]])
    y = torch.tensor([0, 1])
    assert torch.allclose(margin_loss(logits, y), torch.tensor([-2.0, 0.5]))
    assert torch.allclose(dlr_loss(logits, y), torch.tensor([-2.0 / 3.0, 0.5 / 1.5]))
    rival = torch.tensor([2, 3])
    # (z_t − z_y) / (z_π1 − (z_π3 + z_π4)/2)
    assert torch.allclose(targeted_dlr_loss(logits, y, rival), torch.tensor([-3.0 / 3.5, -1.0 / 2.0]))
    assert misclassified(logits, y).tolist() == [False, True]
    # DLR is invariant to shifting and scaling the logits; the margin scales with them
    assert torch.allclose(dlr_loss(5 * logits + 3, y), dlr_loss(logits, y))
    assert torch.allclose(margin_loss(5 * logits + 3, y), 5 * margin_loss(logits, y))


def test_schedules_of_apgd_and_square():
    assert apgd_checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    assert apgd_checkpoints(10) == [2, 3, 4, 5, 6, 7, 8, 9, 10]
    assert [window_share(0.8, i, 10000) for i in (0, 10, 11, 51, 8001)] == [0.8, 0.8, 0.4, 0.2, 0.8 / 512]
    pattern = square_pattern(5, torch.device("cpu"))
    assert pattern.norm().item() == pytest.approx(1.0)
    assert (pattern[:2] > 0).all() and (pattern[2:] < 0).all()


# ---------------------------------------------------------------- invariants
@pytest.fixture
def classifier_and_images():
    torch.manual_seed(0)
    net = MLP([64, 32, 10], activation="relu")
    x = torch.rand(40, 1, 8, 8)
    with torch.no_grad():
        y = net(x).argmax(1)
    return net.eval(), x, y


@pytest.mark.parametrize("norm,epsilon", [("l2", 1.0), ("linf", 0.1)])
def test_attacks_stay_in_the_ball_and_box_and_leave_the_model_alone(classifier_and_images, norm, epsilon):
    net, x, y = classifier_and_images
    net.train()
    for p in net.parameters():
        p.grad = torch.ones_like(p)
    generator = torch.Generator().manual_seed(0)
    results = [apgd(net, x, y, epsilon, norm, 20, generator=generator),
               apgd(net, x, y, epsilon, norm, 20, dlr_loss, generator=generator),
               apgd_targeted(net, x, y, epsilon, norm, 10, targets=3, generator=generator),
               square(net, x, y, epsilon, norm, 200, generator=generator)]
    for adversarial in results:
        delta = (adversarial - x).flatten(1)
        size = delta.norm(dim=1) if norm == "l2" else delta.abs().max(dim=1).values
        assert (size <= epsilon + 1e-5).all()
        assert adversarial.min() >= 0 and adversarial.max() <= 1
        assert not adversarial.requires_grad
    assert net.training
    assert all(torch.all(p.grad == 1) for p in net.parameters())


def test_square_refuses_flat_inputs():
    net = MLP([4, 3])
    with pytest.raises(ValueError, match="image batches"):
        square(net, torch.rand(5, 4), torch.zeros(5, dtype=torch.long), 0.5)


# ---------------------------------------------------------------- a known answer
def linear_classifier(classes: int = 10, seed: int = 0) -> tuple[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A linear 10-class classifier on 8×8 images and 1,000 inputs with their labels, and each
    correctly classified input's exact L2 distance to the decision boundary."""
    generator = torch.Generator().manual_seed(seed)
    layer = nn.Linear(64, classes)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(classes, 64, generator=generator) * 0.3)
        layer.bias.copy_(torch.randn(classes, generator=generator) * 0.3)
    net = nn.Sequential(nn.Flatten(), layer).eval()
    x = torch.rand(1000, 1, 8, 8, generator=generator)
    with torch.no_grad():
        logits = net(x)
    y = torch.where(torch.rand(1000, generator=generator) < 0.85, logits.argmax(1), torch.randint(0, classes, (1000,),
                                                                                                   generator=generator))
    # distance to {f_y = f_j} is (f_y − f_j)/‖w_y − w_j‖; the region of y is a convex polyhedron,
    # so the distance to its complement is the smallest of these.
    w = layer.weight.detach()
    gaps = logits.gather(1, y[:, None]) - logits  # [B, C]
    norms = (w[y][:, None, :] - w[None, :, :]).norm(dim=2)  # [B, C]
    distance = torch.where(torch.arange(classes)[None] == y[:, None], torch.inf, gaps / norms.clamp_min(1e-12))
    distance = torch.where(logits.argmax(1) == y, distance.min(dim=1).values, torch.zeros(()))
    return net, x, y, distance


@pytest.mark.parametrize("epsilon", [0.05, 0.15])
def test_ensemble_reaches_the_exact_robust_accuracy_of_a_linear_classifier(epsilon):
    net, x, y, distance = linear_classifier()
    exact = 100 * (distance > epsilon).float().mean().item()
    assert 20 < exact < 80  # a radius where the answer is neither trivial nor empty
    budget = EnsembleBudget(apgd_steps=50, square_queries=500)
    attacks = [(name, build_attack(name, net, epsilon, "l2", budget, box=None,
                                      generator=torch.Generator().manual_seed(0)))
               for name in ("apgd-ce", "apgd-t", "square")]
    robust, broken_by = robust_under_ensemble(net, x, y, attacks)
    assert 100 * robust.float().mean().item() == pytest.approx(exact, abs=0.5)
    assert not robust[distance <= epsilon].any()  # every sample it calls robust is robust: no false claims
    assert set(broken_by) == {"apgd-ce", "apgd-t", "square"}


def test_margin_pgd_alone_reaches_the_exact_answer_where_cross_entropy_does_not_have_to():
    """A margin loss moves straight to the nearest boundary of a linear classifier: breaking it breaks this test."""
    net, x, y, distance = linear_classifier(seed=1)
    epsilon = 0.1
    exact = 100 * (distance > epsilon).float().mean().item()
    adversarial = pgd(net, x, y, epsilon, step_size=0.01, steps=100, loss_fn=margin_loss, box=None)
    assert accuracy(net, adversarial, y) == pytest.approx(exact, abs=0.5)


def test_worst_case_error_is_the_largest_error_of_any_attack():
    torch.manual_seed(0)
    net = MLP([1, 16, 1], activation="tanh").eval()
    x, y = torch.rand(50, 1), torch.rand(50, 1)

    def attack():  # the same random start each time
        return build_attack("apgd-mse", net, 0.1, "l2", EnsembleBudget(apgd_steps=20), box=None,
                               generator=torch.Generator().manual_seed(0))

    worst = worst_case_error(net, x, y, [("apgd-mse", attack())])
    with torch.no_grad():
        clean = per_sample_squared_error(net(x), y)
        attacked = per_sample_squared_error(net(attack()(x, y)), y)
    assert torch.equal(worst, torch.maximum(clean, attacked)) and (worst >= clean).all()
    assert (attacked > clean + 1e-6).float().mean() > 0.9  # APGD really raised the error


# ---------------------------------------------------------------- torchattacks as the oracle
@pytest.fixture(scope="module")
def short_trained_mnist_net():
    """784-64-64-10 sigmoid MLP after one epoch of SGD on MNIST, and 500 test images."""
    from lipreg.data import MNISTDataModule

    data = MNISTDataModule(data_dir=str(DATA_DIR))
    data.setup()
    torch.manual_seed(0)
    net = MLP([784, 64, 64, 10], activation="sigmoid")
    optimiser = torch.optim.SGD(net.parameters(), lr=0.5, momentum=0.9)
    x, y = data.splits.train
    for start in range(0, len(x), 128):
        loss = F.cross_entropy(net(x[start : start + 128]), y[start : start + 128])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    test_x, test_y = data.splits.test
    return net.eval(), test_x[:500], test_y[:500]


def oracle_and_ours(net, epsilon, norm):
    generator = torch.Generator().manual_seed(0)
    big = "L2" if norm == "l2" else "Linf"
    return {
        "APGD-CE": (torchattacks.APGD(net, norm=big, eps=epsilon, steps=100, loss="ce", seed=0),
                    lambda x, y: apgd(net, x, y, epsilon, norm, 100, generator=generator)),
        "APGD-DLR": (torchattacks.APGD(net, norm=big, eps=epsilon, steps=100, loss="dlr", seed=0),
                     lambda x, y: apgd(net, x, y, epsilon, norm, 100, dlr_loss, generator=generator)),
        "APGD-T": (torchattacks.APGDT(net, norm=big, eps=epsilon, steps=100, n_classes=10, seed=0),
                   lambda x, y: apgd_targeted(net, x, y, epsilon, norm, 100, 9, generator=generator)),
        "Square": (torchattacks.Square(net, norm=big, eps=epsilon, n_queries=1000, seed=0),
                   lambda x, y: square(net, x, y, epsilon, norm, 1000, generator=generator)),
    }


@pytest.mark.slow
def test_each_attack_matches_torchattacks_on_mnist(short_trained_mnist_net):
    """L2, ε = 1 (the evaluation's norm); L∞ is compared on the small network below."""
    net, x, y = short_trained_mnist_net
    for name, (oracle, ours) in oracle_and_ours(net, 1.0, "l2").items():
        theirs_accuracy, our_accuracy = accuracy(net, oracle(x, y), y), accuracy(net, ours(x, y), y)
        if name == "Square":  # a random search: its accuracy moves by about a point from seed to seed, both
            our_accuracy = sum(accuracy(net, square(net, x, y, 1.0, "l2", 1000,
                                                    generator=torch.Generator().manual_seed(seed)), y)
                               for seed in range(3)) / 3
            theirs_accuracy = sum(accuracy(net, torchattacks.Square(net, norm="L2", eps=1.0, n_queries=1000,
                                                                     seed=seed)(x, y), y) for seed in range(3)) / 3
        assert 5 < theirs_accuracy < 95, name  # a radius where the attack has work to do
        assert our_accuracy == pytest.approx(theirs_accuracy, abs=1.0), name


@pytest.mark.parametrize("norm,epsilon", [("l2", 0.5), ("linf", 0.02)])
def test_each_attack_matches_torchattacks_on_a_small_seeded_network(norm, epsilon):
    """torchattacks' Square draws window corners from [0, H − s) (never the last row or column) and
    one window for the whole batch; lipreg's from [0, H − s], one per image. On this network, whose
    pixels all matter alike, that can make lipreg's L∞ Square the stronger by more than a point, so
    for Square the test asks only that lipreg is not weaker than the oracle by more than a point."""
    torch.manual_seed(1)
    net = nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 10)).eval()
    x = torch.rand(500, 1, 28, 28)
    with torch.no_grad():
        y = net(x).argmax(1)
    for name, (oracle, ours) in oracle_and_ours(net, epsilon, norm).items():
        theirs_accuracy, our_accuracy = accuracy(net, oracle(x, y), y), accuracy(net, ours(x, y), y)
        assert 5 < theirs_accuracy < 95, name
        if name == "Square":
            assert our_accuracy <= theirs_accuracy + 1.0
        else:
            assert our_accuracy == pytest.approx(theirs_accuracy, abs=1.0), name


@pytest.mark.slow
def test_robust_accuracy_is_below_every_attack_and_matches_autoattack(short_trained_mnist_net):
    net, x, y = short_trained_mnist_net
    epsilon = 1.0  # at ε = 2 a network trained this briefly keeps almost nothing
    generator = torch.Generator().manual_seed(0)
    budget = EnsembleBudget()
    names = ("apgd-ce", "apgd-t", "square")
    robust, _ = robust_under_ensemble(net, x, y, [(n, build_attack(n, net, epsilon, "l2", budget,
                                                                      generator=generator)) for n in names])
    ours = 100 * robust.float().mean().item()
    for name in names + ("apgd-dlr", "pgd-margin"):
        alone = build_attack(name, net, epsilon, "l2", budget, generator=generator)
        assert ours <= accuracy(net, alone(x, y), y) + 1e-9, name
    autoattack = torchattacks.AutoAttack(net, norm="L2", eps=epsilon, version="standard", n_classes=10, seed=0)
    assert ours == pytest.approx(accuracy(net, autoattack(x, y), y), abs=1.0)
