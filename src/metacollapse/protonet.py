"""The Prototypical Network objective (prototypes, squared Euclidean distances, episode loss) and the NLL and
accuracy every learner reports.

Follows Snell et al. (2017): a prototype is the mean support embedding of a class; a query's logits are the
negative squared Euclidean distances to the prototypes; the loss is the NLL of log-softmax over the queries.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def episode_targets(n_way: int, n_per_class: int, device: torch.device) -> torch.Tensor:
    """Class-major labels ``[n_way * n_per_class]``: ``n_per_class`` zeros, then ones, and so on."""
    return torch.arange(n_way, device=device).repeat_interleave(n_per_class)


def nll_and_accuracy(
    scores: torch.Tensor, targets: torch.Tensor, log_probs: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean NLL and the fraction of rows whose largest score is the target (0-d float32 tensors, no host sync).

    ``scores`` ``[n, classes]`` are logits (log-softmax is taken here, in float32), or already log-probabilities
    when ``log_probs`` is true.
    """
    log_p = scores if log_probs else F.log_softmax(scores.float(), dim=1)
    return F.nll_loss(log_p, targets), (log_p.argmax(dim=1) == targets).float().mean()


def prototypes(support_embeddings: torch.Tensor, n_way: int) -> torch.Tensor:
    """Class-major support embeddings ``[n_way * n_support, d]`` -> prototypes ``[n_way, d]`` (class means)."""
    return support_embeddings.reshape(n_way, -1, support_embeddings.shape[-1]).mean(dim=1)


def squared_euclidean(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``[n, d]`` x ``[m, d]`` -> ``[n, m]`` squared distances.

    Computed from differences, not ``|x|^2 + |y|^2 - 2 x.y``, which cancels catastrophically when embeddings
    are large and close (the regime neural collapse drives them towards).
    """
    return (x.unsqueeze(1) - y.unsqueeze(0)).pow(2).sum(dim=-1)


def episode_loss(
    support_embeddings: torch.Tensor, query_embeddings: torch.Tensor, n_way: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean NLL over the queries and the fraction classified correctly (both 0-d tensors, no host sync).

    Queries are class-major: query ``i`` belongs to class ``i // n_query``.
    """
    logits = -squared_euclidean(query_embeddings, prototypes(support_embeddings, n_way))
    targets = episode_targets(n_way, query_embeddings.shape[0] // n_way, logits.device)
    return nll_and_accuracy(logits, targets)
