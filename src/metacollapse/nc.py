"""Neural-collapse (NC) metrics on dumped features, their null baselines, and the per-epoch NC table.

This module owns every number called "NC" in the project: the metric definitions (NC1 and the authors'
NC1, NC2 variants, CDNV and directional CDNV, effective rank, NC3/NC4), their conventions (normalisation,
centring, ddof, pseudo-inverse cut-offs), the ProtoNet analogues of the classifier metrics, the null baselines
(the same metrics on isotropic Gaussian features) and the long per-epoch table built from a feature dump
(layout in ``docs/CONTRACTS.md``; every formula and convention in ``docs/nc_conventions.md``).

Everything is computed in float64 (inputs are cast with ``np.asarray(x, dtype=np.float64)``) by pure
functions; the precision the features were *stored* in (float32 in the dumps) only enters the pseudo-inverse
cut-off. Notation: C classes (the distinct labels, sorted), N samples, d dimensions, class means ``mu_c``,
global mean ``mu_G`` = the mean of the class means (not the sample mean), ``M`` = the C x d matrix of rows
``mu_c - mu_G``, ``G = M M^T`` with eigenvalues ``lam_1 >= lam_2 >= ...``.

Internally the metrics are written for a stack of E problems that share one class layout (``h`` of shape
``[E, n, d]``), so that all the balanced episodes of an episodic probe, and all the draws of a null baseline,
are evaluated in one batched pass; the public single-problem functions call the same code with E = 1.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Mapping, MutableMapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from metacollapse.atomic import atomic_path, read_npz
from metacollapse.runs import RUN_COLUMNS

__all__ = [
    "CLASSIFIER_KEYS",
    "CLASSIFIER_METRICS",
    "FEATURE_METRICS",
    "NULL_MIN_DRAWS",
    "NULL_SAMPLES",
    "NULL_SEED",
    "REQUIRED_DUMP_KEYS",
    "TABLE_COLUMNS",
    "epoch_nc_table",
    "load_feature_dump",
    "nc_metrics",
    "nc_table_for_file",
    "nc_tables_for_run",
    "null_baseline",
    "protonet_nc",
]

#: Metrics of the features alone (keys of :func:`nc_metrics` without weights), in table order.
FEATURE_METRICS: tuple[str, ...] = (
    "nc1",
    "nc1_paper",
    "nc1_quotient",
    "nc2_equinorm",
    "nc2_equiangularity",
    "nc2_maxangle",
    "nc2_etf",
    "nc2_etf_rownorm",
    "cdnv",
    "cdnv_dir",
    "erank",
)
#: Metrics of a linear classifier against the features (added by ``weights``; see :func:`protonet_nc`).
CLASSIFIER_METRICS: tuple[str, ...] = ("nc3", "nc4")
#: Keys a feature dump must hold (docs/CONTRACTS.md).
REQUIRED_DUMP_KEYS: tuple[str, ...] = (
    "features",
    "labels",
    "probe",
    "probe_names",
    "probe_kinds",
    "probe_bn_modes",
    "probe_splits",
    "episode",
    "role",
    "epoch",
    "meta",
)
#: Optional keys of a feature dump: the learner's own linear classifier (all four or none).
CLASSIFIER_KEYS: tuple[str, ...] = ("classifier_weight", "classifier_bias", "classifier_classes", "classifier_split")
#: Columns of the per-epoch NC table: the run columns of :mod:`metacollapse.runs`, then the measurement.
TABLE_COLUMNS: tuple[str, ...] = (
    *RUN_COLUMNS,
    "epoch",
    "probe",
    "bn_mode",
    "set",
    "metric",
    "mean",
    "std",
    "null",
)
#: Null baselines (see :func:`null_baseline`): by default as many Gaussian draws as give NULL_SAMPLES rows in
#: all (support + scored set), at least NULL_MIN_DRAWS; the seed.
NULL_SAMPLES = 60_000
NULL_MIN_DRAWS = 48
NULL_SEED = 0

_LOG = logging.getLogger(__name__)
_EPS = float(np.finfo(np.float64).eps)
_EPS32 = float(np.finfo(np.float32).eps)
_ROLE_SUPPORT = 0
_ROLE_QUERY = 1
# Rows x dims of one batched chunk of null draws (about 32 MB of float64).
_NULL_CHUNK_ELEMENTS = 4_000_000


def _storage_eps(dtype: object) -> float:
    """Machine epsilon of the dtype features were stored in; float64 for non-float dtypes (ints are exact)."""
    dt = np.dtype(dtype)
    if not np.issubdtype(dt, np.floating):
        return _EPS
    return float(np.finfo(dt).eps)


# ------------------------------------------------------------------------------------------------------------
# Input checking
# ------------------------------------------------------------------------------------------------------------
def _as_features(x: object, name: str = "features") -> np.ndarray:
    """Cast to a finite float64 ``[N, d]`` array or raise ValueError."""
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array [N, d], got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {arr.shape})")
    if not np.all(np.isfinite(arr)):
        bad = int(np.count_nonzero(~np.isfinite(arr).all(axis=1)))
        raise ValueError(f"{name} contain non-finite values (NaN or inf) in {bad} of {arr.shape[0]} rows")
    return arr


def _encode_labels(labels: object, n: int, name: str = "labels") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (sorted distinct classes, class index of each sample, samples per class); needs >= 2 classes."""
    lab = np.asarray(labels)
    if lab.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array, got shape {lab.shape}")
    if lab.shape[0] != n:
        raise ValueError(f"{name} has {lab.shape[0]} entries but the features have {n} rows")
    classes, inv, counts = np.unique(lab, return_inverse=True, return_counts=True)
    if classes.shape[0] < 2:
        raise ValueError(f"NC metrics need at least 2 classes, {name} hold {classes.shape[0]}")
    return classes, inv.reshape(-1), counts


