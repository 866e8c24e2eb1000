"""One LightningModule per method; ``--model CLIP`` etc. resolve to these by name."""

from lipreg.methods.adversarial import AdversarialTraining, FGSMTraining
from lipreg.methods.base import LipRegModule, Penalty
from lipreg.methods.clip import CLIP
from lipreg.methods.gradient_penalty import GradientPenalty
from lipreg.methods.margin import LipschitzMargin
from lipreg.methods.ptv import PTV
from lipreg.methods.standard import Standard
from lipreg.methods.sumflip import SumFLIP
from lipreg.methods.tv import TV
from lipreg.methods.weight_decay import WeightDecay

__all__ = [
    "CLIP",
    "PTV",
    "TV",
    "AdversarialTraining",
    "FGSMTraining",
    "GradientPenalty",
    "LipschitzMargin",
    "LipRegModule",
    "Penalty",
    "Standard",
    "SumFLIP",
    "WeightDecay",
]
