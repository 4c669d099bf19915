"""The per-epoch NC table of a feature dump: every layer, probe, set and metric, with its null and 95% interval.

Dump layout: docs/CONTRACTS.md. Columns, sets, nulls and intervals: docs/nc_conventions.md.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from metacollapse.atomic import atomic_path, read_npz
from metacollapse.dumps import CLASSIFIER_KEYS, EMBEDDING, QUERY, REQUIRED_DUMP_KEYS, SUPPORT
from metacollapse.nc import (
    NULL_SEED,
    _as_features,
    _class_means,
    _classifier_metrics,
    _encode_labels,
    _feature_metrics,
    _protonet_classifier,
    _storage_eps,
    null_sets,
)
from metacollapse.runs import RUN_COLUMNS
from metacollapse.schemas import NC_COLUMNS

#: Bootstrap intervals: replicates by default (0: NaN intervals), the base seed, and the percentiles kept.
BOOTSTRAP_REPLICATES = 100
BOOTSTRAP_SEED = 0
CI_PERCENTILES = (2.5, 97.5)

_LOG = logging.getLogger(__name__)
# Rows x dims of one batched chunk of class-probe replicates (under 1 MB of float64): smaller chunks than the
# nulls' stay in cache and run faster here.
_BOOTSTRAP_CHUNK_ELEMENTS = 100_000

Values = dict[str, np.ndarray]  # metric -> one value per problem (episode, or the one class probe)
Interval = dict[str, tuple[float, float]]  # metric -> (ci_low, ci_high)


def load_feature_dump(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Load a feature dump ``.npz`` into a dict of arrays; raise naming the file if a key is missing or the file
    cannot be read without pickles."""
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


def _layers(dump: Mapping[str, np.ndarray]) -> list[tuple[str, str]]:
    """``(layer, dump key)`` of every layer: the embedding, then ``layer_names`` in their (depth) order."""
    names = [str(x) for x in np.asarray(dump.get("layer_names", [])).reshape(-1)]
    if EMBEDDING in names or len(set(names)) != len(names):
        raise ValueError(f"feature dump: layer_names {names} must be distinct and must not name {EMBEDDING!r}")
    keys = [f"features@{name}" for name in names]
    missing = [key for key in keys if key not in dump]
    if missing:
        raise ValueError(f"feature dump: layer_names {names} but the dump has no {missing}")
    stray = sorted(key for key in dump if key.startswith("features@") and key not in keys)
    if stray:
        raise ValueError(f"feature dump has {stray} but layer_names {names} does not list them")
    return [(EMBEDDING, "features"), *zip(names, keys, strict=True)]


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


@dataclass(frozen=True)
class _Episodes:
    """An episodic probe: its support and query dump rows as ``[E, n]`` (by episode, then label)."""

    support: np.ndarray
    query: np.ndarray
    inv_s: np.ndarray
    counts_s: np.ndarray
    inv_q: np.ndarray
    counts_q: np.ndarray
    classes: np.ndarray  # [E, C] each episode's labels, sorted
    null_layout: tuple


@dataclass(frozen=True)
class _Classes:
    """A class probe: its dump rows grouped by class (stable), the support positions among them, the strata."""

    rows: np.ndarray
    inv: np.ndarray
    counts: np.ndarray
    classes: np.ndarray
    support: np.ndarray  # positions in ``rows`` of the role == support images
    counts_s: np.ndarray
    strata: np.ndarray  # per position: 2 * class + (0 support, 1 other)
    null_layout: tuple


