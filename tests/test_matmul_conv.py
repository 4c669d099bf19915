"""Matrix-product convolutions: the same convolution as torch's, as accurate as oneDNN's in bf16, swapped in only
where the pipeline asks for it, and bitwise repeatable."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from metacollapse.device import cpu_has_bf16_matmul, prepare_model
from metacollapse.matmul_conv import MatmulConv2d, _MatmulConv, use_matmul_convolutions
from metacollapse.models import build_backbone

# (in, out, size, kernel, stride, padding): the stem, a 3x3 layer, the stride-2 3x3 and 1x1 transitions
SHAPES = [(1, 8, 12, 3, 1, 1), (16, 24, 6, 3, 1, 1), (16, 32, 9, 3, 2, 1), (16, 32, 8, 1, 2, 0)]
ALL_PASSES = [(True, True, True), (False, True, False), (True, False, True), (False, False, True)]


def _inputs(ci, co, size, k, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(5, ci, size, size, generator=g, dtype=dtype).contiguous(memory_format=torch.channels_last)
    w = torch.randn(co, ci, k, k, generator=g, dtype=dtype).contiguous(memory_format=torch.channels_last)
    return x.requires_grad_(), w.requires_grad_()


@pytest.mark.parametrize("passes", ALL_PASSES, ids=lambda p: "".join("m" if q else "o" for q in p))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "in{}-size{}-k{}-stride{}".format(s[0], *s[2:5]))
def test_every_pass_equals_torch_convolution_in_float64(shape, passes):
    ci, co, size, k, s, p = shape
    x, w = _inputs(ci, co, size, k, torch.float64)
    y = _MatmulConv.apply(x, w, s, p, passes)
    grad = torch.randn_like(y)
    gx, gw = torch.autograd.grad(y, (x, w), grad)
    y_ref = F.conv2d(x, w, None, s, p)
    gx_ref, gw_ref = torch.autograd.grad(y_ref, (x, w), grad)
    for got, want in ((y, y_ref), (gx, gx_ref), (gw, gw_ref)):
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "in{}-size{}-k{}-stride{}".format(s[0], *s[2:5]))
def test_in_bf16_each_pass_is_as_accurate_as_onednn(shape):
    """Error against a float64 convolution, relative in Frobenius norm: at most 1.25x oneDNN's bf16 error."""
    ci, co, size, k, s, p = shape
    x64, w64 = _inputs(ci, co, size, k, torch.float64)
    y64 = F.conv2d(x64, w64, None, s, p)
    grad = torch.randn_like(y64)
    exact = (y64, *torch.autograd.grad(y64, (x64, w64), grad))
    errors = {}
    for name, run in (
        ("onednn", lambda x, w: F.conv2d(x, w, None, s, p)),
        ("matmul", lambda x, w: _MatmulConv.apply(x, w, s, p, (True, True, True))),
    ):
        x, w = (t.detach().float().to(torch.bfloat16).requires_grad_() for t in (x64, w64))
        y = run(x, w)
        got = (y, *torch.autograd.grad(y, (x, w), grad.to(torch.bfloat16)))
        errors[name] = [
            float((a.detach().double() - b.detach()).norm() / b.detach().norm())
            for a, b in zip(got, exact, strict=True)
        ]
    for matmul, onednn in zip(errors["matmul"], errors["onednn"], strict=True):
        assert matmul <= 1.25 * onednn + 1e-4, errors


def test_prepare_model_swaps_plain_convolutions_in_bf16_on_amx_cpus_only():
    cpu = torch.device("cpu")
    resnet = prepare_model(build_backbone({"arch": "resnet18"}), cpu, "bf16")
    convs = [m for m in resnet.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 20
    swapped = sum(type(m) is MatmulConv2d for m in convs)
    assert swapped == (20 if cpu_has_bf16_matmul() else 0)
    plain = build_backbone({"arch": "resnet18"})
    assert resnet.state_dict().keys() == plain.state_dict().keys()
    untouched = (("resnet18", "fp32", True), ("resnet18", "bf16", False), ("conv4", "bf16", True))
    for backbone, precision, switch in untouched:
        model = prepare_model(build_backbone({"arch": backbone}), cpu, precision, matmul_convolutions=switch)
        assert not any(type(m) is MatmulConv2d for m in model.modules())  # conv4: its convolutions have a bias


def _train_resnet(swap: bool, steps: int = 2) -> tuple[list[torch.Tensor], list[float]]:
    torch.manual_seed(0)
    model = build_backbone({"arch": "resnet18"}).to(memory_format=torch.channels_last)
    if swap:
        assert use_matmul_convolutions(model) == 20
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    images = torch.rand(12, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    losses = []
    for _ in range(steps):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(images.contiguous(memory_format=torch.channels_last)).float()
        loss = out.square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return [p.detach().clone() for p in model.parameters()], losses


def test_bf16_training_with_matmul_convolutions_is_bitwise_repeatable_and_tracks_onednn():
    first, losses = _train_resnet(swap=True)
    second, again = _train_resnet(swap=True)
    assert losses == again and all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    _, onednn = _train_resnet(swap=False)
    assert losses[0] == pytest.approx(onednn[0], rel=2e-2) and losses[1] == pytest.approx(onednn[1], rel=5e-2)


def test_without_gradients_the_forward_is_the_training_forward():
    torch.manual_seed(0)
    model = build_backbone({"arch": "resnet18"}).to(memory_format=torch.channels_last).eval()
    use_matmul_convolutions(model)
    images = torch.rand(4, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with torch.no_grad():
            embedded = model(images)
        trained = model(images)
    assert trained.requires_grad and torch.equal(embedded, trained.detach())
