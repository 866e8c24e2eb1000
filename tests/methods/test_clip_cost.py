"""CLIP's cheap step is the same algorithm: the pair ascent and the penalty against plain reference versions."""

import lightning as L
import pytest
import torch

from lipreg.callbacks import LambdaDiscrepancy
from lipreg.functional import ascend_pairs, difference_quotients, max_quotient, noisy_pairs, pair_quotients
from lipreg.methods import CLIP, SumFLIP
from lipreg.nets import MLP

from ..helpers import BlobsDataModule, quiet_trainer


def reference_ascent(net, u, v, tau, steps, adaptive, box=(0.0, 1.0)):
    """Algorithm 1 written plainly: every step a full forward and backward at the pairs and, with
    adaptive steps, another at the trial points; accepted steps chosen with ``torch.where``."""

    def quotients_and_grads(a, b):
        a, b = a.clone().requires_grad_(True), b.clone().requires_grad_(True)
        q = difference_quotients(net, a, b)
        grad_a, grad_b = torch.autograd.grad(0.5 * q.square().sum(), (a, b))
        return q.detach(), grad_a, grad_b

    def view(t, like):
        return t.view(-1, *([1] * (like.dim() - 1)))

    tau = torch.full((len(u),), tau)
    q, gu, gv = quotients_and_grads(u, v)
    for step in range(steps):
        new_u = (u + view(tau, u) * gu).clamp(*box)
        new_v = (v + view(tau, v) * gv).clamp(*box)
        if not adaptive:
            u, v = new_u, new_v
            if step + 1 < steps:
                q, gu, gv = quotients_and_grads(u, v)
            continue
        new_q, new_gu, new_gv = quotients_and_grads(new_u, new_v)
        accept = new_q >= q
        u, v = torch.where(view(accept, u), new_u, u), torch.where(view(accept, v), new_v, v)
        gu, gv = torch.where(view(accept, u), new_gu, gu), torch.where(view(accept, v), new_gv, gv)
        q = torch.where(accept, new_q, q)
        tau = torch.where(accept, tau * 1.5, tau * 0.5)
    return u, v, tau


@pytest.fixture
def net_and_pairs():
    torch.manual_seed(0)
    net = MLP([64, 32, 32, 10], activation="sigmoid")
    pairs = noisy_pairs(torch.rand(300, 1, 8, 8), 0.1, box=(0.0, 1.0), generator=torch.Generator().manual_seed(1))
    return net, pairs


@pytest.mark.parametrize("steps,adaptive", [(1, True), (3, True), (1, False), (2, False)])
def test_pair_ascent_moves_the_pairs_as_the_plain_algorithm_does(net_and_pairs, steps, adaptive):
    net, pairs = net_and_pairs
    result = ascend_pairs(net, pairs, 5.0, steps=steps, box=(0.0, 1.0), adaptive=adaptive)
    u, v, tau = reference_ascent(net, pairs[0], pairs[1], 5.0, steps, adaptive)
    assert torch.allclose(result.u, u, atol=1e-6) and torch.allclose(result.v, v, atol=1e-6)
    assert torch.allclose(result.step_size, tau)
    if adaptive:  # the returned quotients are those of the returned pairs, from the ascent's own passes
        assert torch.allclose(result.quotients, difference_quotients(net, u, v).detach(), rtol=1e-5)
        assert not torch.equal(tau, torch.full_like(tau, 5.0))  # some steps were rejected or grown
    else:
        assert result.quotients is None


@pytest.mark.parametrize("squared", [False, True])
def test_the_penalty_through_the_top_pair_has_the_full_pass_value_and_gradient(net_and_pairs, squared):
    net, pairs = net_and_pairs
    module = CLIP(net, lam=1.0, pair_init="box", num_pairs=300, adaptive_step=True, squared=squared)
    moved = ascend_pairs(net, pairs, 5.0, steps=1, box=(0.0, 1.0), adaptive=True)

    def value_and_gradient(penalty_of):
        net.zero_grad(set_to_none=True)
        value = penalty_of()
        value.backward()
        return value.detach(), [p.grad.clone() for p in net.parameters()]

    cheap, cheap_grads = value_and_gradient(lambda: module.reduce(moved).value)
    full, full_grads = value_and_gradient(lambda: max_quotient(pair_quotients(net, moved.pairs), squared))
    assert cheap == pytest.approx(full.item(), rel=1e-5)
    for a, b in zip(cheap_grads, full_grads, strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-7)


def test_sumflip_still_back_propagates_through_every_pair(net_and_pairs):
    net, pairs = net_and_pairs
    module = SumFLIP(net, lam=1.0, pair_init="box", num_pairs=300)
    moved = ascend_pairs(net, pairs, 5.0, steps=1, box=(0.0, 1.0), adaptive=True)
    penalty = module.reduce(moved)
    assert penalty.value.item() == pytest.approx(pair_quotients(net, moved.pairs).mean().item(), rel=1e-6)
    assert penalty.lip.item() == pytest.approx(moved.quotients.max().item(), rel=1e-5)


