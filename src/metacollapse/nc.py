"""Neural-collapse (NC) metrics on dumped features, and the per-epoch NC table.

This module owns every number called "NC" in the project: the metric definitions (NC1-NC4, CDNV and the
NC2 variants), their conventions (normalisation, centring, ddof, rank handling), the ProtoNet analogues of
the classifier metrics NC3/NC4, and the long per-epoch table ``results/{backbone}/nc/epoch_{NNN}.csv`` built
from a feature dump ``results/{backbone}/features/epoch_{NNN}.npz`` (layouts in ``docs/CONTRACTS.md``; the
conventions and how they map onto the paper's reported NC1/NC2 are in ``docs/nc_conventions.md``).

Everything is computed in float64 (inputs are cast with ``np.asarray(x, dtype=np.float64)``) by pure
functions. Notation: C classes (the distinct labels, sorted), N samples, d dimensions, class means ``mu_c``,
global mean ``mu_G`` = the mean of the class means (not the sample mean), ``M`` = the C x d matrix of rows
``mu_c - mu_G``.

Internally the metrics are written for a stack of E problems that share one class layout (``h`` of shape
``[E, n, d]``), so that all the balanced episodes of an episodic probe are evaluated in one batched pass; the
public single-problem functions call the same code with E = 1.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from metacollapse.atomic import atomic_path, read_npz

__all__ = [
    "CLASSIFIER_METRICS",
    "FEATURE_METRICS",
    "REQUIRED_DUMP_KEYS",
    "TABLE_COLUMNS",
    "epoch_nc_table",
    "load_feature_dump",
    "nc_metrics",
    "nc_table_for_file",
    "protonet_nc",
]

#: Metrics of the features alone (keys of :func:`nc_metrics` without weights), in table order.
FEATURE_METRICS: tuple[str, ...] = (
    "nc1",
    "nc1_quotient",
    "nc2_equinorm",
    "nc2_equiangularity",
    "nc2_maxangle",
    "nc2_etf",
    "nc2_etf_rownorm",
    "cdnv",
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
    "episode",
    "role",
    "epoch",
    "backbone",
)
#: Columns of the per-epoch NC table.
TABLE_COLUMNS: tuple[str, ...] = ("backbone", "epoch", "probe", "set", "metric", "mean", "std")

_EPS = float(np.finfo(np.float64).eps)
_ROLE_SUPPORT = 0
_ROLE_QUERY = 1


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


def _pair_sq_distances(mu: np.ndarray) -> np.ndarray:
    """``||mu_c - mu_c'||^2`` for every unordered pair of ``mu [E, C, d]``, in ``np.triu_indices(C, 1)`` order."""
    parts = []
    for i in range(mu.shape[1] - 1):
        diff = mu[:, i + 1 :] - mu[:, i : i + 1]  # class i against every later class
        parts.append(np.einsum("ecd,ecd->ec", diff, diff))
    return np.concatenate(parts, axis=1)


