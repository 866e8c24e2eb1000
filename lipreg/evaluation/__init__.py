"""The evaluation layer between the methods and the callbacks: what to attack (``EvaluationPlan``),
scoring a chunk of images (``EvaluationSuite``: tensors in, tensors out), which images
(``ImageSchedule``), the epoch's sums (``ScoreAccumulator``) and the typed result
(``RobustnessResult``). Attacks and certificates join in ``registry`` with one line each."""

from lipreg.evaluation.accumulator import ScoreAccumulator
from lipreg.evaluation.plan import PGD_CURVES, EvaluationPlan
from lipreg.evaluation.progress import EvaluationProgress
from lipreg.evaluation.registry import ATTACKS, CERTIFICATES, build_attack
from lipreg.evaluation.result import RobustnessResult, wilson_interval
from lipreg.evaluation.schedule import ImageSchedule
from lipreg.evaluation.suite import ChunkScores, EvaluationSuite, lower_bound, split_scores, upper_bound

__all__ = [
    "ATTACKS",
    "CERTIFICATES",
    "PGD_CURVES",
    "ChunkScores",
    "EvaluationPlan",
    "EvaluationProgress",
    "EvaluationSuite",
    "ImageSchedule",
    "RobustnessResult",
    "ScoreAccumulator",
    "build_attack",
    "lower_bound",
    "split_scores",
    "upper_bound",
    "wilson_interval",
]
