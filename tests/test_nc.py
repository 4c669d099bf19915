"""Specification of metacollapse.nc: neural-collapse metrics, ProtoNet analogues and the per-epoch table.

Notation: C classes (sorted distinct labels), N samples, d dims, class means mu_c, global mean mu_G = mean of
the class means, M = rows mu_c - mu_G. Reference values are derived from closed forms or from literal, slow
re-implementations of the definitions written out below.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from metacollapse.nc import (
    CLASSIFIER_METRICS,
    FEATURE_METRICS,
    TABLE_COLUMNS,
    epoch_nc_table,
    load_feature_dump,
    nc_metrics,
    nc_table_for_file,
    protonet_nc,
)

ALL_METRICS = FEATURE_METRICS + CLASSIFIER_METRICS


# ------------------------------------------------------------------------------------------------------------
# Helpers: geometry and literal reference implementations of the definitions
# ------------------------------------------------------------------------------------------------------------
def simplex_etf(n_classes: int, dim: int, radius: float, rng: np.random.Generator) -> np.ndarray:
    """C x d rows of a simplex ETF centred at 0: equal norms ``radius``, pairwise cosines -1/(C-1)."""
    base = (np.eye(n_classes) - 1.0 / n_classes) * radius * math.sqrt(n_classes / (n_classes - 1))
    frame, _ = np.linalg.qr(rng.normal(size=(dim, n_classes)))  # d x C orthonormal columns
    return base @ frame.T


def random_orthogonal(dim: int, rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(dim, dim)))
    return q * np.sign(np.diag(r))


def clustered(rng: np.random.Generator, n_classes: int, dim: int, per_class, spread: float = 1.0, noise=0.5):
    """Features around random class centres; ``per_class`` an int or a list of counts. Labels are 0..C-1."""
    counts = [per_class] * n_classes if isinstance(per_class, int) else list(per_class)
    centres = rng.normal(size=(n_classes, dim)) * spread
    labels = np.repeat(np.arange(n_classes), counts)
    feats = centres[labels] + noise * rng.normal(size=(labels.size, dim))
    return feats, labels


def reference_metrics(h: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """The definitions, literally: dense d x d matrices, numpy pinv, Python loops over pairs."""
    classes = np.unique(y)
    n_cls, n = len(classes), len(y)
    mu = np.stack([h[y == c].mean(axis=0) for c in classes])
    mu_g = mu.mean(axis=0)  # mean of the class means
    m = mu - mu_g
    resid = [h[i] - mu[np.searchsorted(classes, y[i])] for i in range(n)]
    sigma_w = sum(np.outer(r, r) for r in resid) / n
    sigma_b = sum(np.outer(row, row) for row in m) / n_cls
    norms = np.linalg.norm(m, axis=1)
    pairs = [(a, b) for a in range(n_cls) for b in range(a + 1, n_cls)]
    cos = np.array([m[a] @ m[b] / (norms[a] * norms[b]) for a, b in pairs])
    var = np.array([np.mean(np.sum((h[y == c] - mu[k]) ** 2, axis=1)) for k, c in enumerate(classes)])
    target = (np.eye(n_cls) - 1.0 / n_cls) / math.sqrt(n_cls - 1)

    def etf(g):
        return np.linalg.norm(g / np.linalg.norm(g) - target)

    unit = m / norms[:, None]
    return {
        "nc1": np.trace(sigma_w @ np.linalg.pinv(sigma_b, hermitian=True)) / n_cls,
        "nc1_quotient": np.trace(sigma_w) / np.trace(sigma_b),
        "nc2_equinorm": np.std(norms, ddof=1) / np.mean(norms),
        "nc2_equiangularity": np.std(cos, ddof=0),
        "nc2_maxangle": np.mean(np.abs(cos + 1.0 / (n_cls - 1))),
        "nc2_etf": etf(m @ m.T),
        "nc2_etf_rownorm": etf(unit @ unit.T),
        "cdnv": np.mean([(var[a] + var[b]) / (2 * np.sum((mu[a] - mu[b]) ** 2)) for a, b in pairs]),
    }


def brute_force_nc4(h, y, weights, bias) -> float:
    """Count, sample by sample, linear-classifier argmax != nearest class mean (Euclidean)."""
    classes = np.unique(y)
    mu = np.stack([h[y == c].mean(axis=0) for c in classes])
    mismatches = 0
    for x in h:
        linear = int(np.argmax([weights[k] @ x + bias[k] for k in range(len(classes))]))
        nearest = int(np.argmin([np.linalg.norm(x - mu[k]) for k in range(len(classes))]))
        mismatches += linear != nearest
    return mismatches / len(h)


# ------------------------------------------------------------------------------------------------------------
# Exact values
# ------------------------------------------------------------------------------------------------------------
def test_exact_simplex_etf_without_noise_gives_zero_for_every_metric():
    rng = np.random.default_rng(0)
    n_cls, dim = 5, 16
    m = simplex_etf(n_cls, dim, radius=3.0, rng=rng)
    offset = rng.normal(size=dim) * 4.0  # mu_G away from the origin
    # Unbalanced classes: zero NC2 needs mu_G = mean of the class means, not the sample mean.
    counts = [1, 2, 3, 4, 5]
    label_values = np.array([40, 10, 30, 20, 50])  # unsorted, non-contiguous; class order = sorted labels
    sorted_rows = np.argsort(label_values)
    feats = np.concatenate([np.repeat((offset + m[k])[None], counts[k], axis=0) for k in range(n_cls)])
    labels = np.repeat(label_values, counts)
    # Classifier = centred means in sorted-label order, bias cancelling the offset: W h + b = M (h - mu_G).
    w = m[sorted_rows]
    b = -w @ offset

    out = nc_metrics(feats, labels, weights=w, bias=b)

    assert set(out) == set(ALL_METRICS)
    for key in ALL_METRICS:
        assert out[key] == pytest.approx(0.0, abs=1e-12), key


def test_etf_means_with_axis_points_match_closed_form_nc1_and_cdnv():
    # Class means on a simplex ETF of radius r; each class is the 2d points mu_c +/- s e_j.
    # Sigma_W = (s^2/d) I; Sigma_B has C-1 eigenvalues r^2/(C-1), so
    #   NC1 = (1/C) tr(Sigma_W Sigma_B^+) = (s^2/d)(C-1)^2 / (C r^2),
    #   Var_c = s^2 and ||mu_c - mu_c'||^2 = 2 r^2 C/(C-1), so CDNV = s^2 (C-1) / (2 r^2 C),
    #   tr(Sigma_W)/tr(Sigma_B) = s^2 / r^2.
    n_cls, dim, r, s = 5, 16, 3.0, 0.5
    rng = np.random.default_rng(1)
    mu = simplex_etf(n_cls, dim, r, rng) + rng.normal(size=dim)
    offsets = np.concatenate([s * np.eye(dim), -s * np.eye(dim)])
    feats = np.concatenate([mu[k] + offsets for k in range(n_cls)])
    labels = np.repeat(np.arange(n_cls), 2 * dim)

    expected_nc1 = (s**2 / dim) * (n_cls - 1) ** 2 / (n_cls * r**2)
    expected_cdnv = s**2 * (n_cls - 1) / (2 * r**2 * n_cls)
    assert expected_nc1 == pytest.approx(0.0055556, abs=5e-8)
    assert expected_cdnv == pytest.approx(0.0111111, abs=5e-8)

    out = nc_metrics(feats, labels)
    assert out["nc1"] == pytest.approx(expected_nc1, rel=1e-12)
    assert out["cdnv"] == pytest.approx(expected_cdnv, rel=1e-12)
    assert out["nc1_quotient"] == pytest.approx(s**2 / r**2, rel=1e-12)
    for key in ("nc2_equinorm", "nc2_equiangularity", "nc2_maxangle", "nc2_etf", "nc2_etf_rownorm"):
        assert out[key] == pytest.approx(0.0, abs=1e-12), key


def test_cdnv_keeps_its_digits_when_two_class_means_nearly_coincide():
    # Means 0, delta and L on the first axis (delta = 1e-6, L = 1e3), each class the 2d points mean +/- s e_j, so
    # Var_c = s^2 and CDNV = mean over pairs of s^2 / dist^2. The Gram shortcut ||a||^2 + ||b||^2 - 2 a.b has an
    # absolute error near 1e-10 here, far more than delta^2 = 1e-12.
    d, s, delta, big = 4, 1e-7, 1e-6, 1e3
    centres = np.zeros((3, d))
    centres[1, 0], centres[2, 0] = delta, big
    offsets = np.concatenate([s * np.eye(d), -s * np.eye(d)])
    h = np.concatenate([c + offsets for c in centres])
    y = np.repeat(np.arange(3), 2 * d)
    expected = np.mean([s**2 / delta**2, s**2 / big**2, s**2 / (big - delta) ** 2])
    assert nc_metrics(h, y)["cdnv"] == pytest.approx(expected, rel=1e-5)


def test_one_dimensional_two_classes():
    # Classes {-2, 0} and {0, 2}: means -1 and 1, Sigma_W = 1, Sigma_B = 1, Var_c = 1, distance^2 = 4.
    out = nc_metrics(np.array([[-2.0], [0.0], [0.0], [2.0]]), np.array([0, 0, 1, 1]))
    assert out["nc1"] == pytest.approx(0.5, rel=1e-12)
    assert out["cdnv"] == pytest.approx(0.25, rel=1e-12)
    assert out["nc1_quotient"] == pytest.approx(1.0, rel=1e-12)


def test_one_hot_class_means_are_a_simplex_etf_once_centred():
    # e_1..e_C are orthogonal (cosine 0) but e_c - (1/C) 1 are a simplex ETF (cosine -1/(C-1)).
    n_cls, dim = 6, 9
    labels = np.repeat(np.arange(n_cls), 3)
    feats = np.eye(dim)[labels]
    out = nc_metrics(feats, labels)
    for key in ("nc1", "nc1_quotient", "cdnv"):
        assert out[key] == pytest.approx(0.0, abs=1e-12), key
    for key in ("nc2_equinorm", "nc2_equiangularity", "nc2_maxangle", "nc2_etf", "nc2_etf_rownorm"):
        assert out[key] == pytest.approx(0.0, abs=1e-12), key


# ------------------------------------------------------------------------------------------------------------
# Definitions, conventions and invariances
# ------------------------------------------------------------------------------------------------------------
def test_every_feature_metric_matches_its_literal_definition_with_unbalanced_classes():
    rng = np.random.default_rng(2)
    feats, labels = clustered(rng, 7, 16, per_class=[3, 5, 8, 2, 6, 4, 9], spread=2.0, noise=0.7)
    labels = labels * 3 + 1  # non-contiguous labels
    got = nc_metrics(feats, labels)
    want = reference_metrics(feats, labels)
    assert set(got) == set(FEATURE_METRICS)
    for key in FEATURE_METRICS:
        assert got[key] == pytest.approx(want[key], rel=1e-9), key
        assert got[key] > 0.0, key


def test_metrics_unchanged_under_scaling_rotation_and_translation():
    rng = np.random.default_rng(3)
    n_cls, dim = 6, 12
    feats, labels = clustered(rng, n_cls, dim, per_class=8, spread=1.5, noise=0.8)
    mu = np.stack([feats[labels == c].mean(axis=0) for c in range(n_cls)])
    w = (mu - mu.mean(axis=0)) + 0.6 * rng.normal(size=(n_cls, dim))
    b = rng.normal(size=n_cls)
    before = nc_metrics(feats, labels, weights=w, bias=b)
    assert 0.0 < before["nc4"] < 1.0 and before["nc3"] > 0.0  # the classifier metrics are not trivially 0

    # h -> a Q h + t, and the classifier moved with it so that its logits only scale by a > 0:
    # (a Q h + t) . (Q w) + (a b - (Q w) . t) = a (h . w + b).
    a, q, t = 2.5, random_orthogonal(dim, rng), 5.0 * rng.normal(size=dim)
    feats2 = a * feats @ q.T + t
    w2 = w @ q.T
    b2 = a * b - w2 @ t
    after = nc_metrics(feats2, labels, weights=w2, bias=b2)
    for key in ALL_METRICS:
        assert after[key] == pytest.approx(before[key], rel=1e-9, abs=1e-12), key


def test_pseudo_inverse_keeps_at_most_c_minus_1_directions_even_far_from_the_origin():
    # After centring, M has rank <= C-1. Far from the origin, rounding in the centring leaves a spurious C-th
    # direction (squared singular value ~1e-11 here, above the relative zero-tolerance of the pseudo-inverse);
    # inverting it would blow NC1 up. It must be dropped because of the rank bound, whatever its size.
    rng = np.random.default_rng(15)
    feats, labels = clustered(rng, 5, 16, per_class=6, spread=1.0, noise=0.3)
    near = nc_metrics(feats, labels)
    far = nc_metrics(feats + 1e9, labels)
    for key in FEATURE_METRICS:
        assert far[key] == pytest.approx(near[key], rel=1e-6), key


def test_float32_features_60_classes_in_64_dims_do_not_blow_up():
    # Realistic ReLU-like features: far from the origin, small spread; C - 1 = 59 directions out of d = 64.
    rng = np.random.default_rng(4)
    feats64, labels = clustered(rng, 60, 64, per_class=10, spread=0.3, noise=0.1)
    feats64 = np.abs(feats64 + 5.0)
    feats32 = feats64.astype(np.float32)
    out32 = nc_metrics(feats32, labels)
    out64 = nc_metrics(feats64, labels)
    reference = reference_metrics(feats64, labels)
    for key in FEATURE_METRICS:
        assert np.isfinite(out32[key]), key
        assert out32[key] == pytest.approx(out64[key], rel=1e-4), key
        assert out64[key] == pytest.approx(reference[key], rel=1e-7), key
    # Sensible size: within-class spread 0.1 vs between-class 0.3 per direction, 10 samples per class.
    assert 0.01 < out32["nc1"] < 10.0


def test_more_classes_than_dimensions_uses_all_d_directions():
    # C - 1 >= d: Sigma_B is full rank (d x d), so the pseudo-inverse is the inverse.
    rng = np.random.default_rng(5)
    feats, labels = clustered(rng, 20, 8, per_class=6, spread=2.0, noise=0.5)
    out = nc_metrics(feats, labels)
    mu = np.stack([feats[labels == c].mean(axis=0) for c in range(20)])
    m = mu - mu.mean(axis=0)
    resid = feats - mu[labels]
    sigma_w, sigma_b = resid.T @ resid / len(feats), m.T @ m / 20
    assert np.linalg.matrix_rank(sigma_b) == 8
    assert out["nc1"] == pytest.approx(np.trace(sigma_w @ np.linalg.inv(sigma_b)) / 20, rel=1e-10)
    for key in FEATURE_METRICS:
        assert np.isfinite(out[key]), key
    assert out["nc2_etf_rownorm"] > 0.1  # 20 vectors cannot form a simplex ETF in 8 dimensions


def test_collinear_class_means_invert_only_their_one_nonzero_direction():
    # C=4 means at -3, -1, 1, 3 on one axis of R^3 (rank 1 < min(d, C-1) = 3), each class the points
    # mu_c +/- s e_j. Sigma_B = 5 e1 e1^T, Sigma_W = (s^2/d) I, so NC1 = (1/C)(s^2/d)/5 = s^2/(5 d C). The
    # two numerically-zero eigenvalues of Sigma_B must be treated as zeros, not inverted.
    n_cls, dim, s = 4, 3, 0.5
    means = np.zeros((n_cls, dim))
    means[:, 0] = [-3.0, -1.0, 1.0, 3.0]
    offsets = np.concatenate([s * np.eye(dim), -s * np.eye(dim)])
    feats = np.concatenate([means[k] + offsets for k in range(n_cls)])
    labels = np.repeat(np.arange(n_cls), 2 * dim)
    expected = s**2 / (5 * dim * n_cls)
    assert expected == pytest.approx(0.0041667, abs=5e-8)
    assert nc_metrics(feats, labels)["nc1"] == pytest.approx(expected, rel=1e-12)


def test_nc1_ignores_directions_without_between_class_spread():
    # Class means span 2 of the 3 coordinates; noise along the third (a null direction of Sigma_B) is ignored
    # by tr(Sigma_W Sigma_B^+) but not by the trace quotient.
    rng = np.random.default_rng(6)
    means = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [-1.0, -1.0, 0.0]])
    labels = np.repeat(np.arange(3), 20)
    noise_in_plane = 0.1 * rng.normal(size=(60, 3)) * np.array([1.0, 1.0, 0.0])
    base = means[labels] + noise_in_plane
    extra = np.zeros((60, 3))
    z = 10.0 * rng.normal(size=(3, 10))
    extra[:, 2] = np.concatenate([z, -z], axis=1).reshape(-1)  # zero mean within each class: means unchanged
    quiet, loud = nc_metrics(base, labels), nc_metrics(base + extra, labels)
    assert loud["nc1"] == pytest.approx(quiet["nc1"], rel=1e-9)
    assert loud["nc1_quotient"] > 100 * quiet["nc1_quotient"]


# ------------------------------------------------------------------------------------------------------------
# Classifier metrics and the ProtoNet analogues
# ------------------------------------------------------------------------------------------------------------
def test_nc4_matches_a_brute_force_count():
    rng = np.random.default_rng(7)
    feats, labels = clustered(rng, 5, 6, per_class=[12, 7, 9, 15, 10], spread=1.0, noise=0.9)
    mu = np.stack([feats[labels == c].mean(axis=0) for c in range(5)])
    w = mu + 0.8 * rng.normal(size=mu.shape)
    b = rng.normal(size=5)
    got = nc_metrics(feats, labels, weights=w, bias=b)["nc4"]
    want = brute_force_nc4(feats, labels, w, b)
    assert 0.0 < want < 1.0
    assert got == want


def test_nc3_is_the_squared_distance_of_the_normalised_centred_classifier_and_means():
    rng = np.random.default_rng(8)
    feats, labels = clustered(rng, 4, 5, per_class=6)
    mu = np.stack([feats[labels == c].mean(axis=0) for c in range(4)])
    m = mu - mu.mean(axis=0)
    w = rng.normal(size=(4, 5))
    w_centred = w - w.mean(axis=0)
    want = np.sum((w_centred / np.linalg.norm(w_centred) - m / np.linalg.norm(m)) ** 2)
    assert nc_metrics(feats, labels, weights=w)["nc3"] == pytest.approx(want, rel=1e-12)
    # Scale- and row-shift-invariant in W; bias-independent.
    shifted = 3.0 * w + rng.normal(size=5)
    got = nc_metrics(feats, labels, weights=shifted, bias=np.ones(4))["nc3"]
    assert got == pytest.approx(want, rel=1e-12)


def test_protonet_nc_is_the_nearest_prototype_classifier_written_as_w_equals_2p():
    rng = np.random.default_rng(9)
    n_cls, dim = 6, 10
    centres = rng.normal(size=(n_cls, dim))
    label_values = np.array([13, 2, 7, 40, 5, 21])
    sup_labels = rng.permutation(np.repeat(label_values, 3))
    qry_labels = rng.permutation(np.repeat(label_values, 7))
    index = {v: k for k, v in enumerate(label_values)}
    support = centres[[index[v] for v in sup_labels]] + 0.9 * rng.normal(size=(sup_labels.size, dim))
    query = centres[[index[v] for v in qry_labels]] + 0.9 * rng.normal(size=(qry_labels.size, dim))

    out = protonet_nc(support, sup_labels, query, qry_labels)
    assert set(out) == set(CLASSIFIER_METRICS)

    classes = np.sort(label_values)
    protos = np.stack([support[sup_labels == c].mean(axis=0) for c in classes])
    means = np.stack([query[qry_labels == c].mean(axis=0) for c in classes])
    nearest_proto = [int(np.argmin(np.linalg.norm(x - protos, axis=1))) for x in query]
    nearest_mean = [int(np.argmin(np.linalg.norm(x - means, axis=1))) for x in query]
    want_nc4 = float(np.mean(np.array(nearest_proto) != np.array(nearest_mean)))
    assert 0.0 < want_nc4 < 1.0
    assert out["nc4"] == want_nc4
    # Same numbers as nc_metrics with the ProtoNet's linear form W = 2p, b = -||p||^2 ...
    linear = nc_metrics(query, qry_labels, weights=2 * protos, bias=-np.sum(protos**2, axis=1))
    assert out["nc4"] == linear["nc4"]
    assert out["nc3"] == pytest.approx(linear["nc3"], rel=1e-12)
    # ... and NC3 does not depend on the factor 2 (W = p gives the same value).
    assert out["nc3"] == pytest.approx(nc_metrics(query, qry_labels, weights=protos)["nc3"], rel=1e-12)


# ------------------------------------------------------------------------------------------------------------
# Per-epoch table
# ------------------------------------------------------------------------------------------------------------
# name: (kind, episodes, n_way, n_support, n_query); for class probes (kind, 1, classes, n_support, rest)
PROBES = {
    "train_episodes": ("episodic", 3, 4, 2, 3),
    "val_episodes": ("episodic", 2, 3, 2, 4),
    "train_classes": ("classes", 1, 5, 2, 2),
}


def make_dump(rng: np.random.Generator, dim: int = 6, drop_one_query: bool = False) -> dict[str, np.ndarray]:
    """A small feature dump in the CONTRACTS.md layout, rows shuffled."""
    centres = 3.0 * rng.normal(size=(12, dim))
    cols: dict[str, list] = {"features": [], "labels": [], "probe": [], "episode": [], "role": []}
    for p, (kind, episodes, n_cls, n_sup, n_qry) in enumerate(PROBES.values()):
        for ep in range(episodes):
            classes = rng.choice(12, size=n_cls, replace=False)
            for c in classes:
                for i in range(n_sup + n_qry):
                    cols["features"].append(centres[c] + rng.normal(size=dim))
                    cols["labels"].append(c)
                    cols["probe"].append(p)
                    cols["episode"].append(ep if kind == "episodic" else 0)
                    cols["role"].append(0 if i < n_sup else 1)
    order = rng.permutation(len(cols["labels"]))
    dump = {
        "features": np.asarray(cols["features"], dtype=np.float32)[order],
        "labels": np.asarray(cols["labels"], dtype=np.int64)[order],
        "probe": np.asarray(cols["probe"], dtype=np.int64)[order],
        "episode": np.asarray(cols["episode"], dtype=np.int64)[order],
        "role": np.asarray(cols["role"], dtype=np.int8)[order],
        "probe_names": np.array(list(PROBES)),
        "probe_kinds": np.array([v[0] for v in PROBES.values()]),
        "epoch": np.array(7, dtype=np.int64),
        "backbone": np.array("conv4"),
    }
    if drop_one_query:  # one class of one episode loses a query: episodes no longer share a layout
        victim = np.flatnonzero((dump["probe"] == 0) & (dump["episode"] == 1) & (dump["role"] == 1))[0]
        dump = {k: (np.delete(v, victim, axis=0) if k in cols else v) for k, v in dump.items()}
    return dump


def hand_loop_table(dump: dict[str, np.ndarray]) -> dict[tuple[str, str, str], tuple[float, float]]:
    """The table's definition, episode by episode through the public single-problem functions."""
    f, y = dump["features"], dump["labels"]
    out = {}
    for p, (name, kind) in enumerate(zip(dump["probe_names"], dump["probe_kinds"], strict=True)):
        in_probe = dump["probe"] == p
        sup_all, all_rows = in_probe & (dump["role"] == 0), in_probe
        if kind == "classes":
            for key, value in nc_metrics(f[all_rows], y[all_rows]).items():
                out[(name, "all", key)] = (value, math.nan)
            pn = protonet_nc(f[sup_all], y[sup_all], f[all_rows], y[all_rows])
            for key, value in pn.items():
                out[(name, "protonet", key)] = (value, math.nan)
            continue
        per: dict[tuple[str, str], list[float]] = {}
        for ep in np.unique(dump["episode"][in_probe]):
            s = in_probe & (dump["episode"] == ep) & (dump["role"] == 0)
            q = in_probe & (dump["episode"] == ep) & (dump["role"] == 1)
            results = {
                "support": nc_metrics(f[s], y[s]),
                "query": nc_metrics(f[q], y[q]),
                "protonet": protonet_nc(f[s], y[s], f[q], y[q]),
            }
            for set_name, values in results.items():
                for key, value in values.items():
                    per.setdefault((set_name, key), []).append(value)
        for (set_name, key), values in per.items():
            out[(name, set_name, key)] = (float(np.mean(values)), float(np.std(values, ddof=0)))
    return out