def _feature_metrics(h: np.ndarray, inv: np.ndarray, counts: np.ndarray) -> dict[str, np.ndarray]:
    """All of FEATURE_METRICS for each of the E problems in ``h [E, n, d]``; each value has shape ``[E]``."""
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

    with np.errstate(divide="ignore", invalid="ignore"):
        # --- NC1 = (1/C) tr(Sigma_W Sigma_B^+), through C x C matrices only (no d x d pseudo-inverse) ---
        # With the Gram matrix G = M M^T = U diag(lam) U^T (lam = squared singular values of M), the right
        # singular vectors of M are v_r = M^T u_r / sqrt(lam_r), Sigma_B = (1/C) sum_r lam_r v_r v_r^T and
        # Sigma_B^+ = sum_{r kept} (C / lam_r) v_r v_r^T. Hence, with R the N x d residual matrix,
        #   (1/C) tr(Sigma_W Sigma_B^+) = (1/N) sum_r ||R v_r||^2 / lam_r
        #                               = (1/N) sum_r ||R M^T u_r||^2 / lam_r^2.
        # Rank handling: keep at most the top min(d, C-1) eigenpairs (rank M <= C-1 after centring, <= d), and
        # drop eigenvalues that are numerically zero, lam_r <= lam_max * max(C, d) * eps(float64): the default
        # relative tolerance of torch.linalg.pinv (and of the Array API's pinv; numpy's own default is 1e-15)
        # applied to the spectrum of Sigma_B (= lam / C).
        gram = np.matmul(m, np.swapaxes(m, 1, 2))  # [E, C, C] G = M M^T
        lam, u = np.linalg.eigh(gram)  # ascending
        lam, u = lam[:, ::-1], u[:, :, ::-1]  # descending: lam [E, C], u [E, C, C] (columns u_r)
        tol = lam[:, :1] * max(c, d) * _EPS
        keep = (np.arange(c) < min(d, c - 1))[None, :] & (lam > tol)
        inv_lam2 = np.where(keep, 1.0 / np.where(keep, lam, 1.0) ** 2, 0.0)
        proj = np.matmul(np.matmul(resid, np.swapaxes(m, 1, 2)), u)  # [E, n, C] entries (R M^T u_r)_i
        nc1 = np.einsum("enr,er->e", proj**2, inv_lam2) / n

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
        # Var_c = (1/n_c) sum_{i in c} ||h_i - mu_c||^2 (per-class mean, ddof=0). Squared distances are summed
        # from the differences themselves, one class against the later ones (the pair order of iu, ju): the
        # Gram shortcut ||a||^2 + ||b||^2 - 2 a.b cancels catastrophically when two means nearly coincide.
        var_c = _class_sums(sq_resid, counts) / counts[None, :]  # [E, C]
        dist2 = _pair_sq_distances(m)  # [E, C(C-1)/2] ||mu_c - mu_c'||^2
        cdnv = ((var_c[:, iu] + var_c[:, ju]) / (2.0 * dist2)).mean(axis=1)

    out = {
        "nc1": nc1,
        "nc1_quotient": nc1_quotient,
        "nc2_equinorm": nc2_equinorm,
        "nc2_equiangularity": nc2_equiangularity,
        "nc2_maxangle": nc2_maxangle,
        "nc2_etf": nc2_etf,
        "nc2_etf_rownorm": nc2_etf_rownorm,
        "cdnv": cdnv,
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
) -> dict[str, float]:
    """Neural-collapse metrics of ``features [N, d]`` grouped by ``labels [N]``.

    Returns the FEATURE_METRICS (``nc1``, ``nc1_quotient``, ``nc2_equinorm``, ``nc2_equiangularity``,
    ``nc2_maxangle``, ``nc2_etf``, ``nc2_etf_rownorm``, ``cdnv``); with ``weights [C, d]`` (rows in the order
    of the sorted labels) and optional ``bias [C]`` also ``nc3`` and ``nc4``. All are 0 at exact collapse.
    If all class means coincide the feature metrics (and nc3) are NaN. Raises ValueError on fewer than 2
    classes, mismatched lengths, non-finite features and classifier arrays of the wrong shape.
    """
    h = _as_features(features)
    _, h3, inv, counts = _group_by_class(h, labels)
    out = _feature_metrics(h3, inv, counts)
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
    return arr.item() if arr.ndim == 0 else arr.reshape(-1)[0].item()


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


def _episodic_values(
    features: np.ndarray, labels: np.ndarray, episode: np.ndarray, role: np.ndarray, rows: np.ndarray
) -> dict[str, dict[str, np.ndarray]]:
    """Per-episode metric values ``{set: {metric: [episodes]}}`` for one episodic probe."""
    sup_rows = rows[role[rows] == _ROLE_SUPPORT]
    qry_rows = rows[role[rows] == _ROLE_QUERY]
    sup = _stack_balanced(features, labels, episode, sup_rows)
    qry = _stack_balanced(features, labels, episode, qry_rows)
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
        hq, inv_q, counts_q, _, _ = qry
        w, b = _protonet_classifier(_class_means(hs, counts_s))
        return {
            "support": _feature_metrics(hs, inv_s, counts_s),
            "query": _feature_metrics(hq, inv_q, counts_q),
            "protonet": _classifier_metrics(hq, _class_means(hq, counts_q), w, b),
        }
    # Fallback: episodes of unequal layout, one at a time through the public functions.
    per_set: dict[str, list[dict[str, float]]] = {"support": [], "query": [], "protonet": []}
    for ep in np.unique(episode[rows]):
        ep_rows = rows[episode[rows] == ep]
        s_rows = ep_rows[role[ep_rows] == _ROLE_SUPPORT]
        q_rows = ep_rows[role[ep_rows] == _ROLE_QUERY]
        if s_rows.size == 0 or q_rows.size == 0:
            raise ValueError(f"episode {ep} has {s_rows.size} support, {q_rows.size} query rows; need both")
        hs, ys, hq, yq = features[s_rows], labels[s_rows], features[q_rows], labels[q_rows]
        per_set["support"].append(nc_metrics(hs, ys))
        per_set["query"].append(nc_metrics(hq, yq))
        per_set["protonet"].append(protonet_nc(hs, ys, hq, yq))
    return {name: {key: np.array([r[key] for r in results]) for key in results[0]} for name, results in per_set.items()}


