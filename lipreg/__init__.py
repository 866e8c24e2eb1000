"""lipreg: Lipschitz-regularised training of neural networks with PyTorch Lightning."""

__version__ = "0.1.0"
