"""Tests of metacollapse.stats: the t table, means over seeds and their intervals."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pandas as pd
import pytest

from metacollapse.stats import aggregate_seeds, mean_ci, t_quantile

# Closed forms: one degree of freedom is the Cauchy law, two give t = p * sqrt(2 / (1 - p^2)).
T1 = math.tan(0.95 * math.pi / 2)  # 12.7062047361...
T2 = 0.95 * math.sqrt(2 / (1 - 0.95**2))  # 4.3026527297...


def test_the_t_table_matches_the_closed_forms_to_its_ten_digits() -> None:
    assert t_quantile(1) == pytest.approx(T1, rel=1e-9)
    assert t_quantile(2) == pytest.approx(T2, rel=1e-9)


@pytest.mark.parametrize(("dof", "published"), [(3, 3.182), (5, 2.571), (10, 2.228), (20, 2.086), (30, 2.042)])
def test_the_t_table_agrees_with_the_nist_handbook_to_three_decimals(dof: int, published: float) -> None:
    assert round(t_quantile(dof), 3) == published


def test_beyond_thirty_degrees_of_freedom_the_normal_quantile_is_used() -> None:
    normal = statistics.NormalDist().inv_cdf(0.975)
    assert t_quantile(31) == t_quantile(1000) == pytest.approx(normal, abs=1e-9)
    assert t_quantile(30) > t_quantile(31)


@pytest.mark.parametrize("dof", [0, -1, 2.5])
def test_degrees_of_freedom_must_be_a_positive_integer(dof) -> None:
    with pytest.raises(ValueError, match="degrees of freedom"):
        t_quantile(dof)


def test_mean_ci_of_three_seeds_uses_the_t_quantile_of_two_degrees_of_freedom() -> None:
    mean, half, n = mean_ci([1.0, 2.0, 4.0])
    sd = math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 2)  # 1.5275...
    assert (mean, n) == (pytest.approx(7 / 3, rel=1e-15), 3)
    assert half == pytest.approx(T2 * sd / math.sqrt(3), rel=1e-9)
    assert half == pytest.approx(3.7946, abs=1e-4)


def test_mean_ci_drops_non_finite_values_and_gives_no_interval_for_one_seed() -> None:
    m1, h1, n1 = mean_ci([5.0, math.nan])
    assert (m1, n1) == (5.0, 1) and math.isnan(h1)
    m0, h0, n0 = mean_ci([])
    assert n0 == 0 and math.isnan(m0) and math.isnan(h0)


def test_aggregate_seeds_gives_mean_interval_and_count_per_combination() -> None:
    df = pd.DataFrame(
        {
            "group": ["b", "a", "a", "a", "a", "b"],
            "epoch": [0, 0, 0, 0, 1, 1],
            "mean": [7.0, 1.0, 2.0, 3.0, np.inf, 9.0],
        }
    )
    out = aggregate_seeds(df, ["group", "epoch"], "mean")
    assert list(out.columns) == ["group", "epoch", "mean", "ci95", "n"]
    assert list(zip(out["group"], out["epoch"], strict=True)) == [("a", 0), ("a", 1), ("b", 0), ("b", 1)]
    np.testing.assert_allclose(out["mean"].iloc[0], 2.0, rtol=1e-15)
    np.testing.assert_allclose(out["ci95"].iloc[0], T2 / math.sqrt(3), rtol=1e-9)
    assert out["n"].tolist() == [3, 0, 1, 1]
    assert math.isnan(out["mean"].iloc[1]) and math.isnan(out["ci95"].iloc[2])
    assert out["mean"].iloc[2] == 7.0
