"""Square's cheap L2 queries: the window update proposes what Algorithm 3 proposes, and an
MLP's affine stem gives the search the same margins as the whole network."""

import pytest
import torch
from torch import nn

from lipreg.functional.square import (
    _l2_proposal,
    _l2_start,
    _l2_window_update,
    _PixelPairs,
    _two_windows,
    square,
    window_table,
)
from lipreg.functional.stem import affine_stem
from lipreg.nets import MLP, MadryCNN
from lipreg.nets.normalize import Normalize
from tests.helpers import CountingNet


def test_window_table_lists_every_window_once():
    table = window_table(3, 5, 4, torch.device("cpu"))  # 3 × 2 places of a 3 × 3 window in a 5 × 4 image
    assert table.shape == (6, 9)
    assert table[0].tolist() == [0, 1, 2, 4, 5, 6, 8, 9, 10]
    assert table[-1].tolist() == [9, 10, 11, 13, 14, 15, 17, 18, 19]  # the last row and column are reached
    assert len({tuple(row) for row in table.tolist()}) == 6


@pytest.mark.parametrize("size", [3, 5, 13, 25])  # 25 of 28: the two windows always overlap
def test_the_window_update_proposes_what_algorithm_3_proposes(size):
    torch.manual_seed(0)
    centre, epsilon = torch.rand(64, 1, 28, 28), 1.5
    best = _l2_start(centre, epsilon, torch.Generator().manual_seed(1)).clamp(0.0, 1.0)
    squared = (best - centre).flatten(1).double().square().sum(1)

    expected = _l2_proposal(centre, best, epsilon, size, (0.0, 1.0), torch.Generator().manual_seed(2))
    images = _PixelPairs(centre, best)
    update = _l2_window_update(images, squared, torch.full((64,), epsilon**2, dtype=torch.float64), size, 28, 28,
                              (0.0, 1.0), torch.Generator().manual_seed(2))
    assert torch.equal(images.best.view_as(best), best)  # computed on the windows: nothing written yet
    update.write(images)
    proposal = images.best.reshape(best.shape)

    assert (proposal - expected).abs().max() < 1e-6  # the same draws, the same proposal
    assert not torch.equal(proposal, best)
    assert torch.equal(images.centre.reshape(centre.shape), centre)  # x itself is never written
    assert torch.allclose(update.squared, (proposal - centre).flatten(1).double().square().sum(1), rtol=1e-5)
    indices, changes = update.changes()  # what the stem adds up: the whole change of each image
    moved = best.clone().view(64, -1)
    for row in range(64):
        moved[row].index_put_((indices[row],), changes[row], accumulate=True)
    assert (moved.view_as(best) - proposal).abs().max() < 1e-6

    kept = torch.arange(64) % 2 == 0
    update.keep(images, kept)
    kept_proposal = images.best.reshape(best.shape)
    assert torch.equal(kept_proposal[~kept], best[~kept])  # undone exactly
    assert (kept_proposal[kept] - expected[kept]).abs().max() < 1e-6

    in_rows = _PixelPairs(centre, best)
    update.write(in_rows, kept.nonzero().squeeze(1))  # the change written to the kept rows alone
    assert torch.equal(in_rows.best.reshape(best.shape), kept_proposal)


@pytest.mark.parametrize("size,height,width", [(3, 5, 4), (3, 8, 8), (5, 28, 28), (25, 28, 28)])
def test_two_windows_are_windows_of_the_table_and_know_their_shared_pixels(size, height, width):
    both, outside = _two_windows(500, size, height, width, torch.zeros(1), torch.Generator().manual_seed(0))
    table = window_table(size, height, width, torch.device("cpu"))
    first, second = both.tensor_split(2, dim=1)
    for window in (first, second):  # each a row of the table: a whole window inside the image
        assert (window[:, None, :] == table[None]).all(2).any(1).all()
    inside_second = (first[:, :, None] == second[:, None, :]).any(2)  # [n, s·s]: W₁'s pixel among W₂'s
    assert torch.equal(outside, torch.cat([~inside_second, torch.ones_like(inside_second)], dim=1).float())
    assert inside_second.any() and not inside_second.all()