@pytest.mark.parametrize("adaptive", [True, False])
def test_a_seeded_run_follows_the_same_lambda_and_pair_trajectory_as_the_full_pass(adaptive):
    """``batch_dependent=True`` sends every pair through the network with a graph (the plain algorithm)."""

    def run(full_pass: bool) -> tuple[list[float], CLIP]:
        L.seed_everything(0)
        module = CLIP(MLP([2, 16, 3], "tanh"), lam=0.2, pair_init="heldout", adaptive_step=adaptive,
                      optimizer=lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9))
        module.batch_dependent = full_pass
        lambdas = []

        class Record(L.Callback):
            def on_train_epoch_end(self, trainer, pl_module):
                lambdas.append(float(pl_module.lam))

        quiet_trainer(max_epochs=2, callbacks=[LambdaDiscrepancy(target=0.5, step=0.1), Record()]).fit(
            module, BlobsDataModule())
        return lambdas, module

    cheap_lambdas, cheap = run(False)
    full_lambdas, full = run(True)
    assert cheap_lambdas == full_lambdas and cheap_lambdas[-1] > 0
    assert torch.equal(cheap.pair_step, full.pair_step)  # every pair accepted and rejected the same steps
    # float rounding of a 2-row and a full-batch pass, grown by step sizes up to 1.5^steps: measured 5e-5
    assert torch.allclose(cheap.pairs, full.pairs, atol=1e-4)
    for (name, a), b in zip(cheap.net.state_dict().items(), full.net.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-5), name


@pytest.mark.parametrize("adaptive", [True, False])
def test_the_ascent_in_chunks_and_in_place_equals_the_ascent_in_one_piece(net_and_pairs, monkeypatch, adaptive):
    import lipreg.functional.pairs as pairs_module

    net, pairs = net_and_pairs
    whole = ascend_pairs(net, pairs, 5.0, steps=2, box=(0.0, 1.0), adaptive=adaptive, chunked=False)
    monkeypatch.setattr(pairs_module, "CHUNK_BYTES", 2 * 64 * 4 * 7)  # 7 pairs a chunk: 43 chunks
    in_place = pairs.clone()
    chunked = ascend_pairs(net, in_place, 5.0, steps=2, box=(0.0, 1.0), adaptive=adaptive, out=in_place)
    assert chunked.pairs is in_place
    assert torch.allclose(chunked.pairs, whole.pairs, atol=1e-6) and torch.equal(chunked.step_size, whole.step_size)
    if adaptive:
        assert torch.allclose(chunked.quotients, whole.quotients, rtol=1e-5)


def fit_clip(epochs: int = 2, **options) -> CLIP:
    L.seed_everything(0)
    module = CLIP(MLP([2, 16, 3], "tanh"), lam=0.2, pair_init="heldout", adaptive_step=True,
                  optimizer=lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9), **options)
    quiet_trainer(max_epochs=epochs, callbacks=[LambdaDiscrepancy(target=0.5, step=0.1)]).fit(
        module, BlobsDataModule(lipschitz_size=40))
    return module


def test_an_active_set_as_large_as_the_pair_set_is_the_full_set():
    full = fit_clip()
    active = fit_clip(active_pairs=40)
    assert torch.equal(active.pair_step, full.pair_step) and torch.allclose(active.pairs, full.pairs, atol=1e-5)
    assert active.pair_quotients.shape == (40,) and full.pair_quotients is None


def test_the_active_set_takes_the_top_pairs_and_revisits_every_pair():
    module = CLIP(MLP([2, 3]), pair_init="box", num_pairs=10, active_pairs=2, revisit_every=4)
    module.pair_quotients = torch.tensor([0.0, 5.0, 1.0, 0.0, 0.0, 0.0, 0.0, 9.0, 0.0, 0.0])
    visited = set()
    for step in range(4):
        index = module.active_index(10, step).tolist()
        assert {1, 7} <= set(index) and len(index) == len(set(index)) == 2 + 3  # fixed size: no host sync
        visited |= set(index)
    assert visited == set(range(10))


def test_a_small_active_set_moves_fewer_pairs_and_its_quotients_survive_a_checkpoint():
    module = fit_clip(epochs=1, active_pairs=5, revisit_every=4)
    assert module.pair_quotients.shape == (40,) and (module.pair_quotients > 0).all()
    checkpoint = {"lipreg": {}}
    module.on_save_checkpoint(checkpoint)
    restored = CLIP(MLP([2, 16, 3], "tanh"), pair_init="heldout", active_pairs=5)
    restored.on_load_checkpoint(checkpoint)
    assert torch.equal(restored.pair_quotients, module.pair_quotients)
    assert torch.equal(restored.pairs, module.pairs)


def test_sumflip_refuses_an_active_set():
    from lipreg.errors import LipregError

    with pytest.raises(LipregError, match="SumFLIP needs every pair"):
        SumFLIP(MLP([2, 3]), active_pairs=10)
    with pytest.raises(LipregError, match="active_pairs >= 1"):
        CLIP(MLP([2, 3]), active_pairs=0)
