"""The ``lipreg`` command as a user runs it: help, every shipped config, checkpoints, bad input."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from lipreg.cli import run
from lipreg.methods import LipRegModule

from .conftest import CONFIGS


def needs_data_dir(config: Path) -> bool:
    return "MNIST" in yaml.safe_load(config.read_text())["data"]["class_path"]


def test_help_runs_in_a_subprocess():
    result = subprocess.run([sys.executable, "-m", "lipreg", "--help"], capture_output=True, text=True, check=True)
    assert "fit" in result.stdout and "test" in result.stdout


def test_model_help_lists_the_methods():
    result = subprocess.run(
        [sys.executable, "-m", "lipreg", "fit", "--model.help", "Standard"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "--model.net" in result.stdout


def test_data_help_lists_the_data_module_options():
    result = subprocess.run(
        [sys.executable, "-m", "lipreg", "fit", "--data.help", "MNISTDataModule"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "--data.data_dir" in result.stdout and "--data.lipschitz_size" in result.stdout


def test_every_config_is_shipped_with_a_header_comment():
    assert CONFIGS, "no configs found"
    for config in CONFIGS:
        assert config.read_text().startswith("#"), f"{config.name} needs a header comment saying what it reproduces"


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_every_config_runs_fast_dev_run(config: Path, request: pytest.FixtureRequest):
    """Every config's pieces together, on small image batches: validation batches of 100 (the configs'
    1,000 make PGD validation of the CNN most of the run) and at most 256 held-out pair images (the
    first CLIP step ascends every pair of the set)."""
    args = ["fit", "--config", str(config), "--trainer.fast_dev_run", "2", "--trainer.enable_progress_bar", "false"]
    if needs_data_dir(config):
        args += ["--data.init_args.data_dir", str(request.getfixturevalue("data_dir")),
                 "--data.init_args.eval_batch_size", "100"]
        if yaml.safe_load(config.read_text())["data"].get("init_args", {}).get("lipschitz_size"):
            args += ["--data.init_args.lipschitz_size", "256"]
    run(args)


def test_print_config_resolves_defaults(capsys: pytest.CaptureFixture):
    config = Path(__file__).parents[1] / "configs" / "regression_standard.yaml"
    with pytest.raises(SystemExit) as info:
        run(["fit", "--config", str(config), "--print_config"])
    assert info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["trainer"]["inference_mode"] is False
    assert printed["model"]["class_path"] == "lipreg.methods.Standard"


def test_fit_writes_logs_config_and_a_checkpoint_that_loads_back(tmp_path: Path):
    config = Path(__file__).parents[1] / "configs" / "regression_standard.yaml"
    run(["fit", "--config", str(config), "--trainer.max_epochs", "3", "--trainer.check_val_every_n_epoch", "1"])
    run_dir = tmp_path / "lightning_logs" / "version_0"
    assert (run_dir / "config.yaml").is_file()
    assert list(run_dir.glob("events.out.tfevents.*"))
    (checkpoint,) = (run_dir / "checkpoints").glob("*.ckpt")
    model = LipRegModule.load_from_checkpoint(checkpoint)
    assert type(model).__name__ == "Standard"
    saved = torch.load(checkpoint, weights_only=True)["state_dict"]
    for name, value in model.state_dict().items():
        assert torch.equal(value, saved[name]), name
    x = torch.linspace(-4, 4, 9).unsqueeze(1)
    assert model(x).shape == (9, 1)
    predicted = run(["predict", "--config", str(config), "--ckpt_path", str(checkpoint)])
    predictions = torch.cat([step["outputs"] for step in predicted.trainer.predict_loop.predictions])
    assert predictions.shape == (801, 1)  # the test grid of the regression problem
    written = torch.load(run_dir / "predict" / checkpoint.stem / "predictions.pt", weights_only=True)
    assert set(written) == {"outputs", "targets"} and torch.equal(written["outputs"], predictions)


def test_test_subcommand_reports_accuracy(tmp_path: Path, data_dir: Path):
    config = str(Path(__file__).parents[1] / "configs" / "mnist_standard.yaml")
    common = ["--config", config, "--data.init_args.data_dir", str(data_dir)]
    run(["fit", *common, "--trainer.max_epochs", "1",
          "--trainer.limit_val_batches", "1"])
    (checkpoint,) = (tmp_path / "lightning_logs" / "version_0" / "checkpoints").glob("best-*.ckpt")
    quick = ["--evaluation.sample_size", "300", "--evaluation.pgd_steps", "10", "--evaluation.apgd_steps", "10",
             "--evaluation.square_queries", "100"]
    cli = run(["test", *common, "--ckpt_path", str(checkpoint), *quick])
    metrics = cli.trainer.callback_metrics
    assert 0.5 < metrics["test/acc"].item() <= 1.0
    assert metrics["test/pgd_acc@2"] <= metrics["test/pgd_acc@0.5"] <= 1.0
    assert (checkpoint.parents[1] / "test" / checkpoint.stem / "robustness.json").is_file()


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lipreg", *args], capture_output=True, text=True)


def test_unknown_model_name_is_a_one_line_usage_error():
    result = _run_cli("fit", "--model", "NoSuchMethod")
    assert result.returncode != 0
    assert "NoSuchMethod" in result.stderr and "Traceback" not in result.stderr


def test_missing_data_dir_is_a_one_line_error(tmp_path: Path):
    config = Path(__file__).parents[1] / "configs" / "mnist_standard.yaml"
    result = _run_cli("fit", "--config", str(config), "--data.init_args.data_dir", str(tmp_path / "missing"))
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("lipreg: error:") and "missing" in last and "Traceback" not in result.stderr


def test_network_with_the_wrong_output_size_is_a_one_line_error():
    config = Path(__file__).parents[1] / "configs" / "regression_standard.yaml"
    result = _run_cli("fit", "--config", str(config), "--model.init_args.net.init_args.widths", "[1, 8, 3]",
                      "--trainer.fast_dev_run", "1")
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("lipreg: error:") and "outputs 3" in last and "Traceback" not in result.stderr


def test_the_ddp_trainer_config_composes_with_an_experiment(capsys: pytest.CaptureFixture):
    configs = Path(__file__).parents[1] / "configs"
    with pytest.raises(SystemExit) as info:
        run(["fit", "--config", str(configs / "mnist_clip.yaml"), "--config", str(configs / "trainer" / "ddp.yaml"),
             "--trainer.devices", "4", "--print_config"])
    assert info.value.code == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["trainer"]["strategy"] == "ddp" and str(printed["trainer"]["devices"]) == "4"
    assert printed["model"]["class_path"] == "lipreg.methods.CLIP"
