"""Convolutions as im2col + one matrix product, for the layers where oneDNN's bf16 convolutions are slow on CPU.

On CPUs with AMX bf16 units, oneDNN's bf16 convolution kernels are fast on large feature maps and slow on small
ones (the profile and per-layer timings: ``docs/performance.md``). :func:`use_matmul_convolutions` computes those
passes (forward, weight gradient, input gradient; per layer by the rule of :func:`matmul_passes`) as a channels-last
im2col and one bf16 matrix product with fp32 accumulation; other layers and passes keep oneDNN.

Numerics: one rounding per pass, as in oneDNN (the input gradient of a stride-1 layer is the forward product of the
output gradient with the flipped kernel), except the input gradient of stride-2 3x3 layers, which rounds each of
the 9 kernel taps to bf16 and sums them in fp32: about one bf16 unit (4e-3 relative) from oneDNN's. Results are
bitwise repeatable on CPU for a fixed thread count. Only plain convolutions are swapped (no bias, groups or
dilation, zero padding, square kernel): ResNet's; Conv-4's have a bias and keep oneDNN.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Passes = tuple[bool, bool, bool]


def matmul_passes(in_channels: int, out_size: int, kernel: int) -> Passes:
    """(forward, weight gradient, input gradient): which passes of a convolution run as a matrix product.

    The rule follows per-layer timings of ResNet-18 on 28x28 inputs (``docs/performance.md``): oneDNN's bf16
    kernels lose on 1-channel inputs, on outputs of 4x4 or smaller, on 1x1 kernels at 7x7 or smaller, and, for the
    weight gradient, on 1x1 kernels and on every output of 7x7 or smaller.
    """
    forward = in_channels == 1 or out_size <= 4 or (kernel == 1 and out_size <= 7)
    weight = forward or kernel == 1 or out_size <= 7
    data = out_size <= 4 or kernel == 1
    return forward, weight, data


def _out_size(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def _im2col(x: Tensor, kernel: int, stride: int, padding: int) -> Tensor:
    """``x`` [N, C, H, W] -> rows [N * oh * ow, kernel * kernel * C], columns ordered (kh, kw, c): one copy."""
    n, c, h, w = x.shape
    oh, ow = _out_size(h, kernel, stride, padding), _out_size(w, kernel, stride, padding)
    xp = (F.pad(x, (padding,) * 4) if padding else x).permute(0, 2, 3, 1)  # NHWC view, free for channels-last
    sn, sh, sw, sc = xp.stride()
    windows = xp.as_strided(
        (n, oh, ow, kernel, kernel, c), (sn, stride * sh, stride * sw, sh, sw, sc), xp.storage_offset()
    )
    return windows.reshape(n * oh * ow, kernel * kernel * c)


def _weight_matrix(weight: Tensor) -> Tensor:
    """[co, ci, kh, kw] -> [co, kh * kw * ci], the column order of :func:`_im2col`."""
    return weight.permute(0, 2, 3, 1).reshape(weight.shape[0], -1)


def _rows(t: Tensor) -> Tensor:
    """[N, C, H, W] -> [N * H * W, C] (free for channels-last)."""
    return t.permute(0, 2, 3, 1).reshape(-1, t.shape[1])


def _forward_matmul(x: Tensor, weight: Tensor, stride: int, padding: int, cols: Tensor | None = None) -> Tensor:
    k = weight.shape[2]
    cols = _im2col(x, k, stride, padding) if cols is None else cols
    oh, ow = _out_size(x.shape[2], k, stride, padding), _out_size(x.shape[3], k, stride, padding)
    out = cols @ _weight_matrix(weight).T
    return out.view(x.shape[0], oh, ow, weight.shape[0]).permute(0, 3, 1, 2)  # channels-last NCHW


class _MatmulConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, stride: int, padding: int, passes: Passes) -> Tensor:
        forward, weight_pass, _ = passes
        keep_cols = weight_pass and ctx.needs_input_grad[1]
        cols = _im2col(x, weight.shape[2], stride, padding) if forward or keep_cols else None
        if forward:
            out = _forward_matmul(x, weight, stride, padding, cols)
        else:
            out = F.conv2d(x, weight, None, stride, padding)
        ctx.save_for_backward(x, weight, cols if keep_cols else None)
        ctx.stride, ctx.padding, ctx.passes = stride, padding, passes
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:
        x, weight, cols = ctx.saved_tensors
        s, p = ctx.stride, ctx.padding
        _, weight_pass, data_pass = ctx.passes
        need_x, need_w = ctx.needs_input_grad[:2]
        grad_out = grad_out.contiguous(memory_format=torch.channels_last)
        grad_x = grad_w = None
        onednn = [need_x and not data_pass, need_w and not weight_pass, False]
        if any(onednn):
            gx, gw, _ = torch.ops.aten.convolution_backward(
                grad_out, x, weight, None, [s, s], [p, p], [1, 1], False, [0, 0], 1, onednn
            )
            grad_x, grad_w = (gx if onednn[0] else None), (gw if onednn[1] else None)
        g = _rows(grad_out)  # [N * oh * ow, co]
        co, ci, k, _ = weight.shape
        if need_w and weight_pass:
            grad_w = (g.T.contiguous() @ cols).view(co, k, k, ci).permute(0, 3, 1, 2)
        if need_x and data_pass and s == 1:  # the forward convolution of grad_out with the flipped kernel
            grad_x = _forward_matmul(grad_out, weight.flip(2, 3).transpose(0, 1), 1, k - 1 - p)
        elif need_x and data_pass:
            n, _, h, w = x.shape
            oh, ow = grad_out.shape[2:]
            taps = (g @ _weight_matrix(weight)).view(n, oh, ow, k * k, ci)
            sums = x.dtype if k == 1 else torch.promote_types(x.dtype, torch.float32)  # overlapping taps: fp32
            padded = torch.zeros(n, h + 2 * p, w + 2 * p, ci, dtype=sums, device=x.device)
            for t in range(k * k):
                i, j = divmod(t, k)
                padded[:, i : i + s * (oh - 1) + 1 : s, j : j + s * (ow - 1) + 1 : s, :] += taps[:, :, :, t]
            grad_x = padded[:, p : p + h, p : p + w, :].permute(0, 3, 1, 2).to(x.dtype)
        return grad_x, grad_w, None, None, None


class MatmulConv2d(nn.Conv2d):
    """An ``nn.Conv2d`` whose passes run as matrix products where :func:`matmul_passes` says so.

    Same parameters and state dict as the ``nn.Conv2d`` it replaces. Under autocast the inputs and weight are cast
    to the autocast dtype before the product, as autocast does for a convolution, so the weight's gradient
    arrives in the weight's own dtype.
    """

    def forward(self, x: Tensor) -> Tensor:
        k, s, p = self.kernel_size[0], self.stride[0], self.padding[0]
        passes = matmul_passes(self.in_channels, _out_size(x.shape[2], k, s, p), k)
        if not any(passes):
            return super().forward(x)
        device = x.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
        x, weight = x.to(dtype), self.weight.to(dtype)
        with torch.autocast(device, enabled=False):
            if not torch.is_grad_enabled():
                return _forward_matmul(x, weight, s, p) if passes[0] else F.conv2d(x, weight, None, s, p)
            return _MatmulConv.apply(x, weight, s, p, passes)


def _plain(conv: nn.Conv2d) -> bool:
    square = all(len(set(v)) == 1 for v in (conv.kernel_size, conv.stride, conv.padding))
    return (
        type(conv) is nn.Conv2d
        and conv.bias is None
        and conv.groups == 1
        and conv.dilation == (1, 1)
        and conv.padding_mode == "zeros"
        and not isinstance(conv.padding, str)
        and square
        and conv.padding[0] < conv.kernel_size[0]  # the input gradient pads by kernel - 1 - padding
    )


def use_matmul_convolutions(model: nn.Module) -> int:
    """Turn every plain ``nn.Conv2d`` of ``model`` into a :class:`MatmulConv2d` in place; returns how many."""
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and _plain(m)]
    for conv in convs:
        conv.__class__ = MatmulConv2d  # same parameters and buffers; only the forward changes
    return len(convs)
