"""The convolutional network of Madry et al. (2018) that the CLIP paper uses on Fashion-MNIST."""

from collections.abc import Sequence

from torch import Tensor, nn

from lipreg.nets.normalize import Normalize, spectrally_normalised


class MadryCNN(nn.Module):
    """conv 5×5×32 → max-pool 2 → conv 5×5×64 → max-pool 2 → FC 1024 → FC ``num_classes``, ReLU.

    For 28×28 single-channel images; outputs logits.

    With ``spectral_norm`` every ``Conv2d`` and ``Linear`` is wrapped in PyTorch's
    ``torch.nn.utils.parametrizations.spectral_norm``. For a convolution that normalises the kernel
    reshaped to a matrix ``W ∈ R^{C_out × (C_in·k·k)}`` (each output pixel is ``W`` times the
    ``k×k`` input patch), not the convolution as an operator on images: since every input pixel
    lies in at most ``k·k`` patches, ``‖conv‖₂ ≤ k·‖W‖₂ = k`` (5 here), so the layer-product bound
    of the network is at most ``5·5/std`` (max-pooling and ReLU are 1-Lipschitz), and
    ``lipreg test``'s upper bound, which takes each convolution's true operator norm, is below it
    (above 1: ``tests/test_nets.py`` checks both). For a bound of 1 the convolutions would need their operator norm
    normalised, which PyTorch's ``spectral_norm`` does not do.

    Args:
        num_classes: the number of outputs (logits).
        in_channels: the input images' channels.
        mean: subtracted from the input (per channel, or one number).
        std: the input is divided by it after ``mean``.
        spectral_norm: spectrally normalise every ``Conv2d`` and ``Linear``.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        mean: float | Sequence[float] = 0.0,
        std: float | Sequence[float] = 1.0,
        spectral_norm: bool = False,
    ) -> None:
        super().__init__()
        layers = nn.Sequential(
            Normalize(mean, std),
            nn.Conv2d(in_channels, 32, kernel_size=5, padding=2),  # [B, 32, 28, 28]
            nn.ReLU(),
            nn.MaxPool2d(2),  # [B, 32, 14, 14]
            nn.Conv2d(32, 64, kernel_size=5, padding=2),  # [B, 64, 14, 14]
            nn.ReLU(),
            nn.MaxPool2d(2),  # [B, 64, 7, 7]
            nn.Flatten(),
            nn.Linear(64 * 7 * 7, 1024),
            nn.ReLU(),
            nn.Linear(1024, num_classes),
        )
        self.layers = spectrally_normalised(layers) if spectral_norm else layers
        self.out_features = num_classes

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)
