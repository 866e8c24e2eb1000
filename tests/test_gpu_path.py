"""The GPU and DDP code paths, proven on a CPU: faked setup device, precision, host syncs, shares, batch sizes."""

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from lipreg.callbacks import EpochTimer, LambdaDiscrepancy
from lipreg.cli import run
from lipreg.data import MNISTDataModule
from lipreg.functional import ascend_pairs, discrepancy_step, discrepancy_step_tensor, noisy_pairs, pair_quotients
from lipreg.functional.pairs import CHUNK_BYTES, chunk_length
from lipreg.methods import CLIP, PTV, TV, SumFLIP
from lipreg.nets import MLP
from tests.conftest import CONFIGS
from tests.helpers import BlobsDataModule, HostSyncCounter, SetupPassed, fake_setup_device, quiet_trainer

REPO = Path(__file__).resolve().parents[1]


def config_args(config: Path, data_dir: Path | None) -> list[str]:
    args = ["--config", str(config), "--trainer.logger", "false", "--quiet", "true"]
    if not config.name.startswith("regression"):
        args += ["--data.init_args.data_dir", str(data_dir)]
    return args


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.stem)
def test_every_config_sets_up_while_lightning_fakes_the_gpu_device(config: Path, data_dir: Path,
                                                                   monkeypatch: pytest.MonkeyPatch):
    """On a GPU ``setup`` sees ``self.device`` = the GPU while the weights are on the CPU; every config
    stopped there with "cannot take …'s inputs … same device" before the probe asked the weights."""
    fake_setup_device(monkeypatch)
    with pytest.raises(SetupPassed):
        run(["fit", *config_args(config, data_dir)])


@pytest.mark.parametrize("subcommand", ["validate", "test", "predict"])
@pytest.mark.parametrize("config", ["mnist_clip", "fmnist_clip", "regression_clip"])
def test_evaluation_commands_set_up_while_lightning_fakes_the_gpu_device(subcommand: str, config: str, data_dir: Path,
                                                                         monkeypatch: pytest.MonkeyPatch):
    fake_setup_device(monkeypatch)
    with pytest.raises(SetupPassed):
        run([subcommand, *config_args(REPO / "configs" / f"{config}.yaml", data_dir), "--untrained", "true"])


def test_a_run_whose_setup_saw_a_faked_device_trains_and_tests_on_the_cpu(data_dir: Path,
                                                                          monkeypatch: pytest.MonkeyPatch):
    """Nothing built in a setup hook keeps the faked device: the run goes on and tests."""
    fake_setup_device(monkeypatch, stop=False)
    limits = ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", "3", "--trainer.limit_val_batches", "1",
              "--data.init_args.lipschitz_size", "200", "--trainer.callbacks", "[]"]
    cli = run(["fit", *config_args(REPO / "configs" / "mnist_clip.yaml", data_dir), *limits])
    assert cli.trainer.callback_metrics["train/lip"] > 0
    tested = run(["test", *config_args(REPO / "configs" / "mnist_clip.yaml", data_dir), "--untrained", "true",
                  "--trainer.limit_test_batches", "1", "--evaluation.sample_size", "20", "--evaluation.pgd_steps", "2",
                  "--evaluation.ensemble", "[]", "--evaluation.lipschitz_pairs", "20",
                  "--evaluation.train_accuracy", "false"])
    assert 0 <= tested.trainer.callback_metrics["test/acc"] <= 1


@pytest.mark.parametrize("precision", ["bf16-true", "16-true", "64-true"])
def test_precisions_that_cast_the_weights_are_refused_in_one_line(precision: str, capsys: pytest.CaptureFixture):
    with pytest.raises(SystemExit) as stop:
        run(["fit", "--config", str(REPO / "configs" / "regression_clip.yaml"), "--trainer.precision", precision,
             "--trainer.max_epochs", "1"])
    message = str(stop.value)
    assert message.startswith("lipreg: error: trainer.precision") and precision in message and "\n" not in message
    assert "bf16-mixed" in message


