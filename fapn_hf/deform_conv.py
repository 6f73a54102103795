"""Modulated deformable convolution (DCNv2) in pure PyTorch.

`deform_conv2d` is a drop-in replacement for `torchvision.ops.deform_conv2d`: same signature, same offset
layout (per deformable group, per kernel tap, an interleaved ``(dy, dx)`` pair), same zero-padding bilinear
sampling. It is built on `torch.nn.functional.grid_sample`, so it runs on every device PyTorch supports,
exports to ONNX and is differentiable with respect to every input.

The sampled "columns" tensor is ``kernel_size`` times larger than the input, so the computation is split into
chunks of output rows, each wrapped in activation checkpointing: peak memory is bounded by one chunk in the
forward pass and in the backward pass, whatever the image size.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

DeformConvImplementation = Literal["auto", "torch", "torchvision"]
DEFORM_CONV_IMPLEMENTATIONS = ("auto", "torch", "torchvision")

# Elements of sampled columns per chunk (4M floats = 16 MiB). Measured on CPU at FaPN sizes: bands this small are
# as fast as or faster than larger ones (they stay in cache) and keep forward+backward memory below torchvision's.
DEFAULT_MAX_COLUMN_ELEMENTS = 4 * 1024 * 1024


def _pair(value: int | tuple[int, int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def _sample_columns(
    input: torch.Tensor,
    offset: torch.Tensor,
    mask: torch.Tensor | None,
    kernel_size: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    row_start: int,
    out_width: int,
) -> torch.Tensor:
    """Bilinearly samples the deformed kernel taps for a band of output rows.

    Args:
        input: `(N, C, H, W)`.
        offset: `(N, 2 * G * K, rows, W_out)`, the offsets of the band, torchvision's layout.
        mask: `(N, G * K, rows, W_out)` or `None`.
        row_start: index of the first output row of the band.

    Returns:
        Columns of shape `(N, C * K, rows * W_out)`, ordered `(channel, tap)` like a flattened conv weight.
    """
    batch, channels, height, width = input.shape
    kernel_h, kernel_w = kernel_size
    taps = kernel_h * kernel_w
    rows = offset.shape[2]
    groups = offset.shape[1] // (2 * taps)
    dtype, device = offset.dtype, offset.device

    # Undeformed sampling positions of every (tap, output pixel), in input pixel coordinates.
    out_y = torch.arange(row_start, row_start + rows, device=device, dtype=dtype) * stride[0] - padding[0]
    out_x = torch.arange(out_width, device=device, dtype=dtype) * stride[1] - padding[1]
    tap_y = torch.arange(kernel_h, device=device, dtype=dtype).repeat_interleave(kernel_w) * dilation[0]
    tap_x = torch.arange(kernel_w, device=device, dtype=dtype).repeat(kernel_h) * dilation[1]
    base_y = tap_y.view(taps, 1, 1) + out_y.view(1, rows, 1)
    base_x = tap_x.view(taps, 1, 1) + out_x.view(1, 1, out_width)

    offset = offset.view(batch, groups, taps, 2, rows, out_width)
    pos_y = base_y + offset[:, :, :, 0]
    pos_x = base_x + offset[:, :, :, 1]
    # grid_sample with align_corners=False maps pixel coordinate p to (2p + 1) / size - 1; padding_mode="zeros"
    # treats every out-of-image corner as 0, exactly like the DCN kernels.
    grid = torch.stack(((2 * pos_x + 1) / width - 1, (2 * pos_y + 1) / height - 1), dim=-1)
    grid = grid.view(batch * groups, taps * rows, out_width, 2)

    sampled = F.grid_sample(
        input.reshape(batch * groups, channels // groups, height, width),
        grid.to(input.dtype),
        mode="bilinear",
        padding_mode="zeros",
        align_corners=False,
    )  # (N * G, C / G, K * rows, W_out)
    sampled = sampled.view(batch, groups, channels // groups, taps, rows * out_width)
    if mask is not None:
        sampled = sampled * mask.reshape(batch, groups, 1, taps, rows * out_width).to(sampled.dtype)
    return sampled.reshape(batch, channels * taps, rows * out_width)


def _deform_conv_band(
    input: torch.Tensor,
    offset: torch.Tensor,
    mask: torch.Tensor | None,
    weight: torch.Tensor,
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    row_start: int,
    out_width: int,
) -> torch.Tensor:
    """Deformable convolution of one band of output rows, without bias: `(N, C_out, rows, W_out)`."""
    out_channels, channels_per_group, kernel_h, kernel_w = weight.shape
    weight_groups = input.shape[1] // channels_per_group
    columns = _sample_columns(
        input, offset, mask, (kernel_h, kernel_w), stride, padding, dilation, row_start, out_width
    )
    batch, _, pixels = columns.shape
    columns = columns.view(batch, weight_groups, -1, pixels)
    weight = weight.reshape(weight_groups, out_channels // weight_groups, -1)
    out = torch.matmul(weight, columns)  # (N, weight_groups, C_out / weight_groups, pixels)
    return out.view(batch, out_channels, offset.shape[2], out_width)


def _output_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def _check_arguments(
    input: torch.Tensor,
    offset: torch.Tensor,
    weight: torch.Tensor,
    mask: torch.Tensor | None,
    out_size: tuple[int, int],
) -> None:
    if input.dim() != 4:
        raise ValueError(f"deform_conv2d expects a 4-D input (N, C, H, W), got shape {tuple(input.shape)}")
    out_channels, channels_per_group, kernel_h, kernel_w = weight.shape
    taps = kernel_h * kernel_w
    if input.shape[1] % channels_per_group != 0:
        raise ValueError(
            f"input has {input.shape[1]} channels, not a multiple of the weight's {channels_per_group} per group"
        )
    weight_groups = input.shape[1] // channels_per_group
    if out_channels % weight_groups != 0:
        raise ValueError(f"{out_channels} output channels cannot be split into {weight_groups} groups")
    if offset.shape[1] % (2 * taps) != 0 or offset.shape[1] == 0:
        raise ValueError(
            f"offset has {offset.shape[1]} channels; expected 2 * deformable_groups * {taps} (kernel taps)"
        )
    groups = offset.shape[1] // (2 * taps)
    if input.shape[1] % groups != 0:
        raise ValueError(f"{input.shape[1]} input channels cannot be split into {groups} deformable groups")
    expected = (input.shape[0], 2 * groups * taps, *out_size)
    if tuple(offset.shape) != expected:
        raise ValueError(f"offset has shape {tuple(offset.shape)}, expected {expected}")
    if mask is not None and tuple(mask.shape) != (input.shape[0], groups * taps, *out_size):
        raise ValueError(f"mask has shape {tuple(mask.shape)}, expected {(input.shape[0], groups * taps, *out_size)}")


def _deform_conv2d_torch(
    input: torch.Tensor,
    offset: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    mask: torch.Tensor | None,
    max_column_elements: int,
) -> torch.Tensor:
    out_h, out_w = offset.shape[2], offset.shape[3]
    taps = weight.shape[2] * weight.shape[3]
    columns_per_row = input.shape[0] * input.shape[1] * taps * out_w
    rows_per_band = max(1, max_column_elements // max(1, columns_per_row))
    tracing = torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export()
    if rows_per_band >= out_h or tracing:
        out = _deform_conv_band(input, offset, mask, weight, stride, padding, dilation, 0, out_w)
    else:
        recompute = torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in (input, offset, mask, weight)
        )
        bands = []
        for start in range(0, out_h, rows_per_band):
            stop = min(out_h, start + rows_per_band)
            band_args = (
                input,
                offset[:, :, start:stop],
                None if mask is None else mask[:, :, start:stop],
                weight,
                stride,
                padding,
                dilation,
                start,
                out_w,
            )
            if recompute:
                # Keep only the band's inputs for backward; the columns are re-sampled there.
                bands.append(checkpoint(_deform_conv_band, *band_args, use_reentrant=False))
            else:
                bands.append(_deform_conv_band(*band_args))
        out = torch.cat(bands, dim=2)
    if bias is not None:
        out = out + bias.view(1, -1, 1, 1)
    return out


def resolve_implementation(implementation: str, device: torch.device) -> str:
    """Picks the kernel for ``implementation="auto"``: torchvision's on CUDA, pure PyTorch elsewhere."""
    if implementation not in DEFORM_CONV_IMPLEMENTATIONS:
        raise ValueError(
            f"deform conv implementation must be one of {DEFORM_CONV_IMPLEMENTATIONS}, got {implementation!r}"
        )
    if implementation != "auto":
        return implementation
    return "torchvision" if device.type == "cuda" else "torch"


