"""Modulated deformable convolution (DCNv2) in pure PyTorch.

`deform_conv2d` is a drop-in replacement for `torchvision.ops.deform_conv2d`: same signature, same offset
layout (per deformable group, per kernel tap, an interleaved ``(dy, dx)`` pair), same zero-padding bilinear
sampling, differentiable with respect to every input. It runs on every device PyTorch supports and exports to ONNX.

How it computes, for a band of output rows at a time:

- The input is copied once to channels-last (NHWC) with a zero border, so the ``C / G`` channels that one
  deformable group reads at one pixel are contiguous and every bilinear corner, even of a position far outside the
  image (clamped onto the border), reads a real row: out-of-image corners read zeros, no validity masks. For each
  (pixel, group, tap) the four corner rows and weights (bilinear weight times modulation) drive one `embedding_bag`
  call: the band's sampled columns, and one matrix product with the weight gives the band's output.
- Traced or exported (ONNX), or with symbolic sizes (`torch.export`, dynamic `torch.compile`), the forward pass
  samples with `grid_sample` instead (ONNX `GridSample`, each deformable group one image): an exported graph of
  standard operators that ONNX Runtime runs fast, without index arithmetic on sizes. Eager, the gather is faster
  (1.6-1.9x a dense 3x3 convolution at FaPN sizes, against 1.9-2.2x; scripts/bench_deform_conv.py on 2 cores).
- Backward: the same corner rows and weights drive `index_add_` (the input gradient); the offset and mask
  gradients are further weighted sums of the same corner rows, each one more `embedding_bag` call.

Only one band of columns exists at a time, in the forward and in the backward pass (which re-samples them), so
memory stays bounded whatever the image size, without activation checkpointing.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

DeformConvImplementation = Literal["auto", "torch", "torchvision"]
DEFORM_CONV_IMPLEMENTATIONS = ("auto", "torch", "torchvision")

# Elements of sampled columns per band (8M floats = 32 MiB; torchvision's CPU kernel holds all of an image's columns,
# 72 M floats at 256 channels and 128x256). Measured on 2 shared CPU cores at FaPN sizes (scripts/bench_deform_conv.py):
# bands of 2M elements spend their time in many short parallel regions, slow as soon as another process competes
# for the cores; 8M is as fast on one thread and 2x faster with a competing process; larger bands fall out of cache.
DEFAULT_MAX_COLUMN_ELEMENTS = 8 * 1024 * 1024

# Column-sized temporaries of the backward pass per band (columns, their gradient, a weighted copy, a derivative).
BACKWARD_TEMPORARIES = 4

# The zero border of the NHWC copy: one row/column before the image, two after. Sampling positions are clamped to
# [-1, size], so the four corners of any position stay inside the padded image.
_PAD_BEFORE, _PAD_AFTER = 1, 2
_NHWC_COPY_CHANNELS = 8


def _pair(value: int | tuple[int, int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


class _Geometry(NamedTuple):
    """Shape parameters of one deformable convolution."""

    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    deformable_groups: int
    rows_per_band: int | None  # None: one band of all rows
    backward_rows_per_band: int | None  # the backward pass holds about 4 column-sized temporaries per band
    graph: bool = False  # traced, exported or symbolic: the forward samples with grid_sample (ONNX GridSample)


class _SamplingGrid(NamedTuple):
    """What every band of one call shares: the undeformed sampling positions and the table-row arithmetic."""

    base_y: torch.Tensor  # (H_out, 1, 1, K): output row * stride - padding + tap row * dilation
    base_x: torch.Tensor  # (W_out, 1, K): the same for columns
    origin_row: torch.Tensor  # (N, 1, 1, G, 1) int64: table row of (image, input pixel (0, 0), group)
    input_size: tuple[int, int]
    padded_width: int
    deformable_groups: int


class _BandSampling(NamedTuple):
    """Where and with which weights the samples of a band of output rows read the table.

    `index` and `weight` are `(B, 4)` for the B = N * rows * W_out * G * K samples (pixel-major, then group, then
    tap) and their four bilinear corners (y0x0, y0x1, y1x0, y1x1): table rows and bilinear weight times
    modulation. The other fields, `(N, rows, W_out, G, K)`, serve the backward pass.
    """

    index: torch.Tensor
    weight: torch.Tensor
    frac_y: torch.Tensor
    frac_x: torch.Tensor
    modulation: torch.Tensor | None
    inside_y: torch.Tensor | None
    inside_x: torch.Tensor | None


def _padded_nhwc(input: torch.Tensor, deformable_groups: int) -> torch.Tensor:
    """`(N, C, H, W)` -> the table `(N * (H + 3) * (W + 3) * G, C / G)`: channels-last with a zero border, one row
    per (image, padded pixel, deformable group)."""
    batch, channels, height, width = input.shape
    padded = input.new_empty(batch, height + _PAD_BEFORE + _PAD_AFTER, width + _PAD_BEFORE + _PAD_AFTER, channels)
    padded[:, :_PAD_BEFORE].zero_()
    padded[:, _PAD_BEFORE + height :].zero_()
    padded[:, _PAD_BEFORE : _PAD_BEFORE + height, :_PAD_BEFORE].zero_()
    padded[:, _PAD_BEFORE : _PAD_BEFORE + height, _PAD_BEFORE + width :].zero_()
    interior = padded[:, _PAD_BEFORE : _PAD_BEFORE + height, _PAD_BEFORE : _PAD_BEFORE + width]
    if input.is_contiguous():
        # From NCHW, a few channels at a time: the reads stay sequential, several times faster than one strided copy.
        for start in range(0, channels, _NHWC_COPY_CHANNELS):
            stop = start + _NHWC_COPY_CHANNELS
            interior[..., start:stop] = input[:, start:stop].permute(0, 2, 3, 1)
    else:
        interior.copy_(input.permute(0, 2, 3, 1))
    return padded.view(-1, channels // deformable_groups)


def _pixel_major(band: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`(N, X, rows, W_out)` -> contiguous `(N, rows, W_out, X)` of `dtype`."""
    return band.permute(0, 2, 3, 1).to(dtype).contiguous()


