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

Adding a method is one decorated class. Its options are its keyword-only constructor arguments; their defaults
come from the signature or, where subclasses differ only in defaults, from the class's ``option_defaults``.
``build_learner`` checks the config's options against their annotated types and passes them all as keywords.
"""

from __future__ import annotations

import contextlib
import inspect
import types
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from metacollapse import protonet
from metacollapse.device import autocast, to_input
from metacollapse.models import feature_map_shape, forward_with_layers, layer_names, layer_outputs
from metacollapse.protonet import episode_targets, nll_and_accuracy

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


def _option_signature(cls: type[Learner]) -> dict[str, tuple[Any, Any]]:
    """``{option: (default, type)}``: the keyword-only constructor arguments along the class's bases, their
    annotated types, and their defaults (a class's ``option_defaults`` override its bases' signatures)."""
    options: dict[str, tuple[Any, Any]] = {}
    for klass in reversed(cls.__mro__):
        if not issubclass(klass, Learner):
            continue
        if "__init__" in vars(klass):
            hints = typing.get_type_hints(klass.__init__)
            for p in inspect.signature(klass.__init__).parameters.values():
                if p.kind is inspect.Parameter.KEYWORD_ONLY:
                    options[p.name] = (p.default, hints[p.name])
        for option, default in vars(klass).get("option_defaults", {}).items():
            options[option] = (default, options[option][1])
    return options


def learner_options(cls: type[Learner]) -> dict[str, Any]:
    """The options a learner accepts and their defaults."""
    return {option: default for option, (default, _) in _option_signature(cls).items()}


def accepts(value: Any, expected: Any) -> bool:
    """``isinstance`` for config options: a bool is no number, an int is a float, ``X | None`` admits None, and an
    annotation that is no type (``Any``) admits anything."""
    if isinstance(expected, types.UnionType) or typing.get_origin(expected) is typing.Union:
        return any(accepts(value, t) for t in typing.get_args(expected))
    if expected is type(None):
        return value is None
    if not isinstance(expected, type):
        return True
    if expected in (int, float) and isinstance(value, bool):
        return False
    return isinstance(value, (int, float) if expected is float else expected)


def type_name(expected: Any) -> str:
    """How an option's type reads in an error: ``a number``, ``an integer or null``, ..."""
    if isinstance(expected, types.UnionType) or typing.get_origin(expected) is typing.Union:
        return " or ".join(type_name(t) for t in typing.get_args(expected))
    names = {type(None): "null", bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    return names.get(expected, getattr(expected, "__name__", str(expected)))


def learner_problems(spec: Mapping[str, Any]) -> list[str]:
    """What is wrong with a config entry such as ``{"name": "maml", "inner_steps": 5}``, one line per problem
    naming the key, the value and what is allowed (the name, option names and types, ``class_seed`` without
    ``classes``), found without building anything; value ranges are the learner constructor's to check."""
    options = dict(spec)
    name = options.pop("name", None)
    if name not in LEARNERS:
        return [f"learner.name = {name!r}: unknown learner; expected one of {', '.join(sorted(LEARNERS))}"]
    signature = _option_signature(LEARNERS[name])
    unknown = sorted(set(options) - set(signature))
    if unknown:
        allowed = ", ".join(sorted(signature))
        return [f"learner.{key}: unknown option of {name!r}; allowed: {allowed}" for key in unknown]
    problems = [
        f"learner.{option} = {value!r}: expected {type_name(expected)}"
        for option, value in options.items()
        if not accepts(value, expected := signature[option][1])
    ]
    if options.get("class_seed") is not None and options.get("classes") is None:
        problems.append(
            f"learner.class_seed = {options['class_seed']!r} without learner.classes: class_seed only draws the "
            "class subset that classes asks for; set classes or drop class_seed"
        )
    return problems


def build_learner(spec: Mapping[str, Any], backbone: nn.Module, embedding_dim: int, n_train_classes: int) -> Learner:
    """Build the learner a config entry describes, e.g. ``{"name": "maml", "inner_steps": 5}``."""
    problems = learner_problems(spec)
    if problems:
        known = spec.get("name") in LEARNERS
        raise ValueError((f"learner {spec['name']!r}: " if known else "") + "; ".join(problems))
    options = dict(spec)
    name = options.pop("name")
    defaults = {option: default for option, (default, _) in _option_signature(LEARNERS[name]).items()}
    return LEARNERS[name](backbone, embedding_dim, n_train_classes, **{**defaults, **options})


def class_subset(n_classes: int, k: int, seed: int) -> Tensor:
    """``k`` of ``n_classes`` class ids drawn uniformly with ``seed`` (a CPU generator), sorted ascending."""
    if not 1 <= k <= n_classes:
        raise ValueError(f"class subset: need 1 <= classes <= {n_classes} (training classes), got {k}")
    return torch.randperm(n_classes, generator=torch.Generator().manual_seed(seed))[:k].sort().values


def _require(condition: bool, learner: str, message: str) -> None:
    if not condition:
        raise ValueError(f"learner {learner!r}: {message}")


def _scale(module: nn.Module, scale: float, learn: bool) -> None:
    """Give ``module`` a ``scale``: a parameter starting at ``scale`` when ``learn``, else a fixed buffer."""
    _require(scale > 0, module.name, f"scale must be > 0, got {scale!r}")
    value = torch.tensor(float(scale))
    if learn:
        module.scale = nn.Parameter(value)
    else:
        module.register_buffer("scale", value)


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

    def embed_layers(self, images: Tensor, names: Sequence[str]) -> dict[str, Tensor]:
        """float32 spatial means of the named blocks' outputs and the ``embedding`` (equal to :meth:`embed`), from
        one forward pass in the learner's precision (:func:`metacollapse.models.layer_outputs`)."""
        with autocast(images.device, self.precision):
            return layer_outputs(self.backbone, to_input(images, self.precision), names)

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

    def head_weights(self) -> tuple[Tensor, Tensor, Tensor] | None:
        """A linear head over training classes: (weight ``[K, d]``, bias ``[K]``, split class id of each row)."""
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

    def head_weights(self) -> tuple[Tensor, Tensor, Tensor]:
        return self.head.weight.detach(), self.head.bias.detach(), self.class_ids


@register_learner("protonet_cosine")
class ProtoNetCosine(Learner):
    """ProtoNet on L2-normalised embeddings: a prototype is the mean of its class's normalised support embeddings,
    a query's logits are ``scale * cos(query, prototype)``, and the loss is their cross-entropy, as ProtoNet's.

    ``scale`` (default 10) sets the softmax's sharpness, which cosines in [-1, 1] alone cap; it is learned from that
    starting value unless ``learn_scale: false``. ``fewshot`` uses the same rule.
    """

    def __init__(self, *args: Any, scale: float = 10.0, learn_scale: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _scale(self, scale, learn_scale)

    def logits(self, support_embeddings: Tensor, query_embeddings: Tensor, n_way: int) -> Tensor:
        """``[n_query, n_way]``: ``scale`` times the cosine of each query with each class's prototype."""
        prototypes = protonet.prototypes(F.normalize(support_embeddings, dim=1), n_way)
        return self.scale * (F.normalize(query_embeddings, dim=1) @ F.normalize(prototypes, dim=1).T)

    def fewshot(self, support: Tensor, query: Tensor, n_way: int) -> tuple[Tensor, Tensor]:
        s, q = self.embed_pair(support, query)
        return nll_and_accuracy(self.logits(s, q, n_way), episode_targets(n_way, q.shape[0] // n_way, q.device))

    def episode_loss(self, support: Tensor, query: Tensor, n_way: int, classes: Tensor) -> tuple[Tensor, Tensor]:
        return self.fewshot(support, query, n_way)


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
        _scale(self, scale, learn_scale)

    def class_log_probs(self, support_embeddings: Tensor, query_embeddings: Tensor, n_way: int) -> Tensor:
        """``[n_query, n_way]`` log of the attention each query puts on each class's supports."""
        cosines = F.normalize(query_embeddings, dim=1) @ F.normalize(support_embeddings, dim=1).T
        log_attention = F.log_softmax(self.scale * cosines, dim=1)
        return log_attention.reshape(query_embeddings.shape[0], n_way, -1).logsumexp(dim=2)

    def fewshot(self, support: Tensor, query: Tensor, n_way: int) -> tuple[Tensor, Tensor]:
        s, q = self.embed_pair(support, query)
        targets = episode_targets(n_way, q.shape[0] // n_way, q.device)
        return nll_and_accuracy(self.class_log_probs(s, q, n_way), targets, log_probs=True)

    def episode_loss(self, support: Tensor, query: Tensor, n_way: int, classes: Tensor) -> tuple[Tensor, Tensor]:
        return self.fewshot(support, query, n_way)


@register_learner("relationnet")
class RelationNet(Learner):
    """Relation Networks (Sung et al., 2018, "Learning to Compare"): a learned module scores each (query, class)
    pair from the concatenation of the class's feature map (the sum of its support maps, the paper's K-shot rule)
    and the query's, both the backbone's last block output before its flatten or average pool (Conv-4 on 28x28:
    ``width x 1 x 1``; ResNet-18: ``512 x 4 x 4``). Loss: the mean squared error of the scores against one-hot
    targets, as in the paper; prediction: the highest score.

    The relation module is the paper's, fitted to small maps: two blocks of 3x3 convolution (``channels`` filters,
    64 as in the paper, padding 1), batch norm and ReLU, each followed by 2x2 max-pooling only while the map is at
    least 2x2; then a ``hidden``-unit (8) ReLU layer and one sigmoid output. It runs in float32 outside autocast,
    like every head. The embedding (``embed``, the probes) is the backbone's output as for every learner.
    """

    def __init__(self, *args: Any, channels: int = 64, hidden: int = 8, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for key, value in (("channels", channels), ("hidden", hidden)):
            _require(value >= 1, self.name, f"{key} must be >= 1, got {value!r}")
        in_channels, h, w = feature_map_shape(self.backbone)
        in_channels *= 2
        layers: list[nn.Module] = []
        for _ in range(2):
            layers += [nn.Conv2d(in_channels, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU()]
            if min(h, w) >= 2:
                layers.append(nn.MaxPool2d(2))
                h, w = h // 2, w // 2
            in_channels = channels
        self.relation = nn.Sequential(
            *layers, nn.Flatten(), nn.Linear(channels * h * w, hidden), nn.ReLU(), nn.Linear(hidden, 1), nn.Sigmoid()
        )

    def feature_maps(self, images: Tensor) -> Tensor:
        """Images ``[n, 1, H, W]`` -> float32 maps ``[n, C, h, w]`` (backbone in the learner's precision)."""
        last = layer_names(self.backbone)[-1]
        with autocast(images.device, self.precision):
            _, maps = forward_with_layers(self.backbone, to_input(images, self.precision), [last])
        return maps[last].float()

    def relation_scores(self, support_maps: Tensor, query_maps: Tensor, n_way: int) -> Tensor:
        """``[n_query, n_way]`` scores in (0, 1) of class-major support maps against each query map."""
        class_maps = support_maps.reshape(n_way, -1, *support_maps.shape[1:]).sum(dim=1)
        n_query, c, h, w = query_maps.shape
        pairs = torch.cat(
            [class_maps.expand(n_query, -1, -1, -1, -1), query_maps.unsqueeze(1).expand(-1, n_way, -1, -1, -1)], dim=2
        )
        return self.relation(pairs.reshape(n_query * n_way, 2 * c, h, w)).reshape(n_query, n_way)

    def fewshot(self, support: Tensor, query: Tensor, n_way: int) -> tuple[Tensor, Tensor]:
        maps = self.feature_maps(torch.cat([support, query], dim=0))
        scores = self.relation_scores(maps[: support.shape[0]], maps[support.shape[0] :], n_way)
        targets = episode_targets(n_way, query.shape[0] // n_way, query.device)
        loss = F.mse_loss(scores, F.one_hot(targets, n_way).float())
        return loss, (scores.argmax(dim=1) == targets).float().mean()

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
    ``inner_lr`` and ``first_order`` default per method (``option_defaults``).
    """

    option_defaults: ClassVar[dict[str, Any]]

    def __init__(
        self,
        *args: Any,
        inner_steps: int = 5,
        eval_inner_steps: int = 10,
        inner_lr: float,
        first_order: bool,
        **kwargs: Any,
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

    option_defaults: ClassVar[dict[str, Any]] = {"inner_lr": 0.4, "first_order": False}

    def task_loss(self, support: Tensor, query: Tensor, n_way: int, steps: int) -> tuple[Tensor, Tensor]:
        s, q = self.embed_pair(support, query)
        targets = episode_targets(n_way, s.shape[0] // n_way, s.device)
        _, w, b = self.adapt(lambda params, w, b: F.linear(s, w, b), targets, n_way, steps)
        return nll_and_accuracy(F.linear(q, w, b), episode_targets(n_way, q.shape[0] // n_way, q.device))


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

    option_defaults: ClassVar[dict[str, Any]] = {"inner_lr": 0.1, "first_order": True}

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
        targets = episode_targets(n_way, support.shape[0] // n_way, support.device)
        params, w, b = self.adapt(
            lambda params, w, b: F.linear(self.features(support, params), w, b), targets, n_way, steps
        )
        logits = F.linear(self.features(query, params), w, b)
        return nll_and_accuracy(logits, episode_targets(n_way, query.shape[0] // n_way, query.device))


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
        return nll_and_accuracy(self.head(self.embed(images)), self.row_of_class[labels])

    def head_weights(self) -> tuple[Tensor, Tensor, Tensor]:
        return self.head.weight.detach(), self.head.bias.detach(), self.class_ids
