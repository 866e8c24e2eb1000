"""The ``lipreg`` command: a LightningCLI over lipreg's methods and data modules."""

import sys
import warnings

import lightning as L
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI

import lipreg.callbacks  # noqa: F401  (registers callback classes for short names in YAML)
import lipreg.data  # noqa: F401  (registers data modules for --data NAME)
import lipreg.methods  # noqa: F401  (registers methods for --model NAME)
import lipreg.nets  # noqa: F401  (registers networks for class_path: NAME)
from lipreg.callbacks import PredictionWriter, RobustnessEvaluation
from lipreg.errors import LipregError
from lipreg.methods.base import LipRegModule
from lipreg.report import compare

# Two warnings of the installed Lightning that say nothing to a lipreg user: its pytree helper uses
# an API that torch 2.14 deprecates, and lipreg logs training metrics once an epoch, so the advice
# to lower `log_every_n_steps` when an epoch has fewer batches than that does not apply.
warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
warnings.filterwarnings("ignore", message=r"The number of training batches \(\d+\) is smaller than the logging")

DESCRIPTION = (
    "Lipschitz-regularised training (CLIP, SumFLIP, TV, pTV, …) and robustness evaluation. "
    "`lipreg compare DIR` tabulates the `lipreg test` results found below DIR."
)


class LipRegCLI(LightningCLI):
    """LightningCLI with subclass mode for model and data, and inference mode off by default.

    Attacks and pair ascent need input gradients during validation and testing, so
    ``trainer.inference_mode`` defaults to ``false``.
    """

    def __init__(self, args: ArgsType = None, run: bool = True) -> None:
        super().__init__(
            LipRegModule,
            L.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_kwargs={"overwrite": True},
            parser_kwargs={"prog": "lipreg", "description": DESCRIPTION},
            args=args,
            run=run,
            auto_configure_optimizers=False,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.set_defaults({"trainer.inference_mode": False})
        # the attack suite of `lipreg test`, configured under `evaluation:` (a callback in every run)
        parser.add_lightning_class_args(RobustnessEvaluation, "evaluation")

    def before_predict(self) -> None:
        """``lipreg predict`` writes ``predictions.pt`` unless the config brings its own writer."""
        if not any(isinstance(c, BasePredictionWriter) for c in self.trainer.callbacks):
            self.trainer.callbacks.append(PredictionWriter())


def run(args: ArgsType = None) -> LipRegCLI | None:
    """Run ``lipreg`` with ``args`` (default: the command line) and return the CLI object.

    ``lipreg compare DIR`` tabulates and plots the ``lipreg test`` results below DIR and returns
    ``None``. Otherwise the returned CLI's ``trainer.callback_metrics`` hold the run's results.
    Bad input ends the process with one line, ``lipreg: error: …``.
    """
    argv = sys.argv[1:] if args is None else args
    if isinstance(argv, list) and argv[:1] == ["compare"]:
        compare(argv[1:])
        return None
    try:
        return LipRegCLI(args=args)
    except LipregError as error:
        sys.exit(f"lipreg: error: {error}")


def main(args: ArgsType = None) -> None:
    """Entry point of the ``lipreg`` command and ``python -m lipreg``."""
    run(args)
