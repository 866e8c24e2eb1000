"""A fully connected network with a configurable width list and activation."""

from collections.abc import Sequence
from typing import Literal

from torch import Tensor, nn

from lipreg.nets.normalize import Normalize, spectrally_normalised

Activation = Literal["relu", "sigmoid", "tanh", "leaky_relu"]
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "leaky_relu": nn.LeakyReLU,
}


class MLP(nn.Module):
    """``Normalize → Flatten → (Linear → activation)* → Linear``, outputs logits.

    ``widths`` lists every layer size from input to output, e.g. ``[784, 64, 64, 10]`` (the CLIP
    paper's MNIST net), ``[784, 200, 80, 10]`` (the CLIP reference code's net) or
    ``[1, 500, 200, 100, 1]`` (the paper's regression net). The activation follows every hidden
    layer, never the output.

    With ``spectral_norm`` every ``Linear`` is wrapped in PyTorch's
    ``torch.nn.utils.parametrizations.spectral_norm``: its weight is divided by its largest
    singular value, estimated by power iteration (one step per training forward), so each layer is
    1-Lipschitz and the layer-product bound of the whole network is ``1/std`` (1 with the default
    ``std``) once the iteration has converged, which a few hundred training steps achieve
    (``tests/test_nets.py``: 1 to 4 digits after 400 steps), i.e. within the first MNIST epoch.

    Args:
        widths: every layer size from input to output.
        activation: the hidden layers' activation.
        mean: subtracted from the input (per channel, or one number).
        std: the input is divided by it after ``mean``.
        spectral_norm: spectrally normalise every ``Linear``.
    """

    def __init__(
        self,
        widths: Sequence[int],
        activation: Activation = "relu",
        mean: float | Sequence[float] = 0.0,
        std: float | Sequence[float] = 1.0,
        spectral_norm: bool = False,
    ) -> None:
        super().__init__()
        if len(widths) < 2 or any(w < 1 for w in widths):
            raise ValueError(f"widths needs at least an input and an output size, all >= 1; got {list(widths)}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)}")
        layers: list[nn.Module] = [Normalize(mean, std), nn.Flatten()]
        for i, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
            layers.append(nn.Linear(n_in, n_out))
            if i < len(widths) - 2:
                layers.append(ACTIVATIONS[activation]())
        self.layers = spectrally_normalised(nn.Sequential(*layers)) if spectral_norm else nn.Sequential(*layers)
        self.in_features = widths[0]
        self.out_features = widths[-1]

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)
