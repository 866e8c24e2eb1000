"""The maths of lipreg as pure tensor functions: no Lightning, no ``.backward()``, no state.

Every function returns new tensors and leaves the model's mode and parameter gradients untouched.
"""

from lipreg.functional.attacks import fgsm, gaussian_noise, pgd
from lipreg.functional.bounds import (
    certified,
    lipschitz_lower_bound,
    lipschitz_upper_bound,
    logit_margin,
    tracked_upper_bound,
)
from lipreg.functional.pairs import (
    ascend_pairs,
    box_pairs,
    noisy_pairs,
    project_onto_ball,
    project_onto_sphere,
    random_direction_pairs,
)
from lipreg.functional.penalties import (
    input_gradient_penalty,
    jacobian_spectral_norm,
    max_quotient,
    mean_quotient,
    squared_parameter_norm,
)
from lipreg.functional.quotients import difference_quotients, pair_quotients, stack_pairs
from lipreg.functional.schedules import decay_epsilon, discrepancy_step, discrepancy_step_tensor, warmup_finished

__all__ = [
    "ascend_pairs",
    "box_pairs",
    "certified",
    "decay_epsilon",
    "difference_quotients",
    "discrepancy_step",
    "discrepancy_step_tensor",
    "fgsm",
    "gaussian_noise",
    "input_gradient_penalty",
    "jacobian_spectral_norm",
    "lipschitz_lower_bound",
    "lipschitz_upper_bound",
    "tracked_upper_bound",
    "logit_margin",
    "max_quotient",
    "mean_quotient",
    "noisy_pairs",
    "pair_quotients",
    "pgd",
    "project_onto_ball",
    "project_onto_sphere",
    "random_direction_pairs",
    "squared_parameter_norm",
    "stack_pairs",
    "warmup_finished",
]
