"""A new user's first hour (issue 13): runs that say what they do, results beside their checkpoint,
errors in one line, nothing silent. Each test failed on the code before that issue."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from lightning.pytorch.utilities.exceptions import SIGTERMException

from lipreg.callbacks import DivergenceGuard, LatestCheckpoint, RobustnessEvaluation, TestProgress
from lipreg.cli import main, run
from lipreg.data.mnist import MNISTDataModule
from lipreg.errors import LipregError
from lipreg.methods import Standard
from lipreg.nets import MLP
from lipreg.report import format_table, load_results, robustness_figure, tradeoff_figure

from .helpers import BlobsDataModule

CONFIGS = Path(__file__).parents[1] / "configs"
REGRESSION = str(CONFIGS / "regression_standard.yaml")
REGRESSION_CLIP = str(CONFIGS / "regression_clip.yaml")
QUICK_TEST = ["--evaluation.pgd_steps", "3", "--evaluation.fgsm_epsilons", "[0.1]", "--evaluation.pgd_epsilons",
              "[1.0]", "--evaluation.noise_sigmas", "[0.5]", "--evaluation.apgd_steps", "5",
              "--evaluation.lipschitz_pairs", "20", "--evaluation.lipschitz_steps", "2",
              "--evaluation.certified_radii", "[]"]


def blobs_config(tmp_path: Path) -> str:
    """A tiny classification run: Standard on three blobs, best checkpoint by val/acc, latest each epoch."""
    config = {
        "seed_everything": 0,
        "trainer": {"max_epochs": 2, "callbacks": [
            {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
             "init_args": {"monitor": "val/acc", "mode": "max", "filename": "best-{epoch}"}},
            {"class_path": "lipreg.callbacks.LatestCheckpoint"},
            {"class_path": "tests.test_first_hour.BestScoreAtStart"},
        ]},
        "model": {"class_path": "lipreg.methods.Standard", "init_args": {
            "net": {"class_path": "lipreg.nets.MLP", "init_args": {"widths": [2, 16, 3]}},
            "optimizer": {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.5}}}},
        "data": {"class_path": "tests.helpers.BlobsDataModule"},
    }
    path = tmp_path / "blobs.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


class BestScoreAtStart(L.Callback):
    """Records the best-checkpoint score the run starts with (restored on resume, else None)."""

    seen: list[float | None] = []

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        score = trainer.checkpoint_callback.best_model_score
        BestScoreAtStart.seen.append(None if score is None else float(score))


def error_line(info: pytest.ExceptionInfo) -> str:
    """The one line ``lipreg`` exits with."""
    return str(info.value.code)


# ---------------------------------------------------------------------------- runs that say what they do
def test_fit_prints_a_line_per_epoch_and_a_summary_with_the_test_command(capsys: pytest.CaptureFixture):
    run(["fit", "--config", REGRESSION, "--trainer.max_epochs", "3", "--trainer.check_val_every_n_epoch", "1"])
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("epoch ")]
    assert [line.split()[1] for line in lines] == ["1/3", "2/3", "3/3"]
    assert "train/loss" in lines[0] and "val/mse" in lines[0] and lines[0].endswith(" left")
    assert lines[-1].endswith(" s")  # the last epoch: nothing left
    assert "run directory: " in out and "latest checkpoint: " in out
    command = next(line for line in out.splitlines() if line.startswith("evaluate it: lipreg test"))
    assert "--config" in command and "--ckpt_path" in command and "latest-" in command


def test_quiet_fit_prints_no_epoch_lines(capsys: pytest.CaptureFixture):
    run(["fit", "--config", REGRESSION, "--trainer.max_epochs", "2", "--quiet", "true"])
    out = capsys.readouterr().out
    assert "epoch 1/2" not in out and "run directory" not in out


def test_fit_always_leaves_a_checkpoint_of_the_final_weights(tmp_path: Path):
    # the config validates every 50 epochs; before, 2 epochs wrote no checkpoint at all
    cli = run(["fit", "--config", REGRESSION, "--trainer.max_epochs", "2"])
    (checkpoint,) = (tmp_path / "lightning_logs" / "version_0" / "checkpoints").glob("latest-*.ckpt")
    assert checkpoint.name == "latest-epoch=1-step=2.ckpt"  # named by the last epoch trained, as every epoch's is
    saved = torch.load(checkpoint, weights_only=True)
    assert saved["global_step"] == 2
    for name, value in cli.model.state_dict().items():
        assert torch.equal(saved["state_dict"][name], value), name


class InterruptAtStep(L.Callback):
    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.global_step == 3:
            raise KeyboardInterrupt


def test_an_interrupted_run_keeps_its_progress(tmp_path: Path):
    trainer = L.Trainer(max_epochs=5, default_root_dir=tmp_path, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0,
                        callbacks=[LatestCheckpoint(every_n_epochs=5, dirpath=str(tmp_path)), InterruptAtStep()])
    model = Standard(MLP([2, 8, 3]))
    try:
        trainer.fit(model, datamodule=BlobsDataModule(size=64, batch_size=16))
    except (KeyboardInterrupt, SystemExit):
        pass
    (checkpoint,) = tmp_path.glob("latest-*.ckpt")
    assert torch.load(checkpoint, weights_only=True)["global_step"] == 3


class SigtermAtStep(L.Callback):
    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        if trainer.global_step == 3:
            os.kill(os.getpid(), signal.SIGTERM)  # Lightning notes it; its loop stops at this batch end


def test_a_run_that_lightnings_own_sigterm_flag_stops_is_saved_as_interrupted(tmp_path: Path,
                                                                              capsys: pytest.CaptureFixture[str]):
    # the race a CI run caught: Lightning's SIGTERMException (a SystemExit with status 0) ended the loop
    # before lipreg's own stop, and the run exited 0 with no checkpoint of the interrupted step
    trainer = L.Trainer(max_epochs=5, default_root_dir=tmp_path, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0,
                        callbacks=[LatestCheckpoint(every_n_epochs=5, dirpath=str(tmp_path)), SigtermAtStep()])
    with pytest.raises(SIGTERMException):
        trainer.fit(Standard(MLP([2, 8, 3])), datamodule=BlobsDataModule(size=64, batch_size=16))
    (checkpoint,) = tmp_path.glob("latest-*.ckpt")
    assert torch.load(checkpoint, weights_only=True)["global_step"] == 3
    assert f"interrupted: saved {checkpoint}" in capsys.readouterr().out


def test_lipreg_exits_as_interrupted_when_lightnings_sigterm_flag_stops_the_run(monkeypatch: pytest.MonkeyPatch):
    def stopped_by_lightning(args: object) -> None:
        raise SIGTERMException

    monkeypatch.setattr("lipreg.cli.run", stopped_by_lightning)
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == "lipreg: interrupted"


def test_model_help_shows_the_methods_options_with_descriptions_and_no_list_of_every_module():
    result = subprocess.run([sys.executable, "-m", "lipreg", "fit", "--model.help", "CLIP"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) < 150, len(lines)
    assert "torch.nn.Sigmoid" not in result.stdout and "lipreg.nets.MLP" in result.stdout
    text = " ".join(result.stdout.split())
    assert "gradient-ascent steps of the pair set" in text  # from CLIP's Args section
    assert "the regularisation coefficient λ at the start" in text  # from LipRegModule's


def test_start_up_imports_nothing_beyond_lightning_and_the_parser():
    # `lipreg --help` and argument errors pay for Lightning and the parser, not for plotting backends
    # (the rest of `lipreg --help`'s time is `import lightning` itself: benchmarks/startup.py)
    code = ("import sys, lightning.pytorch, jsonargparse; before = set(sys.modules); import lipreg.cli; "
            "print(sorted({m.split('.')[0] for m in set(sys.modules) - before}))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert set(eval(result.stdout)) <= {"lipreg", "jsonargparse", "docstring_parser", "lightning"}


def test_testing_prints_its_progress_with_the_time_left(capsys: pytest.CaptureFixture):
    # 120 test points in batches of 32: the first 40 (two batches) are attacked, the other two only classified
    evaluation = RobustnessEvaluation(sample_size=40, pgd_steps=2, apgd_steps=2, lipschitz_pairs=10,
                                      lipschitz_steps=1, certified_radii=[], train_accuracy=False)
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, inference_mode=False,
                        callbacks=[evaluation, TestProgress(interval=0)])
    datamodule = BlobsDataModule(size=64)
    datamodule.eval_batch_size = 32
    trainer.test(Standard(MLP([2, 8, 3])), datamodule=datamodule, verbose=False)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("testing: ")]
    assert [line.split()[2] for line in lines] == ["1/4", "2/4", "3/4", "4/4"]
    assert all(line.endswith(" left") for line in lines)
    assert lines[1].endswith("about 0 s left") and lines[3].endswith("about 0 s left")


@pytest.mark.parametrize("quiet", [False, True])
def test_lipreg_test_shows_its_progress_unless_quiet(quiet: bool, trained_regression: Path):
    cli = run(["test", "--config", REGRESSION, "--ckpt_path", str(trained_regression), "--quiet", str(quiet).lower(),
               *QUICK_TEST])
    assert any(isinstance(c, TestProgress) for c in cli.trainer.callbacks) is not quiet


# ---------------------------------------------------------------------------- results next to what they evaluate
@pytest.fixture
def trained_regression(tmp_path: Path) -> Path:
    run(["fit", "--config", REGRESSION, "--trainer.max_epochs", "2", "--quiet", "true"])
    (checkpoint,) = (tmp_path / "lightning_logs" / "version_0" / "checkpoints").glob("latest-*.ckpt")
    return checkpoint


def test_test_and_predict_write_beside_the_checkpoint_and_print_one_table(
        trained_regression: Path, tmp_path: Path, capsys: pytest.CaptureFixture):
    run(["test", "--config", REGRESSION, "--ckpt_path", str(trained_regression), *QUICK_TEST])
    out = capsys.readouterr().out
    assert "Test metric" not in out and "0.0999" not in out  # Lightning's own table is gone
    assert "FGSM-L∞ ε=0.1" in out and "PGD-L2 ε=1" in out  # each attack with its norm
    run_dir = tmp_path / "lightning_logs" / "version_0"
    assert (run_dir / "test" / trained_regression.stem / "robustness.json").is_file()
    predicted = run(["predict", "--config", REGRESSION, "--ckpt_path", str(trained_regression)])
    written = torch.load(run_dir / "predict" / trained_regression.stem / "predictions.pt", weights_only=True)
    assert sorted(p.name for p in (tmp_path / "lightning_logs").iterdir()) == ["version_0"]
    test_targets = predicted.datamodule.splits.test[1]
    assert torch.equal(written["targets"], test_targets)
    assert written["outputs"].shape == test_targets.shape


def test_predictions_hold_true_targets_and_predicted_classes(tmp_path: Path):
    config = blobs_config(tmp_path)
    run(["fit", "--config", config, "--quiet", "true"])
    (checkpoint,) = (tmp_path / "lightning_logs" / "version_0" / "checkpoints").glob("latest-*.ckpt")
    cli = run(["predict", "--config", config, "--ckpt_path", str(checkpoint)])
    written = torch.load(checkpoint.parents[1] / "predict" / checkpoint.stem / "predictions.pt", weights_only=True)
    assert torch.equal(written["targets"], cli.datamodule.splits.test[1])
    assert torch.equal(written["predictions"], written["outputs"].argmax(dim=1))
    assert (written["predictions"] == written["targets"]).float().mean() > 0.5


def test_a_resumed_run_continues_in_its_own_directory_with_its_best_score(tmp_path: Path):
    config = blobs_config(tmp_path)
    BestScoreAtStart.seen.clear()
    first = run(["fit", "--config", config, "--quiet", "true"])
    best_before = float(first.trainer.checkpoint_callback.best_model_score)
    (latest,) = (tmp_path / "lightning_logs" / "version_0" / "checkpoints").glob("latest-*.ckpt")
    run(["fit", "--config", config, "--quiet", "true", "--trainer.max_epochs", "4", "--ckpt_path", str(latest)])
    assert sorted(p.name for p in (tmp_path / "lightning_logs").iterdir()) == ["version_0"]
    assert BestScoreAtStart.seen == [None, best_before]
    assert len(list((tmp_path / "lightning_logs" / "version_0").glob("events.out.tfevents.*"))) == 2


def _fake_result(root: Path, folder: str, method: str, checkpoint: str | None, target: float, robust: float) -> None:
    directory = root / folder
    directory.mkdir(parents=True)
    result = {"method": method, "task": "classification", "metric": "accuracy", "checkpoint": checkpoint,
              "samples": 100, "attack_samples": 100, "clean": 0.9, "clean_subset": 0.9, "train": None,
              "curves": {"robust": [[1.0, robust]], "pgd": [[1.0, robust]]}, "ensemble": {},
              "lipschitz": {"lower": 1.0, "upper": None}, "certified": [], "settings": {"pgd_norm": "l2"}}
    (directory / "robustness.json").write_text(json.dumps(result))
    config = {"model": {"class_path": f"lipreg.methods.{method}"}, "ckpt_path": checkpoint,
              "trainer": {"callbacks": [{"class_path": "lipreg.callbacks.LambdaDiscrepancy",
                                         "init_args": {"target": target}}]}}
    (directory / "config.yaml").write_text(yaml.safe_dump(config))


def test_compare_labels_runs_by_method_checkpoint_and_what_differs_sorted_with_untrained_marked(tmp_path: Path):
    for version, target in ((11, 0.85), (12, 0.95), (2, 0.9)):
        _fake_result(tmp_path, f"version_{version}/test/best-epoch=3", "CLIP",
                     f"/r/version_{version}/best-epoch=3.ckpt", target, 0.3)
    _fake_result(tmp_path, "version_20/test/x", "Standard", None, 0.9, 0.1)
    names = [r.name for r in load_results(tmp_path)]
    assert names == ["CLIP best-epoch=3 target=0.85", "CLIP best-epoch=3 target=0.9",
                     "CLIP best-epoch=3 target=0.95", "Standard (untrained)"]
    assert [r.untrained for r in load_results(tmp_path)] == [False, False, False, True]


def test_accuracy_plots_run_from_0_to_100_percent_with_a_legend_in_every_panel(tmp_path: Path):
    for index in range(2):
        _fake_result(tmp_path, f"run{index}", "CLIP", f"/r/best-{index}.ckpt", 0.9, 0.08)  # identical curves
    figure = robustness_figure(load_results(tmp_path))
    for axis in figure.axes:
        assert axis.get_ylim() == (0.0, 100.0)
        assert axis.get_legend() is not None and len(axis.get_legend().get_texts()) == 2
        widths = [line.get_linewidth() for line in axis.get_lines()]
        assert widths[0] > widths[1]  # the second of two identical curves is drawn inside the first
        assert max(line.get_ydata()[-1] for line in axis.get_lines()) == pytest.approx(8.0)  # in %, as the table
    single = robustness_figure(load_results(tmp_path)[:1])
    assert "best-0.ckpt" in single._suptitle.get_text()


def test_many_runs_share_one_legend_with_one_style_per_run_and_a_numbered_table(tmp_path: Path):
    for index in range(12):
        _fake_result(tmp_path, f"run{index:02d}", "CLIP", f"/r/best-{index:02d}-{'x' * 40}.ckpt", 0.9, index / 20)
    results = load_results(tmp_path)
    for figure in (robustness_figure(results), tradeoff_figure(results)):
        assert all(axis.get_legend() is None for axis in figure.axes)
        (legend,) = figure.legends
        assert len(legend.get_texts()) == 12
    styles = [(line.get_color(), line.get_marker()) for line in robustness_figure(results).axes[0].get_lines()]
    assert len(set(styles)) == 12  # colours repeat after ten, their markers do not
    table = format_table(results).splitlines()
    assert table[0].startswith("[1] CLIP best-00-") and table[11].startswith("[12] CLIP best-11-")
    assert table[13].split() == [f"[{i}]" for i in range(1, 13)]


# ---------------------------------------------------------------------------- errors in one line, nothing silent
def test_a_bad_value_ends_in_one_error_line_without_traceback():
    result = subprocess.run([sys.executable, "-m", "lipreg", "fit", "--config", REGRESSION_CLIP,
                             "--model.init_args.lam", "-1"], capture_output=True, text=True)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr and "Namespace(" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("lipreg: error: lam") and "--model.init_args.lam" in last


@pytest.mark.parametrize("case", ["missing", "truncated", "not a checkpoint"])
def test_a_bad_checkpoint_path_is_a_one_line_error(case: str, trained_regression: Path, tmp_path: Path):
    path = tmp_path / "bad.ckpt"
    if case == "truncated":
        path.write_bytes(trained_regression.read_bytes()[:5000])
    elif case == "not a checkpoint":
        path.write_bytes(b"hello")
    with pytest.raises(SystemExit) as info:
        run(["test", "--config", REGRESSION, "--ckpt_path", str(path)])
    line = error_line(info)
    assert line.startswith("lipreg: error:") and "\n" not in line
    assert ("does not exist" in line) if case == "missing" else ("damaged" in line and "bytes" in line)


def test_an_unwritable_root_dir_is_a_one_line_error():
    with pytest.raises(SystemExit) as info:
        run(["fit", "--config", REGRESSION, "--trainer.default_root_dir", "/proc/lipreg-cannot-write-here"])
    assert error_line(info).startswith("lipreg: error: cannot write run outputs to /proc/lipreg-cannot-write-here")


def test_test_without_a_checkpoint_is_refused_unless_untrained_weights_are_asked_for(tmp_path: Path):
    with pytest.raises(SystemExit) as info:
        run(["test", "--config", REGRESSION])
    assert "needs --ckpt_path" in error_line(info) and "--untrained true" in error_line(info)
    assert not list(tmp_path.rglob("robustness.json"))
    run(["test", "--config", REGRESSION, "--untrained", "true", *QUICK_TEST])
    (written,) = tmp_path.rglob("robustness.json")
    assert yaml.safe_load(written.read_text())["checkpoint"] is None


def test_a_truncated_idx_file_is_reported_as_damaged_with_its_sizes(tmp_path: Path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name, dims in (("train-images-idx3-ubyte", (3, 28, 28)), ("train-labels-idx1-ubyte", (3,)),
                       ("t10k-images-idx3-ubyte", (2, 28, 28)), ("t10k-labels-idx1-ubyte", (2,))):
        header = bytes([0, 0, 8, len(dims)]) + b"".join(d.to_bytes(4, "big") for d in dims)
        (raw / name).write_bytes(header + bytes(int(torch.tensor(dims).prod())))
    damaged = raw / "t10k-images-idx3-ubyte"
    damaged.write_bytes(damaged.read_bytes()[:1000])
    with pytest.raises(LipregError, match=r"t10k-images-idx3-ubyte is damaged: 1000 bytes.*needs 1584"):
        MNISTDataModule(data_dir=str(tmp_path), val_size=1).load_splits()


@pytest.mark.parametrize(("trained", "config", "says"), [
    (REGRESSION, REGRESSION_CLIP, "trained with Standard but the config trains CLIP"),
    (REGRESSION_CLIP, REGRESSION, "trained with CLIP but the config trains Standard"),
])
def test_a_checkpoint_of_another_method_than_the_config_is_named(trained: str, config: str, says: str,
                                                                 tmp_path: Path):
    run(["fit", "--config", trained, "--trainer.max_epochs", "1", "--quiet", "true"])
    (checkpoint,) = (tmp_path / "lightning_logs" / "version_0" / "checkpoints").glob("latest-*.ckpt")
    with pytest.raises(SystemExit) as info:
        run(["test", "--config", config, "--ckpt_path", str(checkpoint)])
    assert says in error_line(info) and "version_0/config.yaml" in error_line(info)


def test_training_stops_at_the_first_non_finite_loss_and_keeps_no_diverged_checkpoint(tmp_path: Path):
    trainer = L.Trainer(max_epochs=3, default_root_dir=tmp_path, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0,
                        callbacks=[DivergenceGuard(), LatestCheckpoint(dirpath=str(tmp_path))])
    model = Standard(MLP([2, 8, 3]), optimizer=lambda p: torch.optim.SGD(p, lr=1e30))
    with pytest.raises(LipregError, match=r"training diverged at epoch 0, step \d+: the training loss is (nan|inf)"):
        trainer.fit(model, datamodule=BlobsDataModule(size=64, batch_size=16))
    assert not list(tmp_path.glob("*.ckpt"))


class PoisonAtStep(L.Callback):
    """Makes one weight NaN before the training step with ``global_step == step``: its loss is the first NaN."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: object) -> None:
        if trainer.global_step == self.step:
            with torch.no_grad():
                next(pl_module.parameters()).view(-1)[0] = float("nan")


