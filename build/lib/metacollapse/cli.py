"""The ``metacollapse`` command line: one subcommand per pipeline stage.

Snakemake rules call these; each takes explicit paths and parameters (no hidden global config), writes its
outputs atomically, logs to stderr, and reports bad input as one clear line (exit status 2) instead of a traceback.
Heavy imports (torch, matplotlib) happen inside the subcommand that needs them, so ``--help`` stays instant.
"""

from __future__ import annotations

import argparse
import json
import logging
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
    from metacollapse.data import download_omniglot

    for path in download_omniglot(args.out_dir, args.mirror or None):
        log.info("verified %s", path)


def cmd_prepare(args: argparse.Namespace) -> None:
    from metacollapse.data import prepare_splits

    for split, path in prepare_splits(args.raw_dir, args.splits_dir, args.out_dir, args.splits).items():
        log.info("wrote %s (%s)", path, split)


def cmd_data_info(args: argparse.Namespace) -> None:
    from metacollapse.data import data_info

    print(json.dumps(data_info(args.processed_dir), indent=2, sort_keys=True))


def cmd_train(args: argparse.Namespace) -> None:
    from metacollapse.training import TrainParams, set_threads, train

    set_threads(args.threads)
    frame = train(TrainParams.from_dict(args.params), args.data_dir, args.out_dir, args.device, args.progress)
    log.info("final epoch: %s", frame.iloc[-1].to_dict())


def cmd_evaluate(args: argparse.Namespace) -> None:
    from metacollapse.data import load_split
    from metacollapse.episodes import split_to_device
    from metacollapse.evaluation import evaluate, write_csv
    from metacollapse.training import load_model, resolve_device, set_threads

    set_threads(args.threads)
    device = resolve_device(args.device)
    model, _ = load_model(args.checkpoint, device)
    p = args.params
    split = split_to_device(load_split(args.data_dir, p["split"])[0], device)
    frame = evaluate(model, split, p["settings"], int(p["n_query"]), int(p["episodes"]), int(p["seed"]), args.backbone)
    write_csv(frame, args.out)
    log.info("few-shot accuracy:\n%s", frame.to_string(index=False))


def cmd_make_probes(args: argparse.Namespace) -> None:
    from metacollapse.features import make_probes

    make_probes(args.params["probes"], int(args.params["seed"]), args.data_dir, args.out)


def cmd_dump_features(args: argparse.Namespace) -> None:
    from metacollapse.features import dump_features
    from metacollapse.training import set_threads

    set_threads(args.threads)
    dump_features(args.checkpoint, args.probes, args.data_dir, args.out, args.backbone, args.device, args.bn_mode)


def cmd_nc(args: argparse.Namespace) -> None:
    from metacollapse.nc import nc_table_for_file

    nc_table_for_file(args.features, args.out)


def cmd_aggregate_nc(args: argparse.Namespace) -> None:
    import pandas as pd

    from metacollapse.atomic import atomic_path

    frames = [pd.read_csv(path) for path in args.inputs]
    table = pd.concat(frames, ignore_index=True).sort_values(["backbone", "epoch", "probe", "set", "metric"])
    with atomic_path(args.out) as tmp:
        table.to_csv(tmp, index=False, float_format="%.9g")


def cmd_figures(args: argparse.Namespace) -> None:
    from metacollapse.figures import make_figures

    for path in make_figures(args.nc, args.train_logs, args.fewshot, args.out_dir):
        log.info("wrote %s", path)


def cmd_dvc_yaml(args: argparse.Namespace) -> None:
    from metacollapse.dvc import check_dvc_yaml, write_dvc_yaml

    if args.check:
        check_dvc_yaml(args.out, args.config)
        log.info("%s is current", args.out)
    else:
        log.info("wrote %s", write_dvc_yaml(args.out, args.config))


def cmd_dvc_summary(args: argparse.Namespace) -> None:
    from metacollapse.dvc import write_metrics_summary

    for path in write_metrics_summary(args.nc, args.fewshot, args.train_logs, args.metrics, args.plots_dir):
        log.info("wrote %s", path)


def cmd_dvc_settle(args: argparse.Namespace) -> None:
    from metacollapse.dvc import repair, settle

    if args.repair:
        for path in repair(jobs=args.jobs):
            log.warning("removed %s", path)
        return
    settle(verify=not args.no_verify, force=args.force, jobs=args.jobs)


