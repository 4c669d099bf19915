"""Specification of metacollapse.nc_table: the per-epoch NC table of a feature dump, its layers and intervals.

Small dumps in the docs/CONTRACTS.md layout; reference values come from loops over the public single-problem
functions of metacollapse.nc.
"""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pandas as pd
import pytest

from metacollapse import cli
from metacollapse.nc import CLASSIFIER_METRICS, FEATURE_METRICS, nc_metrics, null_baseline, protonet_nc
from metacollapse.nc_table import (
    bootstrap_rng,
    epoch_nc_table,
    load_feature_dump,
    nc_tables_for_run,
    stratified_resamples,
)
from metacollapse.schemas import NC_COLUMNS

# name: (kind, episodes, n_way, n_support, n_query); for class probes (kind, 1, classes, n_support, rest)
PROBES = {
    "train_episodes": ("episodic", 3, 4, 2, 3),
    "val_episodes": ("episodic", 2, 3, 2, 4),
    "train_classes": ("classes", 1, 5, 2, 2),
}


META = {"run": "conv4_s0", "learner": "protonet", "backbone": "conv4", "width": None, "seed": 3}


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
        "probe_bn_modes": np.array(["train", "eval", "eval"]),
        "probe_splits": np.array(["train", "val", "train"]),
        "epoch": np.array(7, dtype=np.int64),
        "meta": np.array(json.dumps(META)),
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
    assert list(table.columns) == [
        *("run", "learner", "backbone", "width", "seed", "epoch", "probe", "bn_mode", "layer", "set", "metric"),
        *("mean", "std", "null", "ci_low", "ci_high"),
    ]
    assert list(table.columns) == list(NC_COLUMNS)
    assert set(table["layer"]) == {"embedding"}
    assert set(table["run"]) == {"conv4_s0"} and set(table["learner"]) == {"protonet"}
    assert set(table["backbone"]) == {"conv4"} and set(table["seed"]) == {3} and table["width"].isna().all()
    assert set(table["epoch"]) == {7}
    assert dict(zip(table["probe"], table["bn_mode"], strict=True)) == {
        "train_episodes": "train",
        "val_episodes": "eval",
        "train_classes": "eval",
    }
    assert table["null"].notna().all() and np.isfinite(table["null"]).all()
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


def test_an_episodic_probe_whose_episodes_differ_in_layout_is_an_error_naming_the_probe():
    dump = make_dump(np.random.default_rng(12), drop_one_query=True)
    with pytest.raises(ValueError, match=r"probe 'train_episodes' query: episode 1 has 11 rows, episode 0 has 12"):
        epoch_nc_table(dump)


def relabel(dump: dict[str, np.ndarray], role: int, new_label: int, count: int) -> dict[str, np.ndarray]:
    """Give ``count`` rows of one class and ``role`` in episode 1 of train_episodes the label ``new_label``."""
    rows = (dump["probe"] == 0) & (dump["episode"] == 1) & (dump["role"] == role)
    victim = dump["labels"][rows][0]
    picked = np.flatnonzero(rows & (dump["labels"] == victim))[:count]
    dump["labels"][picked] = new_label
    return dump


@pytest.mark.parametrize(
    ("change", "message"),
    [
        # a query image moves to another class of its episode: 12 rows still, per class 2, 3, 3, 4
        (
            lambda d, other: relabel(d, 1, other, 1),
            r"query: episode 1 has \[.*\] images per class, episode 0 has \[3, 3, 3, 3\]",
        ),
        # all 3 queries of a class move to a class the episode does not have: the layouts agree, the classes not
        (lambda d, other: relabel(d, 1, 99, 3), "the support and query rows of an episode must hold the same classes"),
    ],
)
def test_an_episodic_probe_with_episodes_of_other_class_layouts_is_an_error(change, message):
    dump = make_dump(np.random.default_rng(16))
    rows = (dump["probe"] == 0) & (dump["episode"] == 1)
    change(dump, dump["labels"][rows & (dump["role"] == 1)][-1])
    with pytest.raises(ValueError, match=f"feature dump: probe 'train_episodes'.*{message}"):
        epoch_nc_table(dump)