def _sampling_grid(input: torch.Tensor, offset: torch.Tensor, geometry: _Geometry) -> _SamplingGrid:
    """The per-call constants. Positions are computed in float32 at least: in half precision, a pixel coordinate
    above 256 (bfloat16) or 2048 (float16) has no fractional part left."""
    batch, _, height, width = input.shape
    out_height, out_width = offset.shape[2:]
    (kernel_h, kernel_w), groups = geometry.kernel_size, geometry.deformable_groups
    dtype, device = torch.promote_types(offset.dtype, torch.float32), offset.device
    out_y = torch.arange(out_height, device=device, dtype=dtype) * geometry.stride[0] - geometry.padding[0]
    out_x = torch.arange(out_width, device=device, dtype=dtype) * geometry.stride[1] - geometry.padding[1]
    tap_y = torch.arange(kernel_h, device=device, dtype=dtype).repeat_interleave(kernel_w) * geometry.dilation[0]
    tap_x = torch.arange(kernel_w, device=device, dtype=dtype).repeat(kernel_h) * geometry.dilation[1]
    padded_h, padded_w = height + _PAD_BEFORE + _PAD_AFTER, width + _PAD_BEFORE + _PAD_AFTER
    image_rows = torch.arange(batch, device=device).view(batch, 1, 1, 1, 1) * (padded_h * padded_w * groups)
    origin_row = (
        image_rows + torch.arange(groups, device=device).view(groups, 1) + (padded_w + 1) * _PAD_BEFORE * groups
    )
    return _SamplingGrid(
        base_y=out_y.view(out_height, 1, 1, 1) + tap_y,
        base_x=out_x.view(out_width, 1, 1) + tap_x,
        origin_row=origin_row,
        input_size=(height, width),
        padded_width=padded_w,
        deformable_groups=groups,
    )


