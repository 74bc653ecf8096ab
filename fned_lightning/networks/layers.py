"""Convolutions computed as the matrix products they are, where oneDNN's kernels are slow.

Drop-in subclasses of `nn.Conv2d` / `nn.ConvTranspose2d`: same parameters, same state-dict keys,
same outputs (tested against the parents). They matter on small spatial sizes, the bottlenecks of
the U-Net and DCGAN networks, where oneDNN's backward on CPU runs at a tenth of its usual rate
(`make bench` measures the whole models; per layer, forward + backward at batch 64 on this CPU:
2x2 -> 1x1 512 channels 109 ms -> 18 ms, 1x1 -> 2x2 136 ms -> 16 ms, 2x2 -> 4x4 1024 -> 256
channels 159 ms -> 70 ms).
"""

import torch
import torch.nn.functional as F
from torch import nn


class Ungrouped:
    """For the layers below: what they compute assumes one group and no dilation."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.groups != 1 or self.dilation != (1, 1):
            raise ValueError(f"{type(self).__name__} supports groups=1, dilation=1 only")


class WholeImageConv2d(Ungrouped, nn.Conv2d):
    """A convolution whose output is 1x1: its one window spans the whole padded input, so it is a
    linear layer over the kernel taps that meet the image (those that meet padding are skipped)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (height, width), (pad_h, pad_w) = x.shape[-2:], self.padding
        # (not while tracing for ONNX, where sizes are tensors and a check would only warn)
        if not torch.jit.is_tracing() and (height + 2 * pad_h, width + 2 * pad_w) != self.kernel_size:
            raise ValueError(
                f"{type(self).__name__} needs inputs that its {self.kernel_size} kernel covers exactly "
                f"(with padding {self.padding}); got {height}x{width}. Use nn.Conv2d."
            )
        taps = self.weight[:, :, pad_h : pad_h + height, pad_w : pad_w + width]
        return F.linear(x.flatten(1), taps.flatten(1), self.bias)[:, :, None, None]


class WholeImageConvTranspose2d(Ungrouped, nn.ConvTranspose2d):
    """A transposed convolution of a 1x1 input: each output pixel gets exactly one kernel tap, so it
    is a matrix product with the taps that land inside the output (padding crops the others)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_tracing() and x.shape[-2:] != (1, 1):
            raise ValueError(
                f"{type(self).__name__} needs 1x1 inputs, got {tuple(x.shape[-2:])}. Use nn.ConvTranspose2d."
            )
        (k_h, k_w), (pad_h, pad_w) = self.kernel_size, self.padding
        taps = self.weight[:, :, pad_h : k_h - pad_h, pad_w : k_w - pad_w]  # c_in, c_out, out_h, out_w
        out = (x.flatten(1) @ taps.flatten(1)).unflatten(1, taps.shape[1:])
        return out if self.bias is None else out + self.bias[:, None, None]


class FoldConvTranspose2d(Ungrouped, nn.ConvTranspose2d):
    """A transposed convolution as one matrix product (each input pixel times the whole kernel) and
    a fold that sums the overlapping patches into the output (col2im). Faster than oneDNN's on
    small inputs only (forward + backward, 2x2: 2.3x faster; 4x4: 13% slower; 8x8: 40% slower),
    so the networks use it on 2x2 inputs only."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.onnx.is_in_onnx_export():  # ONNX has ConvTranspose itself (and col2im only from opset 18)
            return super().forward(x)
        _, c_in, height, width = x.shape
        # one (n*h*w, c_in) x (c_in, c_out*k_h*k_w) product: a batched one runs 10x slower at inference here
        patches = (x.permute(0, 2, 3, 1).reshape(-1, c_in) @ self.weight.flatten(1)).unflatten(0, (-1, height * width))
        size = [
            (s - 1) * stride - 2 * pad + k + extra
            for s, stride, pad, k, extra in zip(
                (height, width), self.stride, self.padding, self.kernel_size, self.output_padding, strict=True
            )
        ]
        out = F.fold(patches.transpose(1, 2), size, self.kernel_size, padding=self.padding, stride=self.stride)
        return out if self.bias is None else out + self.bias[:, None, None]


def to_channels_last(network: nn.Module) -> nn.Module:
    """channels_last weights for the convolutions (the layout oneDNN and tensor cores want), except
    the matrix-product layers above: theirs would be copied back to a plain matrix on every use."""
    for module in network.modules():
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)) and not isinstance(module, Ungrouped):
            module.to(memory_format=torch.channels_last)
    return network