def _as_classifier(weights: object, bias: object | None, n_classes: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Cast a linear classifier to float64 ``W [C, d]`` and ``b [C]`` (zeros if ``bias`` is None)."""
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (n_classes, dim):
        raise ValueError(
            f"weights must have shape (C, d) = ({n_classes}, {dim}) (one row per class, in the order of the "
            f"sorted labels), got {w.shape}"
        )
    if not np.all(np.isfinite(w)):
        raise ValueError("weights contain non-finite values")
    if bias is None:
        b = np.zeros(n_classes)
    else:
        b = np.asarray(bias, dtype=np.float64)
        if b.shape != (n_classes,):
            raise ValueError(f"bias must have shape (C,) = ({n_classes},), got {b.shape}")
        if not np.all(np.isfinite(b)):
            raise ValueError("bias contains non-finite values")
    return w, b


# ------------------------------------------------------------------------------------------------------------
# Batched kernels: h [E, n, d] with rows grouped by class in class order (inv [n] non-decreasing, counts [C]),
# one class layout shared by the E problems
# ------------------------------------------------------------------------------------------------------------
def _class_sums(x: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Per-class sums along axis 1 of ``x [E, n, ...]`` whose rows are grouped by class: ``[E, C, ...]``."""
    if np.all(counts == counts[0]):  # balanced: a reshape, much faster than reduceat
        return x.reshape(x.shape[0], counts.shape[0], int(counts[0]), *x.shape[2:]).sum(axis=2)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return np.add.reduceat(x, starts, axis=1)


def _class_means(h: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Class means ``mu [E, C, d]`` (plain per-class average of the samples)."""
    return _class_sums(h, counts) / counts[None, :, None]


def _group_by_class(
    features: np.ndarray, labels: object, name: str = "labels"
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Sort rows by class (stable): ``(classes, h [1, N, d] grouped, inv [N] non-decreasing, counts [C])``.

    Every metric is invariant to the order of the samples, so grouping changes no value.
    """
    classes, inv, counts = _encode_labels(labels, features.shape[0], name)
    order = np.argsort(inv, kind="stable")
    return classes, features[order][None], inv[order], counts


def _centred_means(mu: np.ndarray) -> np.ndarray:
    """``M = mu_c - mu_G``, ``mu_G`` the mean of the class means (each class weighs 1/C, whatever its n_c)."""
    return mu - mu.mean(axis=1, keepdims=True)


def _etf_distance(gram: np.ndarray) -> np.ndarray:
    """``|| G/||G||_F - (I - 11^T/C)/sqrt(C-1) ||_F`` for a stack of C x C Gram matrices (both unit-F)."""
    c = gram.shape[-1]
    target = (np.eye(c) - np.full((c, c), 1.0 / c)) / np.sqrt(c - 1.0)
    g_norm = np.sqrt(np.sum(gram**2, axis=(1, 2)))
    return np.sqrt(np.sum((gram / g_norm[:, None, None] - target) ** 2, axis=(1, 2)))


def _pair_sq_distances(m: np.ndarray, gram: np.ndarray) -> np.ndarray:
    """``||m_c - m_c'||^2`` for every unordered pair of ``m [E, C, d]``, in ``np.triu_indices(C, 1)`` order.

    From the Gram matrix ``gram = m m^T`` (``||a||^2 + ||b||^2 - 2 a.b``), except for the pairs where that
    cancels (distance^2 below 1e-4 of ``||a||^2 + ||b||^2``, relative error above ~1e-12): those are summed
    from the differences themselves.
    """
    iu, ju = np.triu_indices(m.shape[1], k=1)
    sq = np.einsum("ecc->ec", gram)
    scale = sq[:, iu] + sq[:, ju]
    dist2 = scale - 2.0 * gram[:, iu, ju]
    close = np.nonzero(dist2 < 1e-4 * scale)
    if close[0].size:
        diff = m[close[0], iu[close[1]]] - m[close[0], ju[close[1]]]
        dist2[close] = np.einsum("kd,kd->k", diff, diff)
    return dist2


def _feature_metrics(h: np.ndarray, inv: np.ndarray, counts: np.ndarray, eps_store: float) -> dict[str, np.ndarray]:
    """All of FEATURE_METRICS for each of the E problems in ``h [E, n, d]``; each value has shape ``[E]``.

    ``eps_store`` is the machine epsilon of the dtype the features were stored in (see the cut-offs below).
    """
    _, n, d = h.shape
    c = counts.shape[0]
    mu = _class_means(h, counts)  # [E, C, d] class means
    m = _centred_means(mu)  # [E, C, d] rows mu_c - mu_G
    resid = h - mu[:, inv, :]  # [E, n, d] within-class residuals h_i - mu_{y_i}
    sq_resid = np.einsum("end,end->en", resid, resid)  # ||h_i - mu_{y_i}||^2

    # Sigma_W = (1/N) sum_i (h_i - mu_{y_i})(h_i - mu_{y_i})^T   (1/N over ALL samples, i.e. ddof=0, pooled)
    tr_sigma_w = sq_resid.sum(axis=1) / n
    # Sigma_B = (1/C) M^T M   (1/C: every class weighs the same; centred on the mean of the class means)
    fro2_m = np.sum(m**2, axis=(1, 2))
    tr_sigma_b = fro2_m / c
    degenerate = ~(fro2_m > 0.0)  # all class means coincide: no between-class geometry, metrics are NaN

    # Storage floor: rounding the stored features (|dh_ij| <= (eps/2)|h_ij|) moves every singular value of M by
    # at most ||dM||_2 <= (eps/2) sqrt(sum_c (mean_{i in c} ||h_i||)^2) (triangle inequality, centring is a
    # projection, Weyl). Singular values up to twice that bound are indistinguishable from 0 and are cut.
    row_norm = np.sqrt(np.einsum("end,end->en", h, h))
    mean_norm = _class_sums(row_norm, counts) / counts[None, :]
    sigma_floor = eps_store * np.sqrt(np.sum(mean_norm**2, axis=1))  # [E] floor on singular values of M

    with np.errstate(divide="ignore", invalid="ignore"):
        # --- NC1 = (1/C) tr(Sigma_W Sigma_B^+), through C x C matrices only (no d x d pseudo-inverse) ---
        # With G = M M^T = U diag(lam) U^T, the right singular vectors of M are v_r = M^T u_r / sqrt(lam_r),
        # Sigma_B^+ = sum_{r kept} (C / lam_r) v_r v_r^T, hence, with R the N x d residual matrix,
        #   (1/C) tr(Sigma_W Sigma_B^+) = (1/N) sum_{r kept} ||R M^T u_r||^2 / lam_r^2.
        gram = np.matmul(m, np.swapaxes(m, 1, 2))  # [E, C, C] G = M M^T
        lam, u = np.linalg.eigh(gram)  # ascending
        lam, u = lam[:, ::-1], u[:, :, ::-1]  # descending: lam [E, C], u [E, C, C] (columns u_r)
        rank_cap = (np.arange(c) < min(d, c - 1))[None, :]  # rank M <= C-1 after centring, <= d
        lam_floor = (sigma_floor**2)[:, None]
        # nc1: float64 pinv tolerance max(C, d) eps64 relative to the top eigenvalue of Sigma_B, and the floor.
        keep = rank_cap & (lam > np.maximum(lam[:, :1] * max(c, d) * _EPS, lam_floor))
        # nc1_paper: torch.linalg.pinv of the d x d Sigma_B in float32: singular values <= d eps32 sigma_max are
        # zero (rtol = max(d, d) eps32); the floor too.
        keep_paper = rank_cap & (lam > np.maximum(lam[:, :1] * d * _EPS32, lam_floor))
        rm = np.matmul(resid, np.swapaxes(m, 1, 2))  # [E, n, C] entries r_i . M_b
        proj2 = np.matmul(rm, u) ** 2  # [E, n, C] entries (R M^T u_r)_i^2
        proj2_sum = proj2.sum(axis=1)  # [E, C]
        safe_lam = np.where(keep | keep_paper, lam, 1.0)
        nc1 = np.sum(np.where(keep, proj2_sum / safe_lam**2, 0.0), axis=1) / n
        nc1_paper = np.sum(np.where(keep_paper, proj2_sum / safe_lam**2, 0.0), axis=1) / n

        # --- NC1 quotient = tr(Sigma_W) / tr(Sigma_B), same normalisations as above -------------------------
        nc1_quotient = tr_sigma_w / tr_sigma_b

        # --- NC2 --------------------------------------------------------------------------------------------
        norms = np.sqrt(np.sum(m**2, axis=2))  # [E, C] ||mu_c - mu_G||
        # equinorm: coefficient of variation of the centred-mean norms, std with ddof=1 (sample std), / mean
        nc2_equinorm = norms.std(axis=1, ddof=1) / norms.mean(axis=1)
        unit = m / norms[:, :, None]  # rows of M normalised to unit norm
        cos_grid = np.matmul(unit, np.swapaxes(unit, 1, 2))  # [E, C, C] cosines between centred means
        iu, ju = np.triu_indices(c, k=1)
        cos = cos_grid[:, iu, ju]  # [E, C(C-1)/2], each unordered pair once (= all ordered pairs c != c')
        # equiangularity: std with ddof=0 (population std) of the pairwise cosines
        nc2_equiangularity = cos.std(axis=1, ddof=0)
        # max-angle: mean over pairs of |cos + 1/(C-1)| (0 iff every angle is the simplex one, -1/(C-1))
        nc2_maxangle = np.abs(cos + 1.0 / (c - 1)).mean(axis=1)
        # ETF distance of the raw centred means (norms included) and of the unit-normalised rows (paper's NC2)
        nc2_etf = _etf_distance(gram)
        nc2_etf_rownorm = _etf_distance(cos_grid)

        # --- CDNV = mean over unordered pairs of (Var_c + Var_c') / (2 ||mu_c - mu_c'||^2) ------------------
        # Var_c = (1/n_c) sum_{i in c} ||h_i - mu_c||^2 (per-class mean, ddof=0). Squared distances of nearly
        # coinciding means are summed from the differences (the Gram shortcut cancels there).
        var_c = _class_sums(sq_resid, counts) / counts[None, :]  # [E, C]
        dist2 = _pair_sq_distances(m, gram)  # [E, C(C-1)/2] ||mu_c - mu_c'||^2
        cdnv = ((var_c[:, iu] + var_c[:, ju]) / (2.0 * dist2)).mean(axis=1)

        # --- directional CDNV: variances along u = (mu_c - mu_c')/||mu_c - mu_c'|| only ---------------------
        # For i in class a: r_i . (M_a - M_b) = rm[i, a] - rm[i, b]; V[a, b] = sum_{i in a} of its square, so
        # Var_a(u_ab) = V[a, b] / (n_a ||mu_a - mu_b||^2).
        own = np.take_along_axis(rm, inv[None, :, None], axis=2)  # [E, n, 1] r_i . M_{y_i}
        v = _class_sums((own - rm) ** 2, counts) / counts[None, :, None]  # [E, C, C] n_a-normalised V
        cdnv_dir = ((v[:, iu, ju] + v[:, ju, iu]) / (2.0 * dist2**2)).mean(axis=1)

        # --- effective rank: exp(Shannon entropy of the normalised eigenvalues of G = M M^T) ----------------
        p = np.clip(lam, 0.0, None)
        p = p / p.sum(axis=1, keepdims=True)
        erank = np.exp(-np.sum(np.where(p > 0.0, p * np.log(np.where(p > 0.0, p, 1.0)), 0.0), axis=1))

    out = {
        "nc1": nc1,
        "nc1_paper": nc1_paper,
        "nc1_quotient": nc1_quotient,
        "nc2_equinorm": nc2_equinorm,
        "nc2_equiangularity": nc2_equiangularity,
        "nc2_maxangle": nc2_maxangle,
        "nc2_etf": nc2_etf,
        "nc2_etf_rownorm": nc2_etf_rownorm,
        "cdnv": cdnv,
        "cdnv_dir": cdnv_dir,
        "erank": erank,
    }
    for value in out.values():
        value[degenerate] = np.nan
    return out


def _classifier_metrics(h: np.ndarray, mu: np.ndarray, w: np.ndarray, b: np.ndarray) -> dict[str, np.ndarray]:
    """NC3 and NC4 of classifiers ``w [E, C, d]``, ``b [E, C]`` vs features ``h`` (class means ``mu``)."""
    m = _centred_means(mu)
    w_c = w - w.mean(axis=1, keepdims=True)  # W~ = W minus the mean of its rows (the analogue of centring M)
    with np.errstate(divide="ignore", invalid="ignore"):
        # NC3 = || W~/||W~||_F - M/||M||_F ||_F^2 (squared; each term scaled to unit Frobenius norm)
        w_unit = w_c / np.sqrt(np.sum(w_c**2, axis=(1, 2)))[:, None, None]
        m_unit = m / np.sqrt(np.sum(m**2, axis=(1, 2)))[:, None, None]
        nc3 = np.sum((w_unit - m_unit) ** 2, axis=(1, 2))
    # NC4: fraction of samples where the classifier's argmax(h W^T + b) differs from the nearest class mean in
    # Euclidean distance; argmin_c ||h - mu_c||^2 = argmax_c (2 h.mu_c - ||mu_c||^2) (||h||^2 is common),
    # evaluated after translating by mu_G (distances unchanged, less cancellation far from the origin).
    pred_linear = np.argmax(np.matmul(h, np.swapaxes(w, 1, 2)) + b[:, None, :], axis=2)
    h_c = h - mu.mean(axis=1, keepdims=True)
    ncc_score = 2.0 * np.matmul(h_c, np.swapaxes(m, 1, 2)) - np.sum(m**2, axis=2)[:, None, :]
    pred_ncc = np.argmax(ncc_score, axis=2)
    nc4 = np.mean(pred_linear != pred_ncc, axis=1)
    return {"nc3": nc3, "nc4": nc4.astype(np.float64)}


def _protonet_classifier(prototypes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ProtoNet as a linear classifier: -||h - p_c||^2 = 2 h.p_c - ||p_c||^2 - ||h||^2: W = 2p, b = -||p||^2.

    The ``||h||^2`` term is the same for every class, so ``argmax(h W^T + b)`` is exactly the ProtoNet
    prediction. The factor 2 does not change NC3 (scale-invariant).
    """
    return 2.0 * prototypes, -np.sum(prototypes**2, axis=-1)


def _to_floats(values: dict[str, np.ndarray]) -> dict[str, float]:
    return {key: float(value[0]) for key, value in values.items()}


# ------------------------------------------------------------------------------------------------------------
# Public single-problem API
# ------------------------------------------------------------------------------------------------------------
def nc_metrics(
    features: np.ndarray,
    labels: np.ndarray,
    weights: np.ndarray | None = None,
    bias: np.ndarray | None = None,
    storage_dtype: object | None = None,
) -> dict[str, float]:
    """Neural-collapse metrics of ``features [N, d]`` grouped by ``labels [N]``.

    Returns the FEATURE_METRICS (``nc1``, ``nc1_paper``, ``nc1_quotient``, ``nc2_equinorm``,
    ``nc2_equiangularity``, ``nc2_maxangle``, ``nc2_etf``, ``nc2_etf_rownorm``, ``cdnv``, ``cdnv_dir``,
    ``erank``); with ``weights [C, d]`` (rows in the order of the sorted labels) and optional ``bias [C]`` also
    ``nc3`` and ``nc4``. All but ``erank`` are 0 at exact collapse (``erank`` is then ``min(d, C-1)``).
    ``storage_dtype`` is the dtype the features were stored in; by default the dtype of ``features`` (before
    the cast to float64). Its machine epsilon sets the storage floor of the pseudo-inverse cut-off. If all
    class means coincide the feature metrics (and nc3) are NaN. Raises ValueError on fewer than 2 classes,
    mismatched lengths, non-finite features and classifier arrays of the wrong shape.
    """
    eps_store = _storage_eps(np.asarray(features).dtype if storage_dtype is None else storage_dtype)
    h = _as_features(features)
    _, h3, inv, counts = _group_by_class(h, labels)
    out = _feature_metrics(h3, inv, counts, eps_store)
    if weights is not None:
        w, b = _as_classifier(weights, bias, counts.shape[0], h.shape[1])
        out.update(_classifier_metrics(h3, _class_means(h3, counts), w[None], b[None]))
    elif bias is not None:
        raise ValueError("bias given without weights")
    return _to_floats(out)


def protonet_nc(
    support: np.ndarray,
    support_labels: np.ndarray,
    features: np.ndarray,
    labels: np.ndarray,
) -> dict[str, float]:
    """ProtoNet analogues of NC3/NC4: prototypes from ``support`` against the class means of ``features``.

    The classifier is the ProtoNet itself written as a linear layer, ``W = 2 p_c``, ``b = -||p_c||^2`` with
    ``p_c`` the support mean of class c. ``nc3`` compares W (row-centred) with the centred class means of
    ``features``; ``nc4`` is the fraction of ``features`` rows whose ProtoNet prediction (nearest prototype)
    differs from their nearest class mean of ``features``. Both label arrays must hold the same classes.
    """
    hs = _as_features(support, "support")
    hq = _as_features(features)
    if hs.shape[1] != hq.shape[1]:
        raise ValueError(f"support has d={hs.shape[1]} but features have d={hq.shape[1]}")
    cls_s, hs3, _, counts_s = _group_by_class(hs, support_labels, "support_labels")
    cls_q, hq3, _, counts_q = _group_by_class(hq, labels)
    if cls_s.shape != cls_q.shape or not np.array_equal(cls_s, cls_q):
        raise ValueError(
            f"support_labels and labels must hold the same classes; got {cls_s.tolist()} and {cls_q.tolist()}"
        )
    w, b = _protonet_classifier(_class_means(hs3, counts_s))  # prototypes = support class means
    return _to_floats(_classifier_metrics(hq3, _class_means(hq3, counts_q), w, b))


# ------------------------------------------------------------------------------------------------------------
# Null baselines
# ------------------------------------------------------------------------------------------------------------
def _as_counts(counts: object, name: str) -> np.ndarray:
    arr = np.asarray(counts)
    if arr.ndim != 1 or arr.shape[0] < 2 or not np.issubdtype(arr.dtype, np.integer) or np.any(arr < 1):
        raise ValueError(f"{name} must be >= 2 positive integer class sizes, got {arr.tolist()}")
    return arr.astype(np.int64)


def null_baseline(
    counts: Sequence[int] | np.ndarray,
    dim: int,
    *,
    support_counts: Sequence[int] | np.ndarray | None = None,
    support_subset: bool = False,
    draws: int | None = None,
    seed: int = NULL_SEED,
) -> dict[str, float]:
    """Mean of each metric over ``draws`` sets of isotropic Gaussian features ``N(0, I_dim)``.

    ``counts[c]`` samples of class c (float64 draws, float64 storage). Returns every FEATURE_METRICS key; with
    ``support_counts`` also the ProtoNet ``nc3``/``nc4`` (as :func:`protonet_nc`) of prototypes from a support
    set with ``support_counts[c]`` samples of class c against these features: an independent Gaussian draw
    (episodes), or with ``support_subset=True`` the first ``support_counts[c]`` samples of each class of the
    same draw (class probes, where the support images are part of the set scored).

    The draws are float32 values (like the dumps), evaluated in float64 as one batched stack (chunks of about
    4e6 values). ``draws`` None: enough draws for NULL_SAMPLES rows (support + scored set) per layout, at least
    NULL_MIN_DRAWS (60-way 5+5: 100 draws; 5-way 5+15: 600; 60 x 20: 50). Seeded
    (``numpy.random.default_rng(seed)``), so the same arguments give the same numbers. Stability, as the
    standard error of the mean relative to the mean (measured over 60 seeds at those layouts, d = 64 and
    512): <= 1.5% for every metric, except ``nc1``/``nc1_paper`` when C - 1 is close to d (60 classes in
    d = 64: 3-6%, heavy-tailed because the smallest eigenvalues of Sigma_B come close to 0).
    """
    counts = _as_counts(counts, "counts")
    dim = int(dim)
    if dim < 1 or (draws is not None and draws < 1):
        raise ValueError(f"null_baseline needs dim >= 1 and draws >= 1, got dim={dim}, draws={draws}")
    c = counts.shape[0]
    sup_rows = None
    if support_counts is not None:
        support_counts = _as_counts(support_counts, "support_counts")
        if support_counts.shape[0] != c:
            raise ValueError(f"support_counts has {support_counts.shape[0]} classes, counts has {c}")
        if support_subset:
            if np.any(support_counts > counts):
                raise ValueError(f"support_counts {support_counts.tolist()} exceed counts {counts.tolist()}")
            starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
            sup_rows = np.concatenate([s + np.arange(k) for s, k in zip(starts, support_counts, strict=True)])
    sets = _null_sets(counts, dim, support_counts, sup_rows, draws, seed)
    return {**sets["query"], **sets.get("protonet", {})}


def _null_sets(
    counts: np.ndarray,
    dim: int,
    support_counts: np.ndarray | None,
    sup_rows: np.ndarray | None,
    draws: int | None,
    seed: int,
) -> dict[str, dict[str, float]]:
    """Null means per set: "query" (FEATURE_METRICS of the ``counts`` draws), and with ``support_counts`` also
    "protonet" (nc3/nc4) and, for an independent support draw (``sup_rows`` None), "support" (its features)."""
    c, n = counts.shape[0], int(counts.sum())
    inv = np.repeat(np.arange(c), counts)
    n_sup = 0 if support_counts is None else int(support_counts.sum())
    independent = support_counts is not None and sup_rows is None
    inv_s = None if support_counts is None else np.repeat(np.arange(c), support_counts)
    rows = n + (n_sup if independent else 0)
    if draws is None:
        draws = max(NULL_MIN_DRAWS, -(-NULL_SAMPLES // rows))
    chunk = max(1, min(draws, _NULL_CHUNK_ELEMENTS // (rows * dim)))
    rng = np.random.default_rng(seed)
    parts: dict[str, dict[str, list[np.ndarray]]] = {}
    done = 0
    while done < draws:
        k = min(chunk, draws - done)
        h = rng.standard_normal((k, n, dim), dtype=np.float32).astype(np.float64)
        values = {"query": _feature_metrics(h, inv, counts, _EPS32)}
        if support_counts is not None:
            hs = (
                rng.standard_normal((k, n_sup, dim), dtype=np.float32).astype(np.float64)
                if independent
                else h[:, sup_rows]
            )
            if independent:
                values["support"] = _feature_metrics(hs, inv_s, support_counts, _EPS32)
            w, b = _protonet_classifier(_class_means(hs, support_counts))
            values["protonet"] = _classifier_metrics(h, _class_means(h, counts), w, b)
        for set_name, metrics in values.items():
            for key, value in metrics.items():
                parts.setdefault(set_name, {}).setdefault(key, []).append(value)
        done += k
    return {
        set_name: {key: float(np.mean(np.concatenate(v))) for key, v in metrics.items()}
        for set_name, metrics in parts.items()
    }


# ------------------------------------------------------------------------------------------------------------
# Feature dumps and the per-epoch table
# ------------------------------------------------------------------------------------------------------------
def load_feature_dump(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Load a feature dump ``.npz`` (docs/CONTRACTS.md) into a dict of arrays; raise naming the file if a key
    is missing or the file cannot be read without pickles."""
    path = Path(path)
    dump = read_npz(path, "feature dump")
    missing = [key for key in REQUIRED_DUMP_KEYS if key not in dump]
    if missing:
        raise ValueError(f"{path}: feature dump is missing keys {missing} (has {sorted(dump)})")
    return dump


def _scalar(value: object) -> object:
    arr = np.asarray(value)
    out = arr.item() if arr.ndim == 0 else arr.reshape(-1)[0].item()
    return out.decode() if isinstance(out, bytes) else out


def _strings(dump: Mapping[str, np.ndarray], key: str, n_probes: int) -> list[str]:
    values = [str(x) for x in np.asarray(dump[key]).reshape(-1)]
    if len(values) != n_probes:
        raise ValueError(f"feature dump: '{key}' has {len(values)} entries but there are {n_probes} probe_names")
    return values


def _run_meta(dump: Mapping[str, np.ndarray]) -> dict[str, object]:
    """The run columns from the dump's ``meta`` JSON; ``width`` null -> NaN."""
    raw = _scalar(dump["meta"])
    try:
        meta = json.loads(str(raw))
    except json.JSONDecodeError as exc:
        raise ValueError(f"feature dump: 'meta' is not JSON ({exc}): {str(raw)[:200]!r}") from exc
    if not isinstance(meta, dict):
        raise ValueError(f"feature dump: 'meta' must be a JSON object, got {type(meta).__name__}")
    missing = [key for key in RUN_COLUMNS if key not in meta]
    if missing:
        raise ValueError(f"feature dump: 'meta' is missing {missing} (has {sorted(meta)})")
    out = {key: meta[key] for key in RUN_COLUMNS}
    if out["width"] is None:
        out["width"] = math.nan
    return out


def _dump_classifier(dump: Mapping[str, np.ndarray], dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, str] | None:
    """``(W [K, d], b [K], class ids [K], split)`` of the learner's classifier, or None if the dump has none."""
    present = [key for key in CLASSIFIER_KEYS if key in dump]
    if not present:
        return None
    if len(present) != len(CLASSIFIER_KEYS):
        missing = [key for key in CLASSIFIER_KEYS if key not in dump]
        raise ValueError(f"feature dump has {present} but not {missing}; the classifier keys go together")
    w = np.asarray(dump["classifier_weight"], dtype=np.float64)
    b = np.asarray(dump["classifier_bias"], dtype=np.float64).reshape(-1)
    ids = np.asarray(dump["classifier_classes"]).reshape(-1)
    if w.ndim != 2 or w.shape[1] != dim or b.shape[0] != w.shape[0] or ids.shape[0] != w.shape[0]:
        raise ValueError(
            f"feature dump: classifier_weight {w.shape}, classifier_bias {b.shape}, classifier_classes {ids.shape}; "
            f"need [K, {dim}], [K], [K]"
        )
    if not (np.all(np.isfinite(w)) and np.all(np.isfinite(b))):
        raise ValueError("feature dump: classifier_weight or classifier_bias has non-finite values")
    if np.unique(ids).shape[0] != ids.shape[0]:
        raise ValueError("feature dump: classifier_classes has repeated class ids")
    return w, b, ids, str(_scalar(dump["classifier_split"]))


def _classifier_rows(ids: np.ndarray, class_labels: np.ndarray) -> np.ndarray | None:
    """Row of each entry of ``class_labels`` (any shape) in ``ids``, or None if some label has no row."""
    order = np.argsort(ids, kind="stable")
    pos = np.searchsorted(ids[order], class_labels)
    pos = np.clip(pos, 0, ids.shape[0] - 1)
    rows = order[pos]
    return rows if np.array_equal(ids[rows], class_labels) else None


def _stack_balanced(
    features: np.ndarray, labels: np.ndarray, episode: np.ndarray, rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """Stack the rows of several episodes into ``h [E, n, d]`` if every episode has the same class layout.

    Rows are ordered by (episode, label). Returns ``(h, inv, counts, episode_ids, class_labels [E, C])``, or
    None when episodes differ in size, class count or per-class counts (then the caller loops per episode).
    """
    if rows.size == 0:
        return None
    order = rows[np.lexsort((labels[rows], episode[rows]))]
    ep_ids, ep_counts = np.unique(episode[order], return_counts=True)
    if np.any(ep_counts != ep_counts[0]):
        return None
    n_ep, n = ep_ids.shape[0], int(ep_counts[0])
    lab = labels[order].reshape(n_ep, n)
    inv_all = np.concatenate(
        [np.zeros((n_ep, 1), dtype=np.int64), np.cumsum(lab[:, 1:] != lab[:, :-1], axis=1)], axis=1
    )
    if np.any(inv_all != inv_all[0]):
        return None
    inv = inv_all[0]
    counts = np.bincount(inv)
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])
    h = features[order].reshape(n_ep, n, features.shape[1])
    return h, inv, counts, ep_ids, lab[:, first]


class _Nulls:
    """Null baselines per (layout, d), computed on first use and kept in ``cache`` (shared across epochs).

    A layout is ``(kind, ((support count, count) per class, sorted))``; kind "episode": independent support
    and query draws (sets support, query, protonet); kind "classes": the support images are the first ones of
    each class of the scored set (sets all, protonet).
    """

    def __init__(self, cache: MutableMapping[tuple, dict[str, dict[str, float]]] | None, draws: int | None, seed: int):
        self.cache = {} if cache is None else cache
        self.draws, self.seed = draws, seed

    def get(self, layout: tuple, dim: int) -> dict[str, dict[str, float]]:
        key = (layout, dim, self.draws, self.seed)
        if key not in self.cache:
            kind, pairs = layout
            sup = np.array([p[0] for p in pairs], dtype=np.int64)
            cnt = np.array([p[1] for p in pairs], dtype=np.int64)
            sup_rows = None
            if kind == "classes":
                starts = np.concatenate([[0], np.cumsum(cnt)[:-1]])
                sup_rows = np.concatenate([s + np.arange(k) for s, k in zip(starts, sup, strict=True)])
            sets = _null_sets(cnt, dim, sup, sup_rows, self.draws, self.seed)
            if kind == "classes":
                sets["all"] = sets.pop("query")
            self.cache[key] = sets
        return self.cache[key]

    def mean_over(self, layouts: list[tuple], dim: int) -> dict[str, dict[str, float]]:
        """Per set and metric, the mean of the nulls of ``layouts`` (one per episode)."""
        values = [self.get(layout, dim) for layout in layouts]
        return {
            set_name: {metric: float(np.mean([v[set_name][metric] for v in values])) for metric in metrics}
            for set_name, metrics in values[0].items()
        }


def _layout(kind: str, labels: np.ndarray, sup_rows: np.ndarray, rows: np.ndarray) -> tuple:
    """Null layout of one episode (``rows`` = its query rows) or class probe (``rows`` = all its rows)."""
    cls_s, cnt_s = np.unique(labels[sup_rows], return_counts=True)
    cls_q, cnt_q = np.unique(labels[rows], return_counts=True)
    if not np.array_equal(cls_s, cls_q):
        raise ValueError(f"support classes {cls_s.tolist()} differ from the scored classes {cls_q.tolist()}")
    return kind, tuple(sorted(zip(cnt_s.tolist(), cnt_q.tolist(), strict=True)))


def _episodic_values(
    features: np.ndarray,
    labels: np.ndarray,
    episode: np.ndarray,
    role: np.ndarray,
    rows: np.ndarray,
    eps_store: float,
    classifier: tuple[np.ndarray, np.ndarray, np.ndarray] | None,
) -> dict[str, dict[str, np.ndarray]]:
    """Per-episode metric values ``{set: {metric: [episodes]}}`` for one episodic probe.

    ``classifier`` = ``(W, b, class ids)`` adds the set "classifier" (nc3/nc4 of W, b restricted to the
    episode's classes vs the query features) when its ids cover every class of the probe.
    """
    sup_rows = rows[role[rows] == _ROLE_SUPPORT]
    qry_rows = rows[role[rows] == _ROLE_QUERY]
    sup = _stack_balanced(features, labels, episode, sup_rows)
    qry = _stack_balanced(features, labels, episode, qry_rows)
    if classifier is not None and _classifier_rows(classifier[2], np.unique(labels[rows])) is None:
        classifier = None
    batched = (
        sup is not None
        and qry is not None
        and np.array_equal(sup[3], qry[3])
        and sup[4].shape == qry[4].shape
        and np.array_equal(sup[4], qry[4])
        and sup[2].shape[0] >= 2
    )
    if batched:
        hs, inv_s, counts_s, _, _ = sup
        hq, inv_q, counts_q, _, class_labels = qry
        mu_q = _class_means(hq, counts_q)
        w, b = _protonet_classifier(_class_means(hs, counts_s))
        out = {
            "support": _feature_metrics(hs, inv_s, counts_s, eps_store),
            "query": _feature_metrics(hq, inv_q, counts_q, eps_store),
            "protonet": _classifier_metrics(hq, mu_q, w, b),
        }
        if classifier is not None:
            cw, cb, ids = classifier
            idx = _classifier_rows(ids, class_labels)  # [E, C]
            out["classifier"] = _classifier_metrics(hq, mu_q, cw[idx], cb[idx])
        return out
    # Fallback: episodes of unequal layout, one at a time.
    per_set: dict[str, list[dict[str, np.ndarray]]] = {"support": [], "query": [], "protonet": []}
    if classifier is not None:
        per_set["classifier"] = []
    for ep in np.unique(episode[rows]):
        ep_rows = rows[episode[rows] == ep]
        s_rows = ep_rows[role[ep_rows] == _ROLE_SUPPORT]
        q_rows = ep_rows[role[ep_rows] == _ROLE_QUERY]
        if s_rows.size == 0 or q_rows.size == 0:
            raise ValueError(f"episode {ep} has {s_rows.size} support, {q_rows.size} query rows; need both")
        cls_s, hs3, inv_s, counts_s = _group_by_class(features[s_rows], labels[s_rows])
        cls_q, hq3, inv_q, counts_q = _group_by_class(features[q_rows], labels[q_rows])
        if not np.array_equal(cls_s, cls_q):
            raise ValueError(f"episode {ep}: support classes {cls_s.tolist()} != query classes {cls_q.tolist()}")
        mu_q = _class_means(hq3, counts_q)
        per_set["support"].append(_feature_metrics(hs3, inv_s, counts_s, eps_store))
        per_set["query"].append(_feature_metrics(hq3, inv_q, counts_q, eps_store))
        w, b = _protonet_classifier(_class_means(hs3, counts_s))
        per_set["protonet"].append(_classifier_metrics(hq3, mu_q, w, b))
        if classifier is not None:
            idx = _classifier_rows(classifier[2], cls_q)
            per_set["classifier"].append(
                _classifier_metrics(hq3, mu_q, classifier[0][idx][None], classifier[1][idx][None])
            )
    return {
        name: {key: np.concatenate([r[key] for r in results]) for key in results[0]}
        for name, results in per_set.items()
    }


def epoch_nc_table(
    dump: Mapping[str, np.ndarray],
    storage_dtype: object | None = None,
    *,
    null_cache: MutableMapping[tuple, dict[str, dict[str, float]]] | None = None,
    null_draws: int | None = None,
    null_seed: int = NULL_SEED,
) -> pd.DataFrame:
    """The long per-epoch NC table (columns TABLE_COLUMNS) of a loaded feature dump.

    Episodic probes: per episode, ``nc_metrics`` of the support features (set "support") and of the query
    features (set "query"), ``protonet_nc`` with prototypes from the support against the query class means
    (set "protonet"); ``mean`` and ``std`` (ddof=0) are taken across episodes. Class probes: ``nc_metrics`` of
    all images (set "all") and ``protonet_nc`` with prototypes from the role==support images against the class
    means of all images (set "protonet"); ``std`` is NaN (one evaluation). If the dump holds the learner's
    classifier and its split is the probe's split and its classes cover the probe's, set "classifier": nc3/nc4
    of its rows for the probe's classes (sorted label order) against the query features of each episode, or
    against all images of a class probe.

    ``null`` is the :func:`null_baseline` of the same class layout and d (episodes: the mean of the nulls of
    the episodes' layouts), NaN for the classifier set. ``null_cache`` (a dict) keeps the nulls for reuse across
    epochs. ``storage_dtype`` defaults to the dtype of ``dump["features"]`` (float32 in the dumps).
    """
    missing = [key for key in REQUIRED_DUMP_KEYS if key not in dump]
    if missing:
        raise ValueError(f"feature dump is missing keys {missing}")
    raw = np.asarray(dump["features"])
    eps_store = _storage_eps(raw.dtype if storage_dtype is None else storage_dtype)
    features = _as_features(raw)
    n, dim = features.shape
    labels = np.asarray(dump["labels"]).reshape(-1)
    probe = np.asarray(dump["probe"]).reshape(-1)
    episode = np.asarray(dump["episode"]).reshape(-1)
    role = np.asarray(dump["role"]).reshape(-1)
    for key, arr in (("labels", labels), ("probe", probe), ("episode", episode), ("role", role)):
        if arr.shape[0] != n:
            raise ValueError(f"feature dump: '{key}' has {arr.shape[0]} entries but 'features' has {n} rows")
    probe_names = [str(x) for x in np.asarray(dump["probe_names"]).reshape(-1)]
    probe_kinds = _strings(dump, "probe_kinds", len(probe_names))
    bn_modes = _strings(dump, "probe_bn_modes", len(probe_names))
    splits = _strings(dump, "probe_splits", len(probe_names))
    run = _run_meta(dump)
    epoch = int(_scalar(dump["epoch"]))
    learner_clf = _dump_classifier(dump, dim)
    nulls = _Nulls(null_cache, null_draws, null_seed)
    head = tuple(run[key] for key in RUN_COLUMNS)

    records: list[tuple] = []

    def add(probe_row: tuple[str, str, str], values: Mapping[str, np.ndarray], null: Mapping[str, float] | None):
        name, bn, set_name = probe_row
        episodic = probe_kinds[probe_names.index(name)] == "episodic"
        for metric, per in values.items():
            per = np.asarray(per, dtype=np.float64)
            mean = float(np.mean(per))
            std = float(np.std(per, ddof=0)) if episodic else math.nan
            ref = math.nan if null is None else null.get(metric, math.nan)
            records.append((*head, epoch, name, bn, set_name, metric, mean, std, ref))

    for p, (name, kind, bn, split) in enumerate(zip(probe_names, probe_kinds, bn_modes, splits, strict=True)):
        rows = np.flatnonzero(probe == p)
        if rows.size == 0:
            raise ValueError(f"feature dump: probe {name!r} (index {p}) has no rows")
        clf = None
        if learner_clf is not None and learner_clf[3] == split:
            clf = learner_clf[:3]
        if kind == "episodic":
            values = _episodic_values(features, labels, episode, role, rows, eps_store, clf)
            layouts = []
            for ep in np.unique(episode[rows]):
                ep_rows = rows[episode[rows] == ep]
                s_rows = ep_rows[role[ep_rows] == _ROLE_SUPPORT]
                q_rows = ep_rows[role[ep_rows] == _ROLE_QUERY]
                layouts.append(_layout("episode", labels, s_rows, q_rows))
            null = nulls.mean_over(layouts, dim)
            for set_name, set_values in values.items():
                add((name, bn, set_name), set_values, null.get(set_name))
        elif kind == "classes":
            sup_rows = rows[role[rows] == _ROLE_SUPPORT]
            classes, h3, inv, counts = _group_by_class(features[rows], labels[rows])
            cls_s, hs3, _, counts_s = _group_by_class(features[sup_rows], labels[sup_rows], "support labels")
            if not np.array_equal(cls_s, classes):
                raise ValueError(f"feature dump: probe {name!r}: some classes have no role==support images")
            mu = _class_means(h3, counts)
            w, b = _protonet_classifier(_class_means(hs3, counts_s))
            null = nulls.get(_layout("classes", labels, sup_rows, rows), dim)
            add((name, bn, "all"), _feature_metrics(h3, inv, counts, eps_store), null["all"])
            add((name, bn, "protonet"), _classifier_metrics(h3, mu, w, b), null["protonet"])
            if clf is not None:
                idx = _classifier_rows(clf[2], classes)
                if idx is not None:
                    add(
                        (name, bn, "classifier"),
                        _classifier_metrics(h3, mu, clf[0][idx][None], clf[1][idx][None]),
                        None,
                    )
        else:
            raise ValueError(f"feature dump: probe {name!r} has kind {kind!r}; need 'episodic' or 'classes'")
    return pd.DataFrame.from_records(records, columns=list(TABLE_COLUMNS))


def nc_tables_for_run(
    feature_paths: Sequence[str | os.PathLike[str]],
    out_paths: Sequence[str | os.PathLike[str]],
    log: logging.Logger | None = None,
    *,
    null_draws: int | None = None,
    null_seed: int = NULL_SEED,
) -> list[pd.DataFrame]:
    """NC tables of one run's epochs, in one process: ``feature_paths[i]`` -> CSV ``out_paths[i]``.

    Each CSV is written atomically (:func:`metacollapse.atomic.atomic_path`); the null baselines are computed
    once per distinct (class layout, d) and reused for every later epoch; one INFO line per epoch goes to
    ``log`` (default: this module's logger). Errors name the feature dump. Returns the tables.
    """
    feature_paths, out_paths = [Path(p) for p in feature_paths], [Path(p) for p in out_paths]
    if len(feature_paths) != len(out_paths):
        raise ValueError(f"{len(feature_paths)} feature dumps but {len(out_paths)} output paths")
    log = _LOG if log is None else log
    cache: dict[tuple, dict[str, dict[str, float]]] = {}
    tables = []
    for i, (src, dst) in enumerate(zip(feature_paths, out_paths, strict=True)):
        start = time.perf_counter()
        cached = len(cache)
        dump = load_feature_dump(src)
        try:
            table = epoch_nc_table(dump, null_cache=cache, null_draws=null_draws, null_seed=null_seed)
        except ValueError as exc:
            raise ValueError(f"{src}: {exc}") from exc
        with atomic_path(dst) as tmp, open(tmp, "w", newline="") as handle:
            table.to_csv(handle, index=False)
        log.info(
            "NC table %d/%d: epoch %d, %s -> %s, %d rows, %.2fs (%d new null layouts, %d cached)",
            i + 1,
            len(feature_paths),
            int(table["epoch"].iloc[0]) if len(table) else -1,
            src,
            dst,
            len(table),
            time.perf_counter() - start,
            len(cache) - cached,
            cached,
        )
        tables.append(table)
    return tables


def nc_table_for_file(npz_path: str | os.PathLike[str], out_csv: str | os.PathLike[str]) -> pd.DataFrame:
    """The NC table of one feature dump, written to ``out_csv`` atomically (:func:`nc_tables_for_run`)."""
    return nc_tables_for_run([npz_path], [out_csv])[0]
