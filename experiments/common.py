"""Helpers shared by the experiment scripts: build a configured run, find its callbacks."""

import json
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint

from lipreg.callbacks import DivergenceGuard, LambdaDiscrepancy, RobustnessEvaluation
from lipreg.cli import LipRegCLI
from lipreg.errors import TrainingDiverged

REPO = Path(__file__).resolve().parents[1]


def configured_run(config: str, root: Path, *overrides: str) -> LipRegCLI:
    """``lipreg fit --config configs/<config>.yaml`` with overrides, built but not started, with
    ``lipreg fit``'s ``DivergenceGuard`` (a non-finite loss or parameter stops training)."""
    args = ["--config", str(REPO / "configs" / f"{config}.yaml"), "--trainer.default_root_dir", str(root),
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false", *overrides]
    cli = LipRegCLI(args=args, run=False)
    if callback(cli.trainer, DivergenceGuard) is None:
        cli.trainer.callbacks.insert(0, DivergenceGuard())
    return cli


def fit(cli: LipRegCLI, ckpt_path: str | Path | None = None) -> str | None:
    """Train the run; ``None``, or the divergence message if training diverged after a best
    checkpoint had been written (the row then tests that last good checkpoint and says so)."""
    try:
        cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt_path)
    except TrainingDiverged as error:
        if not any(c.best_model_path for c in cli.trainer.checkpoint_callbacks
                   if isinstance(c, ModelCheckpoint) and c.monitor is not None):
            raise
        print(f"{error}\ntesting the best checkpoint written before the divergence", flush=True)
        return str(error)
    return None


def callback(trainer: L.Trainer, kind: type[L.Callback]) -> L.Callback | None:
    """The trainer's first callback of the given type."""
    return next((c for c in trainer.callbacks if isinstance(c, kind)), None)


def set_target(trainer: L.Trainer, target: float, step: float | None = None) -> None:
    """Point the run's discrepancy rule at a target accuracy α (and optionally a step dλ)."""
    rule = callback(trainer, LambdaDiscrepancy)
    assert rule is not None, "the config has no LambdaDiscrepancy callback"
    rule.target = target
    if step is not None:
        rule.step = step


def evaluation_of(trainer: L.Trainer) -> RobustnessEvaluation:
    found = callback(trainer, RobustnessEvaluation)
    assert found is not None
    return found


def row_label(name: str, row: dict) -> str:
    """A row's name in a results table, marked when its training diverged."""
    return f"{name} (diverged)" if row.get("diverged") else name


def divergences(results: dict[str, dict]) -> str:
    """A line per row whose training diverged (after the table), naming where; empty when none did."""
    return "".join(f"\n{name}: {row['diverged']} (tested: its best checkpoint before that)\n"
                   for name, row in results.items() if row.get("diverged"))


def write_rows(out: Path | None, rows: list[dict], text: str) -> None:
    """An experiment's rows as JSON at ``out`` and its markdown table beside it (``.md``), if ``out`` is given;
    the table is printed either way."""
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(rows, indent=2))
        out.with_suffix(".md").write_text(text)
    print(text)


def publish(path: Path, text: str) -> None:
    """Write an experiment's markdown table to ``path`` and print it."""
    path.write_text(text)
    print(text)
