"""Tests of metacollapse.figures on synthetic tables (no training, no GPU)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection, PolyCollection

from metacollapse import figures
from metacollapse.figures import FIGURE_NAMES, METRIC_FIGURES, METRIC_INFO, NC_METRICS, make_figures, use_log_scale
from metacollapse.nc import CLASSIFIER_METRICS
from metacollapse.runs import RUN_COLUMNS
from metacollapse.schemas import FEWSHOT_COLUMNS, NC_COLUMNS
from metacollapse.stats import mean_ci
from metacollapse.tables import read_table, write_runs_table

REPO = Path(__file__).resolve().parents[1]
EPOCHS = range(4)  # 0 = untrained
EPISODIC = {"train_episodes": "train", "val_episodes": "eval"}  # probe -> bn_mode
CLASSES = {"train_classes": "eval", "test_classes": "eval", "fashion_test_classes": "eval"}
LAYERS = {"conv4": ("block1", "block2", "block3", "block4"), "resnet18": ("layer1", "layer2", "layer3", "layer4")}
#: Every metric the figures draw, gnc2 included whether or not the NC stage computes it yet.
METRICS = tuple(dict.fromkeys((*NC_METRICS, "gnc2")))
# (learner, backbone, width, seeds); deliberately not alphabetical: order of appearance wins
GROUPS = [
    ("protonet", "resnet18", math.nan, (0, 1, 2)),
    ("protonet", "conv4", 32.0, (0, 1, 2)),
    ("protonet", "conv4", 64.0, (0, 1)),
    ("matchingnet", "conv4", 64.0, (0,)),
]
DIM = {"resnet18": 512}
SPLITS = ("test", "fashion_test")


def _runs(groups=GROUPS, wd: float = 0.0) -> list[dict]:
    runs = []
    for g_i, (learner, backbone, width, seeds) in enumerate(groups):
        for seed in seeds:
            name = f"{learner}-{backbone}{'' if math.isnan(width) else int(width)}-wd{wd:g}-s{seed}"
            runs.append(
                {
                    "run": name,
                    "learner": learner,
                    "backbone": backbone,
                    "width": width,
                    "seed": seed,
                    "g": g_i,
                    "wd": wd,
                }
            )
    return runs


def _value(run: dict, epoch: int, probe_i: int, s_i: int, metric: str) -> float:
    decay = 10.0 if metric in ("nc1", "cdnv", "nc1_paper") else 1.3
    return (1.0 + 0.3 * run["g"] + 0.1 * run["seed"] + 0.2 * s_i + 0.05 * probe_i + run["wd"]) * decay ** (-epoch)


def _nc_table(
    runs,
    epochs=EPOCHS,
    metrics=METRICS,
    null: float | None = 2.0,
    probes: dict | None = None,
    layers: bool = True,
    ci: bool = False,
) -> pd.DataFrame:
    """Long NC rows; class probes also at every block of the backbone (collapse grows with depth)."""
    rows = []
    probes = probes or {**EPISODIC, **CLASSES}
    for run in runs:
        ident = [run[c] for c in RUN_COLUMNS]
        for epoch in epochs:
            for p_i, (probe, bn_mode) in enumerate(probes.items()):
                episodic = probe.endswith("episodes")
                depth = (*LAYERS[run["backbone"]], "embedding") if layers and not episodic else ("embedding",)
                for l_i, layer in enumerate(depth):
                    for metric in metrics:
                        if metric in CLASSIFIER_METRICS:
                            if layer != "embedding":
                                continue
                            sets = ("protonet",) if episodic else ("protonet", "classifier")
                        else:
                            sets = ("support", "query") if episodic else ("all",)
                        for s_i, set_name in enumerate(sets):
                            mean = _value(run, epoch, p_i, s_i, metric) * (1 + 0.5 * (len(depth) - 1 - l_i))
                            std = 0.2 * mean if episodic else math.nan
                            nul = math.nan if null is None or metric in CLASSIFIER_METRICS else null + 0.1 * l_i
                            low, high = (0.8 * mean, 1.25 * mean) if ci else (math.nan, math.nan)
                            rows.append(
                                (*ident, epoch, probe, bn_mode, layer, set_name, metric, mean, std, nul, low, high)
                            )
    return pd.DataFrame(rows, columns=list(NC_COLUMNS))


def _train_log(runs, epochs=EPOCHS) -> pd.DataFrame:
    rows = []
    for run in runs:
        width = 64 if math.isnan(run["width"]) else run["width"]
        dim = DIM.get(run["backbone"], width)
        n_params = int(1e4 * width**1.5 * (10 if run["backbone"] == "resnet18" else 1))
        for epoch in epochs:
            e = epoch + 1
            train = (math.nan, math.nan) if epoch == 0 else (2.0 / e + 0.1 * run["g"], 1 - 0.5 / e)
            rows.append(
                {
                    **{c: run[c] for c in RUN_COLUMNS},
                    "precision": "fp32",
                    "n_params": n_params,
                    "dim": dim,
                    "epoch": epoch,
                    "train_loss": train[0],
                    "train_acc": train[1],
                    "val_loss": 2.2 / e + 0.01 * run["seed"],
                    "val_acc": 1 - 0.6 / e - 0.01 * run["g"],
                    "lr": 1e-3,
                    "seconds": 10.0,
                    "steps_per_s": 50.0,
                }
            )
    return pd.DataFrame(rows)


def _fewshot(runs, splits=SPLITS, accuracy=None, ci95: float = 0.003) -> pd.DataFrame:
    def acc(run, w, s):
        return 0.99 - 0.02 * (w == 20) - 0.02 * (s == 1) - 0.005 * run["g"] - 0.002 * run["seed"]

    rows = [
        (*(run[c] for c in RUN_COLUMNS), split, w, s, 15, 600, (accuracy or acc)(run, w, s), ci95)
        for run in runs
        for split in splits
        for w in (5, 20)
        for s in (1, 5)
    ]
    return pd.DataFrame(rows, columns=list(FEWSHOT_COLUMNS))


def _specs(runs) -> list[dict]:
    def backbone(run):
        return {"arch": run["backbone"], **({} if math.isnan(run["width"]) else {"width": int(run["width"])})}

    return [
        {
            "name": run["run"],
            "learner": {"name": run["learner"]},
            "backbone": backbone(run),
            "seed": run["seed"],
            "train": {"lr": 0.001, "weight_decay": run["wd"], "n_way": 60},
            "val": {"n_way": 5, "seed": 1000},
        }
        for run in runs
    ]


def _write(root: Path, nc: pd.DataFrame, log: pd.DataFrame, few: pd.DataFrame, runs=None) -> tuple[Path, ...]:
    root.mkdir(parents=True, exist_ok=True)
    paths = (root / "nc_metrics.csv", root / "train_log.csv", root / "fewshot_accuracy.csv")
    for table, path in zip((nc, log, few), paths, strict=True):
        table.to_csv(path, index=False)
    if runs is None:
        return paths
    write_runs_table(_specs(runs), root / "runs.csv")
    return (*paths, root / "runs.csv")


def _inputs(root: Path, groups=GROUPS) -> tuple[Path, ...]:
    runs = _runs(groups)
    return _write(root, _nc_table(runs), _train_log(runs), _fewshot(runs), runs)


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path], tuple[Path, ...]]:
    root = tmp_path_factory.mktemp("figs")
    inputs = _inputs(root / "results")
    out = root / "results" / "figures"
    return out, make_figures(*inputs[:3], out, inputs[3]), inputs


def _tables(inputs: tuple[Path, ...]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict]:
    """The tables as make_figures sees them (embedding rows of the NC table), with groups."""
    nc, log, few = read_table(inputs[0], "nc"), read_table(inputs[1], "train_log"), read_table(inputs[2], "fewshot")
    runs = read_table(inputs[3], "runs") if len(inputs) > 3 else None
    run_groups = figures._run_groups([nc, log, few], runs, str(inputs[-1]))
    ident = pd.concat([t[list(RUN_COLUMNS)] for t in (nc, log, few)]).drop_duplicates("run").set_index("run")
    groups = figures._group_styles(run_groups, ident.drop(columns="seed"))
    nc, log, few = (t.join(run_groups[["group", "family"]], on="run") for t in (nc, log, few))
    return nc, log, few, groups


def _embedding(nc: pd.DataFrame) -> pd.DataFrame:
    return nc[nc["layer"] == "embedding"]


def _legend(fig) -> list[str]:
    return [t.get_text() for legend in fig.legends for t in legend.get_texts()]


def _ax(fig, title: str):
    return next(a for a in fig.axes if a.get_title() == title)


def _error_segments(fig) -> list[np.ndarray]:
    """The (x, y) ends of every error bar and band edge in the figure."""
    out = []
    for ax in fig.axes:
        for collection in ax.collections:
            if isinstance(collection, LineCollection):
                out += [np.asarray(seg) for seg in collection.get_segments()]
            elif isinstance(collection, PolyCollection):
                out += [np.asarray(path.vertices) for path in collection.get_paths()]
    return out


# ---------------------------------------------------------------------------------------------- outputs


def test_figure_names_are_the_metric_figures_and_the_summaries() -> None:
    assert set(NC_METRICS) <= set(METRIC_FIGURES) and set(METRIC_INFO) <= set(METRIC_FIGURES)
    assert len(set(FIGURE_NAMES)) == len(FIGURE_NAMES)


def test_every_figure_is_written_as_valid_png_and_pdf(generated) -> None:
    out, written, _ = generated
    assert written == [out / f"{n}.{ext}" for n in FIGURE_NAMES for ext in ("png", "pdf")]
    for name in FIGURE_NAMES:
        img = mpimg.imread(out / f"{name}.png")
        assert img.ndim == 3 and img.shape[0] > 400 and img.shape[1] > 600, (name, img.shape)
        assert float(np.std(img)) > 0.01, f"{name}.png looks blank"
        pdf = (out / f"{name}.pdf").read_bytes()
        assert pdf.startswith(b"%PDF-") and pdf.rstrip().endswith(b"%%EOF"), name
        assert b"CreationDate" not in pdf and b"matplotlib.org" not in pdf.lower()
    assert b"Software" not in (out / "nc1.png").read_bytes()
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "temporary files left behind"
    from PIL import Image

    with Image.open(out / "nc1.png") as im:
        assert round(im.info["dpi"][0]) == 150


# One figure of each kind: drawing dominates the run time, and every NC metric figure is drawn by the same code.
KINDS = ("nc1", CLASSIFIER_METRICS[-1], "training", "summary", "model_size", "learners", "layers")


def test_output_is_byte_identical_on_a_second_run(generated, tmp_path: Path) -> None:
    out, _, inputs = generated
    again = make_figures(*inputs[:3], tmp_path / "again", inputs[3], names=KINDS)
    assert [p.name for p in again] == [f"{n}.{ext}" for n in KINDS for ext in ("png", "pdf")]
    for path in again:
        assert path.read_bytes() == (out / path.name).read_bytes(), f"{path.name} differs between runs"


def test_unknown_figure_name_is_rejected(generated, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown figure name.*'nc9'"):
        make_figures(*generated[2][:3], tmp_path / "out", names=["nc9"])


@pytest.mark.parametrize("case", ["one_run_one_epoch_no_optional_nan_nulls", "classifier_metrics_only"])
def test_every_figure_kind_renders_on_degenerate_tables(tmp_path: Path, case: str) -> None:
    if case == "classifier_metrics_only":
        runs, epochs, metrics = _runs(GROUPS[1:3]), EPOCHS, CLASSIFIER_METRICS
    else:
        runs, epochs = _runs([("protonet", "conv4", 64.0, (0,))]), [2]
        metrics = tuple(m for m in METRICS if m not in ("nc1_paper", "erank", "cdnv_dir", "gnc2"))
    nc = _nc_table(runs, epochs, metrics, null=None)
    inputs = _write(tmp_path, nc, _train_log(runs, epochs), _fewshot(runs, splits=("test",)))
    names = (*KINDS, "erank", "cdnv", "gnc2")
    written = make_figures(*inputs, tmp_path / "out", names=names)
    assert len(written) == 2 * len(names) and all(p.stat().st_size > 1000 for p in written)


def test_runs_trained_on_fashion_mnist_draw_every_figure_from_their_own_probes(tmp_path: Path) -> None:
    runs = _runs([("protonet", "conv4", 64.0, (0, 1))])
    probes = {"fashion_train_classes": "eval", "fashion_test_classes": "eval"}
    nc = _nc_table(runs, probes=probes)
    inputs = _write(tmp_path, nc, _train_log(runs), _fewshot(runs, splits=("fashion_test",)), runs)
    make_figures(*inputs[:3], tmp_path / "out", inputs[3], names=KINDS)
    nc, log, few, groups = _tables(inputs)
    fig = figures._model_size_figure(_embedding(nc), log, groups)
    assert [ax.get_title() for ax in fig.axes[:2]] == [
        "NC1 quotient / null: fashion_train_classes · all · BN eval",
        "NC1 quotient / null: fashion_test_classes · all · BN eval",
    ]
    fig = figures._learners_figure(_embedding(nc), few, groups)
    assert fig.axes[0].get_title().startswith("fashion_test: 5-way 1-shot\nagainst CDNV on fashion_test_classes")
    assert fig.axes[0].get_lines(), "no point drawn"
    fig = figures._layers_figure(nc, groups)
    assert [ax.get_title() for ax in fig.axes][:2] == [
        "NC1 quotient / null: fashion_train_classes · all · BN eval",
        "NC1 quotient / null: fashion_test_classes · all · BN eval",
    ]


# ----------------------------------------------------------------------------------------------- groups


def test_runs_group_by_every_varying_config_key_and_the_label_names_it(tmp_path: Path) -> None:
    # A weight-decay sweep: four values, three seeds each, is four groups of three seeds, not one of twelve.
    runs = [r for wd in (0.0, 5e-4, 1e-3, 0.01) for r in _runs([("protonet", "conv4", 64.0, (0, 1, 2))], wd=wd)]
    inputs = _write(tmp_path, _nc_table(runs, layers=False), _train_log(runs), _fewshot(runs), runs)
    nc, log, few, groups = _tables(inputs)
    assert list(groups) == [
        "protonet · conv4 w64 · wd 0",
        "protonet · conv4 w64 · wd 5e-4",
        "protonet · conv4 w64 · wd 0.001",
        "protonet · conv4 w64 · wd 0.01",
    ]
    assert nc.groupby("group")["run"].nunique().tolist() == [3, 3, 3, 3]
    fig = figures._nc_metric_figure(_embedding(nc), "nc1", groups)
    legend = _legend(fig)
    assert "protonet · conv4 w64 · wd 5e-4 (3 seeds)" in legend
    assert not any("12 seeds" in t for t in legend)
    # Without the runs table the groups fall back to learner, backbone and width.
    _, _, _, fallback = _tables(inputs[:3])
    assert list(fallback) == ["protonet · conv4 w64"]


def test_a_run_missing_from_the_runs_table_is_named(tmp_path: Path) -> None:
    runs = _runs(GROUPS[2:3])
    inputs = _write(tmp_path, _nc_table(runs, layers=False), _train_log(runs), _fewshot(runs), runs[:1])
    with pytest.raises(ValueError, match=rf"runs\.csv: .*no row for run\(s\) \['{runs[1]['run']}'\]"):
        make_figures(*inputs[:3], tmp_path / "out", inputs[3])
    assert not (tmp_path / "out").exists(), "nothing may be written when an input is malformed"


def test_groups_have_distinct_colours_learner_families_and_backbone_markers(generated) -> None:
    *_, groups = _tables(generated[2])
    assert list(groups) == [
        "protonet · resnet18",
        "protonet · conv4 w32",
        "protonet · conv4 w64",
        "matchingnet · conv4 w64",
    ]
    assert len({g.color for g in groups.values()}) == len(groups)
    assert groups["protonet · conv4 w32"].marker == groups["matchingnet · conv4 w64"].marker
    assert groups["protonet · resnet18"].marker != groups["protonet · conv4 w32"].marker

    def blue_share(hex_color: str) -> float:
        r, g, b = (int(hex_color[i : i + 2], 16) for i in (1, 3, 5))
        return b - r

    # protonet is the first learner (blues), matchingnet the second (oranges)
    assert all(blue_share(g.color) > 0 for g in groups.values() if g.learner == "protonet")
    assert blue_share(groups["matchingnet · conv4 w64"].color) < 0


# ---------------------------------------------------------------------------------------------- content


def test_nc_panels_name_probe_set_and_bn_mode_and_lines_are_seed_means(generated) -> None:
    nc, _, _, groups = _tables(generated[2])
    nc = _embedding(nc)
    fig = figures._nc_metric_figure(nc, "nc1", groups)
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
    assert titles == [
        "train_episodes · support · BN train",
        "train_episodes · query · BN train",
        "val_episodes · support · BN eval",
        "val_episodes · query · BN eval",
        "train_classes · all · BN eval",
        "test_classes · all · BN eval",
        "fashion_test_classes · all · BN eval",
    ]
    assert all(ax.get_yscale() == "log" for ax in fig.axes if ax.get_visible())  # nc1 spans three decades
    ax = fig.axes[1]
    for key, group in groups.items():
        lines = [ln for ln in ax.get_lines() if ln.get_color() == group.color and ln.get_linestyle() == "-"]
        assert len(lines) == 1, key
        rows = nc[(nc["group"] == key) & (nc["metric"] == "nc1") & (nc["probe"] == "train_episodes")]
        expected = rows[rows["set"] == "query"].groupby("epoch")["mean"].mean()
        np.testing.assert_array_equal(lines[0].get_xdata(), expected.index.to_numpy())
        np.testing.assert_allclose(lines[0].get_ydata(), expected.to_numpy(), rtol=1e-12)
    nulls = [ln for ln in ax.get_lines() if ln.get_linestyle() == "--"]
    assert len(nulls) == 1 and nulls[0].get_ydata()[0] == pytest.approx(2.0)
    legend = _legend(fig)
    assert "protonet · resnet18 (3 seeds)" in legend and "matchingnet · conv4 w64 (1 seed)" in legend
    assert "null: isotropic Gaussian features" in legend


def test_group_null_lines_take_the_group_colour_when_nulls_differ(generated) -> None:
    nc, _, _, groups = _tables(generated[2])
    nc = _embedding(nc)
    nc = nc.assign(null=np.where(nc["backbone"] == "resnet18", 3.0, 2.0))
    fig = figures._nc_metric_figure(nc, "cdnv", groups)
    dashed = {ln.get_color(): ln.get_ydata()[0] for ln in fig.axes[0].get_lines() if ln.get_linestyle() == "--"}
    assert dashed == {groups[k].color: (3.0 if "resnet18" in k else 2.0) for k in groups}


def test_summary_plots_the_papers_per_episode_metrics_over_their_null(generated) -> None:
    # Raw NC1 depends on the dimension through its null; the summary compares groups only over the null.
    nc, _, few, groups = _tables(generated[2])
    nc = _embedding(nc)
    nc = nc.assign(null=np.where(nc["backbone"] == "resnet18", 8.0, nc["null"]))
    fig = figures._summary_figure(nc, few, groups)
    ax = _ax(fig, "train_episodes · BN train\nNC1 (paper) / null")
    assert ax.get_yscale() == "log" and ax.get_ylim()[0] < 1.0 < ax.get_ylim()[1]
    assert any(ln.get_linestyle() == "--" and ln.get_ydata()[0] == 1.0 for ln in ax.get_lines())
    assert "NC1 (paper) / null" in ax.get_ylabel() and "log axis" in ax.get_ylabel()
    assert [t.get_text() for t in ax.get_xticklabels()] == ["support images", "query images"]
    rows = nc[(nc["group"] == "protonet · resnet18") & (nc["probe"] == "train_episodes") & (nc["epoch"] == 3)]
    rows = rows[(rows["metric"] == "nc1_paper") & (rows["set"] == "support")]
    color = groups["protonet · resnet18"].color
    point = next(ln for ln in ax.get_lines() if ln.get_color() == color and ln.get_marker() not in ("", "None"))
    assert point.get_ydata()[0] == pytest.approx((rows["mean"] / rows["null"]).mean(), rel=1e-12)
    titles = [a.get_title() for a in fig.axes if a.get_title()]
    assert "val_episodes · BN eval\nNC2 ETF (rows norm.) / null" in titles


def test_summary_uses_each_runs_last_epoch(generated) -> None:
    nc, _, few, groups = _tables(generated[2])
    nc = _embedding(nc)
    nc = nc[~((nc["run"] == "protonet-conv432-wd0-s1") & (nc["epoch"] == 3))]  # one seed stops an epoch early
    fig = figures._summary_figure(nc, few, groups)
    ax = _ax(fig, "train_episodes · BN train\nNC1 (paper) / null")
    rows = figures._final_rows(nc[(nc["group"] == "protonet · conv4 w32") & (nc["probe"] == "train_episodes")])
    rows = rows[(rows["metric"] == "nc1_paper") & (rows["set"] == "support")]
    assert sorted(rows["epoch"]) == [2, 3, 3]
    color = groups["protonet · conv4 w32"].color
    point = next(ln for ln in ax.get_lines() if ln.get_color() == color and ln.get_marker() not in ("", "None"))
    assert point.get_ydata()[0] == pytest.approx((rows["mean"] / rows["null"]).mean(), rel=1e-12)


def test_summary_block_labels_never_overlap_tick_labels(generated) -> None:
    nc, _, few, groups = _tables(generated[2])
    fig = figures._summary_figure(_embedding(nc), few, groups)
    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    ticks = [t.get_window_extent(renderer) for ax in fig.axes for t in ax.get_xticklabels() if t.get_text()]
    labels = [ax.title for ax in fig.axes if ax.get_title()] + [t for ax in fig.axes for t in ax.texts]
    assert ticks and labels
    for label in labels:
        box = label.get_window_extent(renderer)
        assert not any(box.overlaps(tick) for tick in ticks), label.get_text()


def test_summary_shows_the_accuracy_of_every_few_shot_split(generated) -> None:
    nc, _, few, groups = _tables(generated[2])
    fig = figures._summary_figure(_embedding(nc), few, groups)
    ax = next(a for a in fig.axes if a.get_title().startswith("Few-shot accuracy"))
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels[:4] == ["5-way 1-shot\ntest", "5-way 5-shot\ntest", "20-way 1-shot\ntest", "20-way 5-shot\ntest"]
    assert labels[4:] == [label.replace("test", "fashion_test") for label in labels[:4]]
    assert ax.get_ylim()[0] == 0.0 and ax.get_ylim()[1] >= 100.0
    chance = sorted({round(float(seg[0][1]), 6) for c in ax.collections for seg in c.get_segments() if len(seg)})
    assert 5.0 in chance and 20.0 in chance, "chance level 1/N missing"


def test_accuracy_intervals_never_leave_zero_to_a_hundred_percent(tmp_path: Path) -> None:
    runs = _runs(GROUPS)
    few = _fewshot(runs, accuracy=lambda run, w, s: 0.999 - 0.05 * run["seed"], ci95=0.05)
    inputs = _write(tmp_path, _nc_table(runs, layers=False), _train_log(runs), few, runs)
    nc, log, few, groups = _tables(inputs)
    log = log.assign(val_acc=np.where(log["seed"] == 0, 0.999, 0.9))
    nc = _embedding(nc)
    for fig in (
        figures._summary_figure(nc, few, groups),
        figures._learners_figure(nc, few, groups),
        figures._training_figure(log, groups, pd.Series(dtype=float)),
    ):
        accuracy_axes = [a for a in fig.axes if "accuracy (%" in a.get_ylabel()]
        assert accuracy_axes
        for ax in accuracy_axes:
            for collection in ax.collections:
                paths = getattr(collection, "get_segments", None)
                points = paths() if paths else [p.vertices for p in collection.get_paths()]
                for seg in points:
                    ys = np.asarray(seg)[:, 1]
                    assert ys.max() <= 100.0 + 1e-9 and ys.min() >= -1e-9, (ax.get_title(), ys)


def _texts(fig) -> list[str]:
    """Every text of a figure: suptitle, panel titles and labels, annotations, legends."""
    texts = [fig.get_suptitle(), *_legend(fig)]
    for ax in fig.axes:
        texts += [ax.get_title(), ax.get_xlabel(), ax.get_ylabel(), *(t.get_text() for t in ax.texts)]
    return [t for t in texts if t]


def test_single_seed_groups_claim_no_interval_over_seeds(tmp_path: Path) -> None:
    runs = _runs([("protonet", "conv4", 64.0, (0,))])
    inputs = _write(tmp_path, _nc_table(runs, layers=False), _train_log(runs), _fewshot(runs), runs)
    nc, log, few, groups = _tables(inputs)
    nc = _embedding(nc)
    for fig in (
        figures._nc_metric_figure(nc, "nc1", groups),
        figures._training_figure(log, groups, pd.Series(dtype=float)),
        figures._summary_figure(nc, few, groups),
        figures._model_size_figure(nc, log, groups),
        figures._learners_figure(nc, few, groups),
    ):
        claims = [t for t in _texts(fig) if "95%" in t or "CI" in t]
        assert all("(one seed)" in t for t in claims), claims
        assert not any(isinstance(c, PolyCollection) for ax in fig.axes for c in ax.collections)
    legend = _legend(figures._summary_figure(nc, few, groups))
    assert "error bar: 95% interval over test episodes (one seed)" in legend


def test_single_seed_groups_show_the_bootstrap_interval_of_the_table(tmp_path: Path) -> None:
    runs = _runs([("protonet", "conv4", 64.0, (0,)), ("protonet", "conv4", 32.0, (0, 1))])
    nc = _nc_table(runs, layers=False, ci=True)
    inputs = _write(tmp_path, nc, _train_log(runs), _fewshot(runs), runs)
    nc, _, _, groups = _tables(inputs)
    fig = figures._nc_metric_figure(_embedding(nc), "cdnv", groups)
    legend = _legend(fig)
    assert "band: 95% bootstrap interval over the probe (one seed)" in legend
    assert "band: 95% interval over seeds (Student t)" in legend
    ax = _ax(fig, "test_classes · all · BN eval")
    hatched = [c for c in ax.collections if c.get_hatch()]
    assert len(hatched) == 1
    top = hatched[0].get_paths()[0].vertices[:, 1].max()
    one = nc[(nc["run"] == runs[0]["run"]) & (nc["probe"] == "test_classes") & (nc["metric"] == "cdnv")]
    one = one[one["layer"] == "embedding"]
    assert top == pytest.approx(one["ci_high"].max(), rel=1e-12)


def test_fewshot_interval_is_over_seeds_or_over_episodes_for_one_seed(generated) -> None:
    _, _, few, _ = _tables(generated[2])
    fs = figures._fewshot_by_group(few).set_index(["group", "split", "n_way", "n_shot"])
    row = fs.loc[("protonet · resnet18", "test", 5, 1)]
    acc = few[(few["group"] == "protonet · resnet18") & (few["split"] == "test")]
    mean, half, n = mean_ci(acc[(acc["n_way"] == 5) & (acc["n_shot"] == 1)]["accuracy"])
    assert (row["mean"], row["hi"] - row["mean"], row["n"], row["interval"]) == (
        pytest.approx(100 * mean),
        pytest.approx(100 * half),
        3,
        "seeds",
    )
    single = fs.loc[("matchingnet · conv4 w64", "fashion_test", 20, 5)]
    assert (single["mean"] - single["lo"], single["interval"]) == (pytest.approx(0.3), "episodes")


def test_model_size_plots_collapse_over_its_null_on_axes_that_include_it(generated) -> None:
    nc, log, _, groups = _tables(generated[2])
    fig = figures._model_size_figure(_embedding(nc), log, groups)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[0] == "NC1 quotient / null: train_classes · all · BN eval"
    assert titles[2] == "NC1 quotient / null: fashion_test_classes · all · BN eval"
    assert titles[-1] == "NC2 ETF (rows norm.) / null: fashion_test_classes · all · BN eval"
    for ax in fig.axes:
        assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
        low, high = ax.get_ylim()
        assert low < 1.0 < high, (ax.get_title(), low, high)
        assert "log axis; 1 = Gaussian null" in ax.get_ylabel() or not ax.get_ylabel()
    legend = _legend(fig)
    assert "protonet · conv4 (d = 32, 64)" in legend and "protonet · resnet18 (d = 512)" in legend
    dims = sorted(t.get_text() for t in fig.axes[-1].texts)
    assert dims == ["d=32", "d=512", "d=64", "d=64"]
    point = next(ln for ln in fig.axes[0].get_lines() if ln.get_color() == groups["protonet · conv4 w32"].color)
    rows = nc[(nc["group"] == "protonet · conv4 w32") & (nc["probe"] == "train_classes") & (nc["epoch"] == 3)]
    rows = rows[(rows["metric"] == "nc1_quotient") & (rows["layer"] == "embedding")]
    assert point.get_ydata()[0] == pytest.approx((rows["mean"] / rows["null"]).mean(), rel=1e-12)


def test_without_a_null_model_size_starts_its_axis_at_zero(tmp_path: Path) -> None:
    runs = _runs(GROUPS[1:3])
    inputs = _write(tmp_path, _nc_table(runs, null=None, layers=False), _train_log(runs), _fewshot(runs), runs)
    nc, log, _, groups = _tables(inputs)
    fig = figures._model_size_figure(_embedding(nc), log, groups)
    ax = fig.axes[0]
    assert ax.get_title() == "NC1 quotient: train_classes · all · BN eval"
    assert ax.get_yscale() == "linear" and ax.get_ylim()[0] == 0.0 and "axis from 0" in ax.get_ylabel()


def test_learners_plot_accuracy_from_zero_against_collapse_over_its_null(generated) -> None:
    nc, _, few, groups = _tables(generated[2])
    nc = _embedding(nc)
    fig = figures._learners_figure(nc, few, groups)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[:2] == [
        "test: 5-way 1-shot\nagainst CDNV on test_classes · all · BN eval",
        "test: 5-way 1-shot\nagainst NC1 quotient on test_classes · all · BN eval",
    ]
    assert "fashion_test: 20-way 5-shot\nagainst CDNV on fashion_test_classes · all · BN eval" in titles
    for ax in fig.axes:
        assert ax.get_ylim() == (0.0, 102.0) and "axis 0-100" in ax.get_ylabel()
        assert ax.get_xlim()[0] < 1.0 < ax.get_xlim()[1] and "/ null (log axis" in ax.get_xlabel()
    ax = fig.axes[0]
    key = "protonet · conv4 w32"
    point = next(ln for ln in ax.get_lines() if ln.get_color() == groups[key].color)
    final = nc[(nc["probe"] == "test_classes") & (nc["metric"] == "cdnv") & (nc["epoch"] == 3) & (nc["group"] == key)]
    assert point.get_xdata()[0] == pytest.approx((final["mean"] / final["null"]).mean(), rel=1e-12)
    acc = few[(few["group"] == key) & (few["split"] == "test") & (few["n_way"] == 5) & (few["n_shot"] == 1)]
    assert point.get_ydata()[0] == pytest.approx(100 * acc["accuracy"].mean(), rel=1e-12)


def test_layers_show_collapse_against_depth_at_first_early_and_last_epochs(tmp_path: Path) -> None:
    runs = _runs(GROUPS[1:2])
    epochs = range(21)
    inputs = _write(
        tmp_path,
        _nc_table(runs, epochs, metrics=("nc1_quotient", "cdnv", "nc2_etf_rownorm")),
        _train_log(runs),
        _fewshot(runs),
        runs,
    )
    nc, _, _, groups = _tables(inputs)
    fig = figures._layers_figure(nc, groups)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[:3] == [
        "NC1 quotient / null: train_classes · all · BN eval",
        "NC1 quotient / null: test_classes · all · BN eval",
        "NC1 quotient / null: fashion_test_classes · all · BN eval",
    ]
    assert titles[3] == "CDNV: train_classes · all · BN eval" and len(fig.axes) == 9
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["block1", "block2", "block3", "block4", "embedding"]
    lines = {ln.get_linestyle(): ln for ln in ax.get_lines() if ln.get_color() == groups["protonet · conv4 w32"].color}
    assert set(lines) == {":", "-.", "-"}  # first, early and last epoch
    assert "first epoch (0)" in _legend(fig) and "early epoch (2)" in _legend(fig) and "last epoch (20)" in _legend(fig)
    rows = nc[(nc["probe"] == "train_classes") & (nc["metric"] == "nc1_quotient") & (nc["epoch"] == 20)]
    expected = [
        (rows.loc[rows["layer"] == la, "mean"] / rows.loc[rows["layer"] == la, "null"]).mean()
        for la in ("block1", "block2", "block3", "block4", "embedding")
    ]
    np.testing.assert_allclose(lines["-"].get_ydata(), expected, rtol=1e-12)
    cdnv = fig.axes[3]
    assert any(ln.get_linestyle() == "--" and len(ln.get_xdata()) == 5 for ln in cdnv.get_lines()), "no null by depth"


def test_layers_draw_a_clean_panel_without_layer_wise_rows(tmp_path: Path) -> None:
    runs = _runs(GROUPS[1:2])
    inputs = _write(tmp_path, _nc_table(runs, layers=False), _train_log(runs), _fewshot(runs))
    nc, _, _, groups = _tables(inputs)
    fig = figures._layers_figure(nc, groups)
    assert len(fig.axes) == 1 and [t.get_text() for t in fig.axes[0].texts] == [
        "no layer-wise rows in the NC table (only the embedding)"
    ]
    written = make_figures(*inputs, tmp_path / "out", names=["layers"])
    assert [p.name for p in written] == ["layers.png", "layers.pdf"]


def test_old_tables_without_layer_split_or_intervals_still_draw(tmp_path: Path) -> None:
    runs = _runs(GROUPS[1:3])
    nc = _nc_table(runs, layers=False).drop(columns=["layer", "ci_low", "ci_high"])
    few = _fewshot(runs, splits=("test",)).drop(columns="split")
    log = _train_log(runs).rename(columns={"steps_per_s": "episodes_per_s"})
    inputs = _write(tmp_path, nc, log, few)
    written = make_figures(*inputs, tmp_path / "out", names=["nc1", "summary", "layers"])
    assert len(written) == 6


# -------------------------------------------------------------------------------------------- bad inputs


def test_a_malformed_table_is_named_and_nothing_is_written(tmp_path: Path) -> None:
    inputs = _inputs(tmp_path)
    pd.read_csv(inputs[2]).drop(columns=["accuracy"]).to_csv(inputs[2], index=False)
    with pytest.raises(ValueError, match=rf"{re.escape(str(inputs[2]))}.*'accuracy'"):
        make_figures(*inputs[:3], tmp_path / "out", inputs[3])
    assert not (tmp_path / "out").exists(), "nothing may be written when an input is malformed"


# ---------------------------------------------------------------------------------------------- captions


def _captions() -> dict[str, str]:
    return {p.stem: p.read_text(encoding="utf-8") for p in sorted((REPO / "workflow" / "report").glob("*.rst"))}


def test_every_figure_has_exactly_one_caption_and_no_caption_lacks_a_figure() -> None:
    # The workflow derives its list of figures from these files.
    captions = _captions()
    assert set(captions) == {*FIGURE_NAMES, "workflow"}
    for name, text in captions.items():
        sentences = [s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s]
        assert len(sentences) >= 2, f"{name}.rst is too short"
        assert "{{" not in text, f"{name}.rst would be read as a Jinja template"
    for name in METRIC_FIGURES:
        text = captions[name]
        assert "dashed" in text and "null" in text and "BN" in text and "seed" in text, name


def test_every_caption_is_valid_restructuredtext() -> None:
    # Snakemake renders captions with docutils; a stray |x| (a substitution reference) prints an error in the
    # report instead of the text.
    from docutils.core import publish_doctree
    from docutils.utils import SystemMessage

    for name, text in _captions().items():
        try:
            publish_doctree(text, settings_overrides={"halt_level": 2, "report_level": 5})
        except SystemMessage as error:
            raise AssertionError(f"{name}.rst: {error}") from error


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([1.0, 0.5, 0.1], False),  # one decade
        ([1.0, 0.01], True),  # two decades
        ([1.0, 10**-1.5], False),  # exactly the threshold is not more than it
        ([1.0, 10**-1.6], True),
        ([1.0, 0.0, 1e-4], False),  # a zero cannot go on a log axis
        ([1.0, -1e-3, 1e-4], False),
        ([np.nan, 1.0, np.inf, 1e-3], True),  # non-finite values are ignored
        ([], False),
        ([np.nan], False),
        ([5.0], False),
    ],
)
def test_use_log_scale(values: list[float], expected: bool) -> None:
    assert use_log_scale(values) is expected
