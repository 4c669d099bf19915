"""The ``metacollapse`` command line: one subcommand per pipeline stage; it only parses and calls the stage.

Snakemake rules call these; each takes explicit paths and parameters (no hidden global config), and bad input is
reported as one clear line (exit status 2) instead of a traceback (``-v`` shows it). Heavy imports happen inside
the subcommand that needs them, so ``--help`` stays instant.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger("metacollapse")


def _json_arg(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise argparse.ArgumentTypeError(f"not valid JSON ({error}): {text[:200]}") from error
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {text[:200]}")
    return value


def cmd_download(args: argparse.Namespace) -> None:
    from metacollapse import download

    if args.list_unverified:
        for path in download.unverified_files(args.out_dir, args.mirror, args.dataset):
            print(path)
        return
    fetch = {"omniglot": download.download_omniglot, "fashion": download.download_fashion}[args.dataset]
    for path in fetch(args.out_dir, args.mirror):
        log.info("verified %s", path)


def cmd_make_mirror(args: argparse.Namespace) -> None:
    from metacollapse.download import make_mirror

    log.info("wrote %s", make_mirror(args.files_dir, args.mirror_dir, args.dataset))


def cmd_prepare(args: argparse.Namespace) -> None:
    from metacollapse.data import prepare_splits

    for split, path in prepare_splits(args.raw_dir, args.splits_dir, args.out_dir, args.splits).items():
        log.info("wrote %s (%s)", path, split)


def cmd_prepare_fashion(args: argparse.Namespace) -> None:
    from metacollapse.data import prepare_fashion

    for split, path in prepare_fashion(args.raw_dir, args.out_dir).items():
        log.info("wrote %s (%s)", path, split)


def cmd_data_info(args: argparse.Namespace) -> None:
    from metacollapse.data import data_info

    print(json.dumps(data_info(args.processed_dir), indent=2, sort_keys=True))


def _runtime(args: argparse.Namespace):
    """The runtime of a torch stage, decided once from its options and the run's backbone."""
    from metacollapse.device import setup

    arch = args.spec["backbone"].get("arch") if isinstance(args.spec.get("backbone"), dict) else None
    deterministic, compile = getattr(args, "deterministic", False), getattr(args, "compile", "auto")
    return setup(
        args.device, args.precision, arch=arch, threads=args.threads, deterministic=deterministic, compile=compile
    )


def cmd_train(args: argparse.Namespace) -> None:
    from metacollapse.training import train

    train(args.spec, args.data_dir, args.out_dir, _runtime(args), args.code_version)


def cmd_evaluate(args: argparse.Namespace) -> None:
    from metacollapse.evaluation import evaluate_run

    evaluate_run(args.spec, args.checkpoint, args.data_dir, args.out, args.params, _runtime(args))


def cmd_make_probes(args: argparse.Namespace) -> None:
    from metacollapse.probes import make_probes

    make_probes(args.params["probes"], int(args.params["seed"]), args.data_dir, args.out)


def cmd_features(args: argparse.Namespace) -> None:
    from metacollapse.features import features_stage

    features_stage(
        args.spec,
        args.checkpoints,
        args.probes,
        args.data_dir,
        args.out,
        _runtime(args),
        layers=args.layers,
        feature_precision=args.feature_precision,
    )


def cmd_nc(args: argparse.Namespace) -> None:
    # The NC stage is thousands of small eigendecompositions: a multi-threaded BLAS only adds overhead (up to 10x).
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    from metacollapse.nc_table import BOOTSTRAP_REPLICATES, nc_tables_for_run

    bootstrap = BOOTSTRAP_REPLICATES if args.bootstrap is None else args.bootstrap
    nc_tables_for_run(args.features, args.out, bootstrap=bootstrap)


def cmd_aggregate(args: argparse.Namespace) -> None:
    from metacollapse.tables import concat_tables

    concat_tables(args.kind, args.inputs, args.out)


def cmd_runs_table(args: argparse.Namespace) -> None:
    from metacollapse.tables import write_runs_table

    text = args.specs
    if text.startswith("@"):
        text = Path(text[1:]).read_text(encoding="utf-8")
    try:
        specs = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"--specs: not valid JSON ({error}): {text[:200]}") from error
    write_runs_table(specs, args.out)
    log.info("wrote %s (%d runs)", args.out, len(specs))