@pytest.mark.parametrize("check_every", [None, 4])
def test_divergence_names_the_first_bad_step_whether_read_every_step_or_recorded(check_every: int | None,
                                                                                 tmp_path: Path):
    # on a single CPU the loss is read every step; with check_every > 1 (the accelerator and DDP path)
    # the first bad step is recorded on the device and read later: both name the same step
    trainer = L.Trainer(max_epochs=5, default_root_dir=tmp_path, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                        callbacks=[PoisonAtStep(5), DivergenceGuard(check_every=check_every)])
    with pytest.raises(LipregError, match=r"training diverged at epoch 1, step 6: the training loss is nan"):
        trainer.fit(Standard(MLP([2, 8, 3])), datamodule=BlobsDataModule(size=64, batch_size=16))


def test_divergence_through_the_cli_is_one_line(tmp_path: Path):
    config = blobs_config(tmp_path)
    with pytest.raises(SystemExit) as info:
        run(["fit", "--config", config, "--model.init_args.optimizer.init_args.lr", "1e30"])
    assert error_line(info).startswith("lipreg: error: training diverged at epoch 0, step ")


@pytest.mark.parametrize(("wrong", "right"), [
    ("--model.init_args.lamm", "--model.init_args.lam"),
    ("--trainer.max_epochz", "--trainer.max_epochs"),
])
def test_a_misspelt_option_is_one_error_line_with_the_closest_valid_one(wrong: str, right: str,
                                                                          capsys: pytest.CaptureFixture):
    with pytest.raises(SystemExit) as info:
        run(["fit", "--config", REGRESSION_CLIP, wrong, "1"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("lipreg: error:") and f"did you mean {right}?" in err[0]
    assert len(err) == 2 and "--help" in err[1]


def test_compare_draws_robust_against_clean_accuracy_one_point_per_run(tmp_path: Path):
    for index, robust in enumerate((0.1, 0.4)):
        _fake_result(tmp_path / "runs", f"run{index}", "CLIP", f"/r/best-{index}.ckpt", 0.8 + index / 10, robust)
    run(["compare", str(tmp_path / "runs"), "--output", str(tmp_path / "cmp")])
    assert (tmp_path / "cmp" / "robust_vs_clean.png").is_file()
    figure = tradeoff_figure(load_results(tmp_path / "runs"))
    (axis,) = figure.axes
    points = sorted(tuple(c.get_offsets()[0]) for c in axis.collections)
    assert points == [(90.0, pytest.approx(10.0)), (90.0, pytest.approx(40.0))]


def test_compare_takes_several_directories_and_names_a_missing_one(tmp_path: Path, capsys: pytest.CaptureFixture):
    _fake_result(tmp_path / "first", "run", "CLIP", "/r/best-1.ckpt", 0.9, 0.3)
    _fake_result(tmp_path / "second", "run", "CLIP", "/r/best-1.ckpt", 0.9, 0.4)
    config = tmp_path / "second" / "run" / "config.yaml"  # a `lipreg test` run's own flag is no difference
    config.write_text(config.read_text() + "verbose: true\n")
    names = [r.name for r in load_results(tmp_path / "first", tmp_path / "second")]
    assert names == ["CLIP best-1 [first/run]", "CLIP best-1 [second/run]"]
    run(["compare", str(tmp_path / "first"), str(tmp_path / "second")])
    assert (tmp_path / "first" / "robust_vs_clean.png").is_file()
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        run(["compare", str(tmp_path / "first"), str(tmp_path / "nowhere")])
    assert info.value.code == 2
    assert capsys.readouterr().err.strip() == f"lipreg compare: error: no such directory: {tmp_path / 'nowhere'}"


def test_the_misspelt_option_is_found_from_the_command_line_not_from_the_error_text(tmp_path: Path):
    """jsonargparse may reword its errors: the option is found from the words and the signatures."""
    from lipreg.cli_parser import misspelt_option

    options = ["--config", "--trainer", "--trainer.max_epochs", "--trainer.logger", "--trainer.logger.help",
               "--model", "--model.help", "--data", "--data.help"]
    config = tmp_path / "c.yaml"
    config.write_text("model:\n  class_path: lipreg.methods.CLIP\ndata:\n  class_path: MNISTDataModule\n")
    words = ["fit", "--config", str(config), "--trainer.max_epochs", "3"]
    assert misspelt_option([*words, "--model.init_args.num_pair", "5"], options) == (
        "--model.init_args.num_pair", "--model.init_args.num_pairs", "CLIP")
    assert misspelt_option([*words, "--data.batchsize=3"], options) == (
        "--data.batchsize", "--data.batch_size", "MNISTDataModule")  # a short class name, resolved
    standard = misspelt_option([*words, "--model", "Standard", "--model.init_args.num_pairs", "5"], options)
    assert standard[2] == "Standard"  # the command line's class beats the config's
    assert misspelt_option([*words, "--trainer.max_epochz", "3"], options)[:2] == (
        "--trainer.max_epochz", "--trainer.max_epochs")
    assert misspelt_option([*words, "--trainer.logger.init_args.save_dir", "x"], options) is None  # dynamic: left
    assert misspelt_option([*words, "--model.init_args.lam", "0.1"], options) is None