def assert_table_matches_hand_loop(table: pd.DataFrame, dump: dict[str, np.ndarray]) -> None:
    want = hand_loop_table(dump)
    got = {(r.probe, r.set, r.metric): (r.mean, r.std) for r in table.itertuples()}
    assert set(got) == set(want)
    for key, (mean, std) in want.items():
        assert got[key][0] == pytest.approx(mean, rel=1e-9, abs=1e-12), key
        if math.isnan(std):
            assert math.isnan(got[key][1]), key
        else:
            assert got[key][1] == pytest.approx(std, rel=1e-7, abs=1e-12), key


def test_epoch_nc_table_has_the_expected_probes_sets_and_metrics():
    table = epoch_nc_table(make_dump(np.random.default_rng(10)))
    assert list(table.columns) == list(TABLE_COLUMNS)
    assert set(table["backbone"]) == {"conv4"} and set(table["epoch"]) == {7}
    expected = set()
    for name, (kind, *_rest) in PROBES.items():
        if kind == "episodic":
            sets = {"support": FEATURE_METRICS, "query": FEATURE_METRICS}
        else:
            sets = {"all": FEATURE_METRICS}
        sets["protonet"] = CLASSIFIER_METRICS
        expected |= {(name, s, m) for s, metrics in sets.items() for m in metrics}
    keys = list(zip(table["probe"], table["set"], table["metric"], strict=True))
    assert len(keys) == len(set(keys)) == len(expected)
    assert set(keys) == expected
    assert table["mean"].notna().all()
    episodic = table["probe"].isin(["train_episodes", "val_episodes"])
    assert table.loc[episodic, "std"].notna().all() and (table.loc[episodic, "std"] >= 0).all()
    assert table.loc[~episodic, "std"].isna().all()


