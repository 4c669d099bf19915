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
from metacollapse.episodes import EpisodeIndices, EpisodeSpec, check_spec, fixed_episode_indices, gather_episode
from metacollapse.protonet import bf16_autocast, embed_episode, episode_loss

EVAL_COLUMNS = ["backbone", "n_way", "n_shot", "n_query", "episodes", "accuracy", "ci95"]


@torch.no_grad()
def score_episodes(
    model: torch.nn.Module, split: torch.Tensor, spec: EpisodeSpec, indices: EpisodeIndices, bf16: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-episode loss and accuracy of ``model`` in eval mode over fixed episodes.

    Both are float32 tensors on the split's device; nothing is copied to the host inside the loop.
    """
    model.eval()
    losses = torch.empty(len(indices), device=split.device)
    accuracies = torch.empty(len(indices), device=split.device)
    for episode in range(len(indices)):
        support, query = gather_episode(split, indices[episode], spec)
        with bf16_autocast(split.device, bf16):
            s, q = embed_episode(model, support, query)
        losses[episode], accuracies[episode] = episode_loss(s.float(), q.float(), spec.n_way)
    return losses, accuracies


def fewshot_accuracy(
    model: torch.nn.Module, split: torch.Tensor, spec: EpisodeSpec, episodes: int, seed: int
) -> tuple[float, float]:
    """Mean accuracy over ``episodes`` fixed episodes and the half-width of its 95% confidence interval."""
    check_spec(spec, split.shape[0], split.shape[1], "evaluation")
    indices = fixed_episode_indices(split.shape[0], split.shape[1], spec, episodes, seed)
    accuracies = score_episodes(model, split, spec, indices)[1].double().cpu()
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
