"""The convolutional network of Madry et al. (2018) that the CLIP paper uses on Fashion-MNIST."""

from collections.abc import Sequence

from torch import Tensor, nn

from lipreg.nets.normalize import Normalize


class MadryCNN(nn.Module):
    """conv 5×5×32 → max-pool 2 → conv 5×5×64 → max-pool 2 → FC 1024 → FC ``num_classes``, ReLU.

    For 28×28 single-channel images; outputs logits.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        mean: float | Sequence[float] = 0.0,
        std: float | Sequence[float] = 1.0,
    ) -> None:
        super().__init__()
        self.layers = nn.Sequential(
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
        self.out_features = num_classes

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)
