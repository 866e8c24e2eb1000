"""Nothing silently wrong (issue 23): wrong-data checkpoints, SIGTERM, two runs in one folder, an interrupted
test, an exploding loss, broken YAML, a checkpoint folder, a user's own method, and checkpoints that
survive SIGKILL. Each test failed on the code before that issue."""

import json
import os
import random
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml

from lipreg.cli import run
from lipreg.runs import AtomicCheckpointIO, claim_version

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
REGRESSION = str(CONFIGS / "regression_standard.yaml")
CONSOLE_SCRIPT = Path(sys.executable).parent / "lipreg"


def error_line(info: pytest.ExceptionInfo) -> str:
    return str(info.value.code)


def start(*args: str, cwd: Path) -> subprocess.Popen:
    """``python -m lipreg ARGS`` in ``cwd`` (the repository importable), its output captured."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "lipreg", *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for_file(pattern: str, root: Path, timeout: float = 120) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = sorted(root.glob(pattern))
        if found:
            return found[0]
        time.sleep(0.2)
    raise AssertionError(f"no {pattern} below {root} after {timeout} s")


# ---------------------------------------------------------------------------- checkpoints of other data
@pytest.fixture
def fmnist_checkpoint(data_dir: Path, tmp_path: Path) -> Path:
    run(["fit", "--config", str(CONFIGS / "fmnist_standard.yaml"), "--data.init_args.data_dir", str(data_dir),
         "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1",
         "--trainer.callbacks", "[]", "--quiet", "true"])
    (checkpoint,) = (tmp_path / "lightning_logs" / "version_0" / "checkpoints").glob("latest-*.ckpt")
    return checkpoint


def test_a_checkpoint_trained_on_other_data_than_the_config_is_named(fmnist_checkpoint: Path, data_dir: Path):
    with pytest.raises(SystemExit) as info:  # loaded the CNN and tested it on MNIST, without a word
        run(["test", "--config", str(CONFIGS / "mnist_standard.yaml"), "--data.init_args.data_dir", str(data_dir),
             "--ckpt_path", str(fmnist_checkpoint)])
    line = error_line(info)
    assert "was trained on FashionMNISTDataModule but the config's data is MNISTDataModule" in line
    assert "use its run's config: --config" in line and "version_0/config.yaml" in line and "\n" not in line


def test_a_classifier_checkpoint_with_a_regression_config_names_the_mismatch(fmnist_checkpoint: Path,
                                                                             tmp_path: Path):
    with pytest.raises(SystemExit) as info:  # said "set --model.init_args.task regression"
        run(["test", "--config", REGRESSION, "--ckpt_path", str(fmnist_checkpoint)])
    assert "was trained on FashionMNISTDataModule but the config's data is RegressionDataModule" in error_line(info)
    # a checkpoint from before lipreg recorded its data: the task still tells them apart
    state = torch.load(fmnist_checkpoint, weights_only=True)
    del state["lipreg"]["data_class_path"]
    older = tmp_path / "older.ckpt"
    torch.save(state, older)
    with pytest.raises(SystemExit) as info:
        run(["test", "--config", REGRESSION, "--ckpt_path", str(older)])
    assert "older.ckpt is a classification network but the config is for regression" in error_line(info)
    assert "task regression" not in error_line(info)


def test_a_checkpoint_folder_as_ckpt_path_lists_the_checkpoints_in_it(tmp_path: Path):
    run(["fit", "--config", REGRESSION, "--trainer.max_epochs", "2", "--quiet", "true"])
    folder = tmp_path / "lightning_logs" / "version_0" / "checkpoints"
    with pytest.raises(SystemExit) as info:
        run(["test", "--config", REGRESSION, "--ckpt_path", str(folder)])
    expected = f"lipreg: error: --ckpt_path {folder} is a folder; checkpoints in it: latest-epoch=1-step=2.ckpt"
    assert error_line(info) == expected


# ---------------------------------------------------------------------------- signals and interrupts
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stopped_test_ends_promptly_and_marks_its_folder_incomplete(signum: int, data_dir: Path, tmp_path: Path):
    """SIGTERM (``timeout``, schedulers) was noted and ignored for 9 minutes; Ctrl-C left the folder unmarked."""
    process = start("test", "--config", str(CONFIGS / "mnist_standard.yaml"), "--data.init_args.data_dir",
                    str(data_dir), "--untrained", "true", "--evaluation.certificate", "smoothing",
                    "--evaluation.smoothing_samples", "100000000", cwd=tmp_path)  # an untrained net breaks in
    try:  # seconds; the smoothed certificate's 10⁸ noise draws an image keep the first chunk busy for hours
        wait_for_file("lightning_logs/version_0/config.yaml", tmp_path)
        time.sleep(2)  # inside the first test batch
        process.send_signal(signum)
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode != 0
    folder = tmp_path / "lightning_logs" / "version_0"
    assert (folder / "INCOMPLETE").is_file() and not (folder / "robustness.json").exists()
    assert "lipreg test interrupted: " in out
    partial = folder / "robustness.partial.json"
    if partial.exists():  # the chunks finished before the signal are kept (an untrained net breaks fast)
        assert json.loads(partial.read_text())["incomplete"]
        assert "version_0 holds the finished images' results in robustness.partial.json and is marked INCOMPLETE" in out
    else:
        assert "version_0 holds no results and is marked INCOMPLETE" in out
    if signum == signal.SIGTERM:
        assert "lipreg: received SIGTERM, stopping as on Ctrl-C" in err


def test_sigterm_stops_fit_with_a_resumable_checkpoint(tmp_path: Path):
    process = start("fit", "--config", REGRESSION, "--trainer.max_epochs", "1000000", cwd=tmp_path)
    try:
        wait_for_file("lightning_logs/version_0/checkpoints/latest-*.ckpt", tmp_path)
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode != 0 and "interrupted: saved" in out, err[-2000:]
    saved = out.split("interrupted: saved ")[1].split()[0]
    resumed = run(["fit", "--config", REGRESSION, "--ckpt_path", str(tmp_path / saved), "--quiet", "true",
                   "--trainer.max_epochs", str(torch.load(tmp_path / saved, weights_only=True)["epoch"] + 2)])
    assert resumed.trainer.current_epoch >= 2


# ---------------------------------------------------------------------------- one run, one directory
def test_two_runs_started_at_once_in_one_folder_get_a_directory_each(tmp_path: Path):
    processes = [start("fit", "--config", REGRESSION, "--trainer.max_epochs", "20", cwd=tmp_path) for _ in range(2)]
    outputs = [p.communicate(timeout=300) for p in processes]
    directories = [line for out, _ in outputs for line in out.splitlines() if line.startswith("run directory:")]
    assert sorted(directories) == ["run directory: lightning_logs/version_0", "run directory: lightning_logs/version_1"]
    for version in (0, 1):
        folder = tmp_path / "lightning_logs" / f"version_{version}"
        assert len(list(folder.glob("events.out.tfevents.*"))) == 1 and (folder / "config.yaml").is_file()


def test_claiming_a_version_is_atomic(tmp_path: Path):
    (tmp_path / "runs" / "version_3").mkdir(parents=True)
    claimed: list[int] = []
    threads = [threading.Thread(target=lambda: claimed.append(claim_version(tmp_path, "runs"))) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(claimed) == list(range(4, 20))


# ---------------------------------------------------------------------------- a loss that explodes
def test_a_loss_that_explodes_by_orders_of_magnitude_stops_the_run(data_dir: Path, tmp_path: Path):
    """lr 1e6 trained 19 epochs at a loss of about 4e7 and chance accuracy."""
    with pytest.raises(SystemExit) as info:
        run(["fit", "--config", str(CONFIGS / "mnist_standard.yaml"), "--data.init_args.data_dir", str(data_dir),
             "--model.init_args.optimizer.init_args.lr", "1e6", "--trainer.max_epochs", "2",
             "--trainer.limit_train_batches", "50", "--trainer.callbacks", "[]", "--quiet", "true"])
    line = error_line(info)
    assert line.startswith("lipreg: error: training diverged at epoch 0") and "the loss exploded" in line
    assert not list(tmp_path.rglob("*.ckpt"))


# ---------------------------------------------------------------------------- broken config files
@pytest.mark.parametrize(("text", "says"), [
    ("", "is empty"),
    ("# nothing but a comment\n\n", "is empty"),
    ("model:\n  class_path: [lipreg.methods.Standard\n", "is not valid YAML at line 3"),
    ("trainer:\n  max_epochs: 3\n   devices: 1\n", "is not valid YAML at line 3, column 11: mapping values are not "
                                                    "allowed here"),
    ("- trainer\n", "is a YAML list, not a mapping of options"),
])
def test_a_broken_config_file_is_named_with_what_is_wrong(text: str, says: str, tmp_path: Path):
    config = tmp_path / "mine.yaml"
    config.write_text(text)
    with pytest.raises(SystemExit) as info:
        run(["fit", "--config", REGRESSION, f"--config={config}"])
    line = error_line(info)
    assert line.startswith(f"lipreg: error: config {config} {says}") and "\n" not in line


# ---------------------------------------------------------------------------- a user's own method
USER_METHOD = '''
from torch import Tensor

from lipreg.methods.base import LipRegModule, Penalty


class LogitSquare(LipRegModule):
    """λ · mean squared output."""

    def penalty(self, x: Tensor, y: Tensor) -> Penalty:
        return Penalty(self.net(x).square().mean())
'''


def test_the_console_script_finds_a_method_in_the_working_directory_and_its_closing_command_works(tmp_path: Path):
    (tmp_path / "my_regularisers.py").write_text(USER_METHOD)
    config = yaml.safe_load(Path(REGRESSION).read_text())
    config["model"]["class_path"] = "my_regularisers.LogitSquare"
    config["model"]["init_args"]["lam"] = 0.1
    config["trainer"]["max_epochs"] = 3
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    fit = subprocess.run([str(CONSOLE_SCRIPT), "fit", "--config", "mine.yaml"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert fit.returncode == 0, fit.stderr[-2000:]
    (command,) = [line for line in fit.stdout.splitlines() if line.startswith("evaluate it: ")]
    words = shlex.split(command.removeprefix("evaluate it: "))
    assert words[0] == "lipreg"
    tested = subprocess.run([str(CONSOLE_SCRIPT), *words[1:], "--evaluation.pgd_steps", "2",
                             "--evaluation.apgd_steps", "2", "--evaluation.lipschitz_steps", "2"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert tested.returncode == 0, tested.stderr[-2000:]
    assert "Robustness of LogitSquare" in tested.stdout


# ---------------------------------------------------------------------------- checkpoints under SIGKILL
def test_a_checkpoint_write_cut_short_leaves_the_previous_one_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A kill in the middle of a write, made deterministic: the write leaves half a file and stops."""
    from lightning.fabric.plugins.io import torch_io

    target = tmp_path / "latest.ckpt"
    AtomicCheckpointIO().save_checkpoint({"epoch": 1}, target)

    def cut_short(checkpoint: dict, path: str) -> None:
        Path(path).write_bytes(target.read_bytes()[:40])  # what a killed write leaves behind
        raise KeyboardInterrupt  # stands for the SIGKILL that ends the process here

    monkeypatch.setattr(torch_io, "_atomic_save", cut_short)
    with pytest.raises(KeyboardInterrupt):
        AtomicCheckpointIO().save_checkpoint({"epoch": 2}, target)
    assert torch.load(target, weights_only=True)["epoch"] == 1  # the old one, whole
    with pytest.raises(KeyboardInterrupt):  # Lightning's own writer, as lipreg used it before
        torch_io.TorchCheckpointIO().save_checkpoint({"epoch": 2}, target)
    with pytest.raises(Exception):  # noqa: B017  (torn: whatever torch.load raises for it)
        torch.load(target, weights_only=True)


