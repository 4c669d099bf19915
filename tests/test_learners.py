"""Learners: the registry, each method's rule against a hand computation, and that each one learns."""

import re

import pytest
import torch
import torch.nn.functional as F
from conftest import synthetic_split
from torch import nn

from metacollapse.episodes import EpisodeSpec, fixed_episode_indices, gather_episode
from metacollapse.learners import LEARNERS, build_learner, class_subset, learner_options
from metacollapse.models import build_backbone, embedding_dim
from metacollapse.protonet import episode_loss, prototypes

SPEC = EpisodeSpec(n_way=5, n_support=2, n_query=3)


def conv4_learner(spec: dict, n_train_classes: int = 12, seed: int = 0):
    torch.manual_seed(seed)
    backbone = build_backbone({"arch": "conv4", "width": 8})
    return build_learner(spec, backbone, embedding_dim(backbone), n_train_classes)


def linear_learner(spec: dict, d: int, n_train_classes: int = 4, backbone: nn.Module | None = None):
    """A learner on images ``[n, 1, 1, d]`` whose backbone is a flatten (embedding = the image) or ``backbone``."""
    return build_learner(spec, backbone or nn.Flatten(), d, n_train_classes)


@pytest.fixture(scope="module")
def split() -> torch.Tensor:
    return torch.from_numpy(synthetic_split(12, per_class=10, seed=3))


def episodes(split: torch.Tensor, count: int, seed: int):
    indices = fixed_episode_indices(split.shape[0], split.shape[1], SPEC, count, seed)
    for i in range(count):
        support, query = gather_episode(split, indices[i], SPEC)
        yield support, query, indices.classes[i]


def test_build_learner_rejects_unknown_names_and_options():
    backbone = nn.Flatten()
    with pytest.raises(
        ValueError, match=r"^learner.name = 'reptile': unknown learner; expected one of anil, classifier, maml"
    ):
        build_learner({"name": "reptile"}, backbone, 4, 3)
    with pytest.raises(
        ValueError,
        match=r"learner 'maml': learner.lr: unknown option of 'maml'; allowed: class_seed, classes, eval_inner",
    ):
        build_learner({"name": "maml", "lr": 0.1}, backbone, 4, 3)
    with pytest.raises(
        ValueError,
        match=r"learner 'protonet': learner.scale: unknown option of 'protonet'; allowed: class_seed, classes$",
    ):
        build_learner({"name": "protonet", "scale": 2}, backbone, 4, 3)
    with pytest.raises(ValueError, match="learner 'anil': inner_steps must be an integer >= 1, got 0"):
        build_learner({"name": "anil", "inner_steps": 0}, backbone, 4, 3)
    for name in LEARNERS:
        with pytest.raises(ValueError, match=r"need 1 <= classes <= 3 \(training classes\), got 5"):
            build_learner({"name": name, "classes": 5}, backbone, 4, 3)
    assert set(LEARNERS) == {
        "protonet",
        "protonet_head",
        "protonet_cosine",
        "matchingnet",
        "relationnet",
        "maml",
        "anil",
        "classifier",
    }


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"name": "maml", "inner_lr": "x"}, "learner 'maml': learner.inner_lr = 'x': expected a number"),
        ({"name": "maml", "classes": "5"}, "learner 'maml': learner.classes = '5': expected an integer or null"),
        ({"name": "anil", "inner_steps": 2.0}, "learner 'anil': learner.inner_steps = 2.0: expected an integer"),
        (
            {"name": "protonet", "classes": True},
            "learner 'protonet': learner.classes = True: expected an integer or null",
        ),
        (
            {"name": "matchingnet", "learn_scale": "no"},
            "learner 'matchingnet': learner.learn_scale = 'no': expected true or false",
        ),
        (
            {"name": "relationnet", "hidden": None},
            "learner 'relationnet': learner.hidden = None: expected an integer",
        ),
    ],
)
def test_an_option_of_the_wrong_type_is_one_error_naming_learner_option_value_and_type(spec, message):
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        build_learner(spec, nn.Flatten(), 4, 3)


def test_options_of_the_right_type_build_and_an_integer_is_a_valid_float():
    learner = build_learner({"name": "maml", "inner_lr": 1, "classes": None}, nn.Flatten(), 4, 3)
    assert learner.inner_lr == 1.0 and learner.train_class_ids() is None