def deform_conv2d(
    input: torch.Tensor,
    offset: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    mask: torch.Tensor | None = None,
    *,
    implementation: DeformConvImplementation = "torch",
    max_column_elements: int = DEFAULT_MAX_COLUMN_ELEMENTS,
) -> torch.Tensor:
    """Deformable convolution v2, drop-in for `torchvision.ops.deform_conv2d`.

    Args:
        input: `(N, C_in, H, W)`.
        offset: `(N, 2 * G * kh * kw, H_out, W_out)`; for deformable group g and tap k (row-major over the
            kernel), channel `2 * (g * kh * kw + k)` is the y offset and the next one the x offset.
        weight: `(C_out, C_in / groups, kh, kw)`; the convolution groups are inferred from it.
        bias: `(C_out,)` or `None`.
        mask: `(N, G * kh * kw, H_out, W_out)` modulation scalars, or `None` (DCNv1).
        implementation: `"torch"` (this module's kernel), `"torchvision"` or `"auto"` (torchvision on CUDA).
        max_column_elements: memory bound of the pure-PyTorch kernel, in elements of sampled columns per chunk.

    Returns:
        `(N, C_out, H_out, W_out)`.
    """
    stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
    kernel_h, kernel_w = weight.shape[-2:]
    out_size = (
        _output_size(input.shape[2], kernel_h, stride[0], padding[0], dilation[0]),
        _output_size(input.shape[3], kernel_w, stride[1], padding[1], dilation[1]),
    )
    _check_arguments(input, offset, weight, mask, out_size)
    if resolve_implementation(implementation, input.device) == "torchvision":
        from torchvision.ops import deform_conv2d as tv_deform_conv2d

        return tv_deform_conv2d(input, offset, weight, bias, stride, padding, dilation, mask)
    return _deform_conv2d_torch(input, offset, weight, bias, stride, padding, dilation, mask, max_column_elements)