def test_nc_tables_for_run_writes_the_csv_atomically(tmp_path):
    dump = make_dump(np.random.default_rng(13))
    npz = tmp_path / "epoch_007.npz"
    np.savez(npz, **dump)
    assert set(load_feature_dump(npz)) == set(dump)
    out_csv = tmp_path / "nc" / "epoch_007.csv"
    (table,) = nc_tables_for_run([npz], [out_csv])
    written = pd.read_csv(out_csv)
    assert list(written.columns) == list(NC_COLUMNS)
    assert len(written) == len(table)
    np.testing.assert_allclose(written["mean"], table["mean"], rtol=1e-12)
    assert sorted(p.name for p in out_csv.parent.iterdir()) == ["epoch_007.csv"]  # no temporary left behind


def test_nc_tables_for_run_names_the_file_when_keys_are_missing(tmp_path):
    dump = make_dump(np.random.default_rng(14))
    del dump["role"]
    npz = tmp_path / "broken.npz"
    np.savez(npz, **dump)
    out_csv = tmp_path / "out.csv"
    with pytest.raises(ValueError, match=r"broken\.npz.*role"):
        nc_tables_for_run([npz], [out_csv])
    assert not out_csv.exists()


def test_a_truncated_feature_dump_is_an_error_naming_the_file(tmp_path):
    npz = tmp_path / "epoch_003.npz"
    np.savez(npz, **make_dump(np.random.default_rng(15)))
    npz.write_bytes(npz.read_bytes()[:-200])  # a copy cut short
    with pytest.raises(ValueError, match=r"epoch_003\.npz: cannot read feature dump \(BadZipFile"):
        nc_tables_for_run([npz], [tmp_path / "out.csv"])
    assert not (tmp_path / "out.csv").exists()


def with_classifier(dump, split, class_ids, weight, bias):
    return {
        **dump,
        "classifier_weight": np.asarray(weight, dtype=np.float32),
        "classifier_bias": np.asarray(bias, dtype=np.float32),
        "classifier_classes": np.asarray(class_ids, dtype=np.int64),
        "classifier_split": np.array(split),
    }


def test_classifier_set_uses_the_dumps_weights_and_bias():
    # W = 0 and a bias equal to the class id: the classifier always predicts the largest class id present, so
    # with well-separated classes nc4 = 1 - 1/C (every sample not of that class disagrees with its nearest mean).
    dump = make_dump(np.random.default_rng(40), dim=6)
    dump["features"] *= 0.05  # noise 0.05 vs centres 3: every sample is nearest its own class mean
    dump["features"] += 3.0 * np.random.default_rng(41).normal(size=(12, 6)).astype(np.float32)[dump["labels"]]
    ids = np.random.default_rng(42).permutation(np.arange(12 + 3))  # rows in any order, 3 extra classes
    bias = np.where(ids >= 12, 1e6, ids)  # classes not in the probes must not take part
    table = epoch_nc_table(with_classifier(dump, "train", ids, np.zeros((15, 6)), bias))
    got = table[table["set"] == "classifier"].set_index(["probe", "metric"])["mean"]
    assert set(got.index.get_level_values("probe")) == {"train_episodes", "train_classes"}  # split "train" only
    assert got[("train_episodes", "nc4")] == pytest.approx(1 - 1 / 4, abs=1e-12)
    assert got[("train_classes", "nc4")] == pytest.approx(1 - 1 / 5, abs=1e-12)
    assert np.isnan(table.loc[table["set"] == "classifier", "null"]).all()

    # A classifier equal to the centred class means (in its own row order) agrees with the nearest class mean.
    cls = np.unique(dump["labels"][dump["probe"] == 2])
    rows = dump["probe"] == 2
    means = np.stack([dump["features"][rows & (dump["labels"] == c)].astype(np.float64).mean(axis=0) for c in cls])
    weight = np.zeros((15, 6))
    bias = np.full(15, -1e9)
    pos = {c: int(np.flatnonzero(ids == c)[0]) for c in cls}
    for k, c in enumerate(cls):
        weight[pos[c]] = 2 * means[k]
        bias[pos[c]] = -means[k] @ means[k]
    table = epoch_nc_table(with_classifier(dump, "train", ids, weight, bias))
    one = table[(table["set"] == "classifier") & (table["probe"] == "train_classes")].set_index("metric")["mean"]
    assert one["nc4"] == 0.0
    assert one["nc3"] == pytest.approx(0.0, abs=1e-6)