def test_class_seed_without_classes_is_an_error():
    with pytest.raises(ValueError, match=r"^learner 'classifier': learner.class_seed = 3 without learner.classes"):
        build_learner({"name": "classifier", "class_seed": 3}, nn.Flatten(), 4, 3)
    with pytest.raises(ValueError, match=r"^learner 'protonet': learner.class_seed = 0 without learner.classes"):
        build_learner({"name": "protonet", "classes": None, "class_seed": 0}, nn.Flatten(), 4, 3)


@pytest.mark.parametrize(("name", "inner_lr", "first_order"), [("maml", 0.1, True), ("anil", 0.4, False)])
def test_maml_and_anil_share_one_constructor_with_their_own_defaults(name, inner_lr, first_order):
    assert "__init__" not in vars(LEARNERS[name])
    learner = build_learner({"name": name}, nn.Flatten(), 4, 3)
    assert (learner.inner_lr, learner.first_order) == (inner_lr, first_order)
    assert (learner.inner_steps, learner.eval_inner_steps) == (5, 10)
    assert learner_options(LEARNERS[name]) == {
        "classes": None,
        "class_seed": 0,
        "inner_steps": 5,
        "eval_inner_steps": 10,
        "inner_lr": inner_lr,
        "first_order": first_order,
    }


def test_protonet_equals_the_backbone_and_loss_code_path_bitwise(split):
    (support, query, classes), *_ = episodes(split, 1, seed=1)
    learner = conv4_learner({"name": "protonet"})
    loss, accuracy = learner.episode_loss(support, query, SPEC.n_way, classes)
    loss.backward()
    grads = [p.grad.clone() for p in learner.backbone.parameters()]
    learner.zero_grad()
    both = learner.backbone(torch.cat([support, query]))
    expected_loss, expected_accuracy = episode_loss(both[: len(support)], both[len(support) :], SPEC.n_way)
    expected_loss.backward()
    assert torch.equal(loss, expected_loss) and torch.equal(accuracy, expected_accuracy)
    assert all(torch.equal(g, p.grad) for g, p in zip(grads, learner.backbone.parameters(), strict=True))
    fewshot_loss, _ = learner.fewshot(support, query, SPEC.n_way)
    assert torch.equal(fewshot_loss, loss)


@pytest.mark.parametrize(
    "spec",
    [
        {"name": "protonet"},
        {"name": "protonet_head"},
        {"name": "protonet_cosine"},
        {"name": "matchingnet"},
        {"name": "relationnet"},
        {"name": "anil"},
        {"name": "maml", "inner_steps": 2},
    ],
    ids=lambda s: s["name"],
)
def test_episodic_learners_lower_their_loss(spec, split):
    learner = conv4_learner(spec)
    learner.train()
    held_out = list(episodes(split, 3, seed=100))

    def mean_loss() -> float:
        with torch.no_grad():
            return sum(learner.episode_loss(s, q, SPEC.n_way, c)[0].item() for s, q, c in held_out) / len(held_out)

    before = mean_loss()
    optimizer = torch.optim.Adam(learner.parameters(), lr=5e-3)
    for support, query, classes in episodes(split, 20, seed=5):
        loss, accuracy = learner.episode_loss(support, query, SPEC.n_way, classes)
        assert loss.shape == accuracy.shape == () and loss.dtype == accuracy.dtype == torch.float32
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = mean_loss()
    assert after < 0.8 * before, f"{spec['name']}: mean held-out episode loss {before:.4f} -> {after:.4f}"


def test_classifier_lowers_its_loss_on_its_class_subset(split):
    learner = conv4_learner({"name": "classifier", "classes": 6, "class_seed": 2})
    assert not learner.episodic and torch.equal(learner.train_class_ids(), class_subset(12, 6, 2))
    generator = torch.Generator().manual_seed(0)
    ids = learner.train_class_ids()

    def batch() -> tuple[torch.Tensor, torch.Tensor]:
        labels = ids[torch.randint(len(ids), (32,), generator=generator)]
        images = split[labels, torch.randint(split.shape[1], (32,), generator=generator)]
        return images.float().unsqueeze(1), labels

    held_images, held_labels = batch()
    with torch.no_grad():
        before = learner.batch_loss(held_images, held_labels)[0].item()
    optimizer = torch.optim.Adam(learner.parameters(), lr=5e-3)
    for _ in range(20):
        loss, _ = learner.batch_loss(*batch())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        after = learner.batch_loss(held_images, held_labels)[0].item()
    assert after < 0.5 * before, f"classifier: held-out batch loss {before:.4f} -> {after:.4f}"
    with pytest.raises(NotImplementedError, match="'classifier' is not episodic"):
        learner.episode_loss(held_images[:5], held_images[5:10], 5, ids[:5])


