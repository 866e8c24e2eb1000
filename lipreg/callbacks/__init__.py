"""Thin callbacks that drive the schedules of the functional core and save their own state."""

from lipreg.callbacks.agreement import ProcessAgreement
from lipreg.callbacks.certified_validation import CertifiedValidation
from lipreg.callbacks.divergence_guard import DivergenceGuard
from lipreg.callbacks.epoch_timer import EpochTimer
from lipreg.callbacks.insight import PairSetImages, UpperBoundTracking
from lipreg.callbacks.latest_checkpoint import LatestCheckpoint
from lipreg.callbacks.pgd_validation import PGDValidation
from lipreg.callbacks.predictions import PredictionWriter
from lipreg.callbacks.progress_lines import ProgressLine, TestProgress
from lipreg.callbacks.regression_plot import RegressionPlot
from lipreg.callbacks.robustness import RobustnessEvaluation
from lipreg.callbacks.schedules import EpsilonDecay, LambdaDiscrepancy, Warmup
from lipreg.callbacks.stop_on_request import StopOnRequest

__all__ = [
    "CertifiedValidation",
    "DivergenceGuard",
    "EpochTimer",
    "EpsilonDecay",
    "LambdaDiscrepancy",
    "LatestCheckpoint",
    "PairSetImages",
    "PGDValidation",
    "PredictionWriter",
    "ProcessAgreement",
    "ProgressLine",
    "RegressionPlot",
    "RobustnessEvaluation",
    "StopOnRequest",
    "TestProgress",
    "UpperBoundTracking",
    "Warmup",
]
