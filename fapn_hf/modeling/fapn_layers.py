"""The layers every family builds on: conv blocks, FaPN's feature selection and feature alignment modules, the FaPN
(or FPN) neck, the Panoptic-FPN semantic head, and the padding rule of the models' inputs.

A family's model (semantic FaPN, MaskFormer + FaPN, a detector with the FaPN neck) assembles these; none of them
knows a family's config. Part of the shipped kernel: imports only kernel modules (see `remote_code.KERNEL_MODULES`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer

from .deform_conv import ModulatedDeformConv2d
from .initialisation import tag_init
from .label_checks import REDUCE_LABELS_HINT, check_label_values

# ---------------------------------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------------------------------


def make_norm(norm: str, channels: int) -> nn.Module:
    """`""` -> identity, `"GN"` -> GroupNorm(32), `"BN"` -> BatchNorm2d."""
    if norm == "":
        return nn.Identity()
    if norm == "GN":
        return nn.GroupNorm(32, channels)
    if norm == "BN":
        return nn.BatchNorm2d(channels)
    raise ValueError(f"Unknown norm {norm!r}; expected '', 'GN' or 'BN'")


class ConvNormAct(nn.Module):
    """Conv2d, optional norm, optional ReLU: `(N, C_in, H, W)` -> `(N, C_out, H', W')`. Without a norm the conv has a
    bias unless told otherwise.

    `init` names the conv's detectron2 initialisation (see `initialisation.tag_init`); norms start at weight 1, bias 0.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        padding: int = 0,
        norm: str = "",
        activation: bool = False,
        bias: bool | None = None,
        init: str = "xavier",
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, padding=padding, bias=(norm == "") if bias is None else bias
        )
        self.norm = make_norm(norm, out_channels)
        self.activation = nn.ReLU() if activation else nn.Identity()
        tag_init(self.conv, init)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.activation(self.norm(self.conv(hidden_states)))


def resize_to(hidden_states: torch.Tensor, size: Sequence[int], mode: str = "bilinear") -> torch.Tensor:
    """Resizes `(N, C, h, w)` to `size`, bilinear with `align_corners=False` (or nearest); a no-op if it matches."""
    if tuple(hidden_states.shape[-2:]) == tuple(size):
        return hidden_states
    if mode == "nearest":
        return F.interpolate(hidden_states, size=tuple(size), mode="nearest")
    return F.interpolate(hidden_states, size=tuple(size), mode=mode, align_corners=False)


# ---------------------------------------------------------------------------------------------------------------------
# Inputs: zero-padding to a multiple of the coarsest stride, as detectron2's ImageList
# ---------------------------------------------------------------------------------------------------------------------