def _band_sampling(
    offset: torch.Tensor,
    mask: torch.Tensor | None,
    grid: _SamplingGrid,
    row_start: int,
    for_backward: bool = False,
) -> _BandSampling:
    """The sampling of the output rows `row_start : row_start + rows`.

    Args:
        offset: `(N, 2 * G * K, rows, W_out)`, the band's offsets in torchvision's layout.
        mask: `(N, G * K, rows, W_out)` or `None`.
    """
    batch, _, rows, out_width = offset.shape
    height, width = grid.input_size
    groups, padded_w = grid.deformable_groups, grid.padded_width
    dy_dx = _pixel_major(offset, grid.base_x.dtype).view(batch, rows, out_width, groups, -1, 2)
    pos_y = dy_dx[..., 0] + grid.base_y[row_start : row_start + rows]
    pos_x = dy_dx[..., 1] + grid.base_x
    inside_y = inside_x = None
    if for_backward:
        # As in torchvision, a coordinate outside [-1, size) gets no gradient (the clamp below moves it onto the
        # border, where every corner reads zeros or has weight 0).
        inside_y = (pos_y >= -1) & (pos_y < height)
        inside_x = (pos_x >= -1) & (pos_x < width)
    pos_y, pos_x = pos_y.clamp_(-1, height), pos_x.clamp_(-1, width)
    y0, x0 = pos_y.floor(), pos_x.floor()
    frac_y, frac_x = pos_y.sub_(y0), pos_x.sub_(x0)

    # Table row of the top-left corner, ((n * padded_h + y0 + 1) * padded_w + x0 + 1) * G + g, and of the others.
    top_left = y0.to(torch.int64).mul_(padded_w * groups)
    top_left.add_(x0.to(torch.int64).mul_(groups)).add_(grid.origin_row)
    corner_steps = torch.tensor([0, groups, padded_w * groups, (padded_w + 1) * groups], device=top_left.device)
    index = (top_left.unsqueeze(-1) + corner_steps).view(-1, 4)

    modulation = None if mask is None else _pixel_major(mask, frac_y.dtype).view(frac_y.shape)
    bottom = frac_y if modulation is None else frac_y * modulation
    top = 1 - frac_y if modulation is None else modulation - bottom
    left = 1 - frac_x
    weight = _by_corner(top * left, top * frac_x, bottom * left, bottom * frac_x)
    return _BandSampling(index, weight, frac_y, frac_x, modulation, inside_y, inside_x)


def _by_corner(*corners: torch.Tensor) -> torch.Tensor:
    """Four tensors of one shape, one per bilinear corner, interleaved into `(elements, 4)`."""
    stacked = corners[0].new_empty(*corners[0].shape, 4)
    for corner, values in enumerate(corners):
        stacked[..., corner] = values  # slice assignment: faster than torch.stack for a last dimension of 4
    return stacked.view(-1, 4)


