"""Certified accuracy on the validation split during training: the curve of a certificate against time."""

import lightning as L
import torch
from torch import Tensor
from torchmetrics import MeanMetric

from lipreg.callbacks.sampled_validation import SampledValidation
from lipreg.errors import LipregError
from lipreg.evaluation import CERTIFICATES, EvaluationPlan


class CertifiedValidation(SampledValidation):
    """Logs ``val/certified_acc@ε`` for each of ``radii`` and ``val/mean_certified_radius`` at every
    validation: the share of the first ``sample_size`` validation images (all when ``None``) whose
    certified radius (``lipreg test``'s deterministic certificate, ``class-pair``: the margins over
    the proven class-pair bounds, recomputed from the weights at each validation) exceeds ε. No
    attack runs, so it costs a forward pass; a ``ModelCheckpoint`` can monitor it.

    Args:
        radii: the L2 radii.
        sample_size: validation images certified (all when ``None``).
    """

    def __init__(self, radii: list[float] = [1.58], sample_size: int | None = None) -> None:  # noqa: B006
        if not radii or any(r < 0 for r in radii):
            raise LipregError(f"CertifiedValidation needs radii >= 0, got {radii}")
        super().__init__(sample_size)
        self.radii = list(radii)

    def start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        shape = getattr(trainer.datamodule, "input_shape", None)
        if shape is None or not pl_module.task_spec.classification:
            raise LipregError("CertifiedValidation certifies a classifier on a data module with an input_shape")
        plan = EvaluationPlan(certified_radii=self.radii)
        with torch.no_grad():
            self.certifier = CERTIFICATES["class-pair"].prepare(pl_module.net, tuple(shape), plan)
        if self.certifier is None:
            raise LipregError(f"CertifiedValidation: no certificate for {type(pl_module.net).__name__} (it needs a "
                              "`layers` chain whose every layer lipreg can bound)")
        device = pl_module.device
        self.accuracy = {r: MeanMetric(nan_strategy="disable").to(device) for r in self.radii}
        self.radius = MeanMetric(nan_strategy="disable").to(device)

    def measure(self, pl_module: L.LightningModule, x: Tensor, y: Tensor) -> None:
        with torch.no_grad():
            radius = self.certifier(x, y, pl_module.net(x))
        self.radius.update(radius)
        for r, metric in self.accuracy.items():
            metric.update((radius > r).float())

    def computed(self, pl_module: L.LightningModule) -> dict[str, Tensor]:
        logged = {f"val/certified_acc@{r:g}": metric.compute() for r, metric in self.accuracy.items()}
        logged["val/mean_certified_radius"] = self.radius.compute()
        return logged
