"""Backbones produce the documented embedding widths; the ProtoNet loss matches a hand computation."""

import math

import pytest
import torch

from metacollapse.models import BACKBONES, build_backbone, embedding_dim, register_backbone
from metacollapse.protonet import episode_loss, prototypes, squared_euclidean


@pytest.mark.parametrize(
    ("spec", "dim"),
    [({"arch": "conv4"}, 64), ({"arch": "conv4", "width": 128}, 128), ({"arch": "resnet18"}, 512)],
)
def test_embedding_dimensions(spec, dim):
    model = build_backbone(spec)
    assert embedding_dim(model) == dim
    assert model(torch.zeros(3, 1, 28, 28)).shape == (3, dim)


def test_resnet18_is_adapted_to_small_single_channel_input():
    model = build_backbone({"arch": "resnet18"})
    assert model.conv1.in_channels == 1 and model.conv1.stride == (1, 1) and model.conv1.kernel_size == (3, 3)
    assert isinstance(model.maxpool, torch.nn.Identity) and isinstance(model.fc, torch.nn.Identity)


def test_unknown_arch_and_bad_options_name_the_problem():
    with pytest.raises(ValueError, match="unknown backbone arch 'vgg'"):
        build_backbone({"arch": "vgg"})
    with pytest.raises(ValueError, match="bad options"):
        build_backbone({"arch": "conv4", "colour": 3})


def test_registry_adds_a_backbone_with_one_function():
    @register_backbone("test-linear")
    def linear(width: int = 8):
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, width))

    try:
        assert embedding_dim(build_backbone({"arch": "test-linear", "width": 5})) == 5
    finally:
        BACKBONES.pop("test-linear")


def test_prototypes_are_class_means():
    support = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 4.0], [0.0, 6.0]])  # 2 way x 2 shot
    assert torch.equal(prototypes(support, 2), torch.tensor([[1.0, 0.0], [0.0, 5.0]]))


def test_loss_on_a_hand_made_episode():
    support = torch.tensor([[0.0, 0.0], [2.0, 0.0]])  # prototypes (0,0) and (2,0)
    query = torch.tensor([[0.0, 0.0], [1.0, 0.0]])  # query 0 of class 0, query 1 of class 1 (on the boundary)
    assert torch.equal(squared_euclidean(query, support), torch.tensor([[0.0, 4.0], [1.0, 1.0]]))
    loss, accuracy = episode_loss(support, query, n_way=2)
    # query 0: logits (0, -4) -> -log softmax = log(1 + e^-4); query 1: logits tie -> log 2
    expected = (math.log(1 + math.exp(-4)) + math.log(2)) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert accuracy.item() == pytest.approx(0.5)  # tie resolves to class 0, which is wrong for query 1
