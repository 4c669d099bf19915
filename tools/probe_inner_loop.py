"""Few-shot accuracy of a finished MAML or ANIL run's final checkpoint under other test-time inner loops.

    python tools/probe_inner_loop.py STUDY_WORKDIR RUN OUT.csv [--episodes 60]

Each setting (5-way 1-shot, 5-way 5-shot, 20-way 5-shot; 15 queries) uses fixed test episodes drawn as the
evaluation stage draws them (seed 2000 + the setting's index) and is scored with the run's own inner loop and
with a smaller inner rate, a single step and twice the steps. One row per setting and inner loop.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from metacollapse.checkpoints import load_learner, read_checkpoint
from metacollapse.device import setup
from metacollapse.episodes import EpisodeSpec, fixed_episode_indices, load_device_split, score_episodes

SETTINGS = ((5, 1), (5, 5), (20, 5))


def probe(workdir: Path, run: str, episodes: int, seed: int = 2000) -> pd.DataFrame:
    checkpoints = sorted((workdir / "results" / run / "checkpoints").glob("epoch_*.pt"))
    spec = read_checkpoint(checkpoints[-1])["spec"]
    runtime = setup("cpu", "auto", arch=spec["backbone"]["arch"], threads=1)
    learner, _ = load_learner(checkpoints[-1], spec, runtime, epoch=int(spec["train"]["epochs"]))
    split = load_device_split(workdir / "data" / "processed", "test", runtime.device)
    steps, lr = learner.eval_inner_steps, learner.inner_lr
    loops = [(steps, lr), (steps, lr / 4), (1, lr), (2 * steps, lr)]
    rows = []
    for i, (way, shot) in enumerate(SETTINGS):
        spec_e = EpisodeSpec(way, shot, 15)
        indices = fixed_episode_indices(split.shape[0], split.shape[1], spec_e, episodes, seed + i)
        for learner.eval_inner_steps, learner.inner_lr in loops:
            accuracy = score_episodes(learner, split, spec_e, indices)[1].mean().item()
            rows.append((run, way, shot, learner.eval_inner_steps, learner.inner_lr, episodes, accuracy))
    return pd.DataFrame(
        rows, columns=["run", "n_way", "n_shot", "eval_inner_steps", "inner_lr", "episodes", "accuracy"]
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", type=Path)
    parser.add_argument("run")
    parser.add_argument("out", type=Path)
    parser.add_argument("--episodes", type=int, default=60)
    args = parser.parse_args()
    probe(args.workdir, args.run, args.episodes).to_csv(args.out, index=False, float_format="%.6g")
