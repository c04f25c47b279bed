"""How unlikely a count is: the upper tail of a Poisson or negative-binomial count.

Counts of alerts are Poisson at best and over-dispersed in practice (an incident makes a
busy day, so a day at twice the usual rate is not rare). A negative binomial with mean
``mean`` and dispersion ``phi`` has variance ``mean + phi * mean**2``; ``phi = 0`` is the
Poisson. Standard library only (math.lgamma): a tail beyond the mean is a short sum.
"""

from __future__ import annotations

import math

#: terms summed before the rest of the tail is bounded by a geometric series
_MAX_TERMS = 400


def upper_tail(count: int, mean: float, phi: float = 0.0, stop_above: float = 1.0) -> float:
    """P(X >= count) for X with this mean and dispersion (0: Poisson).

    Exact to a few parts in a billion where it matters (small tails); a count at or below
    the mean returns 1.0 without computing (nothing there is unusual). With ``stop_above``
    the sum stops once it exceeds that (the answer is then some value above it): a
    detector asking "below p?" rarely needs more than the first term.
    """
    if count <= 0:
        return 1.0
    if mean <= 0.0:
        return 0.0
    if count <= mean:
        return 1.0
    if phi <= 1e-12:
        log_term = -mean + count * math.log(mean) - math.lgamma(count + 1)
        size = math.inf
        q = 0.0
    else:
        size = 1.0 / phi
        q = mean / (size + mean)
        log_term = (math.lgamma(count + size) - math.lgamma(size) - math.lgamma(count + 1)
                    + size * math.log(size / (size + mean)) + count * math.log(q))
    if log_term < -745.0:  # below the smallest float: the tail is as good as nothing
        return 0.0
    term = math.exp(log_term)
    total = term
    if total > stop_above:
        return min(total, 1.0)
    k = count
    ratio = 0.0
    for _ in range(_MAX_TERMS):
        ratio = mean / (k + 1) if size == math.inf else (k + size) / (k + 1) * q
        term *= ratio
        total += term
        k += 1
        if total > stop_above:
            return min(total, 1.0)
        if term < total * 1e-12 and ratio < 1.0:
            return min(total, 1.0)
    # what is left is at most a geometric series of the largest ratio still to come
    bound = max(ratio, q)
    if bound >= 1.0:
        return 1.0
    return min(total + term * bound / (1.0 - bound), 1.0)


def odds_text(p: float) -> str:
    """'about 1 in 12,000' as people say it (two significant digits); tiny ones as a bound."""
    if p <= 0.0 or p < 1e-9:
        return "less than 1 in a billion"
    odds = 1.0 / p
    digits = max(0, math.floor(math.log10(odds)) - 1)
    rounded = round(odds / 10**digits) * 10**digits
    return f"about 1 in {rounded:,}"