@pytest.mark.slow
def test_checkpoints_survive_sigkill_at_random_moments(tmp_path: Path):
    """A checkpoint every epoch (a few ms each) and SIGKILL at random moments, so some land inside a
    write: every ``.ckpt`` left behind loads, and each resume goes on from where the last one was."""
    generator = random.Random(0)
    every_epoch = ["--config", REGRESSION, "--trainer.check_val_every_n_epoch", "1", "--trainer.max_epochs", "1000000",
                   "--quiet", "true"]
    checkpoints = tmp_path / "lightning_logs" / "version_0" / "checkpoints"
    process = start("fit", *every_epoch, cwd=tmp_path)
    reached = -1
    for kill in range(5):
        wait_for_file("latest-*.ckpt", checkpoints)
        time.sleep(generator.uniform(3.5, 6.0))  # start-up, then a few hundred epochs
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=60)
        left = sorted(checkpoints.glob("*.ckpt"), key=lambda p: p.stat().st_mtime)
        assert left, f"kill {kill}: no checkpoint left"
        for checkpoint in left:  # every one complete (a torn write would fail to load)
            torch.load(checkpoint, weights_only=True, map_location="cpu")
        newest = left[-1]
        epoch = torch.load(newest, weights_only=True)["epoch"]
        assert epoch >= reached, f"kill {kill}: the newest checkpoint went back from epoch {reached} to {epoch}"
        reached = epoch
        process = start("fit", *every_epoch, "--ckpt_path", str(newest), cwd=tmp_path)
    process.kill()
    process.communicate(timeout=60)
    assert reached > 0


def test_fit_without_a_logger_drops_the_configs_learning_rate_monitor(tmp_path: Path):
    """``--trainer.logger false`` with a config that monitors the learning rate trains instead of failing
    in LearningRateMonitor ("no logger")."""
    cli = run(["fit", "--config", REGRESSION, "--trainer.max_epochs", "1", "--trainer.logger", "false", "--quiet",
               "true", "--trainer.default_root_dir", str(tmp_path),
               "--trainer.callbacks+=lightning.pytorch.callbacks.LearningRateMonitor"])
    assert cli.trainer.current_epoch == 1
    assert not any(type(c).__name__ == "LearningRateMonitor" for c in cli.trainer.callbacks)