def test_class_subset_is_seeded_sorted_and_distinct():
    a, b, c = class_subset(100, 10, 0), class_subset(100, 10, 0), class_subset(100, 10, 1)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert len(a.unique()) == 10 and torch.equal(a, a.sort().values) and int(a.max()) < 100


def test_classifier_maps_split_class_ids_to_head_rows_and_exposes_its_head():
    torch.manual_seed(0)
    learner = linear_learner({"name": "classifier", "classes": 3, "class_seed": 4}, d=5, n_train_classes=8)
    w, b, ids = learner.head_weights()
    assert torch.equal(ids, class_subset(8, 3, 4))
    assert w.data_ptr() == learner.head.weight.data_ptr() and b.data_ptr() == learner.head.bias.data_ptr()
    assert w.shape == (3, 5) and b.shape == (3,)
    x = torch.randn(6, 1, 1, 5)
    rows = torch.tensor([2, 0, 1, 1, 0, 2])
    loss, accuracy = learner.batch_loss(x, ids[rows])
    logits = x.flatten(1).double() @ w.double().T + b.double()
    assert loss.item() == pytest.approx(F.cross_entropy(logits, rows).item(), rel=1e-6)
    assert accuracy.item() == pytest.approx((logits.argmax(1) == rows).double().mean().item())
    unrestricted = linear_learner({"name": "classifier"}, d=5, n_train_classes=8)
    assert unrestricted.train_class_ids() is None and torch.equal(unrestricted.head_weights()[2], torch.arange(8))


def test_protonet_head_adds_weighted_cross_entropy_over_split_classes():
    torch.manual_seed(1)
    learner = linear_learner({"name": "protonet_head", "head_weight": 0.5}, d=3, n_train_classes=6)
    support, query = torch.randn(4, 1, 1, 3), torch.randn(6, 1, 1, 3)  # 2-way, 2 shots, 3 queries
    classes = torch.tensor([4, 1])
    loss, accuracy = learner.episode_loss(support, query, 2, classes)
    w, b, ids = learner.head_weights()
    assert w.data_ptr() == learner.head.weight.data_ptr() and torch.equal(ids, torch.arange(6))
    proto_loss, proto_accuracy = episode_loss(support.flatten(1), query.flatten(1), 2)
    features = torch.cat([support, query]).flatten(1).double()
    labels = torch.tensor([4, 4, 1, 1, 4, 4, 4, 1, 1, 1])
    head_loss = F.cross_entropy(features @ w.double().T + b.double(), labels)
    assert loss.item() == pytest.approx(proto_loss.item() + 0.5 * head_loss.item(), rel=1e-6)
    assert torch.equal(accuracy, proto_accuracy)


def test_protonet_head_on_a_class_subset_has_a_row_per_class_and_maps_split_ids_to_rows():
    torch.manual_seed(2)
    learner = linear_learner({"name": "protonet_head", "classes": 3, "class_seed": 1}, d=3, n_train_classes=8)
    w, b, ids = learner.head_weights()
    assert w.shape == (3, 3) and torch.equal(ids, class_subset(8, 3, 1))
    assert torch.equal(learner.train_class_ids(), ids)
    support, query = torch.randn(4, 1, 1, 3), torch.randn(2, 1, 1, 3)  # 2-way, 2 shots, 1 query
    loss, _ = learner.episode_loss(support, query, 2, ids[[2, 0]])
    proto_loss, _ = episode_loss(support.flatten(1), query.flatten(1), 2)
    rows = torch.tensor([2, 2, 0, 0, 2, 0])
    head_loss = F.cross_entropy(torch.cat([support, query]).flatten(1).double() @ w.double().T + b.double(), rows)
    assert loss.item() == pytest.approx(proto_loss.item() + head_loss.item(), rel=1e-6)
    assert "class_ids" not in learner.state_dict() and "row_of_class" not in learner.state_dict()


