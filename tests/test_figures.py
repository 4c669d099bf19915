"""Tests of metacollapse.figures on synthetic tables (no training, no GPU)."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest
from matplotlib.container import BarContainer

from metacollapse.figures import (
    FIGURE_NAMES,
    NC_METRICS,
    FigureInputError,
    make_figures,
    use_log_scale,
)

REPO = Path(__file__).resolve().parents[1]
BACKBONES = ("resnet18", "conv4", "conv4_w128")  # deliberately not alphabetical: order of appearance wins
EPOCHS = 5
EPISODIC = ("train_episodes", "val_episodes")
CLASSES = ("train_classes", "test_classes")
GEOMETRY = [m for m in NC_METRICS if m not in ("nc3", "nc4")]


def _nc_table(backbones: tuple[str, ...] = BACKBONES) -> pd.DataFrame:
    """Long NC table with decaying values; nc1 spans several decades, nc2_equinorm less than one."""
    rows = []
    for b_i, backbone in enumerate(backbones):
        for epoch in range(1, EPOCHS + 1):
            for probe in (*EPISODIC, *CLASSES):
                episodic = probe in EPISODIC
                for metric in NC_METRICS:
                    sets = (
                        ("protonet",) if metric in ("nc3", "nc4") else (("support", "query") if episodic else ("all",))
                    )
                    for s_i, set_name in enumerate(sets):
                        decay = 10.0 if metric in ("nc1", "cdnv") else 1.3
                        mean = (1.0 + 0.3 * b_i + 0.2 * s_i) * decay ** (-(epoch - 1))
                        if metric == "nc4" and epoch == EPOCHS and b_i == 0 and not episodic:
                            mean = 0.0  # perfect agreement: must not break the log-scale summary
                        std = 0.2 * mean if episodic else np.nan
                        rows.append((backbone, epoch, probe, set_name, metric, mean, std))
    return pd.DataFrame(rows, columns=["backbone", "epoch", "probe", "set", "metric", "mean", "std"])


def _write_inputs(root: Path, backbones: tuple[str, ...] = BACKBONES) -> tuple[Path, list[Path], list[Path]]:
    nc_csv = root / "results" / "nc_metrics.csv"
    nc_csv.parent.mkdir(parents=True)
    _nc_table(backbones).to_csv(nc_csv, index=False)
    logs, shots = [], []
    for b_i, backbone in enumerate(backbones):
        folder = root / "results" / backbone
        folder.mkdir()
        epochs = np.arange(1, EPOCHS + 1)
        pd.DataFrame(
            {
                "epoch": epochs,
                "train_loss": 2.0 / epochs + 0.1 * b_i,
                "train_acc": 1 - 0.5 / epochs,
                "val_loss": 2.2 / epochs + 0.1 * b_i,
                "val_acc": 1 - 0.6 / epochs - 0.01 * b_i,
                "lr": 1e-3,
                "seconds": 10.0,
                "episodes_per_s": 50.0,
            }
        ).to_csv(folder / "train_log.csv", index=False)
        logs.append(folder / "train_log.csv")
        few = [
            (backbone, w, s, 15, 600, 0.99 - 0.02 * (w == 20) - 0.02 * (s == 1) - 0.005 * b_i, 0.003)
            for w in (5, 20)
            for s in (1, 5)
        ]
        pd.DataFrame(few, columns=["backbone", "n_way", "n_shot", "n_query", "episodes", "accuracy", "ci95"]).to_csv(
            folder / "fewshot_accuracy.csv", index=False
        )
        shots.append(folder / "fewshot_accuracy.csv")
    return nc_csv, logs, shots


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path], tuple]:
    root = tmp_path_factory.mktemp("figs")
    inputs = _write_inputs(root)
    out = root / "results" / "figures"
    return out, make_figures(*inputs, out), inputs


def test_figure_names_cover_every_metric_plus_training_and_summary() -> None:
    assert set(NC_METRICS) <= set(FIGURE_NAMES)
    assert {"training", "summary"} <= set(FIGURE_NAMES)
    assert len(set(FIGURE_NAMES)) == len(FIGURE_NAMES) == len(NC_METRICS) + 2


def test_every_figure_is_written_as_valid_png_and_pdf(generated) -> None:
    out, written, _ = generated
    expected = [out / f"{n}.{ext}" for n in FIGURE_NAMES for ext in ("png", "pdf")]
    assert written == expected
    for name in FIGURE_NAMES:
        img = mpimg.imread(out / f"{name}.png")
        assert img.ndim == 3 and img.shape[0] > 400 and img.shape[1] > 600, (name, img.shape)
        assert float(np.std(img)) > 0.01, f"{name}.png looks blank"
        pdf = (out / f"{name}.pdf").read_bytes()
        assert pdf.startswith(b"%PDF-") and pdf.rstrip().endswith(b"%%EOF"), name
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "temporary files left behind"


def test_png_dpi_is_150(generated) -> None:
    from PIL import Image

    out, _, _ = generated
    with Image.open(out / "nc1.png") as im:
        assert round(im.info["dpi"][0]) == 150


def test_output_is_byte_identical_on_a_second_run(generated, tmp_path: Path) -> None:
    out, _, inputs = generated
    again = make_figures(*inputs, tmp_path / "again")
    for path in again:
        assert path.read_bytes() == (out / path.name).read_bytes(), f"{path.name} differs between runs"


def test_pdf_and_png_carry_no_version_or_date(generated) -> None:
    out, _, _ = generated
    pdf = (out / "nc1.pdf").read_bytes()
    assert b"CreationDate" not in pdf and b"matplotlib.org" not in pdf.lower()
    assert b"Software" not in (out / "nc1.png").read_bytes()


def test_a_caption_exists_for_every_figure() -> None:
    report = REPO / "workflow" / "report"
    for name in (*FIGURE_NAMES, "workflow"):
        caption = report / f"{name}.rst"
        assert caption.is_file(), f"missing caption {caption}"
        text = caption.read_text(encoding="utf-8").strip()
        sentences = [s for s in re.split(r"(?<=[.!?])\s+", text) if s]
        assert len(sentences) >= 2, f"{caption} is too short"
        assert "{{" not in text, f"{caption} would be read as a Jinja template"


def test_every_caption_is_valid_restructuredtext() -> None:
    # Snakemake renders captions with docutils; a stray |x| (a substitution reference) prints an error in the
    # report instead of the text.
    from docutils.core import publish_doctree
    from docutils.utils import SystemMessage

    for caption in sorted((REPO / "workflow" / "report").glob("*.rst")):
        try:
            publish_doctree(
                caption.read_text(encoding="utf-8"), settings_overrides={"halt_level": 2, "report_level": 5}
            )
        except SystemMessage as error:
            raise AssertionError(f"{caption.name}: {error}") from error


def test_backbones_come_from_the_data(tmp_path: Path) -> None:
    """Any backbone names work, including a single backbone and names that no code knows."""
    inputs = _write_inputs(tmp_path, ("tiny_net",))
    written = make_figures(*inputs, tmp_path / "out")
    assert len(written) == 2 * len(FIGURE_NAMES)


def test_missing_column_error_names_file_and_column(tmp_path: Path) -> None:
    nc_csv, logs, shots = _write_inputs(tmp_path)
    pd.read_csv(nc_csv).drop(columns=["metric"]).to_csv(nc_csv, index=False)
    with pytest.raises(FigureInputError, match=r"nc_metrics\.csv.*'metric'"):
        make_figures(nc_csv, logs, shots, tmp_path / "out")
    assert not (tmp_path / "out").exists(), "nothing may be written when an input is malformed"


def test_malformed_train_log_and_fewshot_name_file_and_column(tmp_path: Path) -> None:
    nc_csv, logs, shots = _write_inputs(tmp_path)
    log = pd.read_csv(logs[1]).drop(columns=["val_acc"])
    log.to_csv(logs[1], index=False)
    with pytest.raises(FigureInputError, match=rf"{re.escape(str(logs[1]))}.*'val_acc'"):
        make_figures(nc_csv, logs, shots, tmp_path / "out")
    _write_inputs(tmp_path / "b")
    nc_csv, logs, shots = _write_inputs(tmp_path / "c")
    few = pd.read_csv(shots[0])
    few["accuracy"] = few["accuracy"].astype(str)
    few.loc[2, "accuracy"] = "high"
    few.to_csv(shots[0], index=False)
    with pytest.raises(FigureInputError, match=rf"{re.escape(str(shots[0]))}.*'accuracy'.*'high'"):
        make_figures(nc_csv, logs, shots, tmp_path / "out")


def test_missing_and_empty_inputs_are_named(tmp_path: Path) -> None:
    nc_csv, logs, shots = _write_inputs(tmp_path)
    with pytest.raises(FigureInputError, match="nope.csv"):
        make_figures(tmp_path / "nope.csv", logs, shots, tmp_path / "out")
    nc_csv.write_text("")
    with pytest.raises(FigureInputError, match=r"nc_metrics\.csv.*empty"):
        make_figures(nc_csv, logs, shots, tmp_path / "out")


def test_duplicate_nc_rows_are_rejected(tmp_path: Path) -> None:
    nc_csv, logs, shots = _write_inputs(tmp_path)
    df = pd.read_csv(nc_csv)
    pd.concat([df, df.iloc[[0]]]).to_csv(nc_csv, index=False)
    with pytest.raises(FigureInputError, match="duplicate"):
        make_figures(nc_csv, logs, shots, tmp_path / "out")


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


def test_log_scale_is_applied_per_panel(generated) -> None:
    """nc1 spans four decades (log axis), nc2_equinorm about one (linear); check the axes that were drawn."""
    from metacollapse import figures

    nc = figures.read_nc_metrics(generated[2][0])
    colors = figures._colors(["resnet18", "conv4", "conv4_w128"])
    fig = figures._nc_metric_figure(nc, "nc1", list(colors), colors)
    assert [ax.get_yscale() for ax in fig.axes if ax.get_visible()] == ["log"] * 4
    fig = figures._nc_metric_figure(nc, "nc2_equinorm", list(colors), colors)
    assert [ax.get_yscale() for ax in fig.axes if ax.get_visible()] == ["linear"] * 4
    # nc4 has an exact 0 on the class probes: those panels must stay linear
    fig = figures._nc_metric_figure(nc, "nc4", list(colors), colors)
    scales = {ax.get_title(): ax.get_yscale() for ax in fig.axes if ax.get_visible()}
    assert scales[figures.PROBE_TITLES["train_classes"]] == "linear"


def test_backbone_order_is_order_of_appearance(generated) -> None:
    from metacollapse import figures

    nc_csv, logs, shots = generated[2]
    nc = figures.read_nc_metrics(nc_csv)
    train = figures.read_train_logs(logs)
    few = figures.read_fewshot(shots)
    assert figures.backbone_order(nc, train, few) == list(BACKBONES)
    # a backbone that only has a training log comes after those of the NC table
    extra = train[train["backbone"] == "conv4"].assign(backbone="vit_tiny")
    order = figures.backbone_order(nc, pd.concat([extra, train]), few)
    assert order == [*BACKBONES, "vit_tiny"]
    colors = figures._colors(order)
    assert colors["resnet18"] == "C0" and colors["vit_tiny"] == "C3"
    fig = figures._nc_metric_figure(nc, "nc1", order, colors)
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert [lab for lab in labels if lab in order] == list(BACKBONES)  # vit_tiny has no NC rows: no entry


def test_summary_shows_the_papers_per_episode_nc1_and_nc2_at_each_final_epoch(generated) -> None:
    from metacollapse import figures

    nc_csv, logs, shots = generated[2]
    nc = figures.read_nc_metrics(nc_csv)
    nc = nc[~((nc["backbone"] == "conv4") & (nc["epoch"] == EPOCHS))]  # conv4 stops one epoch early
    backbones = list(BACKBONES)
    fig = figures._summary_figure(nc, figures.read_fewshot(shots), backbones, figures._colors(backbones))
    ax = next(a for a in fig.axes if a.get_title().startswith("The paper's measurement"))
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels == ["NC1 support", "NC1 query", "NC2 ETF support", "NC2 ETF query"] * 2
    assert ax.get_yscale() == "log"
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["resnet18 (epoch 5)", "conv4 (epoch 4)", "conv4_w128 (epoch 5)"]
    # bar heights are the final-epoch means, in group order (probe, metric, set), one container per backbone
    bars = [c for c in ax.containers if isinstance(c, BarContainer)]
    assert len(bars) == len(backbones)
    for container, backbone in zip(bars, backbones, strict=True):
        heights = [bar.get_height() for bar in container.patches]
        rows = nc[nc["backbone"] == backbone]
        final = rows[rows["epoch"] == rows["epoch"].max()].set_index(["probe", "metric", "set"])["mean"]
        expected = [
            final[(p, m, s)] for p in EPISODIC for m in ("nc1", "nc2_etf_rownorm") for s in ("support", "query")
        ]
        np.testing.assert_allclose(heights, expected, rtol=1e-12)


def test_std_bands_never_reach_below_zero(generated) -> None:
    from matplotlib.collections import PolyCollection

    from metacollapse import figures

    nc = figures.read_nc_metrics(generated[2][0])
    nc["std"] = 3.0 * nc["mean"]  # a heavy-tailed spread over episodes: mean - std < 0
    colors = figures._colors(list(BACKBONES))
    fig = figures._nc_metric_figure(nc, "nc2_equinorm", list(BACKBONES), colors)  # linear axes
    bands = [c for ax in fig.axes for c in ax.collections if isinstance(c, PolyCollection)]
    assert bands, "episodic panels draw a std band"
    assert min(path.vertices[:, 1].min() for band in bands for path in band.get_paths()) >= 0.0