def test_epoch_nc_table_means_and_stds_equal_a_hand_loop_over_episodes():
    dump = make_dump(np.random.default_rng(11))
    assert_table_matches_hand_loop(epoch_nc_table(dump), dump)


def test_epoch_nc_table_handles_episodes_of_unequal_layout():
    dump = make_dump(np.random.default_rng(12), drop_one_query=True)
    assert_table_matches_hand_loop(epoch_nc_table(dump), dump)


def test_nc_table_for_file_writes_the_csv_atomically(tmp_path):
    dump = make_dump(np.random.default_rng(13))
    npz = tmp_path / "epoch_007.npz"
    np.savez(npz, **dump)
    assert set(load_feature_dump(npz)) == set(dump)
    out_csv = tmp_path / "nc" / "epoch_007.csv"
    table = nc_table_for_file(npz, out_csv)
    written = pd.read_csv(out_csv)
    assert list(written.columns) == list(TABLE_COLUMNS)
    assert len(written) == len(table)
    np.testing.assert_allclose(written["mean"], table["mean"], rtol=1e-12)
    assert sorted(p.name for p in out_csv.parent.iterdir()) == ["epoch_007.csv"]  # no temporary left behind


def test_nc_table_for_file_names_the_file_when_keys_are_missing(tmp_path):
    dump = make_dump(np.random.default_rng(14))
    del dump["role"]
    npz = tmp_path / "broken.npz"
    np.savez(npz, **dump)
    out_csv = tmp_path / "out.csv"
    with pytest.raises(ValueError, match=r"broken\.npz.*role"):
        nc_table_for_file(npz, out_csv)
    assert not out_csv.exists()