def cmd_figures(args: argparse.Namespace) -> None:
    from metacollapse.figures import make_figures

    for path in make_figures(args.nc, args.train_log, args.fewshot, args.out_dir, args.runs):
        log.info("wrote %s", path)


def cmd_dvc_metrics(args: argparse.Namespace) -> None:
    from metacollapse.tables import write_dvc_metrics

    write_dvc_metrics(args.train_log, args.fewshot, args.metrics, args.plots_dir)


def cmd_estimate(args: argparse.Namespace) -> None:
    from metacollapse.estimate import estimate

    text = args.plan if args.plan is not None else os.environ.get("METACOLLAPSE_PLAN", "")
    warning = estimate(_json_arg(text), budget_s=args.budget) if text else None
    if warning:
        print(warning, file=sys.stderr)


def cmd_plan(args: argparse.Namespace) -> None:
    from metacollapse.plan import plan

    request = json.loads(args.plan if args.plan is not None else sys.stdin.read())
    try:
        result = plan(request, refuse_device=not args.report_device_error)
    except (ValueError, RuntimeError) as error:
        for line in str(error).splitlines():  # one line per problem
            print(f"metacollapse plan: error: {line}", file=sys.stderr)
        raise SystemExit(2) from None
    print(json.dumps(result, sort_keys=True))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="metacollapse", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and full tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, func, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(func=func)
        return p

    def compute_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu or cuda[:N]")
        p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"], help="forward-pass arithmetic")
        p.add_argument("--threads", type=int, default=None, help="torch CPU threads")

    spec_help = 'JSON run spec: {"name", "learner", "backbone", "seed", "train", "val"} (metacollapse.runs)'

    datasets = ["omniglot", "fashion"]
    p = add("download", cmd_download, "Fetch and verify the raw files of a dataset (kept if already verified).")
    p.add_argument("--dataset", choices=datasets, default="omniglot")
    p.add_argument("--out-dir", type=Path, required=True)
    p.add_argument(
        "--mirror",
        default=None,
        help="folder or URL prefix with the files and SHA256SUMS (default: $METACOLLAPSE_OMNIGLOT_MIRROR or "
        "$METACOLLAPSE_FASHION_MIRROR, else the official upstream)",
    )
    p.add_argument(
        "--list-unverified",
        action="store_true",
        help="download nothing; print the files in --out-dir that match no known-good or source checksum",
    )

    p = add("make-mirror", cmd_make_mirror, "Make a mirror folder (files + SHA256SUMS) from verified files.")
    p.add_argument("--dataset", choices=datasets, default="omniglot")
    p.add_argument("files_dir", type=Path)
    p.add_argument("mirror_dir", type=Path)

    p = add("prepare", cmd_prepare, "Render the Vinyals splits to uint8 arrays [classes, 20, 28, 28].")
    p.add_argument("--raw-dir", type=Path, required=True)
    p.add_argument("--splits-dir", type=Path, required=True)
    p.add_argument("--out-dir", type=Path, required=True)
    p.add_argument("--splits", nargs="+", default=["train", "val", "trainval", "test"])

    p = add("prepare-fashion", cmd_prepare_fashion, "Fashion-MNIST to fashion_train/fashion_test [10, n, 28, 28].")
    p.add_argument("--raw-dir", type=Path, required=True)
    p.add_argument("--out-dir", type=Path, required=True)

    p = add("data-info", cmd_data_info, "Print JSON with classes, images per class and image shape per split.")
    p.add_argument("processed_dir", type=Path)

    p = add("train", cmd_train, "Train (or resume) one run; weights for every epoch, and the training log.")
    p.add_argument("--spec", type=_json_arg, required=True, help=spec_help)
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--out-dir", type=Path, required=True)
    p.add_argument("--deterministic", action="store_true", help="bitwise-repeatable CUDA kernels")
    p.add_argument(
        "--code-version", default="", help="names the training code in the run's fingerprint (the workflow's digest)"
    )
    p.add_argument(
        "--compile", default="auto", help="how steps run: auto (graph on CUDA), none, graph, reduce-overhead"
    )
    compute_options(p)

    p = add("evaluate", cmd_evaluate, "Few-shot accuracy of a run's final checkpoint on novel classes.")
    p.add_argument("--spec", type=_json_arg, required=True, help=spec_help)
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--params", type=_json_arg, required=True, help="JSON: the config's evaluate section")
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    compute_options(p)

    p = add("make-probes", cmd_make_probes, "Draw the fixed probe sets shared by every run and epoch.")
    p.add_argument("--params", type=_json_arg, required=True, help='JSON: {"seed", "probes"}')
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)

    p = add("features", cmd_features, "Embed every probe image with each listed checkpoint of one run.")
    p.add_argument("--spec", type=_json_arg, required=True, help=spec_help)
    p.add_argument("--checkpoints", type=Path, nargs="+", required=True)
    p.add_argument("--out", type=Path, nargs="+", required=True, help="one feature dump per checkpoint")
    p.add_argument("--probes", type=Path, required=True)
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument(
        "--layers",
        nargs="+",
        default=None,
        help="also dump these blocks' averaged outputs: 'all' or names (conv4: block1..; resnet18: layer1..layer4)",
    )
    p.add_argument(
        "--feature-precision",
        default="fp32",
        choices=["fp32", "train"],
        help="arithmetic of the dumps: fp32 (default), or train: the --precision the run trains in",
    )
    compute_options(p)

    p = add("nc", cmd_nc, "Neural-collapse tables (long CSV) of feature dumps, one per dump.")
    p.add_argument("--features", type=Path, nargs="+", required=True)
    p.add_argument("--out", type=Path, nargs="+", required=True)
    p.add_argument(
        "--bootstrap",
        type=int,
        default=None,
        metavar="N",
        help="bootstrap replicates of the 95%% intervals; 0: NaN intervals (default: nc_table.BOOTSTRAP_REPLICATES)",
    )

    p = add("aggregate", cmd_aggregate, "Concatenate per-run tables of one kind into one CSV.")
    p.add_argument("--kind", required=True, choices=["train_log", "fewshot", "nc"])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("inputs", type=Path, nargs="+")

    p = add("runs-table", cmd_runs_table, "Write the runs table: one row per run, its spec flattened with dots.")
    p.add_argument("--specs", required=True, help="JSON list of run specs, or @FILE holding it")
    p.add_argument("--out", type=Path, required=True)

    p = add("figures", cmd_figures, "Draw the figures (PNG and PDF) from the aggregated tables.")
    p.add_argument("--nc", type=Path, required=True)
    p.add_argument("--train-log", type=Path, required=True)
    p.add_argument("--fewshot", type=Path, required=True)
    p.add_argument("--runs", type=Path, default=None, help="runs table: groups by the spec keys that vary")
    p.add_argument("--out-dir", type=Path, required=True)

    p = add(
        "dvc-metrics", cmd_dvc_metrics, "Headline numbers (JSON per run) and curves (CSV) for dvc metrics and plots."
    )
    p.add_argument("--train-log", type=Path, required=True)
    p.add_argument("--fewshot", type=Path, required=True)
    p.add_argument("--metrics", type=Path, required=True, help="folder: one {run}.json per run")
    p.add_argument("--plots-dir", type=Path, required=True)

    p = add("estimate", cmd_estimate, "On a CPU, estimate the training time of a plan and name the CPU presets.")
    p.add_argument("--plan", default=None, help='JSON {"runs", "device", "precision"} (default: $METACOLLAPSE_PLAN)')
    p.add_argument("--budget", type=float, default=120.0, help="seconds of timing at most (default 120)")

    p = add("plan", cmd_plan, "Check run specs with the registries; print the runtime each run gets here (JSON).")
    p.add_argument(
        "--plan",
        default=None,
        help='JSON {"runs": {name: spec}, "device", "precision", "deterministic", "raw": [{"dataset", "dir", '
        '"mirror"}]} (default: read from stdin)',
    )
    p.add_argument(
        "--report-device-error",
        action="store_true",
        help="a device this machine lacks goes into the JSON (device_error) instead of failing",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if args.verbose:
        args.func(args)
        return 0
    try:
        args.func(args)
    except (ValueError, RuntimeError, OSError, KeyError) as error:
        # Expected failures (bad data, bad checkpoint, bad config) are one readable line; -v shows the traceback.
        print(f"metacollapse {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"metacollapse {args.command}: interrupted; run it again to continue (training resumes)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
