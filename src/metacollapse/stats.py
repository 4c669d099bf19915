"""Means over seeds and their two-sided 95% Student-t intervals."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

# t_{0.975, dof} for dof = 1..30: the Student-t quantile that two-sided 95% intervals use, to 10 significant
# digits, from the closed-form Student-t distribution function (Abramowitz & Stegun 26.7.3-26.7.4) inverted by
# bisection. The NIST/SEMATECH e-Handbook of Statistical Methods, table 1.3.6.7.2 ("Critical values of the
# Student's t distribution", column 0.975) lists the same values to three decimals.
T_975: tuple[float, ...] = (
    12.70620474, 4.30265273, 3.182446305, 2.776445105, 2.570581836,
    2.446911851, 2.364624252, 2.306004135, 2.262157163, 2.228138852,
    2.20098516, 2.17881283, 2.160368656, 2.144786688, 2.131449546,
    2.119905299, 2.109815578, 2.10092204, 2.093024054, 2.085963447,
    2.079613845, 2.073873068, 2.06865761, 2.063898562, 2.059538553,
    2.055529439, 2.051830516, 2.048407142, 2.045229642, 2.042272456,
)  # fmt: skip
#: Beyond 30 degrees of freedom the normal quantile z_{0.975} stands in (t_{0.975, 31} = 2.040 is 4% larger).
Z_975 = 1.959963985


def t_quantile(dof: int) -> float:
    """Half-width factor of a two-sided 95% Student-t interval with ``dof`` (``n - 1``) degrees of freedom."""
    if int(dof) != dof or dof < 1:
        raise ValueError(f"degrees of freedom must be a positive integer, got {dof!r}")
    return T_975[int(dof) - 1] if dof <= len(T_975) else Z_975


def mean_ci(values: Iterable[float]) -> tuple[float, float, int]:
    """Mean, half-width of its 95% Student-t interval (``t * s / sqrt(n)``, ``s`` with ``ddof=1``) and ``n``.

    Non-finite values are dropped; the half-width is NaN for a single value, and the mean is NaN for none.
    """
    arr = np.asarray(list(values), dtype=np.float64).ravel()
    arr = arr[np.isfinite(arr)]
    n = int(arr.size)
    if n == 0:
        return math.nan, math.nan, 0
    mean = float(arr.mean())
    if n == 1:
        return mean, math.nan, 1
    return mean, t_quantile(n - 1) * float(arr.std(ddof=1)) / math.sqrt(n), n


def aggregate_seeds(df: pd.DataFrame, by: Sequence[str], value: str) -> pd.DataFrame:
    """Per combination of ``by`` (rows sorted by it): ``mean``, ``ci95`` (as :func:`mean_ci`) and ``n`` of ``value``.

    Each row of ``df`` is one run's value (one seed). Non-finite values are dropped; a combination without any
    finite value keeps ``mean`` NaN and ``n`` 0.
    """
    by = list(by)
    vals = pd.to_numeric(df[value], errors="coerce").astype(np.float64)
    vals = vals.where(np.isfinite(vals))
    grouped = vals.groupby([df[c] for c in by], sort=True, dropna=False)
    out = pd.DataFrame({"mean": grouped.mean(), "sd": grouped.std(ddof=1), "n": grouped.count()})
    factor = np.array([t_quantile(int(n) - 1) if n >= 2 else np.nan for n in out["n"]], dtype=float)
    out["ci95"] = factor * out["sd"].to_numpy() / np.sqrt(np.maximum(out["n"].to_numpy(), 1))
    out = out.reset_index()
    out.columns = [*by, "mean", "sd", "n", "ci95"]
    return out[[*by, "mean", "ci95", "n"]].assign(n=lambda d: d["n"].astype(int))
