"""lipreg on a GPU in one command: every config, every subcommand, mixed precision, DDP, speed and host syncs.

    python benchmarks/gpu_check.py --data-dir ../shared/datasets            # about 5 minutes on one H200

Uses only what is installed (no download). ``--data-dir`` holds ``MNIST/raw`` and ``FashionMNIST/raw``
in torchvision's layout, uncompressed or as the ``.gz`` files (these are unpacked into a
temporary folder first). The checks, each timed and recorded as passed or failed with the
error's last line:

1. every config in ``configs/`` fits ``--batches`` training batches (and validates two) on one device;
2. ``lipreg test`` on ``--test-images`` images, ``lipreg predict`` and a resume, on the MNIST and
   Fashion-MNIST CLIP runs of step 1;
3. ``bf16-mixed`` and ``16-mixed`` fits of those two configs;
4. two processes on one GPU (DDP over gloo: NCCL refuses two ranks on one device) and, when two
   or more GPUs are present, NCCL on two;
5. the step time of ``configs/fmnist_clip.yaml`` on the device and on this machine's CPU, and
   their ratio (steps after the first two, the device synchronised before every reading);
6. host synchronisations per training step of CLIP (full and active pair set), TV and pTV, as
   ``torch.cuda.set_sync_debug_mode("warn")`` reports them.

Everything is written to one summary file (``--out``, JSON) and printed as a table. With
``--accelerator cpu`` the same checks run on the CPU (the tests do that on a small budget, so
the script cannot rot on machines without a GPU).
"""

import argparse
import gzip
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch

from lipreg.cli import run

REPO = Path(__file__).resolve().parents[1]
DATASETS = ("MNIST", "FashionMNIST")
RAW_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def prepared_data_dir(data_dir: Path) -> Path:
    """``data_dir`` itself when it holds the raw files; otherwise a temporary copy with its ``.gz`` files unpacked."""
    if all((data_dir / name / "raw" / raw).is_file() for name in DATASETS for raw in RAW_FILES):
        return data_dir
    unpacked = Path(tempfile.mkdtemp(prefix="lipreg-gpu-check-data-"))
    for name in DATASETS:
        (unpacked / name / "raw").mkdir(parents=True)
        for raw in RAW_FILES:
            plain, packed = data_dir / name / "raw" / raw, data_dir / name / "raw" / f"{raw}.gz"
            if plain.is_file():
                shutil.copyfile(plain, unpacked / name / "raw" / raw)
            elif packed.is_file():
                with gzip.open(packed, "rb") as source, (unpacked / name / "raw" / raw).open("wb") as target:
                    shutil.copyfileobj(source, target)
            else:
                raise SystemExit(f"gpu_check: {plain} (or {packed.name}) not found; --data-dir must hold {name}/raw")
    return unpacked