def _stack_episodes(
    labels: np.ndarray, episode: np.ndarray, rows: np.ndarray, what: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(episode ids, rows [E, n], inv, counts, class labels [E, C])``; every episode must have one layout."""
    if rows.size == 0:
        raise ValueError(f"{what}: no rows")
    order = rows[np.lexsort((labels[rows], episode[rows]))]
    ep_ids, ep_counts = np.unique(episode[order], return_counts=True)
    if np.any(ep_counts != ep_counts[0]):
        bad = int(np.flatnonzero(ep_counts != ep_counts[0])[0])
        raise ValueError(
            f"{what}: episode {ep_ids[bad]} has {ep_counts[bad]} rows, episode {ep_ids[0]} has {ep_counts[0]}; "
            "every episode of an episodic probe needs the same number of classes and of images per class"
        )
    n_ep, n = ep_ids.shape[0], int(ep_counts[0])
    lab = labels[order].reshape(n_ep, n)
    inv_all = np.concatenate(
        [np.zeros((n_ep, 1), dtype=np.int64), np.cumsum(lab[:, 1:] != lab[:, :-1], axis=1)], axis=1
    )
    differs = np.any(inv_all != inv_all[0], axis=1)
    if np.any(differs):
        bad = int(np.flatnonzero(differs)[0])
        raise ValueError(
            f"{what}: episode {ep_ids[bad]} has {np.bincount(inv_all[bad]).tolist()} images per class, episode "
            f"{ep_ids[0]} has {np.bincount(inv_all[0]).tolist()}; every episode of an episodic probe needs "
            "the same number of classes and of images per class"
        )
    inv = inv_all[0]
    counts = np.bincount(inv)
    if counts.shape[0] < 2:
        raise ValueError(f"{what}: NC metrics need at least 2 classes per episode, got {counts.shape[0]}")
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return ep_ids, order.reshape(n_ep, n), inv, counts, lab[:, first]


def _episodes(labels: np.ndarray, episode: np.ndarray, role: np.ndarray, rows: np.ndarray, name: str) -> _Episodes:
    what = f"feature dump: probe {name!r}"
    ep_s, sup, inv_s, counts_s, cls_s = _stack_episodes(labels, episode, rows[role[rows] == SUPPORT], f"{what} support")
    ep_q, qry, inv_q, counts_q, cls_q = _stack_episodes(labels, episode, rows[role[rows] == QUERY], f"{what} query")
    if not np.array_equal(ep_s, ep_q) or not np.array_equal(cls_s, cls_q):
        raise ValueError(f"{what}: the support and query rows of an episode must hold the same classes")
    layout = ("episode", tuple(sorted(zip(counts_s.tolist(), counts_q.tolist(), strict=True))))
    return _Episodes(sup, qry, inv_s, counts_s, inv_q, counts_q, cls_s, layout)


def _classes(labels: np.ndarray, role: np.ndarray, rows: np.ndarray, name: str) -> _Classes:
    classes, inv, counts = _encode_labels(labels[rows], rows.shape[0])
    order = np.argsort(inv, kind="stable")
    rows, inv = rows[order], inv[order]
    is_support = role[rows] == SUPPORT
    counts_s = np.bincount(inv[is_support], minlength=classes.shape[0])
    if np.any(counts_s == 0):
        raise ValueError(f"feature dump: probe {name!r}: some classes have no role==support images")
    # Bootstrap replicates draw images within these (class, role) strata and keep the class set. Drawing classes
    # with replacement would duplicate class means: pairwise metrics (CDNV, equiangularity, GNC2) would meet
    # zero-length differences and the duplicates, at cosine 1, would bias every ETF distance upwards, so such an
    # interval would not contain the estimate.
    strata = 2 * inv + (~is_support)
    layout = ("classes", tuple(sorted(zip(counts_s.tolist(), counts.tolist(), strict=True))))
    return _Classes(rows, inv, counts, classes, np.flatnonzero(is_support), counts_s, strata, layout)


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
            sets = null_sets(
                np.array([p[1] for p in pairs], dtype=np.int64),
                dim,
                support_counts=np.array([p[0] for p in pairs], dtype=np.int64),
                support_subset=kind == "classes",
                draws=self.draws,
                seed=self.seed,
            )
            if kind == "classes":
                sets["all"] = sets.pop("query")
            self.cache[key] = sets
        return self.cache[key]


def bootstrap_rng(probe: str, set_name: str, seed: int = BOOTSTRAP_SEED) -> np.random.Generator:
    """The generator of one probe's and set's bootstrap, from ``seed`` and the two names: the same resamples in
    every layer and epoch, and bitwise the same intervals on every run."""
    digest = hashlib.sha256(f"{probe}/{set_name}".encode()).digest()
    return np.random.default_rng([seed, int.from_bytes(digest[:8], "little")])


def stratified_resamples(strata: np.ndarray, replicates: int, rng: np.random.Generator) -> np.ndarray:
    """``[replicates, n]`` indices into ``strata [n]``: position j of a replicate is drawn uniformly, with
    replacement, among the positions of stratum ``strata[j]``, so each replicate keeps every stratum's size."""
    order = np.argsort(strata, kind="stable")
    ids, start, size = np.unique(strata[order], return_index=True, return_counts=True)
    which = np.searchsorted(ids, strata)
    return order[start[which] + rng.integers(0, size[which], size=(replicates, strata.shape[0]))]


def percentile_interval(replicates: np.ndarray, centre: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The CI_PERCENTILES of ``replicates`` along the last axis (numpy's linear interpolation); with ``centre``
    (the estimate), of the replicates shifted so that their median is the estimate."""
    if centre is not None:
        replicates = replicates - (np.median(replicates, axis=-1) - centre)[..., None]
    low, high = np.percentile(replicates, CI_PERCENTILES, axis=-1)
    return low, high


def _episodic_sets(
    features: np.ndarray,
    eps_store: float,
    lay: _Episodes,
    clf: tuple | None,
    rng: Callable[[str], np.random.Generator],
    b: int,
) -> dict[str, tuple[Values, Interval]]:
    """Per set: the per-episode values ``{metric: [E]}`` and the interval of their mean over ``b`` replicates, each
    the mean of E episodes drawn with replacement (``rng(set)``). ``clf`` = (W, b, rows [E, C]) adds "classifier"."""
    hs, hq = features[lay.support], features[lay.query]  # [E, n, d]
    mu_q = _class_means(hq, lay.counts_q)
    w, bias = _protonet_classifier(_class_means(hs, lay.counts_s))
    values = {
        "support": _feature_metrics(hs, lay.inv_s, lay.counts_s, eps_store),
        "query": _feature_metrics(hq, lay.inv_q, lay.counts_q, eps_store),
        "protonet": _classifier_metrics(hq, mu_q, w, bias),
    }
    if clf is not None:
        values["classifier"] = _classifier_metrics(hq, mu_q, clf[0][clf[2]], clf[1][clf[2]])
    out = {}
    for set_name, v in values.items():
        interval = {}
        if b:
            per = np.stack(list(v.values()))  # [metrics, E]
            idx = rng(set_name).integers(0, per.shape[1], size=(b, per.shape[1]))
            low, high = percentile_interval(per[:, idx].mean(axis=2))
            interval = dict(zip(v, zip(low.tolist(), high.tolist(), strict=True), strict=True))
        out[set_name] = (v, interval)
    return out


def _class_sets(
    features: np.ndarray, eps_store: float, lay: _Classes, clf: tuple | None, resamples: Callable[[str], np.ndarray]
) -> dict[str, tuple[Values, Interval]]:
    """Per set: the probe's values (``{metric: [1]}``) and their intervals over the stratified replicates
    ``resamples(set) [B, n]`` (empty without replicates); each replicate recomputes the metrics of its rows.
    ``clf`` = (W, b, rows [C]) adds "classifier"."""

    def protonet(x: np.ndarray) -> Values:
        w, b = _protonet_classifier(_class_means(x[:, lay.support], lay.counts_s))
        return _classifier_metrics(x, _class_means(x, lay.counts), w, b)

    evaluators = {"all": lambda x: _feature_metrics(x, lay.inv, lay.counts, eps_store), "protonet": protonet}
    if clf is not None:
        cw, cb = clf[0][clf[2]][None], clf[1][clf[2]][None]  # the rows of the probe's classes: [1, C, d], [1, C]
        evaluators["classifier"] = lambda x: _classifier_metrics(x, _class_means(x, lay.counts), cw, cb)
    h = features[lay.rows]  # [n, d]
    out = {}
    for set_name, evaluate in evaluators.items():
        idx, interval = resamples(set_name), {}
        if idx.shape[0]:
            chunk = max(1, _BOOTSTRAP_CHUNK_ELEMENTS // h.size)
            parts = [evaluate(h[idx[i : i + chunk]]) for i in range(0, idx.shape[0], chunk)]
            estimate = evaluate(h[None])
            for key in parts[0]:
                # Drawing images with replacement repeats some, which shrinks the within-class spread: the
                # replicates are biased low for variances (high for nc3). Centred on the estimate, their spread
                # is what the interval reports (docs/nc_conventions.md, "Intervals").
                with np.errstate(invalid="ignore"):
                    low, high = percentile_interval(np.concatenate([part[key] for part in parts]), estimate[key][0])
                interval[key] = (float(low), float(high))
            out[set_name] = (estimate, interval)
        else:
            out[set_name] = (evaluate(h[None]), interval)
    return out


def epoch_nc_table(
    dump: Mapping[str, np.ndarray],
    storage_dtype: object | None = None,
    *,
    null_cache: MutableMapping[tuple, dict[str, dict[str, float]]] | None = None,
    null_draws: int | None = None,
    null_seed: int = NULL_SEED,
    bootstrap: int = BOOTSTRAP_REPLICATES,
    bootstrap_seed: int = BOOTSTRAP_SEED,
) -> pd.DataFrame:
    """The long per-epoch NC table (columns ``schemas.NC_COLUMNS``) of a loaded feature dump.

    One block of rows per layer (the embedding, then ``layer_names``); in it, per probe and set, every metric:
    its mean (and std over episodes), its Gaussian null (cached per layout and d in ``null_cache`` across
    epochs) and its 95% percentile bootstrap interval over ``bootstrap`` replicates (0: NaN). The sets, nulls
    and intervals are defined in docs/nc_conventions.md. ``storage_dtype`` defaults to each layer's dtype.
    """
    missing = [key for key in REQUIRED_DUMP_KEYS if key not in dump]
    if missing:
        raise ValueError(f"feature dump is missing keys {missing}")
    if bootstrap < 0:
        raise ValueError(f"bootstrap must be >= 0 replicates, got {bootstrap}")
    n = np.asarray(dump["features"]).shape[0]
    labels = np.asarray(dump["labels"]).reshape(-1)
    probe = np.asarray(dump["probe"]).reshape(-1)
    episode = np.asarray(dump["episode"]).reshape(-1)
    role = np.asarray(dump["role"]).reshape(-1)
    for key, arr in (("labels", labels), ("probe", probe), ("episode", episode), ("role", role)):
        if arr.shape[0] != n:
            raise ValueError(f"feature dump: '{key}' has {arr.shape[0]} entries but 'features' has {n} rows")
    names = [str(x) for x in np.asarray(dump["probe_names"]).reshape(-1)]
    kinds = _strings(dump, "probe_kinds", len(names))
    bn_modes = _strings(dump, "probe_bn_modes", len(names))
    splits = _strings(dump, "probe_splits", len(names))
    head = (*_run_meta(dump).values(), int(_scalar(dump["epoch"])))
    layers = _layers(dump)
    nulls = _Nulls(null_cache, null_draws, null_seed)
    layouts: list[_Episodes | _Classes] = []
    for p, (name, kind) in enumerate(zip(names, kinds, strict=True)):
        rows = np.flatnonzero(probe == p)
        if rows.size == 0:
            raise ValueError(f"feature dump: probe {name!r} (index {p}) has no rows")
        if kind == "episodic":
            layouts.append(_episodes(labels, episode, role, rows, name))
        elif kind == "classes":
            layouts.append(_classes(labels, role, rows, name))
        else:
            raise ValueError(f"feature dump: probe {name!r} has kind {kind!r}; need 'episodic' or 'classes'")

    resamples: dict[tuple[str, str], np.ndarray] = {}  # the same replicates for every layer

    def class_resamples(name: str, lay: _Classes, set_name: str) -> np.ndarray:
        if (name, set_name) not in resamples:
            rng = bootstrap_rng(name, set_name, bootstrap_seed)
            resamples[name, set_name] = stratified_resamples(lay.strata, bootstrap, rng)
        return resamples[name, set_name]

    records: list[tuple] = []
    for layer, key in layers:
        raw = np.asarray(dump[key])
        features = _as_features(raw, f"'{key}'")
        if features.shape[0] != n:
            raise ValueError(f"feature dump: '{key}' has {features.shape[0]} rows but 'features' has {n}")
        eps_store = _storage_eps(raw.dtype if storage_dtype is None else storage_dtype)
        learner_clf = _dump_classifier(dump, features.shape[1]) if layer == EMBEDDING else None
        for name, bn, split, lay in zip(names, bn_modes, splits, layouts, strict=True):
            clf = None
            if learner_clf is not None and learner_clf[3] == split:
                clf_rows = _classifier_rows(learner_clf[2], lay.classes)
                clf = None if clf_rows is None else (learner_clf[0], learner_clf[1], clf_rows)
            if isinstance(lay, _Episodes):
                rng = functools.partial(bootstrap_rng, name, seed=bootstrap_seed)
                sets = _episodic_sets(features, eps_store, lay, clf, rng, bootstrap)
            else:
                sets = _class_sets(features, eps_store, lay, clf, functools.partial(class_resamples, name, lay))
            null = nulls.get(lay.null_layout, features.shape[1])
            for set_name, (values, interval) in sets.items():
                for metric, per in values.items():
                    std = float(np.std(per, ddof=0)) if isinstance(lay, _Episodes) else math.nan
                    ref = null.get(set_name, {}).get(metric, math.nan)
                    low, high = interval.get(metric, (math.nan, math.nan))
                    records.append((*head, name, bn, layer, set_name, metric, float(np.mean(per)), std, ref, low, high))
    return pd.DataFrame.from_records(records, columns=list(NC_COLUMNS))


def nc_tables_for_run(
    feature_paths: Sequence[str | os.PathLike[str]],
    out_paths: Sequence[str | os.PathLike[str]],
    log: logging.Logger | None = None,
    *,
    bootstrap: int = BOOTSTRAP_REPLICATES,
    null_draws: int | None = None,
    null_seed: int = NULL_SEED,
) -> list[pd.DataFrame]:
    """NC tables of one run's epochs, in one process: ``feature_paths[i]`` -> CSV ``out_paths[i]``.

    Each CSV is written atomically; the nulls are computed once per (class layout, d) and reused for every later
    epoch; one INFO line per epoch goes to ``log`` (default: this module's). Errors name the dump.
    """
    feature_paths, out_paths = [Path(p) for p in feature_paths], [Path(p) for p in out_paths]
    if len(feature_paths) != len(out_paths):
        raise ValueError(f"{len(feature_paths)} feature dumps but {len(out_paths)} output paths")
    log = _LOG if log is None else log
    cache: dict[tuple, dict[str, dict[str, float]]] = {}
    tables = []
    for i, (src, dst) in enumerate(zip(feature_paths, out_paths, strict=True), start=1):
        start, cached = time.perf_counter(), len(cache)
        dump = load_feature_dump(src)
        try:
            table = epoch_nc_table(
                dump, null_cache=cache, null_draws=null_draws, null_seed=null_seed, bootstrap=bootstrap
            )
        except ValueError as exc:
            raise ValueError(f"{src}: {exc}") from exc
        with atomic_path(dst) as tmp, open(tmp, "w", newline="") as handle:
            table.to_csv(handle, index=False)
        seconds, new, epoch = time.perf_counter() - start, len(cache) - cached, _scalar(dump["epoch"])
        summary = f"{len(table)} rows, {seconds:.2f}s ({new} new null layouts, {cached} cached)"
        log.info(f"NC table {i}/{len(feature_paths)}: epoch {epoch}, {src} -> {dst}, {summary}")
        tables.append(table)
    return tables