def cmd_dvc_pull(args: argparse.Namespace) -> None:
    from metacollapse.dvc import pull

    pull(targets=args.targets, remote=args.remote, jobs=args.jobs, verify=not args.no_verify)


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
        p.add_argument("--threads", type=int, default=None, help="torch CPU threads")

    p = add("download", cmd_download, "Fetch and verify the two Omniglot zips.")
    p.add_argument("--out-dir", type=Path, required=True)
    p.add_argument("--mirror", default=None, help="folder or URL prefix holding the zips and SHA256SUMS")

    p = add("prepare", cmd_prepare, "Render the Vinyals splits to uint8 arrays [classes, 20, 28, 28].")
    p.add_argument("--raw-dir", type=Path, required=True)
    p.add_argument("--splits-dir", type=Path, required=True)
    p.add_argument("--out-dir", type=Path, required=True)
    p.add_argument("--splits", nargs="+", default=["train", "val", "trainval", "test"])

    p = add("data-info", cmd_data_info, "Print JSON with classes, images per class and image shape per split.")
    p.add_argument("processed_dir", type=Path)

    p = add("train", cmd_train, "Train (or resume) one backbone; a checkpoint per epoch.")
    p.add_argument("--backbone", required=True)
    p.add_argument("--params", type=_json_arg, required=True, help='JSON: {"backbone", "seed", "train", "val"}')
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--out-dir", type=Path, required=True)
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None, help="progress bar")
    compute_options(p)

    p = add("evaluate", cmd_evaluate, "Few-shot accuracy of a checkpoint on novel classes.")
    p.add_argument("--backbone", required=True)
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--params", type=_json_arg, required=True)
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    compute_options(p)

    p = add("make-probes", cmd_make_probes, "Draw the fixed probe sets once per run.")
    p.add_argument("--params", type=_json_arg, required=True, help='JSON: {"seed", "probes"}')
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)

    p = add("dump-features", cmd_dump_features, "Embed every probe image with one epoch's checkpoint.")
    p.add_argument("--backbone", required=True)
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--probes", type=Path, required=True)
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--bn-mode", choices=["eval", "train"], default="eval")
    compute_options(p)

    p = add("nc", cmd_nc, "Neural-collapse metrics of one feature dump (long CSV).")
    p.add_argument("--features", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)

    p = add("aggregate-nc", cmd_aggregate_nc, "Concatenate per-epoch NC tables into one long CSV.")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("inputs", type=Path, nargs="+")

    p = add("figures", cmd_figures, "Draw the NC and training figures (PNG and PDF).")
    p.add_argument("--nc", type=Path, required=True)
    p.add_argument("--train-logs", type=Path, nargs="+", required=True)
    p.add_argument("--fewshot", type=Path, nargs="+", required=True)
    p.add_argument("--out-dir", type=Path, required=True)

    p = add("dvc-yaml", cmd_dvc_yaml, "Write dvc.yaml from the config (or, with --check, fail if it is stale).")
    p.add_argument("--config", type=Path, default=Path("config/config.yaml"))
    p.add_argument("--out", type=Path, default=Path("dvc.yaml"))
    p.add_argument("--check", action="store_true", help="compare instead of writing; exit status 2 if they differ")

    p = add("dvc-summary", cmd_dvc_summary, "Write the DVC metrics (JSON) and plot tables from the pipeline tables.")
    p.add_argument("--nc", type=Path, required=True)
    p.add_argument("--train-logs", type=Path, nargs="+", required=True)
    p.add_argument("--fewshot", type=Path, nargs="+", required=True)
    p.add_argument("--metrics", type=Path, required=True)
    p.add_argument("--plots-dir", type=Path, required=True)

    p = add(
        "dvc-settle",
        cmd_dvc_settle,
        "After dvc pull/checkout/commit: verify outputs against dvc.lock, then make Snakemake see them up to date.",
    )
    p.add_argument("--no-verify", action="store_true", help="skip re-hashing the outputs")
    p.add_argument("--force", action="store_true", help="touch even if `dvc status` is not clean")
    p.add_argument("--repair", action="store_true", help="delete corrupted cache objects and their checkouts")
    p.add_argument("--jobs", type=int, default=None, help="parallel hashing / transfer jobs")

    p = add("dvc-pull", cmd_dvc_pull, "dvc pull, then dvc-settle (verify, touch, Snakemake metadata).")
    p.add_argument("targets", nargs="*", help="stages or paths (default: everything; a partial pull is not settled)")
    p.add_argument("--remote", default=None)
    p.add_argument("--no-verify", action="store_true", help="skip re-hashing the outputs")
    p.add_argument("--jobs", type=int, default=None, help="parallel hashing / transfer jobs")
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
