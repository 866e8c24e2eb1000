"""Where a run lives: the run directory of a checkpoint, resuming inside it, and claiming a new one."""

import os
import re
from pathlib import Path
from typing import Any

from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

#: ``<save_dir>/<name>/version_<N>/checkpoints/<file>.ckpt``, the layout Lightning's TensorBoard logger writes.
_VERSION_DIR = re.compile(r"version_(\d+)")


def run_directory(checkpoint: str | Path) -> Path | None:
    """The run directory (``…/version_N``) a checkpoint was written into, or ``None`` if it is elsewhere."""
    path = Path(checkpoint).resolve()
    if path.parent.name != "checkpoints" or not _VERSION_DIR.fullmatch(path.parent.parent.name):
        return None
    return path.parent.parent


def placed_logger(configured: Any, save_dir: Path, name: str, version: int | str) -> dict[str, Any]:
    """A logger config writing to ``<save_dir>/<name>/<version>``: the configured logger's class and
    options (TensorBoard when the config names none) with only its place changed."""
    if hasattr(configured, "as_dict"):
        configured = configured.as_dict()
    if not isinstance(configured, dict) or "class_path" not in configured:
        configured = {"class_path": "lightning.pytorch.loggers.TensorBoardLogger"}
    place = {"save_dir": str(save_dir), "name": name, "version": version}
    return {"class_path": configured["class_path"], "init_args": {**(configured.get("init_args") or {}), **place}}


def resume_logger(checkpoint: str | Path, configured: Any = None) -> dict[str, Any] | None:
    """A logger config (the configured one's class) that writes into the checkpoint's own run directory.

    Resuming with it keeps a run in one directory: its curves continue, and ``ModelCheckpoint``
    (whose directory is ``<run>/checkpoints``) restores its best score instead of starting afresh
    in a new ``version_N``. ``None`` for a checkpoint outside that layout.
    """
    run = run_directory(checkpoint)
    if run is None:
        return None
    version = int(_VERSION_DIR.fullmatch(run.name).group(1))
    return placed_logger(configured, run.parent.parent, run.parent.name, version)


def latest_checkpoint(root: Path) -> Path | None:
    """The newest ``latest-*.ckpt`` below ``root`` (by modification time), or ``None``."""
    found = sorted(root.glob("**/checkpoints/latest-*.ckpt"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


#: Loggers whose ``<save_dir>/<name>/version_<N>`` folder lipreg claims before they are built.
CLAIMED_LOGGERS = ("lightning.pytorch.loggers.TensorBoardLogger",
                   "lightning.pytorch.loggers.tensorboard.TensorBoardLogger",
                   "lightning.pytorch.loggers.CSVLogger", "lightning.pytorch.loggers.csv_logs.CSVLogger")


def claim_version(save_dir: Path, name: str) -> int:
    """The smallest free ``version_N`` after the existing ones of ``<save_dir>/<name>``, created here.

    Lightning picks the next version by listing the folder and creates it later, so two runs started
    at once in one folder both took ``version_15``. ``mkdir`` is atomic: a run that loses the race
    for a number gets ``FileExistsError`` and takes the next.
    """
    parent = save_dir / name
    parent.mkdir(parents=True, exist_ok=True)
    taken = [int(m.group(1)) for d in parent.iterdir() if (m := _VERSION_DIR.fullmatch(d.name))]
    version = max(taken, default=-1) + 1
    while True:
        try:
            (parent / f"version_{version}").mkdir()
            return version
        except FileExistsError:
            version += 1


def is_secondary_process() -> bool:
    """Whether this process is a DDP rank other than 0 (launched by Lightning, torchrun or SLURM)."""
    return any(os.environ.get(name, "0") != "0" for name in ("LOCAL_RANK", "RANK", "NODE_RANK", "SLURM_PROCID"))


def claimed_logger(configured: Any, default_root_dir: str | None) -> dict[str, Any] | None:
    """The configured logger (TensorBoard when none) placed in a freshly claimed ``version_N``, or ``None``
    where the config names a version, another kind of logger, several, or none (``False``)."""
    if configured is False or isinstance(configured, list) or is_secondary_process():
        return None
    if hasattr(configured, "as_dict"):
        configured = configured.as_dict()
    if configured in (None, True):
        configured = {"class_path": "lightning.pytorch.loggers.TensorBoardLogger"}
    if not isinstance(configured, dict) or configured.get("class_path") not in CLAIMED_LOGGERS:
        return None
    options = configured.get("init_args") or {}
    if options.get("version") is not None:
        return None
    # absolute, as a resumed run's logger is (``resume_logger``): ModelCheckpoint restores its best score
    # only when the checkpoint's folder is the same path
    save_dir = Path(options.get("save_dir") or default_root_dir or ".").resolve()
    name = options.get("name") or "lightning_logs"
    return placed_logger(configured, save_dir, name, claim_version(save_dir, name))


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written to ``.<name>.partial`` beside their place and then renamed into it.

    A run killed during a write (SIGKILL, a full disk) leaves at worst a stray ``.partial`` file,
    never a truncated ``.ckpt``: every checkpoint that exists is complete, and ``latest-…`` (whose
    predecessor is removed only after the new one is in place) always points to a loadable one.
    ``lipreg fit`` uses it unless the trainer was given a checkpoint plugin of its own.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        target = Path(path)
        partial = target.with_name(f".{target.name}.partial")
        super().save_checkpoint(checkpoint, partial, storage_options)
        os.replace(partial, target)  # atomic on one file system
