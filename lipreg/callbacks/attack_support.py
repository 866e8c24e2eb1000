"""What the attacking callbacks share: the check that their stage may take input gradients."""

import lightning as L
import torch

from lipreg.errors import LipregError

INFERENCE_MODE_MESSAGE = (
    "{name} attacks the network and needs input gradients, but the trainer runs {stage} under "
    "torch.inference_mode(): set --trainer.inference_mode false (lipreg's CLI default)"
)


def require_gradients(callback: L.Callback, stage: str) -> None:
    """Raise a one-line error when ``stage`` runs under ``torch.inference_mode()``."""
    if torch.is_inference_mode_enabled():
        raise LipregError(INFERENCE_MODE_MESSAGE.format(name=type(callback).__name__, stage=stage))
