"""Backbone registry: the embedding networks a ProtoNet is trained with.

A backbone maps a batch of 1x28x28 images to a flat embedding. Each entry of ``BACKBONES`` is a factory
taking keyword options from the config (``backbones.<name>`` minus its ``arch`` key), so a width-scaled
Conv-4 is a config value (``{arch: conv4, width: 128}``), and adding an architecture is one decorated function.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

BackboneFactory = Callable[..., nn.Module]
BACKBONES: dict[str, BackboneFactory] = {}


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
    return nn.Sequential(*blocks, nn.Flatten())


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