def padded_size(height: int, width: int, divisor: int) -> tuple[int, int]:
    """`(height, width)` rounded up to multiples of `divisor`."""
    return (-(-height // divisor) * divisor, -(-width // divisor) * divisor)


def pad_to_multiple(pixel_values: torch.Tensor, divisor: int) -> torch.Tensor:
    """Zero-pads `(N, C, H, W)` at the bottom and right to multiples of `divisor` (detectron2's `ImageList`):
    `(N, C, H', W')` with `(H', W') = padded_size(H, W, divisor)`; the tensor itself when nothing is added."""
    height, width = pixel_values.shape[-2:]
    target_h, target_w = padded_size(height, width, divisor)
    return F.pad(pixel_values, (0, target_w - width, 0, target_h - height))


# The (input dtype, model dtype) pairs whose cast `check_pixel_values` has announced: it says so once per pair.
_ANNOUNCED_CASTS: set[tuple[torch.dtype, torch.dtype]] = set()


def check_pixel_values(
    pixel_values: Any, num_channels: int, dtype: torch.dtype, processor: str = "the image processor"
) -> torch.Tensor:
    """The check of every family's model input: `pixel_values` as a `(N, C, H, W)` tensor of the model's `dtype`.

    Raises `ValueError` for what no model can take: not a tensor, not 4-D, not `num_channels` channels, an empty
    batch or image, or integer / bool values (unnormalised pixels: `processor` makes normalised floats). Floats of
    another precision than the model's (float16, float64 or bfloat16 into a float32 model, float32 into a bfloat16
    one) are cast to `dtype`, as transformers' vision embeddings do, with one warning per pair of dtypes: PyTorch
    would stop inside the first convolution ("expected scalar type Double but found Float").

    Shapes and dtypes only, no host synchronisation: safe inside a compiled forward (the warning is left out there).

    Args:
        pixel_values: what the forward was given; `(N, C, H, W)` expected.
        num_channels: the channels the backbone takes (`backbone_config.num_channels`, 3 for RGB).
        dtype: the model's floating dtype (`model.dtype`).
        processor: how messages name the family's image processor.

    Returns:
        `pixel_values` itself, or its cast to `dtype`.
    """
    if not isinstance(pixel_values, torch.Tensor):
        hint = "; stack the images into one tensor (the image processor pads them to one size)"
        raise ValueError(
            f"pixel_values must be a torch.Tensor (batch, {num_channels}, height, width), got "
            f"{type(pixel_values).__name__}{hint if isinstance(pixel_values, (list, tuple)) else ''}; {processor} "
            "makes it from images"
        )
    if pixel_values.dim() != 4:
        hint = " (one image: add the batch axis with pixel_values[None])" if pixel_values.dim() == 3 else ""
        raise ValueError(
            f"pixel_values must be (batch, channels, height, width), got shape {tuple(pixel_values.shape)}{hint}"
        )
    if not pixel_values.is_floating_point():
        raise ValueError(
            f"pixel_values must be normalised floats, got dtype {pixel_values.dtype}; {processor} rescales and "
            "normalises images"
        )
    batch, channels, height, width = pixel_values.shape
    if channels != num_channels:
        raise ValueError(
            f"pixel_values must have {num_channels} channels, got shape {tuple(pixel_values.shape)} (batch, "
            "channels, height, width)"
        )
    if batch == 0 or height == 0 or width == 0:
        raise ValueError(f"pixel_values is empty: shape {tuple(pixel_values.shape)} (batch, channels, height, width)")
    if pixel_values.dtype == dtype:
        return pixel_values
    if not torch.compiler.is_compiling() and (pixel_values.dtype, dtype) not in _ANNOUNCED_CASTS:
        _ANNOUNCED_CASTS.add((pixel_values.dtype, dtype))
        warnings.warn(
            f"pixel_values are {pixel_values.dtype} and the model is {dtype}: cast to {dtype} (said once); cast "
            f"them yourself (`pixel_values.to(model.dtype)`) to silence this",
            stacklevel=3,
        )
    return pixel_values.to(dtype)


def check_semantic_labels(
    labels: Any, pixel_values: torch.Tensor, num_labels: int, ignore_index: int, hint: str = REDUCE_LABELS_HINT
) -> None:
    """The check of every family's semantic `labels=`: raises `ValueError` unless `labels` is an integer tensor
    `(N, H, W)` for `pixel_values` `(N, C, H, W)` holding class ids in `[0, num_labels)` or `ignore_index`.

    The value check reads the labels on the host (a synchronisation), so it is left out while `torch.compile` traces
    a forward: a compiled training step checks them before the model (`FaPNTrainer.compute_loss`, or
    `check_label_values` called by hand)."""
    if not isinstance(labels, torch.Tensor):
        raise ValueError(
            f"labels must be a torch.Tensor of class ids (batch, height, width), got {type(labels).__name__}; "
            "convert with torch.as_tensor(labels, dtype=torch.long)"
        )
    expected = (pixel_values.shape[0], *pixel_values.shape[-2:])
    if tuple(labels.shape) != expected:
        raise ValueError(f"labels must have shape (batch, height, width) = {expected}, got {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"labels must hold integer class ids, got dtype {labels.dtype}")
    if not torch.compiler.is_compiling():
        check_label_values(labels, num_labels, ignore_index, hint=hint)


def explain_batch_norm_error(error: ValueError, pixel_values: torch.Tensor) -> ValueError | None:
    """PyTorch's "Expected more than 1 value per channel when training" (a BatchNorm layer on a 1x1 map of a batch of
    one), explained with what to do about it; None for any other error. `pixel_values` `(N, C, H, W)` is the input
    the model padded."""
    if "more than 1 value per channel" not in str(error):
        return None
    batch, _, height, width = pixel_values.shape
    return ValueError(
        f"a BatchNorm layer saw one value per channel while training on a batch of {batch} image(s) of "
        f"{height}x{width} (the stride-32 map is {height // 32}x{width // 32}): train with at least 2 images per "
        "device or larger crops, or use neck_norm='GN' / a frozen backbone BatchNorm"
    )


def check_pixel_mask(pixel_mask: torch.Tensor | None, pixel_values: torch.Tensor) -> None:
    """Raises `ValueError` unless `pixel_mask` is None or `(N, H, W)` for `pixel_values` `(N, C, H, W)`. Shapes only:
    no host synchronisation."""
    expected = (pixel_values.shape[0], *pixel_values.shape[-2:])
    if pixel_mask is not None and tuple(pixel_mask.shape) != expected:
        raise ValueError(
            f"pixel_mask must have shape (batch, height, width) = {expected}, got {tuple(pixel_mask.shape)}"
        )


# ---------------------------------------------------------------------------------------------------------------------
# FaPN neck
# ---------------------------------------------------------------------------------------------------------------------


class FeatureSelectionModule(GradientCheckpointingLayer):
    """FSM: SE-like channel attention with a skip connection, then a 1x1 projection to the pyramid width.

    `(N, C_in, H, W)` -> `(N, D, H, W)`:  `projection(x + x * sigmoid(attention(mean_hw(x))))`.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.attention = ConvNormAct(in_channels, in_channels, 1, bias=False)
        self.projection = ConvNormAct(in_channels, out_channels, 1, bias=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        weights = torch.sigmoid(self.attention(features.mean(dim=(2, 3), keepdim=True)))  # (N, C_in, 1, 1)
        # projection(x + x * w) = projection's weight scaled by (1 + w), per image and input channel, times x: one
        # matrix product per image and no full-size temporaries (the projection has no bias).
        batch, channels, height, width = features.shape
        conv = self.projection.conv
        scaled = conv.weight.view(1, -1, channels) * (1 + weights.view(batch, 1, channels))  # (N, D, C_in)
        projected = torch.matmul(scaled, features.reshape(batch, channels, height * width))
        return self.projection.activation(self.projection.norm(projected.view(batch, -1, height, width)))


class FeatureAlignmentModule(GradientCheckpointingLayer):
    """FAM: aligns the upsampled coarse map to the lateral map with a modulated deformable convolution.

    The offsets and masks are predicted from `offset_conv(concat(lateral, 2 * upsampled))`, i.e. from the
    difference between the two maps. Inputs `lateral` `(N, D, H, W)` and `coarse` `(N, D, h, w)`; output
    `relu(dcn(upsampled)) + lateral`, `(N, D, H, W)`.
    """

    def __init__(self, channels: int, deformable_groups: int, norm: str, implementation: str) -> None:
        super().__init__()
        self.offset_conv = ConvNormAct(2 * channels, channels, 1, norm=norm, bias=False)
        self.deform_conv = ModulatedDeformConv2d(
            channels,
            channels,
            kernel_size=3,
            padding=1,
            deformable_groups=deformable_groups,
            guide_channels=channels,
            implementation=implementation,
        )
        # Zero offsets and masks at the start: a fresh FAM samples the regular grid with mask 0.5, as the original.
        tag_init(self.deform_conv.offset_mask_conv, "zeros")

    def guide(self, lateral: torch.Tensor, upsampled: torch.Tensor) -> torch.Tensor:
        """`offset_conv(concat(lateral, 2 * upsampled))`, computed as the sum of the 1x1 convolutions of the two
        halves (doubling the weight is exact, like doubling the map), without the concatenated copy."""
        conv, channels = self.offset_conv.conv, lateral.shape[1]
        guide = F.conv2d(lateral, conv.weight[:, :channels], conv.bias)
        guide += F.conv2d(upsampled, 2 * conv.weight[:, channels:])
        return self.offset_conv.activation(self.offset_conv.norm(guide))

    def forward(self, lateral: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
        upsampled = resize_to(coarse, lateral.shape[-2:])
        # The guide is freed once the offsets are predicted, before the deformable convolution's own buffers.
        offset, mask = self.deform_conv.offsets_and_mask(self.guide(lateral, upsampled))
        aligned = F.relu(self.deform_conv.deform(upsampled, offset, mask), inplace=True)
        # Without an autograd graph to keep intact, the sum goes into the convolution's output.
        return aligned + lateral if aligned.requires_grad else aligned.add_(lateral)


class FaPNNeck(nn.Module):
    """The FaPN neck (SPEC 2.3), or the detectron2 FPN (SPEC 2.4) when `use_fam` and `use_fsm` are off.

    Takes the backbone maps C2..C5 (strides 4..32, `in_channels` channels) and returns the pyramid P2..P5, each
    `(N, channels, H_i, W_i)`. With FAM the top level has no output conv and the un-convolved map of each level feeds
    the next finer one.

    Args:
        in_channels: channels of C2..C5.
        channels: the pyramid width D.
        norm: `""`, `"GN"` or `"BN"` in every conv of the neck.
        use_fsm: FSM laterals instead of plain 1x1 convs.
        use_fam: FAM alignment instead of nearest upsample and add.
        deformable_groups: deformable groups of each FAM.
        deform_conv_implementation: `"auto"`, `"torch"` or `"torchvision"` (see `deform_conv`).
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        channels: int,
        norm: str = "",
        use_fsm: bool = True,
        use_fam: bool = True,
        deformable_groups: int = 8,
        deform_conv_implementation: str = "auto",
    ) -> None:
        super().__init__()

        def lateral(in_channels: int) -> nn.Module:
            if use_fsm:
                return FeatureSelectionModule(in_channels, channels)
            return ConvNormAct(in_channels, channels, 1, norm=norm)

        # Index 0 is the finest level (C2); the top level (C5) has its own plain lateral conv.
        self.lateral_convs = nn.ModuleList(lateral(c) for c in in_channels[:-1])
        self.top_lateral_conv = ConvNormAct(in_channels[-1], channels, 1, norm=norm)
        self.alignments = (
            nn.ModuleList(
                FeatureAlignmentModule(channels, deformable_groups, norm, deform_conv_implementation)
                for _ in in_channels[:-1]
            )
            if use_fam
            else None
        )
        self.output_convs = nn.ModuleList(
            ConvNormAct(channels, channels, 3, padding=1, norm=norm) for _ in in_channels[:-1]
        )
        self.top_output_conv = None if use_fam else ConvNormAct(channels, channels, 3, padding=1, norm=norm)

    def forward(self, features: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        top_down = self.top_lateral_conv(features[-1])
        pyramid = [top_down if self.top_output_conv is None else self.top_output_conv(top_down)]
        for level in reversed(range(len(features) - 1)):
            lateral = self.lateral_convs[level](features[level])
            if self.alignments is not None:
                top_down = self.alignments[level](lateral, top_down)
            else:
                top_down = lateral + resize_to(top_down, lateral.shape[-2:], mode="nearest")
            pyramid.insert(0, self.output_convs[level](top_down))
        return pyramid


# ---------------------------------------------------------------------------------------------------------------------
# Panoptic-FPN semantic head (FaPN's semantic models; Panoptic FPN's stuff head)
# ---------------------------------------------------------------------------------------------------------------------


class ScaleHead(GradientCheckpointingLayer, nn.ModuleList):
    """One tower of the semantic FPN head: conv3x3/GN/ReLU blocks, each followed by a 2x bilinear upsample on the
    coarser levels. Input `(N, C, h, w)` of one pyramid level; `output_sizes` gives the size after each block's
    upsample (the next finer levels' sizes, so that odd sizes stay aligned) and is empty for P2."""

    def forward(self, features: torch.Tensor, output_sizes: Sequence[Sequence[int]] = ()) -> torch.Tensor:
        for index, block in enumerate(self):
            features = block(features)
            if index < len(output_sizes):
                features = resize_to(features, output_sizes[index])
        return features


class SemanticFPNHead(nn.Module):
    """Panoptic-FPN semantic head (SPEC 2.5): per-level conv/GN/ReLU (+2x upsample) towers summed at stride 4.

    Input: the pyramid P2..P5, each `(N, in_channels, H_i, W_i)`. Output: coarse logits `(N, num_labels, H_2, W_2)` at
    the resolution of P2.

    Args:
        in_channels: the pyramid width D.
        channels: the towers' width (GroupNorm(32): a multiple of 32).
        num_labels: the predictor's output channels.
    """

    def __init__(self, in_channels: int, channels: int, num_labels: int) -> None:
        super().__init__()
        self.scale_heads = nn.ModuleList()
        for stride in (4, 8, 16, 32):
            num_blocks = max(1, int(math.log2(stride)) - 2)
            self.scale_heads.append(
                ScaleHead(
                    ConvNormAct(
                        in_channels if block == 0 else channels,
                        channels,
                        3,
                        padding=1,
                        norm="GN",
                        activation=True,
                        bias=False,
                        init="msra",
                    )
                    for block in range(num_blocks)
                )
            )
        # detectron2's SemSegFPNHead gives its predictor c2_msra_fill too; only PointRend's predictor is N(0, 0.001^2).
        self.predictor = ConvNormAct(channels, num_labels, 1, init="msra")

    def forward(self, pyramid: Sequence[torch.Tensor]) -> torch.Tensor:
        fused = None
        for level, (features, tower) in enumerate(zip(pyramid, self.scale_heads)):
            output_sizes = tuple(tuple(pyramid[finer].shape[-2:]) for finer in reversed(range(level)))
            features = tower(features, output_sizes=output_sizes)
            fused = features if fused is None else fused + features
        return self.predictor(fused)


__all__ = [
    "ConvNormAct",
    "FaPNNeck",
    "FeatureAlignmentModule",
    "FeatureSelectionModule",
    "ScaleHead",
    "SemanticFPNHead",
    "check_pixel_mask",
    "check_pixel_values",
    "check_semantic_labels",
    "explain_batch_norm_error",
    "make_norm",
    "pad_to_multiple",
    "padded_size",
    "resize_to",
]