def _gather_columns(table: torch.Tensor, index: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """`(B, C / G)`: for each of the B samples, the sum of its four corner rows of `table` (`index` `(B, 4)`) times
    their weights (`weight` `(B, 4)`)."""
    return F.embedding_bag(index, table, per_sample_weights=weight.to(table.dtype), mode="sum")


def _sampling_gradients(
    table: torch.Tensor,
    sampling: _BandSampling,
    grad_columns: torch.Tensor,
    grad_offset: torch.Tensor | None,
    grad_mask: torch.Tensor | None,
    rows: slice,
) -> None:
    """Writes the band's offset and mask gradients. The derivative of a sample's column entries with respect to its
    fractional position or its modulation is another weighted sum of the same four corner rows, so each is one
    `_gather_columns` call, dotted with the column gradient `grad_columns` `(B, C / G)`."""
    frac_y, frac_x, modulation = sampling.frac_y, sampling.frac_x, sampling.modulation
    top, left = 1 - frac_y, 1 - frac_x

    def dot_derivative(*corner_weights: torch.Tensor) -> torch.Tensor:
        derivative = _gather_columns(table, sampling.index, _by_corner(*corner_weights))
        return torch.linalg.vecdot(derivative, grad_columns).view(frac_y.shape).to(frac_y.dtype)

    if grad_mask is not None:
        grad_m = dot_derivative(top * left, top * frac_x, frac_y * left, frac_y * frac_x)
        grad_mask[:, :, rows] = grad_m.flatten(3).permute(0, 3, 1, 2)
    if grad_offset is not None:
        if modulation is not None:
            top, frac_y, left, frac_x = top * modulation, frac_y * modulation, left * modulation, frac_x * modulation
        grad_y = dot_derivative(-left, -frac_x, left, frac_x) * sampling.inside_y
        grad_x = dot_derivative(-top, top, -frac_y, frac_y) * sampling.inside_x
        grad_offset[:, :, rows] = torch.stack((grad_y, grad_x), dim=-1).flatten(3).permute(0, 3, 1, 2)


def _bands(out_height: int, rows_per_band: int | None) -> list[tuple[int, int]]:
    """`(start, stop)` of every band of output rows; `rows_per_band=None`: all rows in one band (no arithmetic on
    `out_height`, which may be symbolic)."""
    if rows_per_band is None:
        return [(0, out_height)]
    return [(start, min(out_height, start + rows_per_band)) for start in range(0, out_height, rows_per_band)]


def _tap_coordinates(
    geometry: _Geometry,
    input_size: tuple[int, int],
    out_size: tuple[int, int],
    device: torch.device,
    dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The undeformed sampling positions in `grid_sample`'s units (``align_corners=False``: pixel ``p`` of a side of
    ``size`` pixels is ``(2 p + 1) / size - 1``): y `(K, H_out, 1)` and x `(K, 1, W_out)`, taps row-major."""
    (kernel_h, kernel_w), (height, width) = geometry.kernel_size, input_size
    out_y = torch.arange(out_size[0], device=device, dtype=dtype) * geometry.stride[0] - geometry.padding[0]
    out_x = torch.arange(out_size[1], device=device, dtype=dtype) * geometry.stride[1] - geometry.padding[1]
    tap_y = torch.arange(kernel_h, device=device, dtype=dtype).repeat_interleave(kernel_w) * geometry.dilation[0]
    tap_x = torch.arange(kernel_w, device=device, dtype=dtype).repeat(kernel_h) * geometry.dilation[1]
    pixel_y = out_y.view(1, -1, 1) + tap_y.view(-1, 1, 1)
    pixel_x = out_x.view(1, 1, -1) + tap_x.view(-1, 1, 1)
    return pixel_y * (2.0 / height) + (1.0 / height - 1.0), pixel_x * (2.0 / width) + (1.0 / width - 1.0)


def _sampled_columns(
    source: torch.Tensor,
    offset: torch.Tensor,
    mask: torch.Tensor | None,
    tap_y: torch.Tensor,
    tap_x: torch.Tensor,
    input_size: tuple[int, int],
) -> torch.Tensor:
    """The modulated bilinear samples of a band of output rows, `(N, C * K, rows * W_out)`, ordered (group, channel,
    tap), as one `grid_sample` call (ONNX `GridSample`): it computes each position once for all the channels of a
    deformable group, and its zero padding is torchvision's (a corner outside the image reads 0).

    Args:
        source: `(N * G, C / G, H, W)`, the input with each deformable group as an image.
        offset: `(N, 2 * G * K, rows, W_out)`, the band's offsets in torchvision's layout.
        mask: `(N, G * K, rows, W_out)` or `None`.
        tap_y: `(K, rows, 1)`, tap_x: `(K, 1, W_out)`: the band's undeformed positions (`_tap_coordinates`).
    """
    batch, _, rows, out_width = offset.shape
    group_batch, group_channels = source.shape[:2]
    groups, taps = group_batch // batch, tap_y.shape[0]
    height, width = input_size
    dy_dx = offset.reshape(batch, groups, taps, 2, rows, out_width).to(source.dtype)
    # Any position beyond [-1, size] reads zeros; clamping to +-2 (at least one pixel further out) keeps that and
    # keeps huge offsets from overflowing grid_sample's integer corner arithmetic.
    grid_y = torch.add(tap_y.to(source.dtype), dy_dx[:, :, :, 0], alpha=2.0 / height).clamp_(-2.0, 2.0)
    grid_x = torch.add(tap_x.to(source.dtype), dy_dx[:, :, :, 1], alpha=2.0 / width).clamp_(-2.0, 2.0)
    grid = torch.stack((grid_x, grid_y), dim=-1).view(group_batch, taps * rows, out_width, 2)
    samples = F.grid_sample(source, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    samples = samples.view(batch, groups, group_channels, taps, rows, out_width)
    if mask is not None:
        samples = samples.mul_(mask.reshape(batch, groups, 1, taps, rows, out_width).to(samples.dtype))
    return samples.view(batch, groups * group_channels * taps, rows * out_width)


def _deform_conv_forward(
    input: torch.Tensor,
    offset: torch.Tensor,
    mask: torch.Tensor | None,
    weight_matrix: torch.Tensor,
    bias: torch.Tensor | None,
    geometry: _Geometry,
) -> torch.Tensor:
    """The deformable convolution, band by band: the band's sampled columns, then one matrix product with
    `weight_matrix` `(C_out, C * K)` (the weight in (channel, tap) order). Returns `(N, C_out, H_out, W_out)`.

    Eager, the columns are gathered from the NHWC table (as the backward pass does): 1.6-1.9x a dense convolution's
    time at FaPN sizes against 1.9-2.2x for `grid_sample` (scripts/bench_deform_conv.py, 2 cores). Traced, exported
    or with symbolic sizes they come from `grid_sample`, which ONNX Runtime runs well and which needs no integer
    index arithmetic on the sizes.
    """
    batch, out_height, out_width = input.shape[0], offset.shape[2], offset.shape[3]
    bands = _bands(out_height, geometry.rows_per_band)
    output = None if len(bands) == 1 else input.new_empty(batch, weight_matrix.shape[0], out_height, out_width)
    product = _band_product(input, offset, weight_matrix, geometry)
    for start, stop in bands:
        band_mask = None if mask is None else mask[:, :, start:stop]
        band = product(offset[:, :, start:stop], band_mask, start)  # (N, C_out, rows * W_out)
        if bias is not None:
            # In the product's dtype (bf16 under autocast, as a dense conv's bias), not promoted back to float32.
            band = band + bias.view(-1, 1).to(band.dtype)
        band = band.view(batch, -1, stop - start, out_width)
        if output is None:
            return band
        output[:, :, start:stop] = band
    return output


_BandProduct = Callable[[torch.Tensor, "torch.Tensor | None", int], torch.Tensor]


def _band_product(
    input: torch.Tensor, offset: torch.Tensor, weight_matrix: torch.Tensor, geometry: _Geometry
) -> _BandProduct:
    """The per-call set-up of one way of sampling, as a function `(offset band, mask band, first row) -> (N, C_out,
    rows * W_out)`, the product of the band's sampled columns and the weight (module docstring)."""
    if not geometry.graph:
        taps = geometry.kernel_size[0] * geometry.kernel_size[1]
        table = _padded_nhwc(input, geometry.deformable_groups)
        grid = _sampling_grid(input, offset, geometry)
        tap_major = _tap_major(weight_matrix, geometry.deformable_groups, taps)

        def gathered(band_offset: torch.Tensor, band_mask: torch.Tensor | None, row_start: int) -> torch.Tensor:
            sampling = _band_sampling(band_offset, band_mask, grid, row_start)
            pixels = band_offset.shape[2] * band_offset.shape[3]
            columns = _gather_columns(table, sampling.index, sampling.weight).view(input.shape[0], pixels, -1)
            return torch.matmul(tap_major, columns.to(tap_major.dtype).transpose(1, 2))

        return gathered

    batch, channels, height, width = input.shape
    groups = geometry.deformable_groups
    # Positions in float32 at least (in half precision a coordinate loses its fraction on wide maps); the sampling
    # runs in that precision too and the columns are cast back for the matrix product.
    sample_dtype = torch.promote_types(input.dtype, torch.float32)
    source = input.to(sample_dtype).reshape(batch * groups, channels // groups, height, width)
    out_size = (offset.shape[2], offset.shape[3])
    tap_y, tap_x = _tap_coordinates(geometry, (height, width), out_size, input.device, sample_dtype)

    def grid_sampled(band_offset: torch.Tensor, band_mask: torch.Tensor | None, row_start: int) -> torch.Tensor:
        rows = tap_y[:, row_start : row_start + band_offset.shape[2]]
        columns = _sampled_columns(source, band_offset, band_mask, rows, tap_x, (height, width))
        return torch.matmul(weight_matrix, columns.to(weight_matrix.dtype))

    return grid_sampled


class _DeformConv2dFunction(torch.autograd.Function):
    """Autograd for `_deform_conv_forward`: saves only the inputs; the backward pass re-samples the columns band by
    band, so no column tensor outlives its band."""

    @staticmethod
    def forward(ctx, input, offset, mask, weight_matrix, bias, geometry):
        ctx.geometry = geometry
        ctx.save_for_backward(input, offset, mask, weight_matrix)
        ctx.has_bias = bias is not None
        output = _deform_conv_forward(input, offset, mask, weight_matrix, bias, geometry)
        # A single band comes back as a view of a tensor made here; autograd forbids modifying such an output in
        # place (the FAM's in-place ReLU), so it leaves as a tensor of its own.
        return output if output._base is None else output.clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        input, offset, mask, weight_matrix = ctx.saved_tensors
        geometry = ctx.geometry
        need_input, need_offset, need_mask, need_weight, need_bias = ctx.needs_input_grad[:5]
        need_mask = need_mask and mask is not None
        grad_output = grad_output.contiguous()
        batch, channels, height, width = input.shape
        out_height, out_width = offset.shape[2:]
        out_channels = weight_matrix.shape[0]
        group_channels = channels // geometry.deformable_groups
        taps = geometry.kernel_size[0] * geometry.kernel_size[1]
        weight_matrix = _tap_major(weight_matrix, geometry.deformable_groups, taps)

        table = _padded_nhwc(input, geometry.deformable_groups)
        grid = _sampling_grid(input, offset, geometry)
        grad_table = torch.zeros_like(table) if need_input else None
        grad_offset = torch.empty_like(offset) if need_offset else None
        grad_mask = torch.empty_like(mask) if need_mask else None
        grad_weight = torch.zeros_like(weight_matrix) if need_weight else None
        for start, stop in _bands(out_height, geometry.backward_rows_per_band):
            rows = slice(start, stop)
            sampling = _band_sampling(offset[:, :, rows], None if mask is None else mask[:, :, rows], grid, start, True)
            grad_band = grad_output[:, :, rows].reshape(batch, out_channels, -1)  # (N, C_out, pixels)
            if need_weight:
                columns = _gather_columns(table, sampling.index, sampling.weight).view(batch, grad_band.shape[2], -1)
                grad_weight += torch.matmul(grad_band, columns).sum(dim=0)
            # (B, C / G): the gradient of every sampled column entry.
            grad_columns = torch.matmul(grad_band.transpose(1, 2), weight_matrix).view(-1, group_channels)
            if need_input:
                # Each corner row receives the column gradient times its weight, one corner at a time (temporaries
                # the size of the band's columns).
                weight = sampling.weight.to(table.dtype)
                for corner in range(4):
                    grad_table.index_add_(0, sampling.index[:, corner], grad_columns * weight[:, corner : corner + 1])
            if need_offset or need_mask:
                _sampling_gradients(table, sampling, grad_columns, grad_offset, grad_mask, rows)

        grad_input = None
        if need_input:
            padded = grad_table.view(
                batch, height + _PAD_BEFORE + _PAD_AFTER, width + _PAD_BEFORE + _PAD_AFTER, channels
            )
            interior = padded[:, _PAD_BEFORE : _PAD_BEFORE + height, _PAD_BEFORE : _PAD_BEFORE + width]
            grad_input = interior.permute(0, 3, 1, 2).contiguous()
        if need_weight:
            grad_weight = _tap_major(grad_weight, geometry.deformable_groups, group_channels)
        grad_bias = grad_output.sum(dim=(0, 2, 3)) if need_bias and ctx.has_bias else None
        return grad_input, grad_offset, grad_mask, grad_weight, grad_bias, None


def _weight_matrix(weight: torch.Tensor, channels: int) -> torch.Tensor:
    """`(C_out, C / groups, kh, kw)` -> `(C_out, C * kh * kw)`, the (channel, tap) order of the forward pass's sampled
    columns. Grouped convolutions become one block-diagonal matrix (FaPN's are not grouped)."""
    out_channels, channels_per_group, kernel_h, kernel_w = weight.shape
    weight_groups = channels // channels_per_group
    if weight_groups > 1:
        blocks = weight.reshape(weight_groups, out_channels // weight_groups, -1)
        weight = torch.block_diag(*blocks.unbind(0)).view(out_channels, channels, kernel_h, kernel_w)
    return weight.reshape(out_channels, -1)


def _tap_major(matrix: torch.Tensor, deformable_groups: int, taps: int) -> torch.Tensor:
    """`(C_out, G * C / G * K)` in (group, channel, tap) order -> (group, tap, channel) order, the column order of the
    backward pass's gathers; the same call with the roles of C / G and K swapped goes back."""
    out_channels = matrix.shape[0]
    return matrix.view(out_channels, deformable_groups, -1, taps).transpose(2, 3).reshape(out_channels, -1)


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
    kernel_size = (weight.shape[2], weight.shape[3])
    taps = kernel_size[0] * kernel_size[1]
    deformable_groups = offset.shape[1] // (2 * taps)
    out_height, out_width = offset.shape[2], offset.shape[3]
    sizes = (input.shape[0], input.shape[1], out_height, out_width)
    graph = torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or not all(isinstance(s, int) for s in sizes)
    if graph:
        # One band: an exported graph stays small and shape-generic, and symbolic sizes (torch.export, dynamic
        # torch.compile) are not specialised by a loop over bands.
        rows_per_band = backward_rows_per_band = None
    else:
        columns_per_row = input.shape[0] * input.shape[1] * taps * out_width
        rows_per_band = max(1, max_column_elements // max(1, columns_per_row))
        # The backward pass holds the columns, their gradient and two more temporaries of that size per band: its
        # bands are a quarter as large, so that its peak stays near the forward pass's.
        backward_rows_per_band = max(1, max_column_elements // max(1, BACKWARD_TEMPORARIES * columns_per_row))
    geometry = _Geometry(
        kernel_size, stride, padding, dilation, deformable_groups, rows_per_band, backward_rows_per_band, graph
    )
    weight_matrix = _weight_matrix(weight, input.shape[1])
    tensors = (input, offset, mask, weight_matrix, bias)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        return _DeformConv2dFunction.apply(input, offset, mask, weight_matrix, bias, geometry)
    return _deform_conv_forward(input, offset, mask, weight_matrix, bias, geometry)


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
        # The sigmoid runs in place on the mask third: offset and mask are views of the one prediction tensor.
        return prediction[:, :split], prediction[:, split:].sigmoid_()

    def deform(self, input: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """The deformable convolution of `input` with given offsets and mask (see `offsets_and_mask`)."""
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

    def forward(self, input: torch.Tensor, guide: torch.Tensor | None = None) -> torch.Tensor:
        return self.deform(input, *self.offsets_and_mask(input if guide is None else guide))

    def extra_repr(self) -> str:
        return (
            f"{self.weight.shape[1] * self.groups}, {self.weight.shape[0]}, "
            f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
            f"dilation={self.dilation}, deformable_groups={self.deformable_groups}, "
            f"implementation={self.implementation!r}"
        )


def check_deform_conv_implementation(implementation: str, owner: str) -> None:
    """Raises `ValueError` (prefixed `owner: `) for an unknown `deform_conv_implementation`: the check of every
    family's config."""
    if implementation not in DEFORM_CONV_IMPLEMENTATIONS:
        raise ValueError(
            f"{owner}: deform_conv_implementation must be one of {DEFORM_CONV_IMPLEMENTATIONS}, got {implementation!r}"
        )


def check_deformable_groups(channels: int, deformable_groups: int, owner: str, width: str) -> None:
    """Raises `ValueError` (prefixed `owner: `) unless `deformable_groups` is positive and divides `channels`, the
    width of the maps a deformable convolution aligns (named `width` in the message, e.g. `neck_channels`): the
    check of every family's config."""
    if deformable_groups <= 0:
        raise ValueError(f"{owner}: deformable_groups must be positive, got {deformable_groups}")
    if channels % deformable_groups:
        raise ValueError(f"{owner}: {width} ({channels}) must be divisible by deformable_groups ({deformable_groups})")


__all__ = [
    "DEFORM_CONV_IMPLEMENTATIONS",
    "ModulatedDeformConv2d",
    "check_deform_conv_implementation",
    "check_deformable_groups",
    "deform_conv2d",
    "resolve_implementation",
]
