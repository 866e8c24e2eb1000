"""The ``lipreg`` command: a LightningCLI over lipreg's methods and data modules."""

import sys

import lightning as L
from lightning.pytorch.cli import ArgsType, LightningCLI

import lipreg.callbacks  # noqa: F401  (registers callback classes for short names in YAML)
import lipreg.data  # noqa: F401  (registers data modules for --data NAME)
import lipreg.methods  # noqa: F401  (registers methods for --model NAME)
import lipreg.nets  # noqa: F401  (registers networks for class_path: NAME)
from lipreg.errors import LipregError
from lipreg.methods.base import LipRegModule

DESCRIPTION = "Lipschitz-regularised training (CLIP, SumFLIP, TV, pTV, …) and robustness evaluation."


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

    def add_arguments_to_parser(self, parser: LightningCLI) -> None:
        parser.set_defaults({"trainer.inference_mode": False})


def main(args: ArgsType = None) -> LipRegCLI:
    """Entry point of ``lipreg`` and ``python -m lipreg``; tests pass ``args`` as a list.

    Returns the CLI object, whose ``trainer.callback_metrics`` hold the last run's results.
    """
    try:
        return LipRegCLI(args=args)
    except LipregError as error:
        sys.exit(f"lipreg: error: {error}")
