"""Specification of metacollapse.nc: neural-collapse metrics, ProtoNet analogues and null baselines.

Notation: C classes (sorted distinct labels), N samples, d dims, class means mu_c, global mean mu_G = mean of
the class means, M = rows mu_c - mu_G. Reference values are derived from closed forms or from literal, slow
re-implementations of the definitions written out below.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from metacollapse.nc import (
    CLASSIFIER_METRICS,
    FEATURE_METRICS,
    nc_metrics,
    null_baseline,
    protonet_nc,
)

ALL_METRICS = FEATURE_METRICS + CLASSIFIER_METRICS
EPS32 = float(np.finfo(np.float32).eps)


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
    dim = h.shape[1]

    def var_along(k, u):  # (1/n_c) sum_{i in c} ((h_i - mu_c) . u)^2
        return np.mean(((h[y == classes[k]] - mu[k]) @ u) ** 2)

    cdnv_dir = []
    for a, b in pairs:
        diff = mu[a] - mu[b]
        u = diff / np.linalg.norm(diff)
        cdnv_dir.append((var_along(a, u) + var_along(b, u)) / (2 * diff @ diff))
    eig = np.clip(np.linalg.eigvalsh(m @ m.T), 0.0, None)
    p = eig[eig > 0] / eig.sum()
    return {
        "nc1": np.trace(sigma_w @ np.linalg.pinv(sigma_b, hermitian=True)) / n_cls,
        "nc1_paper": np.trace(sigma_w @ np.linalg.pinv(sigma_b, rcond=dim * EPS32)) / n_cls,
        "nc1_quotient": np.trace(sigma_w) / np.trace(sigma_b),
        "nc2_equinorm": np.std(norms, ddof=1) / np.mean(norms),
        "nc2_equiangularity": np.std(cos, ddof=0),
        "nc2_maxangle": np.mean(np.abs(cos + 1.0 / (n_cls - 1))),
        "nc2_etf": etf(m @ m.T),
        "nc2_etf_rownorm": etf(unit @ unit.T),
        "gnc2": np.var([math.log(1.0 / np.linalg.norm(unit[a] - unit[b])) for a, b in pairs]),
        "cdnv": np.mean([(var[a] + var[b]) / (2 * np.sum((mu[a] - mu[b]) ** 2)) for a, b in pairs]),
        "cdnv_dir": np.mean(cdnv_dir),
        "erank": np.exp(-np.sum(p * np.log(p))),
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
        if key != "erank":
            assert out[key] == pytest.approx(0.0, abs=1e-12), key
    assert out["erank"] == pytest.approx(n_cls - 1, rel=1e-12)  # C-1 equal eigenvalues of M M^T


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
    assert out["nc1_paper"] == pytest.approx(expected_nc1, rel=1e-12)
    assert out["cdnv"] == pytest.approx(expected_cdnv, rel=1e-12)
    # Var_c along any unit u is s^2/d (isotropic axis points), so the directional CDNV is the CDNV over d.
    assert out["cdnv_dir"] == pytest.approx(expected_cdnv / dim, rel=1e-12)
    assert out["erank"] == pytest.approx(n_cls - 1, rel=1e-12)
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
    assert out["cdnv_dir"] == pytest.approx(0.25, rel=1e-12)  # d = 1: the only direction
    assert out["erank"] == pytest.approx(1.0, rel=1e-12)


def test_one_hot_class_means_are_a_simplex_etf_once_centred():
    # e_1..e_C are orthogonal (cosine 0) but e_c - (1/C) 1 are a simplex ETF (cosine -1/(C-1)).
    n_cls, dim = 6, 9
    labels = np.repeat(np.arange(n_cls), 3)
    feats = np.eye(dim)[labels]
    out = nc_metrics(feats, labels)
    for key in ("nc1", "nc1_paper", "nc1_quotient", "cdnv", "cdnv_dir"):
        assert out[key] == pytest.approx(0.0, abs=1e-12), key
    assert out["erank"] == pytest.approx(n_cls - 1, rel=1e-12)
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
# The authors' NC1/NC2 (validate_nc.py of saakethmm/NC-prototypical-networks), restated in float32 torch
# ------------------------------------------------------------------------------------------------------------
def paper_nc1_float32(features, means):
    """Their compute_nc1: features (N classes, K shots, d), means (N, d), float32; torch.linalg.pinv default."""
    import torch

    n_cls, shots = features.shape[0], features.shape[1]
    diff = (features - means.unsqueeze(1)).unsqueeze(3)
    diff_tr = diff.view(n_cls, shots, 1, -1)
    sigma_w = 0
    for i in range(n_cls):
        sigma_w += torch.bmm(diff[i], diff_tr[i])
    sigma_w = torch.sum(sigma_w, dim=0) / (n_cls * shots)
    global_mean = means.mean(0)
    diff_b = (means - global_mean.unsqueeze(0)).unsqueeze(2)
    sigma_b = torch.bmm(diff_b, diff_b.view(n_cls, 1, -1)).mean(dim=0)
    return float(1 / n_cls * torch.trace(torch.matmul(sigma_w, torch.linalg.pinv(sigma_b))))


def paper_nc2_float32(means):
    """Their compute_nc2: row-normalised centred means, unit-Frobenius Gram vs the simplex ETF."""
    import torch
    import torch.nn.functional as F  # noqa: N812

    n_cls = means.shape[0]
    h_bar = F.normalize(means - means.mean(0).unsqueeze(0), dim=1)
    gram = torch.mm(h_bar, h_bar.T)
    gram /= torch.norm(gram, p="fro")
    etf = (torch.eye(n_cls) - 1 / n_cls * torch.ones((n_cls, n_cls))) / pow(n_cls - 1, 0.5)
    return float(torch.norm(gram - etf, p="fro"))


def ill_conditioned_episode(rng, n_cls=60, dim=64, shots=5):
    """float32 features [C, K, d] whose Sigma_B spans eigenvalues 1 .. ~3e-6 (relative), three of them just
    above and three just below the float32 pinv cut-off d * eps32 = 7.6e-6; the within-class spread along each
    direction of the means is proportional to the means' spread there (so every kept direction matters)."""
    cut = dim * EPS32
    k = n_cls - 1
    rel = np.concatenate([np.geomspace(1.0, 3e-5, k - 6), cut * np.array([2.5, 2.0, 1.6, 0.5, 0.4, 0.3])])
    rng.shuffle(rel)
    centred = rng.normal(size=(n_cls, k))
    u, _ = np.linalg.qr(centred - centred.mean(axis=0))  # columns orthonormal and orthogonal to 1
    v, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
    s = 3.0 * np.sqrt(rel)
    means = (u * s) @ v[:, :k].T + rng.normal(size=dim)
    z = rng.normal(size=(n_cls, shots, k)) * (0.3 * s * rng.uniform(0.5, 1.5, size=k))
    z -= z.mean(axis=1, keepdims=True)
    noise = z @ v[:, :k].T + 1e-3 * rng.normal(size=(n_cls, shots, dim))
    return (means[:, None, :] + noise).astype(np.float32), rel