def test_classifier_set_needs_the_probes_split_and_classes():
    dump = make_dump(np.random.default_rng(43))
    other_split = epoch_nc_table(with_classifier(dump, "test", np.arange(12), np.ones((12, 6)), np.zeros(12)))
    assert "classifier" not in set(other_split["set"])
    too_few = epoch_nc_table(with_classifier(dump, "train", np.arange(6), np.ones((6, 6)), np.zeros(6)))
    assert "classifier" not in set(too_few[too_few["probe"] == "train_episodes"]["set"])


def test_table_nulls_are_the_null_baselines_of_each_layout():
    dump = make_dump(np.random.default_rng(44), dim=5)
    table = epoch_nc_table(dump).set_index(["probe", "set", "metric"])["null"]
    kind, _, n_way, n_sup, n_qry = PROBES["val_episodes"]
    episodic = null_baseline([n_qry] * n_way, 5, support_counts=[n_sup] * n_way)
    assert table[("val_episodes", "query", "nc1")] == episodic["nc1"]
    assert table[("val_episodes", "protonet", "nc4")] == episodic["nc4"]
    _, _, n_cls, n_sup, n_rest = PROBES["train_classes"]
    classes = null_baseline([n_sup + n_rest] * n_cls, 5, support_counts=[n_sup] * n_cls, support_subset=True)
    assert table[("train_classes", "all", "cdnv_dir")] == classes["cdnv_dir"]
    assert table[("train_classes", "protonet", "nc3")] == classes["nc3"]
    assert table[("train_episodes", "support", "erank")] != table[("val_episodes", "support", "erank")]


def test_nc_tables_for_run_writes_every_epoch_and_computes_nulls_once(tmp_path, caplog):
    paths, outs = [], []
    for epoch in (1, 2, 3):
        dump = make_dump(np.random.default_rng(50 + epoch))
        dump["epoch"] = np.array(epoch, dtype=np.int64)
        paths.append(tmp_path / f"epoch_{epoch:03d}.npz")
        np.savez(paths[-1], **dump)
        outs.append(tmp_path / "nc" / f"epoch_{epoch:03d}.csv")
    log = logging.getLogger("test_nc_run")
    with caplog.at_level(logging.INFO, logger="test_nc_run"):
        tables = nc_tables_for_run(paths, outs, log=log)
    lines = [r.getMessage() for r in caplog.records if r.name == "test_nc_run"]
    assert len(lines) == 3
    assert "new null layouts" in lines[0] and "(0 new null layouts" not in lines[0]
    assert "(0 new null layouts" in lines[1] and "(0 new null layouts" in lines[2]  # reused from epoch 1
    for epoch, (out, table) in enumerate(zip(outs, tables, strict=True), start=1):
        written = pd.read_csv(out)
        assert list(written.columns) == list(NC_COLUMNS) and set(written["epoch"]) == {epoch}
        np.testing.assert_allclose(written["null"], tables[0]["null"], rtol=1e-12)
        np.testing.assert_allclose(written["mean"], table["mean"], rtol=1e-12)
    assert sorted(p.name for p in outs[0].parent.iterdir()) == [p.name for p in outs]


