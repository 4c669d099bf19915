"""The training step through static buffers: bitwise the training loop's numbers on CPU, a CUDA graph on GPUs."""

import logging

import pytest
import torch
from conftest import synthetic_split

from metacollapse.device import prepare_model
from metacollapse.episodes import (
    EpisodeIndices,
    EpisodeSpec,
    gather_batch,
    gather_episode,
    sample_batch_indices,
    sample_episode_indices,
)
from metacollapse.learners import build_learner
from metacollapse.models import build_backbone, embedding_dim
from metacollapse.step import Stepper, resolve_compile

SPEC = EpisodeSpec(n_way=5, n_support=2, n_query=3)
BATCH = 24
EPOCHS, STEPS = 2, 10  # 20 steps, the rate halved in between
CLASSES, PER_CLASS = 12, 10
CASES = [  # learner, options, meta_batch
    ("protonet", {}, 1),
    ("protonet", {}, 2),
    ("classifier", {}, 1),
    ("maml", {"inner_steps": 2}, 1),
]
needs_cuda = pytest.mark.cuda  # selected with `pytest -m cuda` on a machine with a CUDA device


def make_run(name, options, precision, device):
    """A learner, Adam and StepLR set up as the training stage sets them up (seeded, same weights every call)."""
    torch.manual_seed(0)
    backbone = build_backbone({"arch": "conv4", "width": 16})
    learner = build_learner({"name": name, **options}, backbone, embedding_dim(backbone), CLASSES)
    learner = prepare_model(learner, torch.device(device), precision)
    learner.precision = precision
    optimizer = torch.optim.Adam(learner.parameters(), lr=1e-3, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 1, gamma=0.5)
    return learner, optimizer, scheduler


def draw_epoch(learner, generator, meta_batch):
    """The epoch's indices, drawn as the training stage draws them."""
    class_ids = torch.arange(CLASSES, device=generator.device)
    if learner.episodic:
        indices = sample_episode_indices(CLASSES, PER_CLASS, SPEC, STEPS * meta_batch, generator)
        return EpisodeIndices(class_ids[indices.classes], indices.images)
    return sample_batch_indices(class_ids, PER_CLASS, BATCH, STEPS, generator)


def reference_run(name, options, meta_batch, precision, split, device="cpu"):
    """The training loop written out plainly, with the training stage's names and statements; returns the running
    (loss_sum, acc_sum) after every step, the learner, the optimizer and the sampling generator."""
    learner, optimizer, scheduler = make_run(name, options, precision, device)
    generator = torch.Generator(device=device).manual_seed(0)
    train_split, train_spec, steps, dev = split, SPEC, STEPS, torch.device(device)
    sums = []
    for _ in range(EPOCHS):
        learner.train()
        if learner.episodic:
            indices = draw_epoch(learner, generator, meta_batch)
        else:
            batch_classes, batch_images = draw_epoch(learner, generator, meta_batch)
        loss_sum = torch.zeros((), device=dev)
        acc_sum = torch.zeros((), device=dev)
        for step in range(steps):
            optimizer.zero_grad(set_to_none=True)
            if learner.episodic:
                for task in range(meta_batch):  # gradients of the meta-batch's tasks are averaged
                    episode = indices[step * meta_batch + task]
                    support, query = gather_episode(train_split, episode, train_spec)
                    loss, accuracy = learner.episode_loss(support, query, train_spec.n_way, episode.classes[0])
                    (loss / meta_batch).backward()
                    loss_sum += loss.detach() / meta_batch
                    acc_sum += accuracy / meta_batch
            else:
                images = gather_batch(train_split, batch_classes[step], batch_images[step])
                loss, accuracy = learner.batch_loss(images, batch_classes[step])
                loss.backward()
                loss_sum += loss.detach()
                acc_sum += accuracy
            optimizer.step()
            sums.append((loss_sum.clone(), acc_sum.clone()))
        scheduler.step()
    return sums, learner, optimizer, generator


def stepper_run(name, options, meta_batch, precision, split, device="cpu", compile="auto", learner_hook=None):
    learner, optimizer, scheduler = make_run(name, options, precision, device)
    if learner_hook:
        learner_hook(learner)
    generator = torch.Generator(device=device).manual_seed(0)
    shape = SPEC if learner.episodic else BATCH
    stepper = Stepper(learner, optimizer, split, shape, meta_batch, compile=compile)
    sums = []
    for _ in range(EPOCHS):
        learner.train()
        stepper.reset()
        if learner.episodic:
            indices = draw_epoch(learner, generator, meta_batch)
            rows = [slice(s * meta_batch, (s + 1) * meta_batch) for s in range(STEPS)]
            for row in rows:
                stepper.step(indices.classes[row], indices.images[row])
                sums.append(tuple(t.clone() for t in stepper.totals()))
        else:
            classes, images = draw_epoch(learner, generator, meta_batch)
            for step in range(STEPS):
                stepper.step(classes[step], images[step])
                sums.append(tuple(t.clone() for t in stepper.totals()))
        scheduler.step()
    return sums, learner, optimizer, generator, stepper


def optimizer_tensors(optimizer):
    return [value for state in optimizer.state.values() for value in state.values()]


