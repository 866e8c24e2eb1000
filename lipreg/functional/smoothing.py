"""Randomized smoothing (Cohen, Rosenfeld & Kolter, 2019): a probabilistic L2 certificate for any classifier.

The smoothed classifier ``g(x) = argmax_c P(f(x + δ) = c)``, ``δ ~ N(0, σ² I)``, is robust at ``x``
within the radius ``σ Φ⁻¹(p_A)`` whenever the top class has probability ``p_A > ½`` (their
Theorem 1). CERTIFY (their Algorithm, §3.2) estimates it from samples: the top class ``c_A`` from
``n₀`` noisy copies, then a one-sided ``1 − α`` Clopper–Pearson lower bound ``p_A`` of its
probability from ``n`` fresh ones, and abstains when ``p_A ≤ ½``. The certificate is of ``g``, not
of the network ``f``, and it holds with probability at least ``1 − α`` per image.
"""

from collections.abc import Callable

import torch
from torch import Tensor

from lipreg.functional.progress import report_step

#: CERTIFY's answer when it abstains.
ABSTAIN = -1


def binomial_tail(successes: Tensor, trials: int, probability: Tensor) -> Tensor:
    """``P(X ≥ k)`` for ``X ~ Binomial(trials, p)``, elementwise over ``k`` and ``p`` (float64 sums of
    the probability mass in log space)."""
    j = torch.arange(trials + 1, dtype=torch.float64, device=probability.device)
    log_choose = torch.lgamma(torch.tensor(trials + 1.0, dtype=torch.float64)) - torch.lgamma(j + 1) \
        - torch.lgamma(trials - j + 1)
    p = probability.double().clamp(1e-300, 1 - 1e-16).unsqueeze(-1)
    log_mass = log_choose + j * p.log() + (trials - j) * torch.log1p(-p)
    log_mass = log_mass.masked_fill(j < successes.double().unsqueeze(-1), float("-inf"))
    return log_mass.logsumexp(dim=-1).exp()


def clopper_pearson_lower(successes: Tensor, trials: int, alpha: float, iterations: int = 60) -> Tensor:
    """The one-sided ``1 − α`` Clopper–Pearson lower confidence bound of a binomial proportion:
    the ``p`` with ``P(X ≥ k | p) = α`` (0 for ``k = 0``), found by bisection.

    Example:
        >>> round(float(clopper_pearson_lower(torch.tensor([990]), 1000, 0.001)), 4)
        0.976
    """
    low = torch.zeros(successes.shape, dtype=torch.float64, device=successes.device)
    high = torch.ones_like(low)
    for _ in range(iterations):  # the tail grows with p: keep P(X >= k | low) <= alpha
        middle = (low + high) / 2
        above = binomial_tail(successes, trials, middle) > alpha
        high = torch.where(above, middle, high)
        low = torch.where(above, low, middle)
    return torch.where(successes > 0, low, torch.zeros_like(low))


def noisy_class_counts(model: Callable[[Tensor], Tensor], x: Tensor, sigma: float, samples: int, num_classes: int,
                       batch_size: int = 1000, generator: torch.Generator | None = None) -> Tensor:
    """``[B, C]`` counts of the classes ``model`` predicts on ``samples`` noisy copies ``x + N(0, σ² I)`` of
    each input (the copies go through the model ``batch_size`` at a time)."""
    counts = torch.zeros(len(x), num_classes, dtype=torch.long, device=x.device)
    per_batch = max(1, batch_size // max(len(x), 1))
    with torch.no_grad():
        done = 0
        while done < samples:
            copies = min(per_batch, samples - done)
            noisy = x.unsqueeze(1) + sigma * torch.randn((len(x), copies, *x.shape[1:]), device=x.device,
                                                         dtype=x.dtype, generator=generator)
            predicted = model(noisy.flatten(0, 1)).argmax(dim=1).view(len(x), copies)
            counts += torch.nn.functional.one_hot(predicted, num_classes).sum(dim=1)
            done += copies
            report_step()
    return counts


def smoothed_certify(model: Callable[[Tensor], Tensor], x: Tensor, sigma: float, num_classes: int,
                     selection_samples: int = 100, samples: int = 1000, alpha: float = 0.001,
                     batch_size: int = 1000, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """CERTIFY (Cohen et al., 2019, §3.2) on every input: the smoothed prediction (``ABSTAIN`` where
    it abstains) and the certified L2 radius ``σ Φ⁻¹(p_A)`` (0 where it abstains), each correct with
    probability ≥ ``1 − α``.

    Args:
        selection_samples: ``n₀``, the noisy copies that choose the top class.
        samples: ``n``, the fresh copies that bound its probability.
        alpha: the failure probability per input.
    """
    top = noisy_class_counts(model, x, sigma, selection_samples, num_classes, batch_size, generator).argmax(dim=1)
    counts = noisy_class_counts(model, x, sigma, samples, num_classes, batch_size, generator)
    lower = clopper_pearson_lower(counts.gather(1, top.unsqueeze(1)).squeeze(1), samples, alpha)
    certified = lower > 0.5
    normal = torch.distributions.Normal(torch.zeros((), dtype=torch.float64), torch.ones((), dtype=torch.float64))
    radius = sigma * normal.icdf(lower.clamp(0.5, 1 - 1e-12))
    prediction = torch.where(certified, top, torch.full_like(top, ABSTAIN))
    return prediction, torch.where(certified, radius, torch.zeros_like(radius)).to(x.dtype)