def test_meta_without_a_run_column_is_an_error():
    dump = make_dump(np.random.default_rng(45))
    dump["meta"] = np.array(json.dumps({k: v for k, v in META.items() if k != "learner"}))
    with pytest.raises(ValueError, match=r"'meta' is missing \['learner'\]"):
        epoch_nc_table(dump)


# ------------------------------------------------------------------------------------------------------------
# Layers
# ------------------------------------------------------------------------------------------------------------
def with_layers(dump: dict[str, np.ndarray], dims: dict[str, int], seed: int = 60) -> dict[str, np.ndarray]:
    """Extra layers ``features@<name>``: tanh of a random projection of the embedding (classes stay apart)."""
    rng = np.random.default_rng(seed)
    out = {**dump, "layer_names": np.array(list(dims))}
    for name, dim in dims.items():
        projection = rng.normal(size=(dump["features"].shape[1], dim)) / 3.0
        out[f"features@{name}"] = np.tanh(dump["features"] @ projection).astype(np.float32)
    return out


def test_each_layer_is_a_block_of_rows_measured_as_if_it_were_the_embedding():
    base = make_dump(np.random.default_rng(61))
    ids = np.arange(12)
    dump = with_layers(with_classifier(base, "train", ids, np.ones((12, 6)), ids.astype(float)), {"b1": 4, "b2": 9})
    table = epoch_nc_table(dump, bootstrap=30)
    assert list(dict.fromkeys(table["layer"])) == ["embedding", "b1", "b2"]
    assert (table["layer"] != table["layer"].shift()).sum() == 3  # one contiguous block per layer
    assert set(table.loc[table["set"] == "classifier", "layer"]) == {"embedding"}  # the head sees the embedding
    measured = ["mean", "std", "null", "ci_low", "ci_high"]
    for layer in ("b1", "b2"):
        alone = epoch_nc_table({**base, "features": dump[f"features@{layer}"]}, bootstrap=30)
        block = table[table["layer"] == layer].reset_index(drop=True)
        assert block[["probe", "set", "metric"]].equals(alone[["probe", "set", "metric"]])
        np.testing.assert_array_equal(block[measured].to_numpy(), alone[measured].to_numpy())
    nulls = table.set_index(["layer", "probe", "set", "metric"])["null"]
    _, _, n_way, n_sup, n_qry = PROBES["val_episodes"]
    for layer, dim in (("b1", 4), ("b2", 9)):  # the null of each layer's own width
        null = null_baseline([n_qry] * n_way, dim, support_counts=[n_sup] * n_way)
        assert nulls[(layer, "val_episodes", "query", "gnc2")] == null["gnc2"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.pop("features@b2"), r"layer_names \['b1', 'b2'\] but the dump has no \['features@b2'\]"),
        (lambda d: d.update({"features@b3": d["features@b1"]}), r"has \['features@b3'\] but layer_names"),
        (lambda d: d.update({"layer_names": np.array(["b1", "embedding"])}), "must not name 'embedding'"),
        (
            lambda d: d.update({"features@b1": d["features@b1"][:-1]}),
            "'features@b1' has 115 rows but 'features' has 116",
        ),
        (lambda d: d["features@b2"].__setitem__((0, 0), np.nan), r"'features@b2' contain non-finite values"),
    ],
)
def test_a_dump_with_inconsistent_layers_is_an_error_naming_the_layer(change, message):
    dump = with_layers(make_dump(np.random.default_rng(62)), {"b1": 3, "b2": 5})
    change(dump)
    with pytest.raises(ValueError, match=message):
        epoch_nc_table(dump, bootstrap=0)