def test_nc1_paper_reproduces_the_authors_float32_pinv_on_ill_conditioned_60_way_episodes():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(20)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small matrices: extra threads only spin on a shared machine
    try:
        episodes = [ill_conditioned_episode(rng) for _ in range(3)]
        wants = [paper_nc1_float32(torch.from_numpy(f), torch.from_numpy(f).mean(1)) for f, _ in episodes]
    finally:
        torch.set_num_threads(threads)
    for (feats, rel), want in zip(episodes, wants, strict=True):
        n_cls, shots, dim = feats.shape
        assert rel.min() < dim * EPS32 < rel.max() * 1e-4  # lambda_min / lambda_max ~ 1e-5 / 1e-6
        out = nc_metrics(feats.reshape(-1, dim), np.repeat(np.arange(n_cls), shots))
        assert out["nc1_paper"] == pytest.approx(want, rel=1e-3)
        # nc1 inverts the three eigenvalues below the float32 cut-off, so it is clearly larger.
        assert out["nc1"] > 1.03 * out["nc1_paper"]


def test_nc2_etf_rownorm_is_the_authors_nc2():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(21)
    for n_cls, dim in ((60, 64), (5, 512), (7, 3)):
        feats, labels = clustered(rng, n_cls, dim, per_class=4, spread=1.0, noise=0.6)
        means = np.stack([feats[labels == c].mean(axis=0) for c in range(n_cls)])
        want = paper_nc2_float32(torch.from_numpy(means.astype(np.float32)))
        assert nc_metrics(feats, labels)["nc2_etf_rownorm"] == pytest.approx(want, rel=1e-5)


