"""Paired comparison of two methods over training seeds: Student's t, its two-sided p-value and a 95% interval.

Pure Python (no scipy): the t distribution's CDF for an integer number of degrees of freedom has a closed form as a
finite series in theta = atan(t / sqrt(df)) (Abramowitz and Stegun 26.7.3 and 26.7.4), and the interval's quantile
is found by bisection on it.
"""

from __future__ import annotations

import math
import statistics
from typing import NamedTuple


class PairedT(NamedTuple):
    """The paired differences' summary: mean, t = mean / (sd / sqrt n), df = n - 1, two-sided p, 95% interval."""

    mean: float
    t: float
    df: int
    p: float
    low: float
    high: float


def t_within(t: float, df: int) -> float:
    """P(|T| <= |t|) for Student's T with df >= 1 degrees of freedom."""
    theta = math.atan(abs(t) / math.sqrt(df))
    c2 = math.cos(theta) ** 2
    # even df: sin(theta) * (1 + 1/2 c2 + 1*3/(2*4) c2^2 + ...), df/2 terms;
    # odd df: (2/pi) * (theta + sin(theta) cos(theta) * (1 + 2/3 c2 + 2*4/(3*5) c2^2 + ...)), (df-1)/2 terms
    term, series = 1.0, 0.0
    first = 1 if df % 2 == 0 else 2
    for k in range((df // 2) if df % 2 == 0 else (df - 1) // 2):
        series += term
        term *= c2 * (first + 2 * k) / (first + 2 * k + 1)
    if df % 2 == 0:
        return math.sin(theta) * series
    return 2 / math.pi * (theta + math.sin(theta) * math.cos(theta) * series)


def t_quantile(within: float, df: int) -> float:
    """The t >= 0 with P(|T| <= t) = within (0 < within < 1), by bisection."""
    low, high = 0.0, 1.0
    while t_within(high, df) < within:
        high *= 2
    for _ in range(200):
        mid = (low + high) / 2
        low, high = (mid, high) if t_within(mid, df) < within else (low, mid)
    return (low + high) / 2


def paired_t(differences: list[float]) -> PairedT | None:
    """Student's paired t over per-seed differences; None when fewer than two or all equal (no spread)."""
    if len(differences) < 2:
        return None
    sd = statistics.stdev(differences)
    if sd == 0:
        return None
    mean, df = statistics.mean(differences), len(differences) - 1
    se = sd / math.sqrt(len(differences))
    half = t_quantile(0.95, df) * se
    return PairedT(mean, mean / se, df, 1 - t_within(mean / se, df), mean - half, mean + half)
