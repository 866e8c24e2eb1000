"""What happens inside a Lipschitz-regularised run, in TensorBoard: CLIP's pair set and the upper bound."""

from typing import TYPE_CHECKING

import lightning as L
import torch
from torch import Tensor

from lipreg.callbacks.figure_logging import log_figure
from lipreg.errors import LipregError
from lipreg.functional import pair_quotients, tracked_upper_bound
from lipreg.report.figures import pyplot

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: Pairs put through the network at once when their quotients are recomputed.
CHUNK = 2048


def pair_set_quotients(net: torch.nn.Module, pairs: Tensor, p: float = 2.0) -> Tensor:
    """Every pair's current quotient (``[P]``), forward passes only, in chunks."""
    with torch.no_grad():
        return torch.cat([pair_quotients(net, pairs[:, start : start + CHUNK], p)
                          for start in range(0, pairs.shape[1], CHUNK)])


def pair_figure(pairs: Tensor, quotients: Tensor, count: int) -> "Figure":
    """The ``count`` pairs with the largest quotients (the CLIP paper's Figure 1): per pair the
    images ``u`` and ``v`` and their difference ``u − v`` magnified to the full grey range (grey 0,
    white and black the largest differences), the quotient in the title."""
    top = quotients.topk(min(count, len(quotients))).indices
    plt = pyplot()
    figure, axes = plt.subplots(3, len(top), figsize=(1.6 * len(top), 5.0), squeeze=False)
    for column, index in enumerate(top.tolist()):
        u, v = pairs[0, index].float().cpu(), pairs[1, index].float().cpu()
        difference = u - v
        scale = difference.abs().max().clamp_min(1e-12)
        for row, (image, low, high) in enumerate(((u, 0.0, 1.0), (v, 0.0, 1.0), (difference / scale, -1.0, 1.0))):
            axis = axes[row][column]
            axis.imshow(image.mean(dim=0) if image.dim() == 3 else image, cmap="gray", vmin=low, vmax=high)
            axis.set_xticks([])
            axis.set_yticks([])
        axes[0][column].set_title(f"L={quotients[index].item():.3g}", fontsize="small")
    for row, label in enumerate(("u", "v", "u − v (×)")):
        axes[row][0].set_ylabel(label)
    figure.tight_layout()
    return figure


class PairSetImages(L.Callback):
    """Every ``every_n_epochs`` epochs, CLIP's pair set in TensorBoard: the ``top_pairs`` pairs with the
    largest quotients as images (``pairs/top``: ``u``, ``v`` and the magnified ``u − v``, each pair's
    quotient in its title) and a histogram of all quotients (``pairs/quotients``), so one sees
    whether the pairs collapse onto noise or find meaningful directions. Images need image inputs
    (``[C, H, W]`` or ``[H, W]``); the histogram is logged for any.

    Args:
        every_n_epochs: epochs between logs (the last epoch is always logged).
        top_pairs: how many of the steepest pairs are shown.
    """

    def __init__(self, every_n_epochs: int = 5, top_pairs: int = 8) -> None:
        if every_n_epochs < 1 or top_pairs < 1:
            raise LipregError(f"PairSetImages needs every_n_epochs >= 1 and top_pairs >= 1, got {every_n_epochs}, "
                              f"{top_pairs}")
        self.every_n_epochs = every_n_epochs
        self.top_pairs = top_pairs

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        last = trainer.max_epochs is not None and trainer.current_epoch + 1 >= trainer.max_epochs
        if (trainer.current_epoch + 1) % self.every_n_epochs and not last:
            return
        pairs = getattr(pl_module, "pairs", None)
        if pairs is None:
            if not hasattr(pl_module, "pairs"):
                raise LipregError(f"PairSetImages shows CLIP's pair set; {type(pl_module).__name__} has none")
            return
        if not trainer.is_global_zero:
            return
        quotients = pair_set_quotients(pl_module.net, pairs, getattr(pl_module, "p", 2.0))
        step = trainer.global_step
        for logger in trainer.loggers:
            experiment = getattr(logger, "experiment", None)
            if hasattr(experiment, "add_histogram"):
                experiment.add_histogram("pairs/quotients", quotients.cpu(), global_step=step)
        if pairs.dim() in (4, 5):
            log_figure(trainer, "pairs/top", lambda: pair_figure(pairs, quotients, self.top_pairs))


class UpperBoundTracking(L.Callback):
    """Logs the layer-product upper bound of the Lipschitz constant (eq. (4)) each epoch as
    ``train/lip_upper``, beside the lower estimate ``train/lip``, so the gap is a curve.

    Cheap: ``iterations`` power-iteration steps per weight layer, each started from its vector of
    the previous epoch (``tracked_upper_bound``); the vectors are saved in checkpoints. Needs a
    network with a ``layers`` chain (``lipreg.nets.MLP``, ``MadryCNN``) and a data module with
    ``input_shape``.

    Args:
        iterations: power-iteration steps per weight layer and epoch.
    """

    def __init__(self, iterations: int = 3) -> None:
        if iterations < 1:
            raise LipregError(f"UpperBoundTracking needs iterations >= 1, got {iterations}")
        self.iterations = iterations
        self.vectors: dict[int, Tensor] = {}

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        layers = getattr(pl_module.net, "layers", None)
        shape = getattr(trainer.datamodule, "input_shape", None)
        if layers is None or shape is None:
            raise LipregError("UpperBoundTracking needs a network with a `layers` chain (lipreg.nets.MLP, "
                              "MadryCNN) and a data module with `input_shape`")
        bound = tracked_upper_bound(layers, tuple(shape), self.vectors, self.iterations)
        pl_module.log("train/lip_upper", bound, sync_dist=False)

    def state_dict(self) -> dict[str, dict[int, Tensor]]:
        return {"vectors": {k: v.cpu() for k, v in self.vectors.items()}}

    def load_state_dict(self, state_dict: dict[str, dict[int, Tensor]]) -> None:
        self.vectors = dict(state_dict.get("vectors", {}))
