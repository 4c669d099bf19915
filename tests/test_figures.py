"""Tests of metacollapse.figures on synthetic tables (no training, no GPU)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest
from matplotlib.container import BarContainer

from metacollapse import figures
from metacollapse.figures import (
    FIGURE_NAMES,
    METRIC_INFO,
    NC_METRICS,
    FigureInputError,
    aggregate_seeds,
    make_figures,
    mean_ci,
    t_quantile,
    use_log_scale,
)
from metacollapse.nc import CLASSIFIER_METRICS, FEATURE_METRICS
from metacollapse.runs import RUN_COLUMNS

REPO = Path(__file__).resolve().parents[1]
EPOCHS = range(4)  # 0 = untrained
EPISODIC = {"train_episodes": "train", "val_episodes": "eval"}  # probe -> bn_mode
CLASSES = {"train_classes": "eval", "test_classes": "eval"}
# (learner, backbone, width, seeds); deliberately not alphabetical: order of appearance wins
GROUPS = [
    ("protonet", "resnet18", math.nan, (0, 1, 2)),
    ("protonet", "conv4", 32.0, (0, 1, 2)),
    ("protonet", "conv4", 64.0, (0, 1)),
    ("matchingnet", "conv4", 64.0, (0,)),
]
DIM = {"resnet18": 512}


def _runs(groups=GROUPS) -> list[dict]:
    runs = []
    for g_i, (learner, backbone, width, seeds) in enumerate(groups):
        for seed in seeds:
            name = f"{learner}-{backbone}{'' if math.isnan(width) else int(width)}-s{seed}"
            runs.append({"run": name, "learner": learner, "backbone": backbone, "width": width, "seed": seed, "g": g_i})
    return runs


def _value(run: dict, epoch: int, probe_i: int, s_i: int, metric: str) -> float:
    decay = 10.0 if metric in ("nc1", "cdnv", "nc1_paper") else 1.3
    return (1.0 + 0.3 * run["g"] + 0.1 * run["seed"] + 0.2 * s_i + 0.05 * probe_i) * decay ** (-epoch)


def _nc_table(runs, epochs=EPOCHS, metrics=NC_METRICS, null: float | None = 2.0) -> pd.DataFrame:
    rows = []
    probes = {**EPISODIC, **CLASSES}
    for run in runs:
        ident = [run[c] for c in RUN_COLUMNS]
        for epoch in epochs:
            for p_i, (probe, bn_mode) in enumerate(probes.items()):
                episodic = probe in EPISODIC
                for metric in metrics:
                    if metric in CLASSIFIER_METRICS:
                        sets = ("protonet",) if episodic else ("protonet", "classifier")
                    else:
                        sets = ("support", "query") if episodic else ("all",)
                    for s_i, set_name in enumerate(sets):
                        mean = _value(run, epoch, p_i, s_i, metric)
                        std = 0.2 * mean if episodic else math.nan
                        nul = math.nan if null is None or metric in CLASSIFIER_METRICS else null
                        rows.append((*ident, epoch, probe, bn_mode, set_name, metric, mean, std, nul))
    cols = [*RUN_COLUMNS, "epoch", "probe", "bn_mode", "set", "metric", "mean", "std", "null"]
    return pd.DataFrame(rows, columns=cols)


def _train_log(runs, epochs=EPOCHS) -> pd.DataFrame:
    rows = []
    for run in runs:
        width = 64 if math.isnan(run["width"]) else run["width"]
        dim = DIM.get(run["backbone"], width)
        n_params = 1e4 * width**1.5 * (10 if run["backbone"] == "resnet18" else 1)
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
                    "episodes_per_s": 50.0,
                }
            )
    return pd.DataFrame(rows)


def _fewshot(runs) -> pd.DataFrame:
    rows = [
        {
            **{c: run[c] for c in RUN_COLUMNS},
            "n_way": w,
            "n_shot": s,
            "n_query": 15,
            "episodes": 600,
            "accuracy": 0.99 - 0.02 * (w == 20) - 0.02 * (s == 1) - 0.005 * run["g"] - 0.002 * run["seed"],
            "ci95": 0.003,
        }
        for run in runs
        for w in (5, 20)
        for s in (1, 5)
    ]
    return pd.DataFrame(rows)


def _write(root: Path, nc: pd.DataFrame, log: pd.DataFrame, few: pd.DataFrame) -> tuple[Path, Path, Path]:
    root.mkdir(parents=True, exist_ok=True)
    paths = (root / "nc_metrics.csv", root / "train_log.csv", root / "fewshot_accuracy.csv")
    for table, path in zip((nc, log, few), paths, strict=True):
        table.to_csv(path, index=False)
    return paths


def _inputs(root: Path, groups=GROUPS) -> tuple[Path, Path, Path]:
    runs = _runs(groups)
    return _write(root, _nc_table(runs), _train_log(runs), _fewshot(runs))


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path], tuple[Path, Path, Path]]:
    root = tmp_path_factory.mktemp("figs")
    inputs = _inputs(root / "results")
    out = root / "results" / "figures"
    return out, make_figures(*inputs, out), inputs


def _tables(inputs: tuple[Path, Path, Path]) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict]:
    nc = figures._with_groups(figures.read_nc_metrics(inputs[0]))
    log = figures._with_groups(figures.read_train_log(inputs[1]))
    few = figures._with_groups(figures.read_fewshot(inputs[2]))
    return nc, log, few, figures.group_styles(nc, log, few)


# ------------------------------------------------------------------------------------------- statistics


# Closed forms: one degree of freedom is the Cauchy law, two give t = p * sqrt(2 / (1 - p^2)).
T1 = math.tan(0.95 * math.pi / 2)
T2 = 0.95 * math.sqrt(2 / (1 - 0.95**2))  # 4.3026527297...


def test_t_quantile_matches_closed_forms_and_tables() -> None:
    assert t_quantile(1) == pytest.approx(T1, rel=1e-13)
    assert t_quantile(2) == pytest.approx(T2, rel=1e-13)
    for dof, table in [(3, 3.182446305), (10, 2.228138852), (29, 2.045229642)]:
        assert t_quantile(dof) == pytest.approx(table, rel=1e-9), dof
    assert t_quantile(4, 0.90) == pytest.approx(2.131846786, rel=1e-9)
    with pytest.raises(ValueError, match="degrees of freedom"):
        t_quantile(0)


def test_mean_ci_of_three_seeds() -> None:
    mean, half, n = mean_ci([1.0, 2.0, 4.0])
    sd = math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 2)  # 1.5275...
    assert (mean, n) == (pytest.approx(7 / 3, rel=1e-15), 3)
    assert half == pytest.approx(T2 * sd / math.sqrt(3), rel=1e-12)
    assert half == pytest.approx(3.7946, abs=1e-4)
    m1, h1, n1 = mean_ci([5.0, math.nan])  # non-finite values are dropped; one seed has no interval
    assert (m1, n1) == (5.0, 1) and math.isnan(h1)
    m0, h0, n0 = mean_ci([])
    assert n0 == 0 and math.isnan(m0) and math.isnan(h0)


def test_aggregate_seeds_groups_and_intervals() -> None:
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
    np.testing.assert_allclose(out["ci95"].iloc[0], T2 / math.sqrt(3), rtol=1e-12)
    assert out["n"].tolist() == [3, 0, 1, 1]
    assert math.isnan(out["mean"].iloc[1]) and math.isnan(out["ci95"].iloc[2])
    assert out["mean"].iloc[2] == 7.0


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


# ---------------------------------------------------------------------------------------------- outputs


def test_figure_names_are_fixed_by_the_metric_tuples() -> None:
    assert (*FEATURE_METRICS, *CLASSIFIER_METRICS) == NC_METRICS
    assert (*NC_METRICS, "training", "summary", "model_size", "learners") == FIGURE_NAMES
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


# One figure of each kind (a feature metric, a classifier metric, the four summaries): drawing dominates the run
# time, and every NC metric figure is drawn by the same code.
KINDS = ("nc1", CLASSIFIER_METRICS[-1], "training", "summary", "model_size", "learners")


def test_output_is_byte_identical_on_a_second_run(generated, tmp_path: Path) -> None:
    out, _, inputs = generated
    again = make_figures(*inputs, tmp_path / "again", names=KINDS)
    assert [p.name for p in again] == [f"{n}.{ext}" for n in KINDS for ext in ("png", "pdf")]
    for path in again:
        assert path.read_bytes() == (out / path.name).read_bytes(), f"{path.name} differs between runs"


def test_unknown_figure_name_is_rejected(generated, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown figure name.*'nc9'"):
        make_figures(*generated[2], tmp_path / "out", names=["nc9"])


@pytest.mark.parametrize("case", ["one_run_one_epoch_no_optional_nan_nulls", "classifier_metrics_only"])
def test_every_figure_kind_renders_on_degenerate_tables(tmp_path: Path, case: str) -> None:
    if case == "classifier_metrics_only":
        runs, epochs, metrics = _runs(GROUPS[1:3]), EPOCHS, CLASSIFIER_METRICS
    else:
        runs, epochs = _runs([("protonet", "conv4", 64.0, (0,))]), [2]
        metrics = tuple(m for m in NC_METRICS if m not in ("nc1_paper", "erank", "cdnv_dir"))
    nc = _nc_table(runs, epochs, metrics, null=None)
    inputs = _write(tmp_path, nc, _train_log(runs, epochs), _fewshot(runs))
    names = (*KINDS, *(m for m in ("erank", "cdnv") if m in NC_METRICS and m not in metrics))
    written = make_figures(*inputs, tmp_path / "out", names=names)
    assert len(written) == 2 * len(names) and all(p.stat().st_size > 1000 for p in written)


# ----------------------------------------------------------------------------------------------- content


def test_nc_panels_name_probe_set_and_bn_mode_and_lines_are_seed_means(generated) -> None:
    nc, _, _, groups = _tables(generated[2])
    fig = figures._nc_metric_figure(nc, "nc1", groups)
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
    assert titles == [
        "train_episodes · support · BN train",
        "train_episodes · query · BN train",
        "val_episodes · support · BN eval",
        "val_episodes · query · BN eval",
        "train_classes · all · BN eval",
        "test_classes · all · BN eval",
    ]
    assert all(ax.get_yscale() == "log" for ax in fig.axes if ax.get_visible())  # nc1 spans three decades
    ax = fig.axes[1]
    for key, group in groups.items():
        lines = [ln for ln in ax.get_lines() if ln.get_color() == group.color and ln.get_linestyle() == "-"]
        assert len(lines) == 1, key
        rows = nc[(nc["group"] == key) & (nc["metric"] == "nc1") & (nc["probe"] == "train_episodes")]
        rows = rows[rows["set"] == "query"]
        expected = rows.groupby("epoch")["mean"].mean()
        np.testing.assert_array_equal(lines[0].get_xdata(), expected.index.to_numpy())
        np.testing.assert_allclose(lines[0].get_ydata(), expected.to_numpy(), rtol=1e-12)
    nulls = [ln for ln in ax.get_lines() if ln.get_linestyle() == "--"]
    assert len(nulls) == 1 and nulls[0].get_ydata()[0] == pytest.approx(2.0)
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "protonet · resnet18 (3 seeds)" in legend and "matchingnet · conv4 w64 (1 seed)" in legend
    assert "null: isotropic Gaussian features" in legend


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


def test_group_null_lines_take_the_group_colour_when_nulls_differ(generated) -> None:
    nc, _, _, groups = _tables(generated[2])
    nc = nc.assign(null=np.where(nc["backbone"] == "resnet18", 3.0, 2.0))
    fig = figures._nc_metric_figure(nc, "cdnv", groups)
    dashed = {ln.get_color(): ln.get_ydata()[0] for ln in fig.axes[0].get_lines() if ln.get_linestyle() == "--"}
    assert dashed == {groups[k].color: (3.0 if "resnet18" in k else 2.0) for k in groups}


def test_summary_shows_per_episode_nc1_and_nc2_with_bn_mode(generated) -> None:
    nc, _, few, groups = _tables(generated[2])
    nc = nc[~((nc["run"] == "protonet-conv432-s1") & (nc["epoch"] == 3))]  # one seed stops an epoch early
    fig = figures._summary_figure(nc, few, groups)
    ax = next(a for a in fig.axes if a.get_title().startswith("The paper's measurement"))
    nc1 = "NC1\n(paper)" if "nc1_paper" in NC_METRICS else "NC1"
    labels = [t.get_text() for t in ax.get_xticklabels()]
    nc2 = "NC2 ETF\n(rows norm.)"
    assert labels == [f"{nc1}\nsupport", f"{nc1}\nquery", f"{nc2}\nsupport", f"{nc2}\nquery"] * 2
    notes = [t.get_text() for t in ax.texts]
    assert notes == ["train_episodes · BN train", "val_episodes · BN eval"]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend[1] == "protonet · conv4 w32 (epochs 2–3, 3 seeds)"
    bars = [c for c in ax.containers if isinstance(c, BarContainer)]
    assert len(bars) == len(groups)
    metric = "nc1_paper" if "nc1_paper" in NC_METRICS else "nc1"
    rows = figures._final_rows(nc[(nc["group"] == "protonet · conv4 w32") & (nc["probe"] == "train_episodes")])
    rows = rows[(rows["metric"] == metric) & (rows["set"] == "support")]
    assert sorted(rows["epoch"]) == [2, 3, 3]
    assert bars[1].patches[0].get_height() == pytest.approx(rows["mean"].mean(), rel=1e-12)


def test_fewshot_interval_is_over_seeds_or_over_episodes_for_one_seed(generated) -> None:
    _, _, few, _ = _tables(generated[2])
    fs = figures._fewshot_by_group(few).set_index(["group", "n_way", "n_shot"])
    row = fs.loc[("protonet · resnet18", 5, 1)]
    acc = few[(few["group"] == "protonet · resnet18") & (few["n_way"] == 5) & (few["n_shot"] == 1)]["accuracy"]
    mean, half, n = mean_ci(acc)
    assert (row["mean"], row["ci95"], row["n"], row["over"]) == (
        pytest.approx(100 * mean),
        pytest.approx(100 * half),
        3,
        "seeds",
    )
    single = fs.loc[("matchingnet · conv4 w64", 20, 5)]
    assert (single["ci95"], single["over"]) == (pytest.approx(0.3), "episodes")


def test_model_size_and_learners_figures(generated) -> None:
    nc, log, few, groups = _tables(generated[2])
    fig = figures._model_size_figure(nc, log, groups)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[0] == "NC1 quotient: train_classes · all · BN eval"
    assert titles[-1] == "NC2 ETF (rows norm.) / null: test_classes · all · BN eval"
    assert any("erank" in t or "effective rank" in t for t in titles) == ("erank" in NC_METRICS)
    assert all(ax.get_xscale() == "log" for ax in fig.axes)
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "protonet · conv4 (d = 32, 64)" in legend and "protonet · resnet18 (d = 512)" in legend
    ratio_ax = fig.axes[-1]
    dims = sorted(t.get_text() for t in ratio_ax.texts)
    assert dims == ["d=32", "d=512", "d=64", "d=64"]

    fig = figures._learners_figure(nc, few, groups)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == [
        "5-way 1-shot against cdnv",
        "5-way 1-shot against nc1_quotient",
        "20-way 5-shot against cdnv",
        "20-way 5-shot against nc1_quotient",
    ]
    ax = fig.axes[0]
    markers = {g.marker for g in groups.values()}
    points = {
        ln.get_color(): (ln.get_xdata()[0], ln.get_ydata()[0]) for ln in ax.get_lines() if ln.get_marker() in markers
    }
    assert len(points) == len(groups)
    final = nc[(nc["probe"] == "test_classes") & (nc["metric"] == "cdnv") & (nc["epoch"] == 3)]
    key = "protonet · conv4 w32"
    x, y = points[groups[key].color]
    assert x == pytest.approx(final.loc[final["group"] == key, "mean"].mean(), rel=1e-12)
    acc = few[(few["group"] == key) & (few["n_way"] == 5) & (few["n_shot"] == 1)]["accuracy"]
    assert y == pytest.approx(100 * acc.mean(), rel=1e-12)


# -------------------------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize(
    ("which", "column"), [(0, "null"), (0, "bn_mode"), (1, "val_acc"), (1, "n_params"), (2, "seed")]
)
def test_missing_column_names_file_and_column(tmp_path: Path, which: int, column: str) -> None:
    inputs = _inputs(tmp_path)
    pd.read_csv(inputs[which]).drop(columns=[column]).to_csv(inputs[which], index=False)
    with pytest.raises(FigureInputError, match=rf"{re.escape(str(inputs[which]))}.*'{column}'"):
        make_figures(*inputs, tmp_path / "out")
    assert not (tmp_path / "out").exists(), "nothing may be written when an input is malformed"


def test_bad_values_and_unreadable_files_are_named(tmp_path: Path) -> None:
    inputs = _inputs(tmp_path)
    few = pd.read_csv(inputs[2])
    few["accuracy"] = few["accuracy"].astype(str)
    few.loc[2, "accuracy"] = "high"
    few.to_csv(inputs[2], index=False)
    with pytest.raises(FigureInputError, match=rf"{re.escape(str(inputs[2]))}.*'accuracy'.*'high'.*line 4"):
        make_figures(*inputs, tmp_path / "out")
    inputs = _inputs(tmp_path / "b")
    with pytest.raises(FigureInputError, match=r"nope\.csv.*not found"):
        make_figures(inputs[0], tmp_path / "nope.csv", inputs[2], tmp_path / "out")
    with pytest.raises(FigureInputError, match=rf"{re.escape(str(tmp_path))}.*not found"):
        make_figures(tmp_path, *inputs[1:], tmp_path / "out")  # a folder is not a table
    inputs[1].write_bytes(b"run,epoch\n\xff\xfe\x00bad\n")
    with pytest.raises(FigureInputError, match=rf"{re.escape(str(inputs[1]))}.*(readable|missing)"):
        make_figures(*inputs, tmp_path / "out")
    inputs[0].write_text("")
    with pytest.raises(FigureInputError, match=r"nc_metrics\.csv.*empty"):
        make_figures(*inputs, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_duplicates_and_conflicting_run_identities_are_rejected(tmp_path: Path) -> None:
    inputs = _inputs(tmp_path)
    df = pd.read_csv(inputs[0])
    pd.concat([df, df.iloc[[0]]]).to_csv(inputs[0], index=False)
    with pytest.raises(FigureInputError, match=r"nc_metrics\.csv.*duplicate"):
        make_figures(*inputs, tmp_path / "out")
    inputs = _inputs(tmp_path / "b")
    few = pd.read_csv(inputs[2])
    few.loc[0, "seed"] = 7
    few.to_csv(inputs[2], index=False)
    with pytest.raises(FigureInputError, match=r"fewshot_accuracy\.csv.*run 'protonet-resnet18-s0'"):
        make_figures(*inputs, tmp_path / "out")


# ---------------------------------------------------------------------------------------------- captions


def _captions() -> dict[str, str]:
    return {p.stem: p.read_text(encoding="utf-8") for p in sorted((REPO / "workflow" / "report").glob("*.rst"))}


def test_a_caption_exists_for_every_figure_and_none_for_others() -> None:
    captions = _captions()
    assert set(FIGURE_NAMES) | {"workflow"} <= set(captions), "missing captions"
    # metric captions may exist ahead of the metric (every metric the figures know how to name)
    assert set(captions) <= set(FIGURE_NAMES) | set(METRIC_INFO) | {"workflow"}, "captions of no figure"
    for name, text in captions.items():
        sentences = [s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s]
        assert len(sentences) >= 2, f"{name}.rst is too short"
        assert "{{" not in text, f"{name}.rst would be read as a Jinja template"
    for name in NC_METRICS:
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
