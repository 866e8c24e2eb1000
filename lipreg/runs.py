"""Where a run lives: the run directory of a checkpoint, and resuming inside it."""

import re
from pathlib import Path
from typing import Any

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