def test_a_truncated_feature_dump_is_an_error_naming_the_file(tmp_path):
    npz = tmp_path / "epoch_003.npz"
    np.savez(npz, **make_dump(np.random.default_rng(15)))
    npz.write_bytes(npz.read_bytes()[:-200])  # a copy cut short
    with pytest.raises(ValueError, match=r"epoch_003\.npz: cannot read feature dump \(BadZipFile"):
        nc_table_for_file(npz, tmp_path / "out.csv")
    assert not (tmp_path / "out.csv").exists()


# ------------------------------------------------------------------------------------------------------------
# Errors
# ------------------------------------------------------------------------------------------------------------
GOOD_H = np.arange(12.0).reshape(6, 2) ** 1.5
GOOD_Y = np.array([0, 0, 1, 1, 2, 2])


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: nc_metrics(GOOD_H, np.zeros(6)), "at least 2 classes"),
        (lambda: nc_metrics(GOOD_H, GOOD_Y[:5]), "5 entries but the features have 6 rows"),
        (lambda: nc_metrics(GOOD_H[:, 0], GOOD_Y), "2-D"),
        (lambda: nc_metrics(np.where(GOOD_H > 20, np.nan, GOOD_H), GOOD_Y), "non-finite"),
        (lambda: nc_metrics(np.where(GOOD_H > 20, np.inf, GOOD_H), GOOD_Y), "non-finite"),
        (lambda: nc_metrics(GOOD_H, GOOD_Y, weights=np.ones((2, 2))), r"shape \(C, d\) = \(3, 2\)"),
        (lambda: nc_metrics(GOOD_H, GOOD_Y, weights=np.ones((3, 3))), r"shape \(C, d\) = \(3, 2\)"),
        (lambda: nc_metrics(GOOD_H, GOOD_Y, weights=np.ones((3, 2)), bias=np.ones(2)), "bias must have"),
        (lambda: protonet_nc(GOOD_H, GOOD_Y, GOOD_H, GOOD_Y + 1), "same classes"),
        (lambda: protonet_nc(GOOD_H, GOOD_Y, GOOD_H[:, :1], GOOD_Y), "d=2"),
    ],
)
def test_bad_input_raises_a_clear_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()