# ------------------------------------------------------------------------------------------------------------
# Bootstrap intervals
# ------------------------------------------------------------------------------------------------------------
def test_stratified_resamples_draw_every_position_uniformly_from_its_own_stratum():
    strata = np.array([3, 3, 0, 1, 1, 1, 0, 3])
    idx = stratified_resamples(strata, 6000, np.random.default_rng(0))
    assert idx.shape == (6000, 8)
    assert np.array_equal(strata[idx], np.broadcast_to(strata, idx.shape))  # never leaves its stratum
    for stratum in (0, 1, 3):
        members = np.flatnonzero(strata == stratum)
        drawn = idx[:, strata == stratum]  # 6000 x |stratum| draws, each member expected 6000 times
        counts = np.array([np.count_nonzero(drawn == m) for m in members])
        assert np.all(np.abs(counts - 6000) < 400), (stratum, counts)
    assert np.array_equal(idx, stratified_resamples(strata, 6000, np.random.default_rng(0)))


def per_episode_values(dump: dict[str, np.ndarray], p: int) -> dict[str, dict[str, np.ndarray]]:
    """{set: {metric: one value per episode, in episode order}} of episodic probe ``p``, episode by episode."""
    f, y = dump["features"], dump["labels"]
    per: dict[str, dict[str, list[float]]] = {}
    for ep in np.unique(dump["episode"][dump["probe"] == p]):
        rows = (dump["probe"] == p) & (dump["episode"] == ep)
        s, q = rows & (dump["role"] == 0), rows & (dump["role"] == 1)
        for set_name, values in (
            ("support", nc_metrics(f[s], y[s])),
            ("query", nc_metrics(f[q], y[q])),
            ("protonet", protonet_nc(f[s], y[s], f[q], y[q])),
        ):
            for key, value in values.items():
                per.setdefault(set_name, {}).setdefault(key, []).append(value)
    return {s: {k: np.array(v) for k, v in metrics.items()} for s, metrics in per.items()}


def test_an_episodic_interval_is_the_percentile_interval_of_means_of_episodes_drawn_with_replacement():
    dump = make_dump(np.random.default_rng(63))
    table = epoch_nc_table(dump, bootstrap=300).set_index(["probe", "set", "metric"])
    for p, name in ((0, "train_episodes"), (1, "val_episodes")):
        for set_name, metrics in per_episode_values(dump, p).items():
            rng = bootstrap_rng(name, set_name)
            n_episodes = len(next(iter(metrics.values())))
            draws = rng.integers(0, n_episodes, size=(300, n_episodes))
            for key, per in metrics.items():
                means = [np.mean(per[row]) for row in draws]
                low, high = table.loc[(name, set_name, key), ["ci_low", "ci_high"]]
                assert low == pytest.approx(np.percentile(means, 2.5), rel=1e-9, abs=1e-12), (name, set_name, key)
                assert high == pytest.approx(np.percentile(means, 97.5), rel=1e-9, abs=1e-12), (name, set_name, key)
                if np.ptp(per) > 0:
                    assert low < np.mean(per) < high, (name, set_name, key)


def test_a_class_probe_interval_recomputes_every_metric_on_images_resampled_within_class_and_role():
    dump = make_dump(np.random.default_rng(64))
    table = epoch_nc_table(dump, bootstrap=200).set_index(["probe", "set", "metric"])
    f, y, role = dump["features"], dump["labels"], dump["role"]
    rows = np.flatnonzero(dump["probe"] == 2)
    rows = rows[np.argsort(y[rows], kind="stable")]  # grouped by class, as the table orders a class probe
    strata = 2 * np.unique(y[rows], return_inverse=True)[1] + (role[rows] != 0)
    reps: dict[str, list[dict[str, float]]] = {"all": [], "protonet": []}
    for b in stratified_resamples(strata, 200, bootstrap_rng("train_classes", "all")):
        reps["all"].append(nc_metrics(f[rows[b]], y[rows[b]]))
    for b in stratified_resamples(strata, 200, bootstrap_rng("train_classes", "protonet")):
        sup = rows[b][role[rows[b]] == 0]
        reps["protonet"].append(protonet_nc(f[sup], y[sup], f[rows[b]], y[rows[b]]))
    for set_name, values in reps.items():
        for key in values[0]:
            estimate = table.loc[("train_classes", set_name, key), "mean"]
            replicates = np.array([v[key] for v in values])
            low, high = np.percentile(replicates - (np.median(replicates) - estimate), [2.5, 97.5])  # centred
            got = table.loc[("train_classes", set_name, key), ["ci_low", "ci_high"]].to_numpy()
            np.testing.assert_allclose(got, [low, high], rtol=1e-9, atol=1e-12, err_msg=f"{set_name} {key}")
            assert got[0] <= estimate <= got[1], f"{set_name} {key}"


