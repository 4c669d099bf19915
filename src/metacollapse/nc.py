"""Neural-collapse (NC) metrics in float64: the definitions, their ProtoNet analogues and the null baselines.

Every metric is written once, for a stack of E problems that share one class layout (``h [E, n, d]``), so that
episodes, null draws and bootstrap replicates are evaluated in one batched pass; the single-problem functions
call the same code with E = 1. Formulas and conventions: docs/nc_conventions.md.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

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
    "gnc2",
    "cdnv",
    "cdnv_dir",
    "erank",
)
#: Metrics of a linear classifier against the features (added by ``weights``; see :func:`protonet_nc`).
CLASSIFIER_METRICS: tuple[str, ...] = ("nc3", "nc4")
#: Null baselines (see :func:`null_baseline`): by default as many Gaussian draws as give NULL_SAMPLES rows in
#: all (support + scored set), at least NULL_MIN_DRAWS; the seed.
NULL_SAMPLES = 60_000
NULL_MIN_DRAWS = 48
NULL_SEED = 0

_EPS = float(np.finfo(np.float64).eps)
_EPS32 = float(np.finfo(np.float32).eps)
# Rows x dims of one batched chunk of null draws (about 32 MB of float64).
_NULL_CHUNK_ELEMENTS = 4_000_000


def _storage_eps(dtype: object) -> float:
    """Machine epsilon of the dtype features were stored in; float64 for non-float dtypes (ints are exact)."""
    dt = np.dtype(dtype)
    if not np.issubdtype(dt, np.floating):
        return _EPS
    return float(np.finfo(dt).eps)


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


# The batched kernels take h [E, n, d] with rows grouped by class in class order (inv [n] non-decreasing,
# counts [C]): one class layout shared by the E problems.
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
        # GNC2, hyperspherical uniformity (Wu & Papyan 2024, "Linguistic Collapse", arXiv 2405.17767, with the
        # logarithmic kernel of Liu et al. 2023): the variance (ddof=0) over unordered pairs of
        # log(1 / ||u_c - u_c'||), u_c = M_c / ||M_c|| the unit-normalised centred means. 0 iff all pairwise
        # distances are equal (only possible for C <= d + 1); lower = more uniform when C > d + 1, where no simplex
        # ETF exists; inf if two rows point the same way. Chord distances of nearly parallel rows are summed from
        # the differences, as for CDNV.
        log_kernel = -0.5 * np.log(_pair_sq_distances(unit, cos_grid))  # [E, C(C-1)/2]
        gnc2 = np.where(np.isinf(log_kernel).any(axis=1), np.inf, log_kernel.var(axis=1))

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
        "gnc2": gnc2,
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


def nc_metrics(
    features: np.ndarray,
    labels: np.ndarray,
    weights: np.ndarray | None = None,
    bias: np.ndarray | None = None,
    storage_dtype: object | None = None,
) -> dict[str, float]:
    """Neural-collapse metrics of ``features [N, d]`` grouped by ``labels [N]``: every FEATURE_METRICS key.

    ``weights [C, d]`` (rows in the order of the sorted labels) and optional ``bias [C]`` add ``nc3`` and ``nc4``.
    ``storage_dtype`` (default: the dtype of ``features`` before the cast to float64) sets the storage floor of
    the pseudo-inverse cut-off. If all class means coincide the feature metrics (and nc3) are NaN. Raises
    ValueError on fewer than 2 classes, mismatched lengths, non-finite values and classifiers of the wrong shape.
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

    ``counts[c]`` samples of class c. Returns every FEATURE_METRICS key; with ``support_counts`` also the
    ProtoNet ``nc3``/``nc4`` (as :func:`protonet_nc`) of prototypes from ``support_counts[c]`` samples of class c
    against these features: an independent Gaussian draw (episodes), or with ``support_subset=True`` the first
    ``support_counts[c]`` samples of each class of the same draw (class probes, where the support images are part
    of the set scored). Draw counts, seeding and stability: :func:`null_sets`.
    """
    sets = null_sets(counts, dim, support_counts=support_counts, support_subset=support_subset, draws=draws, seed=seed)
    return {**sets["query"], **sets.get("protonet", {})}


def null_sets(
    counts: Sequence[int] | np.ndarray,
    dim: int,
    *,
    support_counts: Sequence[int] | np.ndarray | None = None,
    support_subset: bool = False,
    draws: int | None = None,
    seed: int = NULL_SEED,
) -> dict[str, dict[str, float]]:
    """Null means per set, arguments as :func:`null_baseline`: "query" (FEATURE_METRICS of the ``counts`` draws),
    with ``support_counts`` also "protonet" (nc3/nc4) and, for an independent support draw, "support".

    The draws are float32 values (like the dumps), evaluated in float64 in batched chunks of about 4e6 values.
    ``draws`` None: enough draws for NULL_SAMPLES rows (support + scored set), at least NULL_MIN_DRAWS. Seeded
    (``numpy.random.default_rng(seed)``): the same arguments give the same numbers.
    """
    counts = _as_counts(counts, "counts")
    dim = int(dim)
    if dim < 1 or (draws is not None and draws < 1):
        raise ValueError(f"null_baseline needs dim >= 1 and draws >= 1, got dim={dim}, draws={draws}")
    sup_rows = None
    if support_counts is not None:
        support_counts = _as_counts(support_counts, "support_counts")
        if support_counts.shape[0] != counts.shape[0]:
            raise ValueError(f"support_counts has {support_counts.shape[0]} classes, counts has {counts.shape[0]}")
        if support_subset:
            if np.any(support_counts > counts):
                raise ValueError(f"support_counts {support_counts.tolist()} exceed counts {counts.tolist()}")
            starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
            sup_rows = np.concatenate([s + np.arange(k) for s, k in zip(starts, support_counts, strict=True)])
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
