"""Two processes on CPU (gloo): DDP training, agreement of λ/ε/weights, evaluation, resume, torchrun."""

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lipreg.cli import run
from lipreg.methods import LipRegModule

REPO = Path(__file__).resolve().parents[1]
DDP = ["--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp"]

pytestmark = pytest.mark.slow


def lipreg(*args: str, cwd: Path = REPO, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``python -m lipreg`` from the repository root (so ``tests.ddp_helpers`` is importable)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "lipreg", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def method_args(method: str, data_dir: Path, root: Path, *extra_callbacks: str, pgd_samples: int = 500) -> list[str]:
    """configs/mnist_<method>.yaml on 400 Lipschitz images, an easy target so λ moves every epoch,
    PGD validation on the first 500 images, and ProcessAgreement guarding every epoch. The list
    replaces the config's callbacks, so ``lipreg fit``'s own ``latest-…`` checkpoint (every epoch) is used."""
    callbacks = "".join(f"\n    - class_path: {c}" for c in ["lipreg.callbacks.ProcessAgreement", *extra_callbacks])
    root.mkdir(parents=True, exist_ok=True)
    override = root / "override.yaml"
    override.write_text(f"""
trainer:
  default_root_dir: {root}
  enable_progress_bar: false
  max_epochs: 2
  limit_train_batches: 6
  logger:
    class_path: lightning.pytorch.loggers.CSVLogger
    init_args:
      save_dir: {root}
  callbacks:
    - class_path: lipreg.callbacks.LambdaDiscrepancy
      init_args: {{target: 0.05, step: 0.05}}
    - class_path: lipreg.callbacks.PGDValidation
      init_args: {{epsilon: 2.0, step_size: 0.5, steps: 7, sample_size: {pgd_samples}}}{callbacks}
data:
  init_args:
    data_dir: {data_dir}
    lipschitz_size: 400
""")
    return ["--config", str(REPO / "configs" / f"mnist_{method}.yaml"), "--config", str(override)]


def last_logged(root: Path, name: str) -> float:
    (metrics,) = root.glob("lightning_logs/version_*/metrics.csv")
    rows = [r for r in csv.DictReader(metrics.open()) if r.get(name)]
    return float(rows[-1][name])


def test_two_process_clip_agrees_across_ranks_and_matches_single_process_evaluation(tmp_path: Path, data_dir: Path):
    # LambdaDiscrepancy with an easy target raises λ every epoch; ProcessAgreement fails the run
    # if λ, ε or the weights differ between the two processes after any epoch.
    result = lipreg("fit", *method_args("clip", data_dir, tmp_path), *DDP)
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoint = next(tmp_path.glob("lightning_logs/version_*/checkpoints/latest-epoch=1-*.ckpt"))
    state = torch.load(checkpoint, weights_only=True, map_location="cpu")
    assert state["state_dict"]["lam"].item() == pytest.approx(0.1)  # raised after both epochs
    assert state["lipreg"]["pair_set"]["u"].shape[:2] == (2, 200)  # each process's share is saved
    ddp_pgd = last_logged(tmp_path, "val/pgd_acc")
    single = run(["validate", *method_args("clip", data_dir, tmp_path / "single"), "--ckpt_path", str(checkpoint)])
    # the same 500 validation images, sharded in DDP, whole in one process (one image may flip
    # through last-bit differences of batched arithmetic)
    assert single.trainer.callback_metrics["val/pgd_acc"].item() == pytest.approx(ddp_pgd, abs=1.5 / 500)

    # `lipreg predict` in two processes writes one file with the whole test split, in order
    predicted = lipreg("predict", *method_args("clip", data_dir, tmp_path / "predict"), *DDP,
                       "--ckpt_path", str(checkpoint))
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    written = checkpoint.parents[1] / "predict" / checkpoint.stem / "predictions.pt"  # beside the checkpoint
    outputs = torch.load(written, weights_only=True)["outputs"]
    model = LipRegModule.load_from_checkpoint(checkpoint, map_location="cpu").eval()
    test_images = single.datamodule.splits.test[0]
    with torch.no_grad():
        assert torch.allclose(outputs, model(test_images), atol=1e-5)

    # `lipreg test` in two processes: the report's clean accuracy is that of the whole test split
    quick = ["--evaluation.sample_size", "200", "--evaluation.pgd_steps", "3", "--evaluation.lipschitz_pairs", "50",
             "--evaluation.train_accuracy", "false", "--evaluation.apgd_steps", "5", "--evaluation.apgd_targets", "2",
             "--evaluation.square_queries", "50"]
    tested = lipreg("test", *method_args("clip", data_dir, tmp_path / "test"), *DDP, "--ckpt_path", str(checkpoint),
                    *quick)
    assert tested.returncode == 0, tested.stderr[-3000:]
    report = checkpoint.parents[1] / "test" / checkpoint.stem / "robustness.json"
    labels = single.datamodule.splits.test[1]
    saved = torch.load(written, weights_only=True)
    assert torch.equal(saved["targets"], labels)
    accuracy = (saved["predictions"] == labels).float().mean().item()
    written_report = json.loads(report.read_text())
    assert written_report["clean"] == pytest.approx(accuracy, abs=1e-6)
    assert written_report["attack_samples"] == 200  # counted over both processes, not rank 0's 100


def test_agreement_check_catches_processes_that_drift_apart(tmp_path: Path, data_dir: Path):
    result = lipreg("fit", *method_args("clip", data_dir, tmp_path, "tests.ddp_helpers.SkewWeightsOnRankOne"), *DDP)
    assert result.returncode != 0
    assert "processes disagree on weight sum" in result.stderr


@pytest.mark.parametrize("method", ["clip", "ptv"])
def test_ddp_run_resumes_from_its_checkpoint(tmp_path: Path, data_dir: Path, method: str):
    extra = ["lipreg.callbacks.EpsilonDecay"] if method == "ptv" else []
    first = lipreg("fit", *method_args(method, data_dir, tmp_path, *extra), *DDP)
    assert first.returncode == 0, first.stderr[-3000:]
    checkpoint = next(tmp_path.glob("lightning_logs/version_0/checkpoints/latest-epoch=1-*.ckpt"))
    resumed = lipreg("fit", *method_args(method, data_dir, tmp_path, *extra), *DDP, "--trainer.max_epochs", "3",
                     "--ckpt_path", str(checkpoint))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    # the resumed run continues in its own directory
    state = torch.load(next(tmp_path.glob("lightning_logs/version_0/checkpoints/latest-epoch=2-*.ckpt")),
                       weights_only=True)
    assert state["epoch"] == 2
    if method == "clip":
        assert state["lipreg"]["pair_set"]["u"].shape[:2] == (2, 200)
    else:
        assert state["state_dict"]["epsilon"].item() == pytest.approx(1.0 * 0.9**3)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_nodes_through_torchrun(tmp_path: Path):
    port = str(free_port())
    fit = ["-m", "lipreg", "fit", "--config", str(REPO / "configs" / "regression_clip.yaml"),
           "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.num_nodes", "2",
           "--trainer.strategy", "ddp", "--trainer.max_epochs", "3", "--trainer.check_val_every_n_epoch", "1",
           "--trainer.default_root_dir", str(tmp_path),
           "--trainer.callbacks+=lipreg.callbacks.ProcessAgreement"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
                "--master_addr", "127.0.0.1", "--master_port", port]
    nodes = [subprocess.Popen([*torchrun, "--node_rank", str(rank), *fit], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    outputs = [node.communicate(timeout=600) for node in nodes]
    for node, (_, err) in zip(nodes, outputs, strict=True):
        assert node.returncode == 0, err[-3000:]
    assert "max_epochs=3` reached" in outputs[0][1]
    assert list(tmp_path.glob("lightning_logs/version_0/checkpoints/*.ckpt"))


def test_entry_point_destroys_the_process_group_after_a_run(monkeypatch: pytest.MonkeyPatch):
    """Left alive, gloo's threads may abort the interpreter at exit (``terminate called without an
    active exception``, exit code -6) after a DDP run that finished its work."""
    import lipreg.cli

    monkeypatch.setattr(lipreg.cli, "run", lambda args=None: None)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        lipreg.cli.main([])
        assert not torch.distributed.is_initialized()
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def test_ddp_without_samples_on_a_rank_then_resumed_on_three_processes_then_interrupted(tmp_path: Path,
                                                                                        data_dir: Path):
    """Each run is bounded by a timeout: a rank that skips a collective the others wait in hangs them.

    1. two processes, PGD validation on one image: rank 1 attacks none and must still join the reduction;
    2. resumed on three processes: 400 pairs re-dealt as 3 × 133 (the all-gather at the next
       checkpoint needs equal shares; unequal ones crashed with "Received data size doesn't match");
    3. resumed on two again, Ctrl-C in rank 0 in mid-epoch: the run ends at once (a save at the
       interrupt would meet the other process in mismatched collectives) and the last epoch's
       checkpoint is complete and resumable.
    """
    first = lipreg("fit", *method_args("clip", data_dir, tmp_path, pgd_samples=1), *DDP, "--trainer.max_epochs", "1",
                   timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    assert 0 <= last_logged(tmp_path, "val/pgd_acc") <= 1
    checkpoints = tmp_path / "lightning_logs" / "version_0" / "checkpoints"
    three = [*DDP[:2], "--trainer.devices", "3", *DDP[4:]]
    resumed = lipreg("fit", *method_args("clip", data_dir, tmp_path, pgd_samples=1), *three,
                     "--trainer.max_epochs", "2", "--ckpt_path", str(next(checkpoints.glob("latest-epoch=0-*.ckpt"))),
                     timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    latest = next(checkpoints.glob("latest-epoch=1-*.ckpt"))
    state = torch.load(latest, weights_only=True)
    assert state["lipreg"]["pair_set"]["u"].shape[:2] == (3, 133)
    interrupted = lipreg("fit", *method_args("clip", data_dir, tmp_path, "tests.ddp_helpers.InterruptOnRankZero"),
                         *DDP, "--trainer.max_epochs", "4", "--ckpt_path", str(latest), timeout=300)
    assert interrupted.returncode != 0
    assert "interrupted: under DDP no checkpoint is saved at the interrupt; the latest is" in interrupted.stdout
    assert not list(checkpoints.glob("latest-epoch=2-*.ckpt"))
    again = run(["validate", *method_args("clip", data_dir, tmp_path / "after"), "--ckpt_path", str(latest)])
    assert again.trainer.callback_metrics["val/pgd_acc"] >= 0
    assert torch.load(latest, weights_only=True)["lipreg"]["pair_set"]["u"].shape[:2] == (3, 133)