class Checks:
    """Runs named checks, records each one's outcome and time, and never lets one failure stop the rest."""

    def __init__(self) -> None:
        self.results: list[dict[str, Any]] = []

    def run(self, name: str, check: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        try:
            value = check()
            outcome = {"check": name, "passed": True}
            if value is not None:
                outcome["value"] = value
        except BaseException as error:  # noqa: BLE001  (SystemExit from the CLI included: it is a result here)
            if isinstance(error, KeyboardInterrupt):
                raise
            last = (str(error) or type(error).__name__).strip().splitlines()
            outcome = {"check": name, "passed": False, "error": f"{type(error).__name__}: {last[-1] if last else ''}",
                       "trace": traceback.format_exc()[-2000:]}
            value = None
        outcome["seconds"] = round(time.perf_counter() - start, 2)
        self.results.append(outcome)
        mark = "ok  " if outcome["passed"] else "FAIL"
        detail = outcome.get("error") or (json.dumps(outcome["value"]) if "value" in outcome else "")
        print(f"{mark} {name:58s} {outcome['seconds']:7.1f} s  {detail}", flush=True)
        return value


def device_args(accelerator: str) -> list[str]:
    return ["--trainer.accelerator", accelerator, "--trainer.devices", "1"]


def lipreg_run(args: list[str]) -> None:
    """``lipreg`` in this process (one CUDA initialisation for all checks); raises (``SystemExit``) on failure."""
    run(args)


def lipreg_subprocess(args: list[str], timeout: float, env: dict[str, str] | None = None) -> None:
    completed = subprocess.run([sys.executable, "-m", "lipreg", *args], cwd=REPO, capture_output=True, text=True,
                               timeout=timeout, env={**os.environ, **(env or {})})
    if completed.returncode != 0:
        raise RuntimeError(completed.stderr.strip().splitlines()[-1] if completed.stderr.strip() else "failed")


def config_args(config: Path, data_dir: Path, root: Path) -> list[str]:
    args = ["--config", str(config), "--trainer.default_root_dir", str(root / config.stem), "--quiet", "true"]
    if not config.stem.startswith("regression"):
        args += ["--data.init_args.data_dir", str(data_dir)]
    return args


def short_fit(batches: int) -> list[str]:
    return ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", str(batches),
            "--trainer.limit_val_batches", "2", "--trainer.check_val_every_n_epoch", "1"]


