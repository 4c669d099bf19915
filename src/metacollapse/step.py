"""One optimizer step of training (gather, forward, loss, backward, Adam), replayable as a CUDA graph.

A step's index tensors are copied into static buffers on the device and its images gathered there from the
resident split (:mod:`metacollapse.episodes`); loss and accuracy are added into device accumulators, so no step
waits for the host. ``compile`` chooses how the step runs: ``none`` eagerly (CPU's default, bitwise today's
loop), ``graph`` captured once as a CUDA graph and replayed (CUDA's default), ``reduce-overhead`` through
``torch.compile`` of the forward pass and loss.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator

import torch
from torch import Tensor

from metacollapse.device import resolve_compile
from metacollapse.episodes import EpisodeIndices, EpisodeSpec, gather_batch, gather_episode
from metacollapse.learners import Learner

log = logging.getLogger(__name__)

#: Eager steps on a side stream before capture (PyTorch's CUDA-graph recipe: lazy initialisation such as Adam's
#: state, cuBLAS workspaces and cuDNN autotuning happens in them, not in the graph). They are real steps.
WARMUP_STEPS = 3


@contextlib.contextmanager
def _autocast_cache_off() -> Iterator[None]:
    """Autocast without its weight-cast cache, as CUDA-graph capture requires; the numbers are the same."""
    previous = torch.is_autocast_cache_enabled()
    torch.set_autocast_cache_enabled(False)
    try:
        yield
    finally:
        torch.set_autocast_cache_enabled(previous)


class Stepper:
    """Runs a learner's training steps through static index buffers and device-side loss/accuracy sums.

    ``shape``: the training :class:`EpisodeSpec` of an episodic learner (``meta_batch`` episodes per step, their
    gradients averaged), or the mini-batch size of a batch learner. Per step, :meth:`step` takes that step's
    indices as the epoch's samplers draw them: ``classes [meta_batch, n_way]`` and ``images [meta_batch, n_way,
    n_support + n_query]`` (episodic; rows of :func:`~metacollapse.episodes.sample_episode_indices`), or
    ``classes [B]`` and ``images [B]`` (:func:`~metacollapse.episodes.sample_batch_indices`, one row).

    CUDA graph (``graph``) assumptions: the learner stays in train mode and its parameters, buffers and the split
    keep their storage (``load_state_dict`` copies in place, so it is fine); the step has the same shapes every
    time and no host-side decision depends on tensor values (true of every learner: capture fails loudly
    otherwise, and the step then runs eagerly); the optimizer is Adam, switched here to ``capturable`` with its
    rate held in one device tensor per group that the LR scheduler fills in place. An optimizer state loaded
    after capture (new tensors) is noticed and captured afresh. The first :data:`WARMUP_STEPS` steps (again after
    a re-capture) run eagerly on a side stream.
    """

    def __init__(
        self,
        learner: Learner,
        optimizer: torch.optim.Optimizer,
        split: Tensor,
        shape: EpisodeSpec | int,
        meta_batch: int = 1,
        compile: str = "auto",
    ) -> None:
        self.learner, self.optimizer, self.split = learner, optimizer, split
        self.device = split.device
        self.mode = resolve_compile(compile, self.device)
        self.episodic = learner.episodic
        if self.episodic:
            if not isinstance(shape, EpisodeSpec):
                raise ValueError(f"learner {learner.name!r} is episodic: shape must be an EpisodeSpec, got {shape!r}")
            if not (isinstance(meta_batch, int) and meta_batch >= 1):
                raise ValueError(f"meta_batch must be an integer >= 1, got {meta_batch!r}")
            self.spec, self.tasks = shape, meta_batch
            classes_shape = (meta_batch, shape.n_way)
            images_shape = (meta_batch, shape.n_way, shape.shots_total)
        else:
            if not (isinstance(shape, int) and shape >= 1):
                raise ValueError(f"learner {learner.name!r} trains on mini-batches: shape must be a batch size >= 1")
            self.spec, self.tasks = None, 1
            classes_shape = images_shape = (shape,)
        self._classes = torch.zeros(classes_shape, dtype=torch.long, device=self.device)
        self._images = torch.zeros(images_shape, dtype=torch.long, device=self.device)
        self.loss_sum = torch.zeros((), device=self.device)
        self.acc_sum = torch.zeros((), device=self.device)
        self.captures = 0
        self._graph: torch.cuda.CUDAGraph | None = None
        self._eager_steps = 0
        self._state: object = None  # the optimizer state the graph was captured with
        self._rates: list[Tensor] = []
        self._loss: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]] = self._task_loss
        if self.mode == "reduce-overhead":
            self._loss = torch.compile(self._task_loss, mode="reduce-overhead")

    def reset(self) -> None:
        """Zero the loss and accuracy sums (at the start of an epoch)."""
        self.loss_sum.zero_()
        self.acc_sum.zero_()

    def totals(self) -> tuple[Tensor, Tensor]:
        """Sums of the step losses and accuracies since :meth:`reset` (0-d device tensors, updated in place)."""
        return self.loss_sum, self.acc_sum

    def step(self, classes: Tensor, images: Tensor) -> None:
        """One optimizer step on these indices (see the class docstring); nothing waits for the device."""
        if classes.shape != self._classes.shape or images.shape != self._images.shape:
            raise ValueError(
                f"step indices: expected classes {tuple(self._classes.shape)} and images "
                f"{tuple(self._images.shape)}, got {tuple(classes.shape)} and {tuple(images.shape)}"
            )
        if not self.learner.training:
            raise ValueError(f"learner {self.learner.name!r} must be in train mode to take a training step")
        self._classes.copy_(classes)
        self._images.copy_(images)
        if self.mode == "graph":
            self._graph_step()
        elif self.mode == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()
            self._eager_step()
        else:
            self._eager_step()

    def _task_loss(self, classes: Tensor, images: Tensor) -> tuple[Tensor, Tensor]:
        if self.episodic:
            support, query = gather_episode(self.split, EpisodeIndices(classes, images), self.spec)
            return self.learner.episode_loss(support, query, self.spec.n_way, classes[0])
        return self.learner.batch_loss(gather_batch(self.split, classes, images), classes)

    def _forward_backward(self) -> None:
        """Today's loop body: the meta-batch's gradients averaged, its losses and accuracies summed on the device."""
        if not self.episodic:
            loss, accuracy = self._loss(self._classes, self._images)
            loss.backward()
            self.loss_sum += loss.detach()
            self.acc_sum += accuracy
            return
        for task in range(self.tasks):
            loss, accuracy = self._loss(self._classes[task : task + 1], self._images[task : task + 1])
            (loss / self.tasks).backward()
            self.loss_sum += loss.detach() / self.tasks
            self.acc_sum += accuracy / self.tasks

    def _eager_step(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self._forward_backward()
        self.optimizer.step()

    def _graph_step(self) -> None:
        if self._state is not self.optimizer.state or any(
            group["lr"] is not rate for group, rate in zip(self.optimizer.param_groups, self._rates, strict=True)
        ):
            self._capturable_optimizer()
        if self._graph is not None:
            self._graph.replay()
            return
        if self._eager_steps < WARMUP_STEPS:
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side), _autocast_cache_off():
                self._eager_step()
            torch.cuda.current_stream(self.device).wait_stream(side)
            self._eager_steps += 1
            return
        # Capture records this step without running it; the replay right after runs it.
        self.optimizer.zero_grad(set_to_none=True)  # gradients are then allocated in the graph's memory pool
        graph = torch.cuda.CUDAGraph()
        try:
            with _autocast_cache_off(), torch.cuda.graph(graph):
                self._forward_backward()
                self.optimizer.step()
        except Exception as error:  # nothing ran during capture, so this step is simply taken eagerly
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            log.warning("learner %r: training step cannot be captured as a CUDA graph (%s); running eagerly",
                        self.learner.name, reason)  # fmt: skip
            self.mode = "none"
            self._eager_step()
            return
        self._graph = graph
        self.captures += 1
        log.info("learner %r: training step captured as a CUDA graph (capture %d)", self.learner.name, self.captures)
        graph.replay()

    def _capturable_optimizer(self) -> None:
        """Adam as capture needs it: ``capturable``, step counts and rates on the device. A graph captured with
        other state tensors is dropped, to be captured again after warm-up steps."""
        for group in self.optimizer.param_groups:
            group["capturable"] = True
            rate = group["lr"]
            if not (isinstance(rate, Tensor) and rate.device == self.device):
                group["lr"] = torch.tensor(float(rate), dtype=torch.float32, device=self.device)
            for param in group["params"]:
                state = self.optimizer.state.get(param, {})
                if "step" in state and state["step"].device != self.device:
                    state["step"] = state["step"].to(self.device, torch.float32)
        self._rates = [group["lr"] for group in self.optimizer.param_groups]
        self._state = self.optimizer.state
        self._graph, self._eager_steps = None, 0