def mnist_mlp() -> MLP:
    torch.manual_seed(0)
    return MLP(widths=[784, 64, 64, 10], activation="sigmoid")


def test_pair_ascent_and_quotients_under_autocast_agree_with_float32():
    """bf16 logits gave a 37 % median quotient error and flipped half the accept decisions at
    initialisation; the pair maths now runs in float32 whatever the autocast around it."""
    net = mnist_mlp()
    images = torch.rand(300, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    pairs = noisy_pairs(images, 0.1, box=(0.0, 1.0), generator=torch.Generator().manual_seed(2))
    exact = ascend_pairs(net, pairs, 0.1, steps=3, box=(0.0, 1.0), adaptive=True)
    exact_quotients = pair_quotients(net, exact.pairs)
    for dtype in (torch.bfloat16, torch.float16):
        with torch.autocast("cpu", dtype=dtype):
            mixed = ascend_pairs(net, pairs, 0.1, steps=3, box=(0.0, 1.0), adaptive=True)
            quotients = pair_quotients(net, exact.pairs)
        assert quotients.dtype == torch.float32
        assert torch.equal(mixed.step_size, exact.step_size)  # every accept decision as in float32
        assert torch.allclose(mixed.quotients, exact.quotients, rtol=1e-5)
        assert torch.allclose(quotients, exact_quotients, rtol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        rounded = net(pairs.flatten(0, 1))  # what a quotient would be made of without the float32 context
    assert rounded.dtype == torch.bfloat16


def test_clip_penalty_in_a_bf16_mixed_step_equals_the_float32_penalty():
    images = torch.rand(64, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    values = []
    for autocast in (False, True):
        module = CLIP(mnist_mlp(), lam=0.1, pair_init="batch", adaptive_step=True, step_size=0.1)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            values.append(module.penalty(images, torch.zeros(64, dtype=torch.long)).value)
    assert values[1].dtype == torch.float32
    assert values[1].item() == pytest.approx(values[0].item(), rel=1e-5)


def test_the_sync_counter_sees_the_operations_that_wait_for_a_gpu():
    x, rows = torch.arange(6.0), torch.tensor([0, 1])
    with HostSyncCounter() as counter:
        x.sum().item()
        _ = x[x > 2]
        x.nonzero()
        torch.as_tensor(0.5)
        bool(x.any())
        _ = x[rows]  # an integer index needs no sync
    assert counter.calls == {"item": 1, "boolean mask": 1, "nonzero": 1, "tensor from host data": 1, "bool": 1}


def syncs_in_training_steps(module: torch.nn.Module, *callbacks) -> dict[str, int]:
    """Host syncs counted in training steps 2 to 5 (step 0 draws a fresh pair set) and the callbacks' batch ends."""
    counter = HostSyncCounter()
    original = module.training_step

    def counted_step(batch, batch_idx=0):
        if module.global_step < 2:
            return original(batch, batch_idx)
        with counter:
            return original(batch, batch_idx)

    module.training_step = counted_step
    for callback in callbacks:
        end = callback.on_train_batch_end

        def counted_end(trainer, *args, _end=end):
            if trainer.global_step < 2:
                return _end(trainer, *args)
            with counter:
                return _end(trainer, *args)

        callback.on_train_batch_end = counted_end
    quiet_trainer(max_epochs=1, limit_train_batches=6, callbacks=list(callbacks)).fit(module, BlobsDataModule())
    return counter.calls


def blobs_mlp() -> MLP:
    return MLP(widths=[2, 16, 3])


@pytest.mark.parametrize("method", ["clip", "clip-active", "sumflip", "tv", "ptv"])
def test_a_training_step_makes_no_host_synchronisation(method: str):
    modules = {
        "clip": lambda: CLIP(blobs_mlp(), lam=0.1, adaptive_step=True),
        "clip-active": lambda: CLIP(blobs_mlp(), lam=0.1, adaptive_step=True, active_pairs=4, revisit_every=5),
        "sumflip": lambda: SumFLIP(blobs_mlp(), lam=0.1),
        "tv": lambda: TV(blobs_mlp(), lam=0.1, ascent_steps=2),
        "ptv": lambda: PTV(blobs_mlp(), lam=0.1),
    }
    assert syncs_in_training_steps(modules[method]()) == {}


def test_the_step_wise_discrepancy_rule_makes_no_host_synchronisation_and_moves_lambda():
    module = PTV(blobs_mlp(), lam=0.1)
    rule = LambdaDiscrepancy(target=0.05, step=0.01, every_n_steps=1)
    assert syncs_in_training_steps(module, rule) == {}
    assert module.lam.item() == pytest.approx(0.1 + 6 * 0.01, abs=1e-6)  # accuracy above 5 %: raised every step


@pytest.mark.parametrize("coefficient", [0.0, 0.05, 0.1, 0.10000000149011612, 1.0])
@pytest.mark.parametrize("accuracy", [0.5, 0.9, 0.95])
def test_discrepancy_step_on_tensors_is_the_host_rule(coefficient: float, accuracy: float):
    for maximum in (None, 0.12):
        expected = discrepancy_step(coefficient, accuracy, 0.9, 0.1, 0.0, maximum)
        got = discrepancy_step_tensor(torch.tensor(coefficient), torch.tensor(accuracy), 0.9, 0.1, 0.0, maximum)
        assert got.item() == pytest.approx(expected, abs=1e-7)


def test_active_index_is_the_rotating_slice_and_the_largest_quotients_outside_it():
    module = CLIP(blobs_mlp(), active_pairs=3, revisit_every=4)
    module.pair_quotients = torch.tensor([9.0, 1, 8, 2, 7, 3, 6, 4, 5, 0])  # P = 10: a slice of 3
    index = module.active_index(10, step=0)  # slice 0, 1, 2; largest outside: 4 (7), 6 (6), 8 (5)
    assert sorted(index.tolist()) == [0, 1, 2, 4, 6, 8]
    index = module.active_index(10, step=3)  # slice 9, 0, 1 (wraps round)
    assert sorted(index.tolist()) == [0, 1, 2, 4, 6, 9]
    module.active_pairs = 20  # more than remain: every pair, once
    assert sorted(module.active_index(10, step=1).tolist()) == list(range(10))


def fake_trainer(world: int, rank: int) -> SimpleNamespace:
    return SimpleNamespace(world_size=world, global_rank=rank, global_step=0, datamodule=None)


def attach(module: torch.nn.Module, world: int, rank: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(type(module), "global_rank", property(lambda self: self._trainer.global_rank))
    module._trainer = fake_trainer(world, rank)


def test_resuming_on_another_number_of_processes_re_deals_equal_shares(monkeypatch: pytest.MonkeyPatch):
    """A 2-process set of 2 × 500 pairs re-dealt to 3 processes: 333 each (all-gathered at the next
    checkpoint, which needs equal shares), every pair at most once."""
    saved = torch.arange(1000.0).view(2, 500, 1)  # pair i holds the value i (rank r saved pairs r, r + 2, …)
    checkpoint = {"lipreg": {"pair_set": {"u": saved, "v": saved + 0.5, "step": saved.squeeze(-1),
                                          "quotients": saved.squeeze(-1)}}}
    shares = []
    for rank in range(3):
        module = CLIP(blobs_mlp())
        attach(module, 3, rank, monkeypatch)
        module.on_load_checkpoint(checkpoint)
        assert module.pairs.shape == (2, 333, 1) and module.pair_step.shape == (333,)
        assert torch.equal(module.pairs[1], module.pairs[0] + 0.5) and module.pair_quotients.shape == (333,)
        shares.append(module.pairs[0].flatten())
    dealt = torch.cat(shares)
    assert len(dealt.unique()) == 999


def test_box_pairs_are_split_across_processes(monkeypatch: pytest.MonkeyPatch):
    shares = []
    for rank in range(2):
        module = CLIP(blobs_mlp(), pair_init="box", num_pairs=200)
        module.input_box = (0.0, 1.0)
        attach(module, 2, rank, monkeypatch)
        shares.append(module.initial_pairs(torch.zeros(4, 2)))
    assert shares[0].shape == (2, 100, 2) and not torch.equal(shares[0], shares[1])  # 200 in all, drawn per rank


def test_the_pair_ascent_is_chunked_on_a_cpu_and_in_one_piece_on_a_gpu():
    pair_bytes = 2 * 784 * 4
    assert chunk_length(6000, pair_bytes, torch.device("cpu"), chunked=True) == CHUNK_BYTES // pair_bytes
    assert chunk_length(6000, pair_bytes, torch.device("cuda"), chunked=True) == 6000
    assert chunk_length(6000, pair_bytes, torch.device("cpu"), chunked=False) == 6000


def test_global_batch_size_is_divided_among_the_processes(monkeypatch: pytest.MonkeyPatch):
    data = MNISTDataModule(global_batch_size=256)
    monkeypatch.setattr(data, "_process_layout", lambda: (4, 1))
    assert data.process_batch_size() == 64
    assert MNISTDataModule(batch_size=128).process_batch_size() == 128
    monkeypatch.setattr(data, "_process_layout", lambda: (3, 0))
    with pytest.raises(ValueError, match="not divisible by the 3 processes"):
        data.process_batch_size()


def test_tf32_is_off_unless_asked_for():
    args = ["fit", "--config", str(REPO / "configs" / "regression_standard.yaml"), "--trainer.max_epochs", "1",
            "--quiet", "true", "--trainer.callbacks", "[]"]
    try:
        torch.backends.cudnn.allow_tf32 = True  # PyTorch's own default
        run(args)
        assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
        run([*args, "--tf32", "true"])
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = True, False


def test_epoch_timer_waits_for_the_gpu_before_each_reading(monkeypatch: pytest.MonkeyPatch):
    waits = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: waits.append(device))
    timer, module = EpochTimer(), SimpleNamespace(device=torch.device("cuda", 0))
    timer.on_train_epoch_start(None, module)
    timer.on_validation_start(None, module)
    timer.on_validation_end(None, module)
    timer.on_train_epoch_end(None, module)
    assert len(waits) == 4 and len(timer.times) == 1
    EpochTimer().on_train_epoch_start(None, SimpleNamespace(device=torch.device("cpu")))
    assert len(waits) == 4  # nothing to wait for on a CPU


def test_apgd_and_square_read_the_device_once_an_iteration():
    """APGD: one read at the start and one a step (stop, compact, or keep a new adversarial) and one index
    per compaction; Square on an MLP: one read a query (how many images took its change and how many
    it broke), one more after a query that broke one, and two indices per compaction (the broken and the
    kept rows), never one per state tensor."""
    from lipreg.functional.apgd import apgd, apgd_checkpoints
    from lipreg.functional.square import square

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    x, y = torch.rand(40, 1, 4, 4), torch.randint(0, 3, (40,))
    steps = 20
    with HostSyncCounter() as counter:
        apgd(net, x, y, epsilon=0.5, steps=steps, generator=torch.Generator().manual_seed(0))
    compactions = counter.calls.get("nonzero", 0)
    assert counter.calls.get("tolist", 0) <= steps + 1  # the start's and each step's
    assert compactions <= len(set(apgd_checkpoints(steps))) + steps // 2 and set(counter.calls) <= {"tolist", "nonzero"}
    queries = 30
    with HostSyncCounter() as counter:
        square(net, x, y, epsilon=0.5, queries=queries, generator=torch.Generator().manual_seed(0))
    reads, checks, indices = (counter.calls.get(name, 0) for name in ("tolist", "bool", "nonzero"))
    assert 0 < reads <= queries - 1 and set(counter.calls) <= {"tolist", "bool", "nonzero"}  # the start was one
    assert 0 < indices <= 2 * checks <= 2 * (1 + indices // 2)  # a check after the start only where one broke
