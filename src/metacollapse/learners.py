"""Learner registry: the few-shot methods a run trains, each an ``nn.Module`` owning its backbone and heads.

Conventions shared by every learner:

- Episodes are class-major: support ``[n_way * n_support, 1, H, W]`` holds class 0's images first, then class 1's,
  and so on; queries likewise. ``classes`` ``[n_way]`` are the episode's split class ids (long).
- The backbone runs under :func:`metacollapse.device.autocast` in the learner's ``precision`` (set by the training
  loop); its output is cast to float32, and heads, distances and losses run in float32 outside autocast.
- Losses and accuracies come back as 0-d float32 tensors without a host sync.
- ``fewshot`` classifies novel classes; it is called under ``torch.no_grad()`` in eval mode and never changes the
  learner's parameters. Learners that adapt by gradient steps switch gradients back on inside it.
- Every learner accepts ``classes: K`` and ``class_seed``: it then trains on the ``K`` training classes of
  :func:`class_subset` only (episodes and batches are drawn from them, a head has ``K`` rows). ``class_ids`` lists
  the classes it trains on and ``row_of_class`` maps a split class id to its row among them (-1 outside); both
  follow from the run spec, so checkpoints do not store them.

Adding a method is one decorated class; ``build_learner`` passes the config's options as keyword arguments.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator, Mapping
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from metacollapse import protonet
from metacollapse.device import autocast, to_input

LEARNERS: dict[str, type[Learner]] = {}


def register_learner(name: str) -> Callable[[type[Learner]], type[Learner]]:
    """Add a learner class to the registry under ``name`` (the config's ``learner.name``)."""

    def decorator(cls: type[Learner]) -> type[Learner]:
        if name in LEARNERS:
            raise ValueError(f"learner {name!r} is registered twice")
        cls.name = name
        LEARNERS[name] = cls
        return cls

    return decorator


def learner_options(cls: type[Learner]) -> dict[str, Any]:
    """The options a learner accepts (keyword-only constructor arguments along its bases) and their defaults."""
    options: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        if issubclass(klass, Learner) and "__init__" in vars(klass):
            params = inspect.signature(klass.__init__).parameters.values()
            options.update({p.name: p.default for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY})
    return options


def build_learner(spec: Mapping[str, Any], backbone: nn.Module, embedding_dim: int, n_train_classes: int) -> Learner:
    """Build the learner a config entry describes, e.g. ``{"name": "maml", "inner_steps": 5}``."""
    options = dict(spec)
    name = options.pop("name", None)
    if name not in LEARNERS:
        raise ValueError(f"unknown learner {name!r}; expected one of {sorted(LEARNERS)}")
    allowed = learner_options(LEARNERS[name])
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"learner {name!r}: unknown options {unknown}; allowed: {sorted(allowed)}")
    return LEARNERS[name](backbone, embedding_dim, n_train_classes, **options)


def class_subset(n_classes: int, k: int, seed: int) -> Tensor:
    """``k`` of ``n_classes`` class ids drawn uniformly with ``seed`` (a CPU generator), sorted ascending."""
    if not 1 <= k <= n_classes:
        raise ValueError(f"class subset: need 1 <= classes <= {n_classes} (training classes), got {k}")
    return torch.randperm(n_classes, generator=torch.Generator().manual_seed(seed))[:k].sort().values


def _require(condition: bool, learner: str, message: str) -> None:
    if not condition:
        raise ValueError(f"learner {learner!r}: {message}")


def _episode_targets(n_way: int, n_per_class: int, device: torch.device) -> Tensor:
    return torch.arange(n_way, device=device).repeat_interleave(n_per_class)