@pytest.mark.parametrize("norm,channels", [("l2", 1), ("l2", 3), ("linf", 1)])  # windowed, general, L∞
def test_square_takes_one_radius_per_image(norm, channels):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(channels * 64, 4))
    x, y = torch.rand(12, channels, 8, 8), torch.randint(0, 4, (12,))
    one = square(net, x, y, 0.4, norm, 200, generator=torch.Generator().manual_seed(0))
    each = square(net, x, y, torch.full((12,), 0.4, dtype=torch.float64), norm, 200,
                  generator=torch.Generator().manual_seed(0))
    assert torch.equal(one, each)  # the same draws, the same search
    radius = torch.linspace(0.1, 1.2, 12)
    mixed = square(net, x, y, radius, norm, 200, generator=torch.Generator().manual_seed(0))
    size = (mixed - x).flatten(1).norm(p=2 if norm == "l2" else float("inf"), dim=1)
    assert (size <= radius * (1 + 1e-4)).all() and (size >= 0.5 * radius).all()  # each in its own ball, near its edge
    with pytest.raises(ValueError, match="one per image"):
        square(net, x, y, torch.full((5,), 0.4), norm, 10)


def test_an_mlp_has_an_affine_stem_that_reproduces_it():
    torch.manual_seed(0)
    net = MLP([784, 32, 16, 10], mean=0.1307, std=0.3081).eval()
    x = torch.rand(8, 1, 28, 28)
    stem = affine_stem(net, x)
    assert stem is not None and stem.matrix.shape == (784, 32)
    with torch.no_grad():
        assert torch.allclose(stem.tail(stem.pre_activation(x)), net(x), atol=1e-5)
        indices = torch.tensor([[3, 3, 500]] * 8)  # an index twice: both changes add up
        changes = torch.rand(8, 3)
        changed = x.clone().view(8, -1)
        changed[:, 3] += changes[:, 0] + changes[:, 1]
        changed[:, 500] += changes[:, 2]
        moved = stem.moved(stem.pre_activation(x), indices, changes)
        assert torch.allclose(moved, stem.pre_activation(changed.view_as(x)), atol=1e-5)


class Doubled(nn.Module):
    """Holds its layers as ``layers`` but computes something else with them."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * self.layers(x)


@pytest.mark.parametrize("network", [
    MadryCNN(),  # a convolution first
    nn.Sequential(Normalize(0.5, 0.2), nn.Flatten(), nn.ReLU(), nn.Linear(784, 10)),  # not affine before the Linear
    Doubled(),  # its forward is not its layers
    CountingNet(MLP([784, 10])),  # no layers of its own
])
def test_networks_without_an_affine_stem_have_none(network):
    assert affine_stem(network.eval(), torch.rand(4, 1, 28, 28)) is None


def test_square_searches_an_mlp_through_its_stem_as_through_the_whole_network():
    torch.manual_seed(0)
    net = MLP([784, 32, 10], activation="sigmoid", mean=0.1307, std=0.3081).double().eval()
    x = torch.rand(40, 1, 28, 28, dtype=torch.float64)
    with torch.no_grad():
        y = net(x).argmax(1)
    first_layer_calls = []
    net.layers[2].register_forward_hook(lambda *_: first_layer_calls.append(1))
    through_stem = square(net, x, y, 2.0, "l2", 600, generator=torch.Generator().manual_seed(3))
    stem_passes = len(first_layer_calls)  # the start's alone: the stem's check reuses it, re-reads use the stem
    whole = CountingNet(net)  # hides the layers: every query a whole forward pass
    through_network = square(whole, x, y, 2.0, "l2", 600, generator=torch.Generator().manual_seed(3))
    assert (through_stem - through_network).abs().max() < 1e-9  # float64: the same search, query by query
    with torch.no_grad():
        broken = (net(through_stem).argmax(1) != y).sum()
    assert 0 < broken < len(x)  # a radius where the search has work to do
    assert stem_passes == 1 and len(first_layer_calls) - stem_passes > 100  # the stem skipped the first layer
