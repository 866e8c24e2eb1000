"""Every benchmark script on a tiny budget, so none of them rots (the measured figures: README)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def run_benchmark(script: str, *args: str) -> str:
    completed = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args], capture_output=True, text=True, timeout=600
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed.stdout


def test_attack_benchmark_prints_the_pgd_ratio(data_dir: Path):
    out = run_benchmark("attacks.py", "--data-dir", str(data_dir), "--steps", "2", "--repeats", "2", "--skip-test-run")
    assert re.search(r"PGD-L2 \(lipreg\)\s+\d+\.\d+ s\s+\d+\.\d+\s+\(range \d+\.\d+–\d+\.\d+\)", out), out


def test_regulariser_benchmark_prints_a_row_per_method(data_dir: Path):
    out = run_benchmark("regularisers.py", "--data-dir", str(data_dir), "--limit-batches", "2")
    table = out.split("ratios to Standard")[1]
    for method in ("Standard", "CLIP", "SumFLIP", "TV", "pTV", "WeightDecay", "FGSMTraining", "PGD training (10 steps)",
                   "GradientPenalty", "Standard, spectral norm", "LipschitzMargin, orthogonal (mnist_orthogonal.yaml)",
                   "LipschitzMargin, AOL (mnist_aol.yaml)"):
        assert re.search(rf"^{re.escape(method)}\s+\d+\.\d+", table, re.MULTILINE), out


def test_regulariser_benchmark_times_a_subset_over_rounds(data_dir: Path):
    out = run_benchmark("regularisers.py", "--data-dir", str(data_dir), "--limit-batches", "2",
                        "--methods", "WeightDecay", "--repeats", "2")
    table = out.split("ratios to Standard")[1]
    assert re.search(r"^WeightDecay\s+\d+\.\d+.*\d+\.\d+–\d+\.\d+$", table, re.MULTILINE), out
    assert re.search(r"^Standard\s", table, re.MULTILINE) and "CLIP" not in table, out


@pytest.mark.slow
def test_throughput_benchmark_prints_every_path(data_dir: Path, tmp_path: Path):
    out = run_benchmark("throughput.py", "--data-dir", str(data_dir), "--epochs", "1", "--repeats", "1",
                        "--root", str(tmp_path))
    for path in ("plain loop", "lipreg", "lipreg, as `lipreg fit`", "torchvision DataLoader", "bare Lightning (floor)",
                 "bare, barebones=True"):
        assert re.search(rf"{re.escape(path)}\s+\d+\.\d+\s+\d+\.\d+", out), out


def test_startup_benchmark_prints_the_ratio_to_importing_lightning():
    out = run_benchmark("startup.py", "--repeats", "1")
    for command in ("import lightning.pytorch", "lipreg --help", "argument error"):
        assert re.search(rf"{re.escape(command)}.*\s\d+\.\d+\s+\d+\.\d+", out), out


@pytest.mark.slow
def test_gpu_check_runs_every_kind_of_check_on_the_cpu(data_dir: Path, tmp_path: Path):
    """The GPU check in its CPU dry run, on a small budget, from gzipped copies of the data (as it is given them)."""
    import gzip
    import json

    packed = tmp_path / "packed"
    for name in ("MNIST", "FashionMNIST"):
        (packed / name / "raw").mkdir(parents=True)
        for raw in (data_dir / name / "raw").iterdir():
            if not raw.name.endswith(".gz"):
                (packed / name / "raw" / f"{raw.name}.gz").write_bytes(gzip.compress(raw.read_bytes(), compresslevel=1))
    summary = tmp_path / "summary.json"
    out = run_benchmark("gpu_check.py", "--data-dir", str(packed), "--accelerator", "cpu", "--configs", "mnist_clip",
                        "regression_clip", "--batches", "2", "--test-images", "20", "--timing-config", "mnist_clip",
                        "--out", str(summary), "--root", str(tmp_path / "runs"))
    result = json.loads(summary.read_text())
    names = [check["check"] for check in result["checks"]]
    for expected in ("fit mnist_clip", "fit regression_clip", "test mnist_clip (20 images)", "predict mnist_clip",
                     "resume mnist_clip", "fit mnist_clip bf16-mixed", "fit mnist_clip 16-mixed",
                     "DDP: two processes on the CPU (gloo)", "mnist_clip s/step on cpu",
                     "host syncs per training step: CLIP, every pair",
                     "host syncs per training step: CLIP, active pairs 32 + 1/200 (the config's)"):
        assert expected in names, out
    assert result["failed"] == [] and result["passed"] == len(names), out


def test_mixed_precision_benchmark_shows_bf16_errors_and_exact_lipreg_quotients(data_dir: Path):
    out = run_benchmark("mixed_precision.py", "--data-dir", str(data_dir), "--pairs", "200", "--train-steps", "5")
    rows = {line[:22].strip(): [float(v) for v in line[22:].split()] for line in out.splitlines()[1:]}
    initial = rows["at initialisation"]
    assert initial[0] > 1 and initial[2] == 0.0, out  # bf16 logits: large error; lipreg's quotients: exact


def attack_benchmark():
    import importlib.util

    path = Path(__file__).parents[1] / "benchmarks" / "attacks.py"
    spec = importlib.util.spec_from_file_location("attacks_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_old_tree_gets_a_checkpoint_copy_without_the_hyperparameters_it_does_not_take(tmp_path: Path):
    import torch

    module = attack_benchmark()
    checkpoint = tmp_path / "run" / "best.ckpt"
    checkpoint.parent.mkdir()
    weights = {"net.layers.2.weight": torch.randn(3, 4)}
    torch.save({"state_dict": weights, "hyper_parameters": {"seed": 0, "input_noise": 0.0, "active_pairs": 32}},
               checkpoint)
    assert module.without_hyperparameters(checkpoint, [], tmp_path) == checkpoint  # nothing to drop: the file itself
    copy = module.without_hyperparameters(checkpoint, ["input_noise", "active_pairs", "absent"], tmp_path)
    assert copy != checkpoint and copy.parent == tmp_path
    state = torch.load(copy, weights_only=False)
    assert state["hyper_parameters"] == {"seed": 0}
    assert torch.equal(state["state_dict"]["net.layers.2.weight"], weights["net.layers.2.weight"])
    assert torch.load(checkpoint, weights_only=False)["hyper_parameters"]["input_noise"] == 0.0  # original untouched


def test_the_pass_floor_counts_only_work_no_schedule_can_skip():
    module = attack_benchmark()
    result = {"settings": {"apgd_steps": 100, "square_queries": 5000, "pgd_steps": 100}, "attack_samples": 1000,
              "curves": {"robust": [(0.5, 0.75), (2.0, 0.05)], "pgd": [(0.5, 0.8)], "pgd_sign": [(0.5, 0.9)]},
              "certified": [(0.3, 0.6), (0.5, 0.2), (1.0, 0.0)]}
    # ε = 0.5: 750 robust, at most 200 certified: 550 · (200 · 2 + 5000 · 1) + 750 · 2 · 100 · 2 (µs);
    # ε = 2: 50 robust, none certified at 1: 50 · 5400 + 50 · 400
    expected = (550 * 5400 + 750 * 400 + 50 * 5400 + 50 * 400) * 1e-6
    assert module.floor_seconds(result, 1e-6, 2e-6) == pytest.approx(expected)
    result["certified"] = [(1.0, 0.0)]  # a certificate, but no radius at or below 0.5: it may spare all there
    assert module.floor_seconds(result, 1e-6, 2e-6) == pytest.approx((750 * 400 + 50 * 5400 + 50 * 400) * 1e-6)
    result["certified"] = []  # no certificate: every robust image goes through the ensemble
    assert module.floor_seconds(result, 1e-6, 2e-6) == pytest.approx((750 * 5400 + 750 * 400 + 50 * 5400
                                                                      + 50 * 400) * 1e-6)