def _nll_and_accuracy(logits: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    log_p = F.log_softmax(logits.float(), dim=1)
    return F.nll_loss(log_p, targets), (log_p.argmax(dim=1) == targets).float().mean()


class Learner(nn.Module):
    """Base class: a backbone, its embedding, and the interface the training and evaluation loops use."""

    name: ClassVar[str] = "learner"
    episodic: ClassVar[bool] = True
    precision: str = "fp32"

    def __init__(
        self,
        backbone: nn.Module,
        embedding_dim: int,
        n_train_classes: int,
        *,
        classes: int | None = None,
        class_seed: int = 0,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.embedding_dim = int(embedding_dim)
        self.n_train_classes = n = int(n_train_classes)
        self.restricted = classes is not None
        ids = torch.arange(n) if classes is None else class_subset(n, classes, class_seed)
        row_of_class = torch.full((n,), -1, dtype=torch.long)
        row_of_class[ids] = torch.arange(len(ids))
        self.register_buffer("class_ids", ids, persistent=False)
        self.register_buffer("row_of_class", row_of_class, persistent=False)

    def embed(self, images: Tensor) -> Tensor:
        """Images ``[n, 1, H, W]`` -> float32 embeddings ``[n, d]`` (backbone in the learner's precision)."""
        with autocast(images.device, self.precision):
            out = self.backbone(to_input(images, self.precision))
        return out.float()

    def embed_pair(self, support: Tensor, query: Tensor) -> tuple[Tensor, Tensor]:
        """Support and query in one forward pass, so batch norm in train mode sees the whole episode."""
        out = self.embed(torch.cat([support, query], dim=0))
        return out[: support.shape[0]], out[support.shape[0] :]

    def episode_loss(self, support: Tensor, query: Tensor, n_way: int, classes: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError(f"learner {self.name!r} is not episodic: train it with batch_loss")

    def batch_loss(self, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError(f"learner {self.name!r} is episodic: train it with episode_loss")

    def fewshot(self, support: Tensor, query: Tensor, n_way: int) -> tuple[Tensor, Tensor]:
        """Nearest class mean (the ProtoNet rule) on the embeddings; learners with another rule override it."""
        return protonet.episode_loss(*self.embed_pair(support, query), n_way)

    def train_class_ids(self) -> Tensor | None:
        """The split class ids training draws from, or None for all of them."""
        return self.class_ids if self.restricted else None

    def classifier(self) -> tuple[Tensor, Tensor, Tensor] | None:
        return None


@register_learner("protonet")
class ProtoNet(Learner):
    """Prototypical Networks (Snell et al., 2017): see :mod:`metacollapse.protonet`."""

    def episode_loss(self, support: Tensor, query: Tensor, n_way: int, classes: Tensor) -> tuple[Tensor, Tensor]:
        return protonet.episode_loss(*self.embed_pair(support, query), n_way)


@register_learner("protonet_head")
class ProtoNetHead(ProtoNet):
    """ProtoNet loss plus ``head_weight`` x cross-entropy of a linear head over the training classes.

    The head has a row per class it trains on (all training classes, or the ``classes: K`` subset) and sees the
    same embeddings (support and query) as the ProtoNet loss; ``classes`` gives each image's split class id,
    mapped to its row. The returned loss is the sum; the accuracy is ProtoNet's.
    """

    def __init__(self, *args: Any, head_weight: float = 1.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _require(head_weight >= 0, "protonet_head", f"head_weight must be >= 0, got {head_weight!r}")
        self.head_weight = float(head_weight)
        self.head = nn.Linear(self.embedding_dim, len(self.class_ids))

    def episode_loss(self, support: Tensor, query: Tensor, n_way: int, classes: Tensor) -> tuple[Tensor, Tensor]:
        s, q = self.embed_pair(support, query)
        loss, accuracy = protonet.episode_loss(s, q, n_way)
        rows = self.row_of_class[classes]
        labels = torch.cat([rows.repeat_interleave(s.shape[0] // n_way), rows.repeat_interleave(q.shape[0] // n_way)])
        head_loss = F.cross_entropy(self.head(torch.cat([s, q])), labels)
        return loss + self.head_weight * head_loss, accuracy

    def classifier(self) -> tuple[Tensor, Tensor, Tensor]:
        return self.head.weight.detach(), self.head.bias.detach(), self.class_ids


@register_learner("matchingnet")
class MatchingNet(Learner):
    """Matching Networks (Vinyals et al., 2016) without full-context embeddings.

    Each query attends to every support image with ``softmax_j(scale * cos(q, s_j))``; a class's probability is
    the attention summed over its supports, and the loss is the NLL of the queries. Raw cosines (``scale=1``, the
    paper's form) cap the attention's sharpness, e.g. at most 0.65 for the true class in 5-way 1-shot, so the loss
    cannot approach zero and gradients stay weak; a fixed ``scale`` (default 10) removes that floor without adding
    a parameter, and ``learn_scale: true`` learns it from that starting value instead.
    """

    def __init__(self, *args: Any, scale: float = 10.0, learn_scale: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _require(scale > 0, "matchingnet", f"scale must be > 0, got {scale!r}")
        value = torch.tensor(float(scale))
        if learn_scale:
            self.scale = nn.Parameter(value)
        else:
            self.register_buffer("scale", value)

    def class_log_probs(self, support_embeddings: Tensor, query_embeddings: Tensor, n_way: int) -> Tensor:
        """``[n_query, n_way]`` log of the attention each query puts on each class's supports."""
        cosines = F.normalize(query_embeddings, dim=1) @ F.normalize(support_embeddings, dim=1).T
        log_attention = F.log_softmax(self.scale * cosines, dim=1)
        return log_attention.reshape(query_embeddings.shape[0], n_way, -1).logsumexp(dim=2)

    def fewshot(self, support: Tensor, query: Tensor, n_way: int) -> tuple[Tensor, Tensor]:
        s, q = self.embed_pair(support, query)
        log_p = self.class_log_probs(s, q, n_way)
        targets = _episode_targets(n_way, q.shape[0] // n_way, q.device)
        return F.nll_loss(log_p, targets), (log_p.argmax(dim=1) == targets).float().mean()

    def episode_loss(self, support: Tensor, query: Tensor, n_way: int, classes: Tensor) -> tuple[Tensor, Tensor]:
        return self.fewshot(support, query, n_way)


@contextlib.contextmanager
def _batch_statistics(module: nn.Module) -> Iterator[None]:
    """Batch-norm layers normalise with the batch's own statistics while inside, also in eval mode."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and not m.training]
    for m in norms:
        m.train()
    try:
        yield
    finally:
        for m in norms:
            m.eval()


class _InnerLoop(Learner):
    """Shared by MAML and ANIL: a linear head of ``n_way`` rows, zero at the start of every task, fitted by
    ``steps`` plain SGD steps of ``inner_lr`` on the support cross-entropy; the adapted model's query NLL is the
    episode loss. The head exists only inside a task, so training and testing may use different ``n_way``.

    ``first_order``: the inner gradients are treated as constants (no second derivatives) in the outer update.
    """

    def __init__(
        self, *args: Any, inner_steps: int, eval_inner_steps: int, inner_lr: float, first_order: bool, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        for key, value in (("inner_steps", inner_steps), ("eval_inner_steps", eval_inner_steps)):
            _require(isinstance(value, int) and value >= 1, self.name, f"{key} must be an integer >= 1, got {value!r}")
        _require(inner_lr > 0, self.name, f"inner_lr must be > 0, got {inner_lr!r}")
        self.inner_steps, self.eval_inner_steps = inner_steps, eval_inner_steps
        self.inner_lr, self.first_order = float(inner_lr), bool(first_order)

    def adapted_params(self) -> dict[str, Tensor]:
        """The network parameters the inner loop adapts besides the head (none for ANIL)."""
        return {}

    def adapt(
        self, logits: Callable[[dict[str, Tensor], Tensor, Tensor], Tensor], targets: Tensor, n_way: int, steps: int
    ) -> tuple[dict[str, Tensor], Tensor, Tensor]:
        """Run the inner loop; ``logits(params, w, b)`` gives the support logits. Returns adapted (params, w, b).

        Gradients are on inside even under ``torch.no_grad()``; out of train mode no second-order graph is built.
        """
        params = self.adapted_params()
        device = targets.device
        create_graph = self.training and not self.first_order
        with torch.enable_grad():
            w = torch.zeros(n_way, self.embedding_dim, device=device, requires_grad=True)
            b = torch.zeros(n_way, device=device, requires_grad=True)
            for _ in range(steps):
                loss = F.cross_entropy(logits(params, w, b), targets)
                *grads, grad_w, grad_b = torch.autograd.grad(loss, [*params.values(), w, b], create_graph=create_graph)
                params = {name: p - self.inner_lr * g for (name, p), g in zip(params.items(), grads, strict=True)}
                w, b = w - self.inner_lr * grad_w, b - self.inner_lr * grad_b
        return params, w, b

    def task_loss(self, support: Tensor, query: Tensor, n_way: int, steps: int) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def episode_loss(self, support: Tensor, query: Tensor, n_way: int, classes: Tensor) -> tuple[Tensor, Tensor]:
        return self.task_loss(support, query, n_way, self.inner_steps)

    def fewshot(self, support: Tensor, query: Tensor, n_way: int) -> tuple[Tensor, Tensor]:
        loss, accuracy = self.task_loss(support, query, n_way, self.eval_inner_steps)
        return loss.detach(), accuracy


@register_learner("anil")
class ANIL(_InnerLoop):
    """ANIL (Raghu et al., 2020): only the head adapts, on support features from one backbone pass.

    Support and query go through the backbone together (batch norm as in ProtoNet: the episode's statistics in
    train mode, running statistics in eval mode). ``inner_lr`` 0.4 is MAML's 5-way Omniglot step (Finn et al.,
    2017); the inner problem is convex, so larger steps are safe. Second order is the default because it only
    differentiates through the head's updates, which is cheap; it lets the support features shape the head.
    """

    def __init__(
        self,
        *args: Any,
        inner_steps: int = 5,
        eval_inner_steps: int = 10,
        inner_lr: float = 0.4,
        first_order: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            *args,
            inner_steps=inner_steps,
            eval_inner_steps=eval_inner_steps,
            inner_lr=inner_lr,
            first_order=first_order,
            **kwargs,
        )

    def task_loss(self, support: Tensor, query: Tensor, n_way: int, steps: int) -> tuple[Tensor, Tensor]:
        s, q = self.embed_pair(support, query)
        targets = _episode_targets(n_way, s.shape[0] // n_way, s.device)
        _, w, b = self.adapt(lambda params, w, b: F.linear(s, w, b), targets, n_way, steps)
        return _nll_and_accuracy(F.linear(q, w, b), _episode_targets(n_way, q.shape[0] // n_way, q.device))


@register_learner("maml")
class MAML(_InnerLoop):
    """MAML (Finn et al., 2017): the whole network (backbone and zero-initialised head) adapts to each task.

    The backbone runs with the adapted parameters through ``torch.func.functional_call``. Batch norm always
    normalises with the statistics of the current batch (the support set in the inner loop, the query set for the
    loss), in training and in ``fewshot`` alike, as MAML's reference code does; running statistics are tracked only
    in train mode, so ``embed`` in eval mode (feature dumps) still has them. ``inner_lr`` 0.1 with 5 steps is
    Finn et al.'s 20-way Omniglot setting (their 0.4 is for a single step). First order by default;
    ``first_order: false`` backpropagates through every inner step, which is several times slower, prohibitively
    so on CPU.
    """

    def __init__(
        self,
        *args: Any,
        inner_steps: int = 5,
        eval_inner_steps: int = 10,
        inner_lr: float = 0.1,
        first_order: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            *args,
            inner_steps=inner_steps,
            eval_inner_steps=eval_inner_steps,
            inner_lr=inner_lr,
            first_order=first_order,
            **kwargs,
        )

    def adapted_params(self) -> dict[str, Tensor]:
        return dict(self.backbone.named_parameters())

    def features(self, images: Tensor, params: Mapping[str, Tensor]) -> Tensor:
        """Backbone features of ``images`` with ``params`` in place of the backbone's own, in float32."""
        tensors = dict(params)
        if not self.training:  # eval mode: batch statistics, but running-statistic updates go to throwaway copies
            tensors.update({name: buf.clone() for name, buf in self.backbone.named_buffers()})
        with _batch_statistics(self.backbone), autocast(images.device, self.precision):
            out = functional_call(self.backbone, tensors, (to_input(images, self.precision),))
        return out.float()

    def task_loss(self, support: Tensor, query: Tensor, n_way: int, steps: int) -> tuple[Tensor, Tensor]:
        targets = _episode_targets(n_way, support.shape[0] // n_way, support.device)
        params, w, b = self.adapt(
            lambda params, w, b: F.linear(self.features(support, params), w, b), targets, n_way, steps
        )
        logits = F.linear(self.features(query, params), w, b)
        return _nll_and_accuracy(logits, _episode_targets(n_way, query.shape[0] // n_way, query.device))


@register_learner("classifier")
class Classifier(Learner):
    """Standard supervised pre-training: backbone + linear layer over the training classes (or the ``classes: K``
    subset), cross-entropy on mini-batches.

    Row ``i`` of the head is split class ``class_ids[i]``; ``batch_loss`` maps split class ids to rows.
    ``fewshot`` is the ProtoNet rule on the embeddings (the head is not used).
    """

    episodic: ClassVar[bool] = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.head = nn.Linear(self.embedding_dim, len(self.class_ids))

    def batch_loss(self, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Cross-entropy and accuracy of the head; ``labels`` are split class ids from :meth:`train_class_ids`."""
        return _nll_and_accuracy(self.head(self.embed(images)), self.row_of_class[labels])

    def classifier(self) -> tuple[Tensor, Tensor, Tensor]:
        return self.head.weight.detach(), self.head.bias.detach(), self.class_ids
