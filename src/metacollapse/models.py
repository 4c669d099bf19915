"""Backbone registry: the embedding networks a ProtoNet is trained with.

A backbone maps a batch of 1x28x28 images to a flat embedding. Each entry of ``BACKBONES`` is a factory
taking keyword options from the config (``backbones.<name>`` minus its ``arch`` key), so a width-scaled
Conv-4 is a config value (``{arch: conv4, width: 128}``), and adding an architecture is one decorated function.
A factory may name the backbone's blocks (``LAYER_PATHS``) so that their outputs can be read (:func:`layer_outputs`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

BackboneFactory = Callable[..., nn.Module]
BACKBONES: dict[str, BackboneFactory] = {}
LAYER_PATHS = "layer_paths"  # attribute of a backbone: {layer name: submodule path}, in depth order


def register_backbone(name: str) -> Callable[[BackboneFactory], BackboneFactory]:
    """Add a factory to the registry under ``name`` (the config's ``arch`` value)."""

    def decorator(factory: BackboneFactory) -> BackboneFactory:
        if name in BACKBONES:
            raise ValueError(f"backbone {name!r} is registered twice")
        BACKBONES[name] = factory
        return factory

    return decorator


def conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """One Conv-4 block: 3x3 conv (padding 1), batch norm, ReLU, 2x2 max-pool (as in Snell et al.)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
        nn.MaxPool2d(2),
    )


@register_backbone("conv4")
def conv4(width: int = 64, depth: int = 4, in_channels: int = 1) -> nn.Module:
    """Conv-4: ``depth`` conv blocks of ``width`` filters; 28x28 -> 14 -> 7 -> 3 -> 1, so a ``width``-d embedding."""
    blocks = [conv_block(in_channels if i == 0 else width, width) for i in range(depth)]
    net = nn.Sequential(*blocks, nn.Flatten())
    setattr(net, LAYER_PATHS, {f"block{i + 1}": str(i) for i in range(depth)})
    return net


@register_backbone("resnet18")
def resnet18(in_channels: int = 1, width: int = 64) -> nn.Module:
    """torchvision's ResNet-18 adapted to 28x28 single-channel input.

    The ImageNet stem (7x7 stride-2 conv, then max-pool) would shrink a 28x28 image to 7x7 before the first
    residual stage, so it becomes a 3x3 stride-1 conv and the max-pool is dropped. Global average pooling stays;
    the classification layer is removed, so the embedding is ``8 * width`` = 512-d by default.
    """
    from torchvision.models import resnet18 as tv_resnet18

    if width != 64:
        # torchvision's ResNet fixes the stem width at 64; scaling the whole net is not needed by the paper.
        raise ValueError(f"resnet18: width {width} is not supported (expected 64)")
    net = tv_resnet18(weights=None)
    net.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    net.fc = nn.Identity()
    setattr(net, LAYER_PATHS, {f"layer{i}": f"layer{i}" for i in range(1, 5)})
    return net


def build_backbone(spec: Mapping[str, Any]) -> nn.Module:
    """Build the backbone a config entry describes, e.g. ``{"arch": "conv4", "width": 128}``."""
    options = dict(spec)
    arch = options.pop("arch", None)
    if arch not in BACKBONES:
        raise ValueError(f"unknown backbone arch {arch!r}; expected one of {sorted(BACKBONES)}")
    try:
        return BACKBONES[arch](**options)
    except TypeError as error:
        raise ValueError(f"backbone {arch!r}: bad options {options}: {error}") from error


def embedding_dim(model: nn.Module, image_shape: tuple[int, int] = (28, 28)) -> int:
    """Width of the embedding the model produces for one image (probed with a forward pass in eval mode)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            param = next(model.parameters())
            out = model(torch.zeros(2, 1, *image_shape, device=param.device, dtype=param.dtype))
    finally:
        model.train(was_training)
    return int(out.shape[-1])


def layer_names(backbone: nn.Module) -> list[str]:
    """The backbone's named blocks in depth order (Conv-4: ``block1..``; ResNet-18: ``layer1..layer4``)."""
    return list(getattr(backbone, LAYER_PATHS, {}))


def forward_with_layers(backbone: nn.Module, images: Tensor, names: Sequence[str]) -> tuple[Tensor, dict[str, Tensor]]:
    """The backbone's output on ``images`` and the raw outputs ``[n, C, h, w]`` of the named blocks, from one
    forward pass (forward hooks; the arithmetic is the plain forward's)."""
    paths = getattr(backbone, LAYER_PATHS, {})
    unknown = [name for name in names if name not in paths]
    if unknown:
        raise ValueError(f"unknown layers {unknown}; this backbone has {list(paths)}")
    outputs: dict[str, Tensor] = {}
    handles = [
        backbone.get_submodule(paths[name]).register_forward_hook(
            lambda _module, _inputs, output, name=name: outputs.__setitem__(name, output)
        )
        for name in names
    ]
    try:
        out = backbone(images)
    finally:
        for handle in handles:
            handle.remove()
    return out, outputs


def layer_outputs(backbone: nn.Module, images: Tensor, names: Sequence[str]) -> dict[str, Tensor]:
    """float32 ``{name: [n, C]}``: each named block's output averaged over its spatial positions, and
    ``embedding``: the backbone's output, exactly as ``backbone(images)``; one forward pass."""
    out, raw = forward_with_layers(backbone, images, names)
    return {**{name: raw[name].float().mean(dim=(2, 3)) for name in names}, "embedding": out.float()}


def feature_map_shape(backbone: nn.Module, image_shape: tuple[int, int] = (28, 28)) -> tuple[int, int, int]:
    """``(C, h, w)`` of the last named block's output, the map the backbone flattens or pools into its embedding."""
    names = layer_names(backbone)
    if not names:
        raise ValueError(f"backbone {type(backbone).__name__} names no blocks, so it has no feature maps")
    was_training = backbone.training
    backbone.eval()
    try:
        with torch.no_grad():
            param = next(backbone.parameters())
            _, raw = forward_with_layers(backbone, torch.zeros(2, 1, *image_shape, device=param.device), names[-1:])
    finally:
        backbone.train(was_training)
    c, h, w = raw[names[-1]].shape[1:]
    return int(c), int(h), int(w)