class ModulatedDeformConv2d(nn.Module):
    """Modulated deformable convolution (DCNv2) whose offsets and mask are predicted from a guide feature.

    A zero-initialised convolution `offset_mask_conv` maps the guide to `3 * G * kh * kw` channels: the first two
    thirds are the offsets in torchvision's layout, the last third goes through a sigmoid to give the mask. A
    fresh module therefore samples the regular grid with mask 0.5.

    Shapes: `input` `(N, C_in, H, W)`, `guide` `(N, C_guide, H, W)` (defaults to `input`), output
    `(N, C_out, H_out, W_out)`.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int = 1,
        dilation: int = 1,
        groups: int = 1,
        deformable_groups: int = 1,
        bias: bool = True,
        guide_channels: int | None = None,
        implementation: DeformConvImplementation = "auto",
        max_column_elements: int = DEFAULT_MAX_COLUMN_ELEMENTS,
    ) -> None:
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"in_channels ({in_channels}) and out_channels ({out_channels}) must divide by groups")
        if in_channels % deformable_groups:
            raise ValueError(f"in_channels ({in_channels}) must be divisible by deformable_groups")
        resolve_implementation(implementation, torch.device("cpu"))  # validates the name
        self.kernel_size = _pair(kernel_size)
        self.stride, self.padding, self.dilation = _pair(stride), _pair(padding), _pair(dilation)
        self.groups = groups
        self.deformable_groups = deformable_groups
        self.implementation = implementation
        self.max_column_elements = max_column_elements
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, *self.kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        taps = self.kernel_size[0] * self.kernel_size[1]
        self.offset_mask_conv = nn.Conv2d(
            guide_channels or in_channels,
            3 * deformable_groups * taps,
            self.kernel_size,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            bias=True,
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        fan_in = self.weight.shape[1] * self.kernel_size[0] * self.kernel_size[1]
        bound = 1.0 / math.sqrt(fan_in)
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.zeros_(self.bias)
        nn.init.zeros_(self.offset_mask_conv.weight)
        nn.init.zeros_(self.offset_mask_conv.bias)

    def offsets_and_mask(self, guide: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns `(offset, mask)` of shapes `(N, 2 * G * K, H_out, W_out)` and `(N, G * K, H_out, W_out)`."""
        prediction = self.offset_mask_conv(guide)
        split = 2 * prediction.shape[1] // 3
        return prediction[:, :split], torch.sigmoid(prediction[:, split:])

    def forward(self, input: torch.Tensor, guide: torch.Tensor | None = None) -> torch.Tensor:
        offset, mask = self.offsets_and_mask(input if guide is None else guide)
        return deform_conv2d(
            input,
            offset,
            self.weight,
            self.bias,
            self.stride,
            self.padding,
            self.dilation,
            mask,
            implementation=self.implementation,
            max_column_elements=self.max_column_elements,
        )

    def extra_repr(self) -> str:
        return (
            f"{self.weight.shape[1] * self.groups}, {self.weight.shape[0]}, "
            f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
            f"dilation={self.dilation}, deformable_groups={self.deformable_groups}, "
            f"implementation={self.implementation!r}"
        )


__all__ = ["DEFORM_CONV_IMPLEMENTATIONS", "ModulatedDeformConv2d", "deform_conv2d", "resolve_implementation"]