@pytest.mark.parametrize("scale", [1.0, 2.5])
def test_matching_net_attention_sums_softmax_of_cosines_per_class(scale):
    learner = linear_learner({"name": "matchingnet", "scale": scale}, d=2)
    # 2-way 2-shot; the query (3, 4) has cosines 0.6, 0.8 with class 0's supports and -0.6, -0.8 with class 1's.
    support = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-1.0, 0.0], [0.0, -3.0]]).reshape(4, 1, 1, 2)
    query = torch.tensor([[3.0, 4.0], [-3.0, -4.0]]).reshape(2, 1, 1, 2)  # one query of each class
    e = torch.tensor([0.6, 0.8, -0.6, -0.8], dtype=torch.float64).mul(scale).exp()
    p0 = ((e[0] + e[1]) / e.sum()).item()  # the first query's probability of class 0; the second's of class 1 is p0
    log_p = learner.class_log_probs(support.flatten(1), query.flatten(1), 2)
    assert log_p.exp().flatten().tolist() == pytest.approx([p0, 1 - p0, 1 - p0, p0], rel=1e-6)
    loss, accuracy = learner.fewshot(support, query, 2)
    assert loss.item() == pytest.approx(-torch.log(torch.tensor(p0, dtype=torch.float64)).item(), rel=1e-5)
    assert accuracy.item() == 1.0
    learned = linear_learner({"name": "matchingnet", "learn_scale": True}, d=2)
    assert [name for name, _ in learned.named_parameters()] == ["scale"]


def inner_step_by_hand(a, w, b, x, y, n_way, lr):
    """One SGD step of CE(x A^T W^T + b) in float64; returns (A, W, b) after it. ``a=None``: identity backbone."""
    h = x if a is None else x @ a.T
    g = (torch.softmax(h @ w.T + b, dim=1) - F.one_hot(y, n_way).double()) / x.shape[0]  # dCE/dlogits
    grad_a = None if a is None else w.T @ g.T @ x
    return (None if a is None else a - lr * grad_a), w - lr * g.T @ h, b - lr * g.sum(0)


def tiny_task(seed: int = 0, d: int = 3, n_way: int = 2):
    torch.manual_seed(seed)
    support, query = torch.randn(2 * n_way, 1, 1, d), torch.randn(3 * n_way, 1, 1, d)
    y_s, y_q = torch.arange(n_way).repeat_interleave(2), torch.arange(n_way).repeat_interleave(3)
    return support, query, y_s, y_q


def test_anil_one_step_adapts_a_zero_head_in_closed_form():
    support, query, y_s, y_q = tiny_task(d=3, n_way=2)
    learner = linear_learner({"name": "anil", "inner_steps": 1, "inner_lr": 0.7}, d=3)
    x, xq = support.flatten(1).double(), query.flatten(1).double()
    # At W = 0 the softmax is uniform, so the adapted head is lr * (onehot - 1/n_way)^T x / n; b stays 0 (balanced).
    w1 = 0.7 * (F.one_hot(y_s, 2).double() - 0.5).T @ x / x.shape[0]
    _, w, b = inner_step_by_hand(None, torch.zeros(2, 3, dtype=torch.float64), torch.zeros(2).double(), x, y_s, 2, 0.7)
    assert torch.allclose(w, w1) and torch.allclose(b, torch.zeros(2).double())
    _, w_model, b_model = learner.adapt(lambda p, w, b: F.linear(support.flatten(1), w, b), y_s, 2, steps=1)
    assert torch.allclose(w_model.double(), w1, atol=1e-6) and torch.allclose(b_model.double(), b, atol=1e-7)
    loss, _ = learner.episode_loss(support, query, 2, torch.tensor([0, 1]))
    assert loss.item() == pytest.approx(F.cross_entropy(xq @ w1.T, y_q).item(), rel=1e-5)