def epoch_nc_table(dump: Mapping[str, np.ndarray]) -> pd.DataFrame:
    """The long per-epoch NC table (columns TABLE_COLUMNS) of a loaded feature dump.

    Episodic probes: per episode, ``nc_metrics`` of the support features (set "support") and of the query
    features (set "query"), and ``protonet_nc`` with prototypes from the support against the query class means
    (set "protonet"); ``mean`` and ``std`` (ddof=0) are taken across episodes. Class probes: ``nc_metrics`` of
    all images (set "all") and ``protonet_nc`` with prototypes from the role==support images against the class
    means of all images (set "protonet"); ``std`` is NaN (one evaluation).
    """
    missing = [key for key in REQUIRED_DUMP_KEYS if key not in dump]
    if missing:
        raise ValueError(f"feature dump is missing keys {missing}")
    features = _as_features(dump["features"])
    n = features.shape[0]
    labels = np.asarray(dump["labels"]).reshape(-1)
    probe = np.asarray(dump["probe"]).reshape(-1)
    episode = np.asarray(dump["episode"]).reshape(-1)
    role = np.asarray(dump["role"]).reshape(-1)
    for key, arr in (("labels", labels), ("probe", probe), ("episode", episode), ("role", role)):
        if arr.shape[0] != n:
            raise ValueError(f"feature dump: '{key}' has {arr.shape[0]} entries but 'features' has {n} rows")
    probe_names = [str(x) for x in np.asarray(dump["probe_names"]).reshape(-1)]
    probe_kinds = [str(x) for x in np.asarray(dump["probe_kinds"]).reshape(-1)]
    if len(probe_names) != len(probe_kinds):
        raise ValueError(f"feature dump: {len(probe_names)} probe_names but {len(probe_kinds)} probe_kinds")
    backbone = str(_scalar(dump["backbone"]))
    epoch = int(_scalar(dump["epoch"]))

    records: list[tuple[str, int, str, str, str, float, float]] = []
    for p, (name, kind) in enumerate(zip(probe_names, probe_kinds, strict=True)):
        rows = np.flatnonzero(probe == p)
        if rows.size == 0:
            raise ValueError(f"feature dump: probe {name!r} (index {p}) has no rows")
        if kind == "episodic":
            for set_name, values in _episodic_values(features, labels, episode, role, rows).items():
                for metric, per_episode in values.items():
                    mean, std = float(np.mean(per_episode)), float(np.std(per_episode, ddof=0))
                    records.append((backbone, epoch, name, set_name, metric, mean, std))
        elif kind == "classes":
            sup_rows = rows[role[rows] == _ROLE_SUPPORT]
            results = {
                "all": nc_metrics(features[rows], labels[rows]),
                "protonet": protonet_nc(features[sup_rows], labels[sup_rows], features[rows], labels[rows]),
            }
            for set_name, values in results.items():
                for metric, value in values.items():
                    records.append((backbone, epoch, name, set_name, metric, value, float("nan")))
        else:
            raise ValueError(f"feature dump: probe {name!r} has kind {kind!r}; need 'episodic' or 'classes'")
    return pd.DataFrame.from_records(records, columns=list(TABLE_COLUMNS))


def nc_table_for_file(npz_path: str | os.PathLike[str], out_csv: str | os.PathLike[str]) -> pd.DataFrame:
    """Compute the NC table of one feature dump and write it to ``out_csv`` atomically; return the table.

    The CSV goes through :func:`metacollapse.atomic.atomic_path`, so readers never see a partial file.
    """
    npz_path, out_csv = Path(npz_path), Path(out_csv)
    dump = load_feature_dump(npz_path)
    try:
        table = epoch_nc_table(dump)
    except ValueError as exc:
        raise ValueError(f"{npz_path}: {exc}") from exc
    with atomic_path(out_csv) as tmp, open(tmp, "w", newline="") as handle:
        table.to_csv(handle, index=False)
    return table
