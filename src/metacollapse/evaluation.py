"""Few-shot accuracy on novel classes: the evaluation stage, and the scoring loop validation shares with it.

For each (n_way, n_shot) setting, a fixed set of episodes is drawn from its own seed on the CPU, so every run and
every device is scored on the same episodes. Each learner classifies by its own few-shot rule
(:meth:`metacollapse.learners.Learner.fewshot`). The 95% confidence interval is the normal one over episodes,
1.96 * std(ddof=1) / sqrt(episodes), as in the original Prototypical Networks evaluation.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from metacollapse.atomic import atomic_path
from metacollapse.checkpoints import load_learner
from metacollapse.device import Runtime
from metacollapse.episodes import (
    EpisodeSpec,
    check_spec,
    fixed_episode_indices,
    load_device_split,
    score_episodes,
)
from metacollapse.runs import run_columns
from metacollapse.schemas import FEWSHOT_COLUMNS

log = logging.getLogger(__name__)


def evaluate(
    learner: torch.nn.Module, split: torch.Tensor, params: Mapping[str, Any], spec: Mapping[str, Any], split_name: str
) -> pd.DataFrame:
    """One row per setting of ``params`` (settings, n_query, episodes, seed); setting i uses seed ``seed + i``."""
    rows: list[dict[str, Any]] = []
    n_query, episodes = int(params["n_query"]), int(params["episodes"])
    for i, setting in enumerate(params["settings"]):
        episode = EpisodeSpec(int(setting["n_way"]), int(setting["n_shot"]), n_query)
        what = f"run {spec['name']}: {split_name} {episode.n_way}-way {episode.n_support}-shot"
        check_spec(episode, split.shape[0], split.shape[1], what)
        seed = int(params["seed"]) + i
        indices = fixed_episode_indices(split.shape[0], split.shape[1], episode, episodes, seed).to(split.device)
        accuracies = score_episodes(learner, split, episode, indices, what)[1].double().cpu()
        std = float(accuracies.std(unbiased=True)) if episodes > 1 else math.nan
        row = {
            **run_columns(spec),
            "split": split_name,
            "n_way": episode.n_way,
            "n_shot": episode.n_support,
            "n_query": n_query,
            "episodes": episodes,
            "accuracy": float(accuracies.mean()),
            "ci95": 1.96 * std / math.sqrt(episodes),
        }
        log.info("%s: accuracy %.4f ± %.4f", what, row["accuracy"], row["ci95"])
        rows.append(row)
    return pd.DataFrame(rows, columns=list(FEWSHOT_COLUMNS))


def evaluation_blocks(params: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The config's ``evaluate`` section as blocks of one split each: the novel classes, then the far domain
    (``far``, whose missing keys are the section's own)."""
    main = {k: v for k, v in params.items() if k != "far"}
    far = params.get("far")
    return [main] + ([{**main, **far}] if far else [])


def evaluate_run(
    spec: Mapping[str, Any],
    checkpoint: Path,
    data_dir: Path,
    out: Path,
    params: Mapping[str, Any],
    runtime: Runtime,
) -> pd.DataFrame:
    """The evaluation stage: few-shot accuracy of run ``spec``'s final checkpoint, written to ``out``."""
    learner, _ = load_learner(checkpoint, spec, runtime, epoch=int(spec["train"]["epochs"]))
    frames = []
    for block in evaluation_blocks(params):
        split = load_device_split(data_dir, block["split"], runtime.device)
        frames.append(evaluate(learner, split, block, spec, block["split"]))
    frame = pd.concat(frames, ignore_index=True)
    with atomic_path(out) as tmp:
        frame.to_csv(tmp, index=False, float_format="%.9g")
    return frame