def test_images_identical_within_class_and_role_give_intervals_of_zero_width_at_the_estimate():
    # Resampling images within a class and role then changes nothing; resampling classes, or mixing support and
    # other images (they differ here), would move every metric.
    dump = make_dump(np.random.default_rng(65))
    rows = dump["probe"] == 2
    centres = np.random.default_rng(66).normal(size=(12, 2, 6)).astype(np.float32)
    dump["features"][rows] = centres[dump["labels"][rows], (dump["role"][rows] != 0).astype(int)]
    table = epoch_nc_table(dump, bootstrap=50)
    probe = table[table["probe"] == "train_classes"]
    assert probe["mean"].notna().all()
    np.testing.assert_allclose(probe["ci_low"], probe["mean"], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(probe["ci_high"], probe["mean"], rtol=1e-9, atol=1e-12)
    episodic = table[table["probe"] != "train_classes"]
    assert (episodic["ci_high"] > episodic["ci_low"]).sum() > len(episodic) / 2  # the episodes do differ


def test_intervals_are_reproducible_bitwise_change_with_the_seed_and_bootstrap_0_writes_nan():
    dump = with_classifier(make_dump(np.random.default_rng(67)), "train", np.arange(12), np.eye(12, 6), np.zeros(12))
    first, again = epoch_nc_table(dump, bootstrap=40), epoch_nc_table(dump, bootstrap=40)
    other = epoch_nc_table(dump, bootstrap=40, bootstrap_seed=1)
    none = epoch_nc_table(dump, bootstrap=0)
    intervals = ["ci_low", "ci_high"]
    assert first.equals(again)
    assert first[intervals].notna().all().all()
    assert (first["ci_low"] <= first["ci_high"]).all()
    assert set(first.loc[first["set"] == "classifier", "probe"]) == {"train_episodes", "train_classes"}
    assert not np.array_equal(first[intervals].to_numpy(), other[intervals].to_numpy())
    assert none[intervals].isna().all().all()
    assert none.drop(columns=intervals).equals(first.drop(columns=intervals))  # the estimates do not move
    with pytest.raises(ValueError, match="bootstrap must be >= 0 replicates, got -1"):
        epoch_nc_table(dump, bootstrap=-1)


def test_metacollapse_nc_takes_the_number_of_replicates(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")
    npz = tmp_path / "epoch_001.npz"
    np.savez(npz, **make_dump(np.random.default_rng(68)))
    out = tmp_path / "nc" / "epoch_001.csv"
    assert cli.main(["nc", "--features", str(npz), "--out", str(out), "--bootstrap", "0"]) == 0
    assert pd.read_csv(out)[["ci_low", "ci_high"]].isna().all().all()
    assert cli.main(["nc", "--features", str(npz), "--out", str(out), "--bootstrap", "25"]) == 0
    assert pd.read_csv(out)[["ci_low", "ci_high"]].notna().all().all()
    out.unlink()
    assert cli.main(["nc", "--features", str(npz), "--out", str(out), "--bootstrap", "-3"]) == 2
    assert not out.exists()
