"""Networks as plain ``nn.Module``s, chosen in YAML. They output logits (no softmax)."""

from lipreg.nets.cnn import MadryCNN
from lipreg.nets.lipschitz import LipschitzCNN, LipschitzMLP, MaxMin, plain_layers
from lipreg.nets.mlp import MLP
from lipreg.nets.normalize import Normalize

__all__ = ["MLP", "LipschitzCNN", "LipschitzMLP", "MadryCNN", "MaxMin", "Normalize", "plain_layers"]
