"""One LightningModule per method; ``--model CLIP`` etc. resolve to these by name."""

from lipreg.methods.base import LipRegModule, Penalty
from lipreg.methods.standard import Standard

__all__ = ["LipRegModule", "Penalty", "Standard"]
