"""Helpers shared by the experiment scripts: build a configured run, find its callbacks."""

from pathlib import Path

import lightning as L

from lipreg.callbacks import LambdaDiscrepancy, RobustnessEvaluation
from lipreg.cli import LipRegCLI

REPO = Path(__file__).resolve().parents[1]


def configured_run(config: str, root: Path, *overrides: str) -> LipRegCLI:
    """``lipreg fit --config configs/<config>.yaml`` with overrides, built but not started."""
    args = ["--config", str(REPO / "configs" / f"{config}.yaml"), "--trainer.default_root_dir", str(root),
            "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false", *overrides]
    return LipRegCLI(args=args, run=False)


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
