"""Backbones produce the documented embedding widths and block outputs; the ProtoNet loss matches a hand computation."""

import math

import pytest
import torch

from metacollapse.device import prepare_model
from metacollapse.learners import build_learner
from metacollapse.models import (
    BACKBONES,
    build_backbone,
    embedding_dim,
    feature_map_shape,
    layer_names,
    layer_outputs,
    register_backbone,
)
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


def test_layer_outputs_average_each_conv4_block_over_space_from_one_forward_pass():
    torch.manual_seed(0)
    backbone = build_backbone({"arch": "conv4", "width": 8, "depth": 3}).eval()
    assert layer_names(backbone) == ["block1", "block2", "block3"]
    images = torch.rand(5, 1, 28, 28)
    calls = []
    backbone[0].register_forward_pre_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        out = layer_outputs(backbone, images, ["block1", "block3"])
        assert list(out) == ["block1", "block3", "embedding"] and len(calls) == 1
        assert torch.equal(out["block1"], backbone[0](images).mean(dim=(2, 3)))  # 14x14 map -> its mean
        assert torch.equal(out["block3"], backbone[:3](images).mean(dim=(2, 3)))
        assert torch.equal(out["embedding"], backbone(images))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "block1": (5, 8),
        "block3": (5, 8),
        "embedding": (5, 8 * 3 * 3),
    }
    assert not any(m._forward_hooks for m in backbone.modules())  # the hooks are gone after the pass


def test_resnet18_layer_outputs_are_its_four_stages_and_the_last_pools_to_the_embedding():
    torch.manual_seed(0)
    backbone = build_backbone({"arch": "resnet18"}).eval()
    names = layer_names(backbone)
    assert names == ["layer1", "layer2", "layer3", "layer4"] and feature_map_shape(backbone) == (512, 4, 4)
    with torch.no_grad():
        out = layer_outputs(backbone, torch.rand(2, 1, 28, 28), names)
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "layer1": (2, 64),
        "layer2": (2, 128),
        "layer3": (2, 256),
        "layer4": (2, 512),
        "embedding": (2, 512),
    }
    assert torch.allclose(out["layer4"], out["embedding"], rtol=1e-6, atol=1e-7)


def test_an_unknown_layer_names_the_backbones_layers():
    backbone = build_backbone({"arch": "conv4", "width": 4})
    with pytest.raises(ValueError, match=r"unknown layers \['layer1'\]; this backbone has \['block1', .*'block4'\]"):
        layer_outputs(backbone, torch.rand(1, 1, 28, 28), ["layer1"])
    with pytest.raises(ValueError, match="names no blocks, so it has no feature maps"):
        feature_map_shape(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 3)))


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("arch", ["conv4", "resnet18"])
def test_the_embedding_layer_equals_learner_embed_exactly(arch, precision):
    torch.manual_seed(0)
    backbone = build_backbone({"arch": arch})
    learner = prepare_model(
        build_learner({"name": "protonet"}, backbone, embedding_dim(backbone), 5), torch.device("cpu"), precision
    )
    learner.precision = precision
    images = torch.rand(6, 1, 28, 28)
    names = layer_names(backbone)
    for train_mode in (True, False):
        learner.train(train_mode)
        with torch.no_grad():
            out = learner.embed_layers(images, names)
            assert torch.equal(out["embedding"], learner.embed(images))
        assert all(v.dtype == torch.float32 for v in out.values())
        if precision == "bf16":  # the blocks ran in bf16 too
            learner.precision = "fp32"
            with torch.no_grad():
                assert not torch.equal(learner.embed_layers(images, names[:1])[names[0]], out[names[0]])
            learner.precision = "bf16"