def latest_checkpoint(root: Path) -> Path:
    found = sorted(root.glob("lightning_logs/version_*/checkpoints/latest-*.ckpt"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise RuntimeError(f"no latest-… checkpoint below {root}")
    return found[-1]


class StepTimer(L.Callback):
    """Seconds per training step after ``skip`` warm-up steps, the device synchronised at every reading."""

    def __init__(self, skip: int = 2) -> None:
        self.skip = skip
        self.times: list[float] = []
        self._start = 0.0

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize()
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize()
        if trainer.global_step > self.skip:
            self.times.append(time.perf_counter() - self._start)


def seconds_per_step(config: Path, data_dir: Path, root: Path, accelerator: str, batches: int) -> float:
    from lipreg.cli import LipRegCLI

    timer = StepTimer()
    cli = LipRegCLI(args=[*config_args(config, data_dir, root), *device_args(accelerator), "--trainer.max_epochs", "1",
                          "--trainer.limit_train_batches", str(batches), "--trainer.limit_val_batches", "0",
                          "--trainer.logger", "false", "--trainer.enable_checkpointing", "false",
                          "--trainer.callbacks", "[]"], run=False)
    cli.trainer.callbacks.append(timer)
    cli.trainer.fit(cli.model, cli.datamodule)
    if not timer.times:
        raise RuntimeError("no step was timed: raise --batches")
    return sorted(timer.times)[len(timer.times) // 2]


def host_syncs_per_step(config: Path, data_dir: Path, root: Path, accelerator: str, extra: list[str]) -> float | str:
    """Synchronisations the CUDA sync debugger reports inside ``training_step``, per step (steps 2 to 6)."""
    from lipreg.cli import LipRegCLI

    cli = LipRegCLI(args=[*config_args(config, data_dir, root), *device_args(accelerator), "--trainer.max_epochs", "1",
                          "--trainer.limit_train_batches", "7", "--trainer.limit_val_batches", "0",
                          "--trainer.logger", "false", "--trainer.enable_checkpointing", "false",
                          "--trainer.callbacks", "[]", *extra], run=False)
    module, counted = cli.model, []
    original = module.training_step

    def counting_step(batch: Any, batch_idx: int = 0) -> Any:
        if module.global_step < 2 or module.device.type != "cuda":
            return original(batch, batch_idx)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                loss = original(batch, batch_idx)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        counted.append(sum("synchroniz" in str(w.message) for w in caught))
        return loss

    module.training_step = counting_step
    cli.trainer.fit(module, cli.datamodule)
    if module.device.type != "cuda":
        return "not measured on a CPU (the tests count the syncing calls there)"
    return sum(counted) / max(len(counted), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True, help="folder with MNIST/raw and FashionMNIST/raw")
    parser.add_argument("--out", type=Path, default=Path("gpu_check.json"), help="the summary file (JSON)")
    parser.add_argument("--accelerator", default="gpu", help="gpu (default) or cpu (a dry run of the script)")
    parser.add_argument("--configs", nargs="*", help="config names to fit (default: every config in configs/)")
    parser.add_argument("--batches", type=int, default=20, help="training batches of each fit")
    parser.add_argument("--test-images", type=int, default=500, help="images `lipreg test` evaluates")
    parser.add_argument("--cpu-batches", type=int, default=5, help="batches of the CPU step-time measurement (0: skip)")
    parser.add_argument("--timing-config", default="fmnist_clip", help="the config whose step time is measured")
    parser.add_argument("--root", type=Path, help="where the runs go (default: a temporary folder)")
    options = parser.parse_args()

    data_dir = prepared_data_dir(options.data_dir)
    root = options.root or Path(tempfile.mkdtemp(prefix="lipreg-gpu-check-"))
    accelerator = options.accelerator
    on_gpu = accelerator == "gpu"
    gpus = torch.cuda.device_count() if on_gpu else 0
    if on_gpu and gpus == 0:
        raise SystemExit("gpu_check: no CUDA device is visible (torch.cuda.device_count() == 0); --accelerator cpu "
                         "runs the same checks on the CPU")
    environment = {"torch": torch.__version__, "lightning": L.__version__, "python": platform.python_version(),
                   "accelerator": accelerator, "gpus": gpus,
                   "device": torch.cuda.get_device_name(0) if gpus else platform.processor() or platform.machine(),
                   "cpu_threads": torch.get_num_threads(), "data_dir": str(data_dir)}
    print(json.dumps(environment), flush=True)
    checks = Checks()
    configs = sorted((REPO / "configs").glob("*.yaml"))
    if options.configs:
        configs = [c for c in configs if c.stem in options.configs]
    device = device_args(accelerator)

    # 1. every config fits on one device
    for config in configs:
        checks.run(f"fit {config.stem}", lambda c=config: lipreg_run(
            ["fit", *config_args(c, data_dir, root), *device, *short_fit(options.batches)]))

    # 2. test, predict, resume on the CLIP runs
    quick_test = ["--data.init_args.eval_batch_size", str(options.test_images), "--trainer.limit_test_batches", "1",
                  "--evaluation.sample_size", str(options.test_images)]
    for name in ("mnist_clip", "fmnist_clip"):
        config = REPO / "configs" / f"{name}.yaml"
        if config not in configs:
            continue
        args = config_args(config, data_dir, root)

        def tested(args: list[str] = args, name: str = name) -> dict[str, float]:
            checkpoint = latest_checkpoint(root / name)
            cli = run(["test", *args, *device, *quick_test, "--ckpt_path", str(checkpoint)])
            metrics = cli.trainer.callback_metrics
            return {k: round(float(v), 4) for k, v in metrics.items() if k in ("test/acc", "test/lip_lower")}

        checks.run(f"test {name} ({options.test_images} images)", tested)
        checks.run(f"predict {name}", lambda args=args, name=name: lipreg_run(
            ["predict", *args, *device, "--ckpt_path", str(latest_checkpoint(root / name))]))
        checks.run(f"resume {name}", lambda args=args, name=name: lipreg_run(
            ["fit", *args, *device, *short_fit(options.batches), "--trainer.max_epochs", "2",
             "--ckpt_path", str(latest_checkpoint(root / name))]))
        # 3. mixed precision
        for precision in ("bf16-mixed", "16-mixed"):
            checks.run(f"fit {name} {precision}", lambda p=precision, config=config: lipreg_run(
                ["fit", *config_args(config, data_dir, root / p), *device, *short_fit(options.batches),
                 "--trainer.precision", p]))

    # 4. several processes
    ddp_config = REPO / "configs" / "mnist_clip.yaml"
    ddp = [*short_fit(options.batches), "--data.init_args.lipschitz_size", "1000", "--trainer.num_nodes", "1"]
    gloo = ["--trainer.strategy", "lightning.pytorch.strategies.DDPStrategy",
            "--trainer.strategy.init_args.process_group_backend", "gloo"]
    if on_gpu:
        # two processes on GPU 0: torchrun's two "nodes" of one process each, both LOCAL_RANK 0
        port = "29517"
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
                    "--master_addr", "127.0.0.1", "--master_port", port]

        def two_on_one_gpu() -> None:
            fit = ["-m", "lipreg", "fit", *config_args(ddp_config, data_dir, root / "two_on_one"), *ddp, *gloo,
                   "--trainer.accelerator", "gpu", "--trainer.devices", "1", "--trainer.num_nodes", "2"]
            nodes = [subprocess.Popen([*torchrun, "--node_rank", str(rank), *fit[1:]], cwd=REPO,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
            outputs = [node.communicate(timeout=300) for node in nodes]
            for node, (_, err) in zip(nodes, outputs, strict=True):
                if node.returncode != 0:
                    raise RuntimeError(err.strip().splitlines()[-1] if err.strip() else "failed")

        checks.run("DDP: two processes on one GPU (gloo)", two_on_one_gpu)
        if gpus >= 2:
            checks.run("DDP: NCCL on two GPUs", lambda: lipreg_subprocess(
                ["fit", *config_args(ddp_config, data_dir, root / "nccl"), *ddp, "--trainer.accelerator", "gpu",
                 "--trainer.devices", "2", "--trainer.strategy", "ddp"], timeout=300))
        else:
            checks.results.append({"check": "DDP: NCCL on two GPUs", "passed": None, "skipped": "one GPU"})
    else:
        checks.run("DDP: two processes on the CPU (gloo)", lambda: lipreg_subprocess(
            ["fit", *config_args(ddp_config, data_dir, root / "two_cpu"), *ddp, "--trainer.accelerator", "cpu",
             "--trainer.devices", "2", "--trainer.strategy", "ddp"], timeout=600))

    # 5. step time of the design card's command, device against CPU
    timed = REPO / "configs" / f"{options.timing_config}.yaml"
    step_device = checks.run(f"{timed.stem} s/step on {accelerator}", lambda: round(
        seconds_per_step(timed, data_dir, root / "timing", accelerator, max(options.batches, 5)), 4))
    if on_gpu and options.cpu_batches > 0:
        step_cpu = checks.run(f"{timed.stem} s/step on the CPU", lambda: round(
            seconds_per_step(timed, data_dir, root / "timing_cpu", "cpu", options.cpu_batches + 3), 4))
        if step_device and step_cpu:
            checks.results.append({"check": f"{timed.stem} CPU/GPU step-time ratio", "passed": True,
                                   "value": round(step_cpu / step_device, 1)})
            print(f"     CPU/GPU step-time ratio: {step_cpu / step_device:.1f}", flush=True)

    # 6. host synchronisations in a training step
    mnist = REPO / "configs"
    for name, config, extra in (
        ("CLIP, every pair", mnist / "mnist_clip.yaml", ["--model.init_args.active_pairs", "null"]),
        ("CLIP, active pairs 32 + 1/200 (the config's)", mnist / "mnist_clip.yaml", []),
        ("TV", mnist / "mnist_tv.yaml", []),
        ("pTV", mnist / "mnist_ptv.yaml", []),
    ):
        checks.run(f"host syncs per training step: {name}", lambda c=config, e=extra: host_syncs_per_step(
            c, data_dir, root / "syncs", accelerator, e))

    failed = [r["check"] for r in checks.results if r.get("passed") is False]
    summary = {"environment": environment, "checks": checks.results, "failed": failed,
               "passed": sum(r.get("passed") is True for r in checks.results)}
    options.out.write_text(json.dumps(summary, indent=2))
    print(f"{summary['passed']} passed, {len(failed)} failed; summary: {options.out}", flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