# ------------------------------------------------------------------------------------------------------------
# Storage precision
# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("rank", [5, 12, 30])
def test_float32_stored_low_rank_means_far_from_the_origin_do_not_blow_up_nc1(rank):
    # 60 class means of exact rank r < min(d, C-1) = 59, spread ~1 around an offset ~100, exactly zero-mean
    # within-class noise. Rounding to float32 (ulp ~ 1e-5 here) gives the means ~59 spurious directions with
    # singular values ~1e-5; a float64-only cut-off inverts them (nc1 ~ 1e10).
    rng = np.random.default_rng(30 + rank)
    n_cls, dim, shots = 60, 64, 8
    means = rng.normal(size=(n_cls, rank)) @ rng.normal(size=(rank, dim)) / math.sqrt(rank)
    noise = 0.1 * rng.normal(size=(n_cls, shots, dim))
    noise -= noise.mean(axis=1, keepdims=True)
    f64 = (100.0 * (1.0 + 0.2 * rng.random(dim)) + means[:, None, :] + noise).reshape(-1, dim)
    labels = np.repeat(np.arange(n_cls), shots)
    f32 = f64.astype(np.float32)

    exact = nc_metrics(f64, labels)
    assert 1e-5 < exact["nc1"] < 1.0
    stored32 = nc_metrics(f32, labels)  # storage dtype inferred from the array
    assert stored32["nc1"] == pytest.approx(exact["nc1"], rel=0.01)
    assert stored32["nc1_paper"] == pytest.approx(exact["nc1"], rel=0.01)
    # The same values cast to float64 and declared float32-stored give the same result ...
    declared = nc_metrics(f32.astype(np.float64), labels, storage_dtype=np.float32)
    assert declared["nc1"] == stored32["nc1"]
    # ... and declared float64-stored they blow up: the storage precision is what protects nc1.
    assert nc_metrics(f32.astype(np.float64), labels)["nc1"] > 1e6


# ------------------------------------------------------------------------------------------------------------
# Robust companions: effective rank and directional CDNV, by hand
# ------------------------------------------------------------------------------------------------------------
def test_erank_of_a_hand_computed_example():
    # Means (+-1, 0) and (0, +-2) (already centred): M^T M = diag(2, 8), so the non-zero eigenvalues of M M^T are
    # 2 and 8, p = (0.2, 0.8), erank = exp(-(0.2 ln 0.2 + 0.8 ln 0.8)) = 0.2^-0.2 * 0.8^-0.8.
    means = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 2.0], [0.0, -2.0]])
    feats = np.repeat(means, 3, axis=0) + np.tile([[0.1, 0.0], [-0.1, 0.0], [0.0, 0.0]], (4, 1))
    labels = np.repeat(np.arange(4), 3)
    closed_form = 0.2**-0.2 * 0.8**-0.8
    assert closed_form == pytest.approx(1.6493849, abs=1e-7)
    assert nc_metrics(feats, labels)["erank"] == pytest.approx(1.6493849, abs=1e-7)


def test_cdnv_dir_of_a_hand_computed_example():
    # Each class: the 4 points mean + (+-1, 0), mean + (0, +-3), so along a unit u = (ux, uy)
    # Var(u) = (2 ux^2 + 18 uy^2) / 4 = (ux^2 + 9 uy^2) / 2, and Var = (1 + 9) / 2 = 5 in all directions.
    # Means (0, 0), (3, 0), (0, 4): pairs along x (dist 3), along y (dist 4), and u = (3, -4)/5 (dist 5):
    #   (0,1): 2 * 1/2 / (2 * 9)  = 1/18;   (0,2): 2 * 9/2 / (2 * 16) = 9/32;
    #   (1,2): 2 * (9/25 + 9 * 16/25)/2 / (2 * 25) = 153/1250;  mean = (1/18 + 9/32 + 153/1250) / 3.
    shape = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 3.0], [0.0, -3.0]])
    means = np.array([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]])
    feats = np.concatenate([mu + shape for mu in means])
    labels = np.repeat([5, 6, 7], 4)
    expected = float((Fraction(1, 18) + Fraction(9, 32) + Fraction(153, 1250)) / 3)
    assert expected == pytest.approx(0.15306852, abs=1e-8)
    out = nc_metrics(feats, labels)
    assert out["cdnv_dir"] == pytest.approx(0.15306852, abs=1e-8)
    # The full CDNV uses the whole variance 5: mean over pairs of 5 / dist^2.
    assert out["cdnv"] == pytest.approx((5 / 9 + 5 / 16 + 5 / 25) / 3, rel=1e-12)


