"""Few-shot accuracy of a trained backbone on novel classes (the `test` split).

For each (n_way, n_shot) setting, a fixed set of episodes is drawn from its own seed on the CPU, so every backbone
and every device is scored on the same episodes. The 95% confidence interval is the normal one over episodes:
1.96 * std(ddof=1) / sqrt(episodes), as in the original Prototypical Networks evaluation.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from metacollapse.atomic import atomic_path
from metacollapse.episodes import EpisodeSpec, check_spec, fixed_episode_indices, gather_episode
from metacollapse.protonet import embed_episode, episode_loss

EVAL_COLUMNS = ["backbone", "n_way", "n_shot", "n_query", "episodes", "accuracy", "ci95"]


@torch.no_grad()
def fewshot_accuracy(
    model: torch.nn.Module, split: torch.Tensor, spec: EpisodeSpec, episodes: int, seed: int
) -> tuple[float, float]:
    """Mean accuracy over ``episodes`` fixed episodes and the half-width of its 95% confidence interval."""
    model.eval()
    check_spec(spec, split.shape[0], split.shape[1], "evaluation")
    indices = fixed_episode_indices(split.shape[0], split.shape[1], spec, episodes, seed)
    accuracies = torch.empty(episodes, dtype=torch.float64)
    for episode in range(episodes):
        support, query = gather_episode(split, indices[episode], spec)
        s, q = embed_episode(model, support, query)
        accuracies[episode] = episode_loss(s.float(), q.float(), spec.n_way)[1].double().cpu()
    std = float(accuracies.std(unbiased=True)) if episodes > 1 else math.nan
    return float(accuracies.mean()), 1.96 * std / math.sqrt(episodes)


def evaluate(
    model: torch.nn.Module,
    split: torch.Tensor,
    settings: Sequence[Mapping[str, int]],
    n_query: int,
    episodes: int,
    seed: int,
    backbone: str,
) -> pd.DataFrame:
    """One row per setting ``{"n_way", "n_shot"}``; each setting has its own episode seed (``seed + i``)."""
    rows: list[dict[str, Any]] = []
    for i, setting in enumerate(settings):
        spec = EpisodeSpec(int(setting["n_way"]), int(setting["n_shot"]), n_query)
        accuracy, ci95 = fewshot_accuracy(model, split, spec, episodes, seed + i)
        rows.append(
            {
                "backbone": backbone,
                "n_way": spec.n_way,
                "n_shot": spec.n_support,
                "n_query": n_query,
                "episodes": episodes,
                "accuracy": accuracy,
                "ci95": ci95,
            }
        )
    return pd.DataFrame(rows, columns=EVAL_COLUMNS)


def write_csv(frame: pd.DataFrame, out: Path) -> None:
    with atomic_path(out) as tmp:
        frame.to_csv(tmp, index=False, float_format="%.9g")