@pytest.mark.parametrize("first_order", [True, False])
def test_maml_two_inner_steps_match_the_hand_computation(first_order):
    support, query, y_s, y_q = tiny_task(seed=1, d=3, n_way=2)
    torch.manual_seed(2)
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(3, 4, bias=False))
    spec = {"name": "maml", "inner_steps": 2, "inner_lr": 0.5, "first_order": first_order}
    learner = linear_learner(spec, d=4, backbone=backbone)
    loss, _ = learner.episode_loss(support, query, 2, torch.tensor([0, 1]))
    loss.backward()

    x, xq = support.flatten(1).double(), query.flatten(1).double()
    a0 = backbone[1].weight.detach().double().requires_grad_()
    a, w, b = a0, torch.zeros(2, 4, dtype=torch.float64), torch.zeros(2, dtype=torch.float64)
    for _ in range(2):
        a, w, b = inner_step_by_hand(a, w, b, x, y_s, 2, 0.5)
        if first_order:  # first order: the adapted weights are a0 plus constants
            a = a0 + (a - a0).detach()
            w, b = w.detach(), b.detach()
    expected = F.cross_entropy(xq @ a.T @ w.T + b, y_q)
    expected.backward()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert torch.allclose(backbone[1].weight.grad.double(), a0.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", ["maml", "anil"])
def test_fewshot_adapts_without_touching_the_learner(name, split):
    learner = conv4_learner({"name": name, "eval_inner_steps": 2})
    learner.train()
    for support, query, classes in episodes(split, 1, seed=7):  # give batch norm some running statistics
        with torch.no_grad():
            learner.episode_loss(support, query, SPEC.n_way, classes)
    state = {k: v.clone() for k, v in learner.state_dict().items()}
    learner.eval()
    (support, query, _), *_ = episodes(split, 1, seed=8)
    with torch.no_grad():
        loss, accuracy = learner.fewshot(support, query, SPEC.n_way)
    assert loss.shape == accuracy.shape == () and loss.dtype == accuracy.dtype == torch.float32
    assert not loss.requires_grad and 0.0 <= accuracy.item() <= 1.0 and torch.isfinite(loss)
    assert all(torch.equal(state[k], v) for k, v in learner.state_dict().items())
    assert all(p.grad is None for p in learner.parameters())
    assert not learner.training and all(not m.training for m in learner.modules())
    assert learner.head_weights() is None and learner.train_class_ids() is None


def test_embed_returns_float32_in_bf16():
    learner = conv4_learner({"name": "protonet"})
    learner.precision = "bf16"
    images = torch.rand(4, 1, 28, 28)
    out = learner.embed(images)
    assert out.dtype == torch.float32 and out.shape == (4, 8)
    learner.precision = "fp32"
    assert not torch.equal(out, learner.embed(images))  # bf16 arithmetic really ran


def test_protonet_cosine_logits_are_scale_times_cosine_to_the_mean_of_normalised_supports():
    learner = linear_learner({"name": "protonet_cosine", "scale": 3.0}, d=2)
    # 2-way 2-shot: normalised supports (1,0),(0,1) -> prototype (0.5,0.5); (-1,0),(0,-1) -> (-0.5,-0.5)
    support = torch.tensor([[2.0, 0.0], [0.0, 5.0], [-1.0, 0.0], [0.0, -3.0]]).reshape(4, 1, 1, 2)
    query = torch.tensor([[3.0, 4.0], [0.0, -1.0]]).reshape(2, 1, 1, 2)
    # cos((3,4)/5, (1,1)/sqrt2) = 7/(5 sqrt2); cos((0,-1), (1,1)/sqrt2) = -1/sqrt2; the other class is the negative
    c = [7 / (5 * 2**0.5), -(2**-0.5)]
    expected = 3.0 * torch.tensor([[c[0], -c[0]], [c[1], -c[1]]], dtype=torch.float64)
    logits = learner.logits(support.flatten(1), query.flatten(1), 2)
    assert torch.allclose(logits.double(), expected, atol=1e-6)
    loss, accuracy = learner.fewshot(support, query, 2)
    assert loss.item() == pytest.approx(F.cross_entropy(expected, torch.tensor([0, 1])).item(), rel=1e-5)
    assert accuracy.item() == 1.0
    assert torch.equal(learner.episode_loss(support, query, 2, torch.tensor([0, 1]))[0], loss)


def test_protonet_cosine_learns_its_scale_from_10_unless_told_not_to():
    learner = linear_learner({"name": "protonet_cosine"}, d=2)
    assert [name for name, _ in learner.named_parameters()] == ["scale"] and learner.scale.item() == 10.0
    support, query = torch.randn(4, 1, 1, 2), torch.randn(4, 1, 1, 2)
    loss, _ = learner.episode_loss(support, query, 2, torch.tensor([0, 1]))
    loss.backward()
    assert learner.scale.grad is not None and learner.scale.grad.item() != 0.0
    torch.optim.SGD(learner.parameters(), lr=0.1).step()
    assert learner.scale.item() != 10.0
    fixed = linear_learner({"name": "protonet_cosine", "scale": 4.0, "learn_scale": False}, d=2)
    assert list(fixed.parameters()) == [] and fixed.scale.item() == 4.0


def test_prototypes_of_protonet_cosine_ignore_the_length_of_support_embeddings():
    learner = linear_learner({"name": "protonet_cosine"}, d=2)
    support = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    query = torch.tensor([[1.0, 2.0]])
    stretched = support * torch.tensor([[100.0], [1.0], [1.0], [1.0]])  # one long support leaves its prototype
    assert torch.allclose(learner.logits(stretched, query, 2), learner.logits(support, query, 2))
    assert torch.allclose(prototypes(F.normalize(support, dim=1), 2), torch.tensor([[0.5, 0.5], [-0.5, -0.5]]))


@pytest.mark.parametrize(("arch", "pools"), [("conv4", 0), ("resnet18", 2)])
def test_relation_module_fits_the_backbones_feature_maps(arch, pools):
    torch.manual_seed(0)
    backbone = build_backbone({"arch": arch})
    learner = build_learner({"name": "relationnet"}, backbone, embedding_dim(backbone), 5)
    maps = learner.feature_maps(torch.rand(3, 1, 28, 28))
    assert maps.shape == ((3, 64, 1, 1) if arch == "conv4" else (3, 512, 4, 4)) and maps.dtype == torch.float32
    convs = [m for m in learner.relation if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [(2 * maps.shape[1], 64, (3, 3))] + [
        (64, 64, (3, 3))
    ]
    assert sum(isinstance(m, nn.MaxPool2d) for m in learner.relation) == pools
    linears = [m for m in learner.relation if isinstance(m, nn.Linear)]
    assert [(lin.in_features, lin.out_features) for lin in linears] == [(64, 8), (8, 1)]
    assert isinstance(learner.relation[-1], nn.Sigmoid)
    learner.eval()
    with torch.no_grad():
        embedding = learner.embed(torch.rand(3, 1, 28, 28))
    assert embedding.shape == (3, embedding_dim(backbone))  # the probes see the backbone's output


def test_relationnet_scores_class_sums_against_queries_with_mse_to_one_hot():
    learner = conv4_learner({"name": "relationnet", "hidden": 4})
    learner.train()
    support, query = torch.rand(6, 1, 28, 28), torch.rand(4, 1, 28, 28)  # 2-way 3-shot, 2 queries per class
    loss, accuracy = learner.episode_loss(support, query, 2, torch.tensor([0, 1]))
    maps = learner.feature_maps(torch.cat([support, query]))
    s, q = maps[:6], maps[6:]
    class_maps = torch.stack([s[:3].sum(0), s[3:].sum(0)])
    pairs = torch.cat([class_maps.unsqueeze(0).expand(4, -1, -1, -1, -1), q.unsqueeze(1).expand(-1, 2, -1, -1, -1)], 2)
    scores = learner.relation(pairs.flatten(0, 1)).reshape(4, 2)
    assert torch.equal(learner.relation_scores(s, q, 2), scores) and ((scores > 0) & (scores < 1)).all()
    one_hot = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    assert loss.item() == pytest.approx(((scores - one_hot) ** 2).mean().item(), rel=1e-6)
    assert accuracy.item() == (scores.argmax(1) == torch.tensor([0, 0, 1, 1])).float().mean().item()


def test_relationnet_learns_to_classify_held_out_episodes(split):
    learner = conv4_learner({"name": "relationnet"})
    held_out = list(episodes(split, 5, seed=100))

    def accuracy() -> float:
        learner.eval()
        with torch.no_grad():
            return sum(learner.fewshot(s, q, SPEC.n_way)[1].item() for s, q, _ in held_out) / len(held_out)

    before = accuracy()
    learner.train()
    optimizer = torch.optim.Adam(learner.parameters(), lr=5e-3)
    for support, query, classes in episodes(split, 40, seed=5):
        loss, _ = learner.episode_loss(support, query, SPEC.n_way, classes)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = accuracy()
    assert before < 0.4 and after > 0.6, f"held-out 5-way accuracy {before:.2f} -> {after:.2f} (chance 0.2)"
    assert learner.head_weights() is None
