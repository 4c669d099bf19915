"""The Prototypical Network objective: prototypes, squared Euclidean distances, episode loss and accuracy.

Follows Snell et al. (2017): a prototype is the mean support embedding of a class; a query's logits are the
negative squared Euclidean distances to the prototypes; the loss is the NLL of log-softmax over the queries.
Support and query images go through the backbone as one batch, as in the original code, so batch norm in train
mode sees the whole episode.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


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
    protos = prototypes(support_embeddings, n_way)
    logits = -squared_euclidean(query_embeddings, protos)
    n_query = query_embeddings.shape[0] // n_way
    targets = torch.arange(n_way, device=logits.device).repeat_interleave(n_query)
    log_p = F.log_softmax(logits.float(), dim=1)
    loss = F.nll_loss(log_p, targets)
    accuracy = (log_p.argmax(dim=1) == targets).float().mean()
    return loss, accuracy


def embed_episode(model: nn.Module, support: torch.Tensor, query: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Embed support and query images in one forward pass; returns the two embedding blocks."""
    embeddings = model(torch.cat([support, query], dim=0))
    return embeddings[: support.shape[0]], embeddings[support.shape[0] :]