# ------------------------------------------------------------------------------------------------------------
# GNC2: hyperspherical uniformity of the centred class means (Wu & Papyan 2024)
# ------------------------------------------------------------------------------------------------------------
def axis_points(means: np.ndarray, s: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Each class the 2d points mean +/- s e_j: the class means are exactly ``means``."""
    d = means.shape[1]
    offsets = np.concatenate([s * np.eye(d), -s * np.eye(d)])
    return np.concatenate([mu + offsets for mu in means]), np.repeat(np.arange(len(means)), 2 * d)


def test_gnc2_of_four_centred_means_on_a_square_is_ln2_squared_over_18():
    # C = 4 classes in d = 2 (no simplex ETF: C > d + 1). Unit centred means +-e1, +-e2: four pairs at chord
    # distance sqrt(2), two at 2, so log(1/dist) is -a/2 (x4) and -a (x2) with a = ln 2; their mean is -2a/3 and
    # their variance (4 (a/6)^2 + 2 (a/3)^2) / 6 = a^2 / 18.
    feats, labels = axis_points(np.array([[3.0, 0.0], [-3.0, 0.0], [0.0, 1.0], [0.0, -1.0]]))
    assert math.log(2) ** 2 / 18 == pytest.approx(0.02669183, abs=1e-8)
    assert nc_metrics(feats, labels)["gnc2"] == pytest.approx(0.02669183, abs=1e-8)
    # The same four directions bunched in two pairs 20 degrees apart are less uniform.
    angles = np.radians([0.0, 20.0, 180.0, 200.0])
    bunched, labels = axis_points(np.stack([np.cos(angles), np.sin(angles)], axis=1))
    assert nc_metrics(bunched, labels)["gnc2"] > 10 * nc_metrics(feats, labels)["gnc2"]


def test_gnc2_is_zero_for_two_classes_and_inf_when_two_centred_means_point_the_same_way():
    rng = np.random.default_rng(16)
    feats, labels = clustered(rng, 2, 5, per_class=4)
    assert nc_metrics(feats, labels)["gnc2"] == 0.0  # one pair: nothing varies
    # Centred means (1, 0) and (2, 0) share a direction: the kernel log(1/0) is infinite (CDNV stays finite).
    feats, labels = axis_points(np.array([[1.0, 0.0], [2.0, 0.0], [-1.0, 1.0], [-2.0, -1.0]]))
    out = nc_metrics(feats, labels)
    assert out["gnc2"] == math.inf
    assert np.isfinite(out["cdnv"]) and np.isfinite(out["nc2_equiangularity"])


def test_gnc2_keeps_its_digits_when_two_centred_means_are_nearly_parallel():
    # Centred means 1e-7 radians apart: through cosines the squared chord distance 2 - 2 cos (1e-14) would carry
    # an absolute error near 1e-16; the literal definition takes the difference of the unit vectors.
    means = np.array([[1.0, 0.0, 0.0], [2.0, 2e-7, 0.0], [-1.5, 1.0, 0.5], [-1.5, -1.0 - 2e-7, -0.5]])
    feats, labels = axis_points(means)
    want = reference_metrics(feats, labels)["gnc2"]
    assert want > 1.0  # the near pair dominates: log(1/1e-7) = 16.1 against values near -0.5
    assert nc_metrics(feats, labels)["gnc2"] == pytest.approx(want, rel=1e-6)


def test_gnc2_null_of_gaussian_class_means_falls_with_the_dimension():
    # Isotropic Gaussian class means point in random directions; as d grows their pairwise distances concentrate.
    nulls = [null_baseline([4] * 6, dim, draws=64, seed=2)["gnc2"] for dim in (4, 32, 256)]
    assert nulls[0] > nulls[1] > nulls[2] > 0.0


# ------------------------------------------------------------------------------------------------------------
# Null baselines
# ------------------------------------------------------------------------------------------------------------
def test_null_baseline_is_seeded_and_stable():
    a = null_baseline([5, 5, 5, 5, 5], 64, support_counts=[2, 2, 2, 2, 2], seed=3)
    b = null_baseline([5, 5, 5, 5, 5], 64, support_counts=[2, 2, 2, 2, 2], seed=3)
    c = null_baseline([5, 5, 5, 5, 5], 64, support_counts=[2, 2, 2, 2, 2], seed=4)
    assert set(a) == set(ALL_METRICS)
    assert a == b
    assert a != c
    for key in ("nc1_quotient", "cdnv", "erank", "nc2_etf", "nc3"):
        assert c[key] == pytest.approx(a[key], rel=0.03), key


def test_null_baseline_matches_closed_forms_in_high_dimension():
    # C classes of n iid N(0, I_d) samples: tr(Sigma_W) ~ d (N - C)/N, tr(Sigma_B) ~ d (C-1)/(C n),
    # Var_c ~ d (n-1)/n, ||mu_c - mu_c'||^2 ~ 2d/n; large d concentrates the ratios on the ratios of the means:
    # nc1_quotient -> (n-1) C/(C-1), cdnv -> (n-1)/2, cdnv_dir -> (n-1)/(2d); the means are an ETF: erank -> C-1.
    n_cls, n, dim = 5, 4, 2048
    out = null_baseline([n] * n_cls, dim, draws=32, seed=1)
    assert out["nc1_quotient"] == pytest.approx((n - 1) * n_cls / (n_cls - 1), rel=0.01)
    assert out["cdnv"] == pytest.approx((n - 1) / 2, rel=0.01)
    assert out["cdnv_dir"] == pytest.approx((n - 1) / (2 * dim), rel=0.05)
    assert out["erank"] == pytest.approx(n_cls - 1, rel=0.01)


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