@pytest.fixture(scope="module")
def split():
    return torch.from_numpy(synthetic_split(CLASSES, per_class=PER_CLASS, seed=3))


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize(("name", "options", "meta_batch"), CASES)
def test_twenty_steps_on_cpu_equal_the_training_loop_bitwise(name, options, meta_batch, precision, split):
    expected, ref_learner, ref_optimizer, ref_generator = reference_run(name, options, meta_batch, precision, split)
    got, learner, optimizer, generator, stepper = stepper_run(name, options, meta_batch, precision, split)
    assert stepper.mode == "none" and len(got) == len(expected) == EPOCHS * STEPS
    for step, ((loss, acc), (ref_loss, ref_acc)) in enumerate(zip(got, expected, strict=True)):
        assert torch.equal(loss, ref_loss) and torch.equal(acc, ref_acc), f"step {step}: {loss} != {ref_loss}"
    assert expected[-1][0] < expected[STEPS - 1][0]  # the second epoch's losses are lower: training happened
    state, ref_state = learner.state_dict(), ref_learner.state_dict()
    assert all(torch.equal(state[key], ref_state[key]) for key in ref_state)  # weights and batch-norm statistics
    assert all(map(torch.equal, optimizer_tensors(optimizer), optimizer_tensors(ref_optimizer)))
    assert optimizer.param_groups[0]["lr"] == ref_optimizer.param_groups[0]["lr"] == 2.5e-4
    assert torch.equal(generator.get_state(), ref_generator.get_state())


def test_a_step_rejects_indices_of_another_shape_and_an_untrained_mode(split):
    learner, optimizer, _ = make_run("protonet", {}, "fp32", "cpu")
    stepper = Stepper(learner, optimizer, split, SPEC, meta_batch=2)
    indices = sample_episode_indices(CLASSES, PER_CLASS, SPEC, 3, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"expected classes \(2, 5\) and images \(2, 5, 5\), got \(3, 5\) and"):
        stepper.step(indices.classes, indices.images)
    learner.eval()
    with pytest.raises(ValueError, match="learner 'protonet' must be in train mode to take a training step"):
        stepper.step(indices.classes[:2], indices.images[:2])
    with pytest.raises(ValueError, match="learner 'protonet' is episodic: shape must be an EpisodeSpec, got 24"):
        Stepper(learner, optimizer, split, BATCH)
    with pytest.raises(ValueError, match="meta_batch must be an integer >= 1, got 0"):
        Stepper(learner, optimizer, split, SPEC, meta_batch=0)


def test_compile_defaults_to_a_graph_on_cuda_and_to_eager_elsewhere():
    assert resolve_compile("auto", torch.device("cpu")) == "none"
    assert resolve_compile("auto", torch.device("cuda")) == "graph"
    assert resolve_compile("reduce-overhead", torch.device("cpu")) == "reduce-overhead"
    with pytest.raises(ValueError, match="compile 'graph' captures CUDA graphs and needs a CUDA device, got 'cpu'"):
        resolve_compile("graph", torch.device("cpu"))
    with pytest.raises(ValueError, match=r"compile must be one of \('auto', 'none', 'graph', 'reduce-overhead'\)"):
        resolve_compile("max-autotune", torch.device("cpu"))


# On CUDA the graph is compared with the eager step by closeness, not bitwise: capture switches Adam to its
# capturable form (bias corrections computed on the device from a float32 rate), and cuBLAS/cuDNN may pick other
# kernels inside a capture. cuDNN autotuning is off here so that both runs use the same convolution algorithms.


@needs_cuda
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize(("name", "options", "meta_batch"), CASES)
def test_a_cuda_graph_replays_the_eager_step_and_follows_the_rate_schedule(name, options, meta_batch, precision, split):
    torch.backends.cudnn.benchmark = False
    split = split.cuda()
    eager, *_ = stepper_run(name, options, meta_batch, precision, split, "cuda", compile="none")
    graph, learner, optimizer, _, stepper = stepper_run(name, options, meta_batch, precision, split, "cuda")
    assert stepper.mode == "graph" and stepper.captures == 1  # the rate halved without a second capture
    assert float(optimizer.param_groups[0]["lr"]) == 2.5e-4
    tolerance = {"rtol": 1e-4, "atol": 1e-5} if precision == "fp32" else {"rtol": 2e-2, "atol": 1e-3}
    torch.testing.assert_close(torch.stack([s[0] for s in graph]), torch.stack([s[0] for s in eager]), **tolerance)
    torch.testing.assert_close(torch.stack([s[1] for s in graph]), torch.stack([s[1] for s in eager]), **tolerance)


@needs_cuda
def test_a_step_that_reads_the_host_falls_back_to_eager_with_one_warning(split, caplog):
    def host_read(learner):
        loss_of = learner.episode_loss

        def episode_loss(*args):
            loss, accuracy = loss_of(*args)
            if float(loss) < 0:  # a host-side decision on a tensor value: not capturable
                raise AssertionError("a loss is never negative")
            return loss, accuracy

        learner.episode_loss = episode_loss

    split = split.cuda()
    with caplog.at_level(logging.WARNING, logger="metacollapse.step"):
        got, *_, stepper = stepper_run("protonet", {}, 1, "fp32", split, "cuda", learner_hook=host_read)
    eager, *_ = stepper_run("protonet", {}, 1, "fp32", split, "cuda", compile="none", learner_hook=host_read)
    assert stepper.mode == "none" and stepper.captures == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "cannot be captured as a CUDA graph" in warnings[0] and "eagerly" in warnings[0]
    torch.testing.assert_close(torch.stack([s[0] for s in got]), torch.stack([s[0] for s in eager]))


@needs_cuda
def test_reduce_overhead_compiles_the_step_and_stays_close_to_eager(split):
    split = split.cuda()
    eager, *_ = stepper_run("protonet", {}, 1, "fp32", split, "cuda", compile="none")
    compiled, *_, stepper = stepper_run("protonet", {}, 1, "fp32", split, "cuda", compile="reduce-overhead")
    assert stepper.mode == "reduce-overhead"
    # Inductor fuses and reorders floating-point work, so the sums agree closely but not bitwise.
    torch.testing.assert_close(
        torch.stack([s[0] for s in compiled]), torch.stack([s[0] for s in eager]), rtol=1e-4, atol=1e-5
    )
