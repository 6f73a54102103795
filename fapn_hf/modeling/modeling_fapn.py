"""PyTorch FaPN: feature-aligned pyramid network (Huang et al., ICCV 2021) for semantic segmentation.

Layout follows the official detectron2 implementation: a backbone from transformers' backbone API, the FaPN neck
(feature selection + feature alignment over a modulated deformable convolution), the Panoptic-FPN semantic head
and, optionally, PointRend refinement. `use_fam=False, use_fsm=False` turns the neck into the standard FPN.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import PreTrainedConfig, PreTrainedModel
from transformers import initialization as hf_init
from transformers.backbone_utils import load_backbone
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import SemanticSegmenterOutput
from transformers.models.resnet.modeling_resnet import ResNetBackbone, ResNetStage
from transformers.utils import ModelOutput, logging

from .backbone_freezing import freeze_backbone, keep_norms_frozen
from .configuration_fapn import FAPN_CODE, FaPNConfig
from .deform_conv import ModulatedDeformConv2d
from .label_checks import check_label_values
from .remote_code import FamilyCodeSavingMixin

logger = logging.get_logger(__name__)

# ---------------------------------------------------------------------------------------------------------------------
# Layers
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


# detectron2's initialisation of each kind of layer, keyed by the name a layer is tagged with where it is built.
INIT_SCHEMES = ("xavier", "msra", "normal", "zeros")


def tag_init(layer: nn.Module, scheme: str) -> nn.Module:
    """Records on `layer` (a conv) the initialisation it gets from `FaPNPreTrainedModel._init_weights`:
    `"xavier"` (detectron2's c2_xavier_fill: kaiming-uniform with a = 1, i.e. U(+-sqrt(3 / fan_in))), `"msra"`
    (c2_msra_fill: kaiming-normal, fan_out, ReLU gain, i.e. N(0, 2 / fan_out)), `"normal"` (N(0, 0.001^2), the
    point-head predictor) or `"zeros"` (offset/mask convs). Biases start at zero in every scheme."""
    if scheme not in INIT_SCHEMES:
        raise ValueError(f"Unknown init scheme {scheme!r}; expected one of {INIT_SCHEMES}")
    layer.init_scheme = scheme
    return layer


def init_conv(conv: nn.Module, scheme: str) -> None:
    """Initialises `conv` by `scheme` (see `tag_init`). transformers' guarded init functions leave tensors that
    `from_pretrained` loaded untouched."""
    if scheme == "xavier":
        hf_init.kaiming_uniform_(conv.weight, a=1)
    elif scheme == "msra":
        hf_init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    elif scheme == "normal":
        hf_init.normal_(conv.weight, std=0.001)
    elif scheme == "zeros":
        hf_init.zeros_(conv.weight)
    else:
        raise ValueError(f"Unknown init scheme {scheme!r}; expected one of {INIT_SCHEMES}")
    if conv.bias is not None:
        hf_init.zeros_(conv.bias)


class ConvNormAct(nn.Module):
    """Conv2d, optional norm, optional ReLU. Without a norm the conv has a bias unless told otherwise.

    `init` names the conv's detectron2 initialisation (see `tag_init`); norms start at weight 1, bias 0.
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

    Takes the backbone maps C2..C5 (strides 4..32) and returns the pyramid P2..P5, each `(N, D, H_i, W_i)`.
    With FAM the top level has no output conv and the un-convolved map of each level feeds the next finer one.
    """

    def __init__(self, config: FaPNConfig, in_channels: Sequence[int]) -> None:
        super().__init__()
        width, norm = config.neck_channels, config.neck_norm

        def lateral(channels: int) -> nn.Module:
            if config.use_fsm:
                return FeatureSelectionModule(channels, width)
            return ConvNormAct(channels, width, 1, norm=norm)

        # Index 0 is the finest level (C2); the top level (C5) has its own plain lateral conv.
        self.lateral_convs = nn.ModuleList(lateral(c) for c in in_channels[:-1])
        self.top_lateral_conv = ConvNormAct(in_channels[-1], width, 1, norm=norm)
        self.alignments = (
            nn.ModuleList(
                FeatureAlignmentModule(width, config.deformable_groups, norm, config.deform_conv_implementation)
                for _ in in_channels[:-1]
            )
            if config.use_fam
            else None
        )
        self.output_convs = nn.ModuleList(ConvNormAct(width, width, 3, padding=1, norm=norm) for _ in in_channels[:-1])
        self.top_output_conv = None if config.use_fam else ConvNormAct(width, width, 3, padding=1, norm=norm)

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
# Heads
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
    """Panoptic-FPN semantic head: per-level conv/GN/ReLU (+2x upsample) towers summed at stride 4.

    Input: the pyramid P2..P5. Output: coarse logits `(N, num_labels, H_2, W_2)` at the resolution of P2.
    """

    def __init__(self, config: FaPNConfig) -> None:
        super().__init__()
        self.scale_heads = nn.ModuleList()
        for stride in (4, 8, 16, 32):
            num_blocks = max(1, int(math.log2(stride)) - 2)
            self.scale_heads.append(
                ScaleHead(
                    ConvNormAct(
                        config.neck_channels if block == 0 else config.head_channels,
                        config.head_channels,
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
        self.predictor = ConvNormAct(config.head_channels, config.num_labels, 1, init="msra")

    def forward(self, pyramid: Sequence[torch.Tensor]) -> torch.Tensor:
        fused = None
        for level, (features, tower) in enumerate(zip(pyramid, self.scale_heads)):
            output_sizes = tuple(tuple(pyramid[finer].shape[-2:]) for finer in reversed(range(level)))
            features = tower(features, output_sizes=output_sizes)
            fused = features if fused is None else fused + features
        return self.predictor(fused)


def point_sample(features: torch.Tensor, coords: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """Samples `(N, C, H, W)` at `coords` `(N, P, 2)`, given as (x, y) in [0, 1]; returns `(N, C, P)`."""
    grid = 2.0 * coords.unsqueeze(2) - 1.0
    return F.grid_sample(features, grid.to(features.dtype), mode=mode, align_corners=False).squeeze(3)


def uncertainty(logits: torch.Tensor) -> torch.Tensor:
    """PointRend uncertainty, `(N, K, ...) -> (N, 1, ...)`: second-best minus best logit (higher = less sure)."""
    top2 = torch.topk(logits, k=2, dim=1).values
    return (top2[:, 1] - top2[:, 0]).unsqueeze(1)


def sample_training_points(
    coarse_logits: torch.Tensor, num_points: int, oversample_ratio: float, importance_sample_ratio: float
) -> torch.Tensor:
    """Training points, `(N, num_points, 2)` in [0, 1]: the most uncertain of `oversample_ratio * num_points`
    random candidates for a share `importance_sample_ratio`, uniformly random points for the rest."""
    batch = coarse_logits.shape[0]
    num_candidates = int(num_points * oversample_ratio)
    candidates = torch.rand(batch, num_candidates, 2, device=coarse_logits.device)
    candidate_uncertainty = uncertainty(point_sample(coarse_logits, candidates))[:, 0]
    num_uncertain = int(importance_sample_ratio * num_points)
    chosen = torch.topk(candidate_uncertainty, k=num_uncertain, dim=1).indices
    points = torch.gather(candidates, 1, chosen.unsqueeze(-1).expand(-1, -1, 2))
    num_random = num_points - num_uncertain
    if num_random > 0:
        points = torch.cat([points, torch.rand(batch, num_random, 2, device=coarse_logits.device)], dim=1)
    return points


def most_uncertain_grid_points(uncertainty_map: torch.Tensor, num_points: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The `num_points` most uncertain cells of `(N, 1, H, W)`: flat indices `(N, P)` and cell centres `(N, P, 2)`."""
    batch, _, height, width = uncertainty_map.shape
    num_points = torch.sym_min(height * width, num_points)  # symbolic sizes (export) stay symbolic
    indices = torch.topk(uncertainty_map.view(batch, height * width), k=num_points, dim=1).indices
    # detectron2's expression, kept operation for operation: other forms of the same centre round differently in
    # float32 and sample a neighbouring value at cell borders.
    step_x, step_y = 1.0 / float(width), 1.0 / float(height)
    row = indices // width
    column = indices - row * width  # indices % width; the ONNX exporter cannot take `%` by a symbolic width
    coords = torch.stack(
        (
            step_x / 2.0 + column.to(torch.float) * step_x,
            step_y / 2.0 + row.to(torch.float) * step_y,
        ),
        dim=-1,
    )
    return indices, coords


class PointHead(nn.Module):
    """PointRend's point head: 1x1 `Conv1d` + ReLU layers over point features, then a linear predictor.

    Inputs: fine features `(N, D, P)` sampled from P2 and coarse logits `(N, K, P)` sampled at the same points.
    Output: point logits `(N, K, P)`. With `coarse_pred_each_layer` the coarse logits are appended to the input of
    every layer, as in detectron2's `StandardPointHead`.
    """

    def __init__(self, config: FaPNConfig) -> None:
        super().__init__()
        num_labels, channels = config.num_labels, config.point_head_channels
        self.coarse_pred_each_layer = config.point_head_coarse_pred_each_layer
        extra = num_labels if self.coarse_pred_each_layer else 0
        in_channels = config.neck_channels + num_labels
        self.layers = nn.ModuleList()
        for _ in range(config.point_head_num_layers):
            self.layers.append(tag_init(nn.Conv1d(in_channels, channels, 1), "msra"))
            in_channels = channels + extra
        self.predictor = tag_init(nn.Conv1d(in_channels, num_labels, 1), "normal")

    def forward(self, fine_features: torch.Tensor, coarse_logits: torch.Tensor) -> torch.Tensor:
        hidden = torch.cat([fine_features, coarse_logits], dim=1)
        for layer in self.layers:
            hidden = F.relu(layer(hidden))
            if self.coarse_pred_each_layer:
                hidden = torch.cat([hidden, coarse_logits], dim=1)
        return self.predictor(hidden)


# ---------------------------------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class FaPNModelOutput(ModelOutput):
    """Output of [`FaPNModel`]. Sizes are those of the input padded to `size_divisibility`.

    Args:
        last_hidden_state (`torch.FloatTensor` of shape `(N, D, H / 4, W / 4)`): the finest pyramid level P2, the
            map the semantic heads read (and what `pipeline("image-feature-extraction")` returns).
        feature_maps (`tuple(torch.FloatTensor)`): the pyramid P2..P5, each `(N, D, H / s, W / s)` for
            s = 4, 8, 16, 32.
        backbone_feature_maps (`tuple(torch.FloatTensor)`): the backbone maps C2..C5 (NCHW).
        hidden_states (`tuple(torch.FloatTensor)`, *optional*): all backbone stages, when
            `output_hidden_states=True`.
    """

    last_hidden_state: torch.FloatTensor | None = None
    feature_maps: tuple[torch.FloatTensor, ...] | None = None
    backbone_feature_maps: tuple[torch.FloatTensor, ...] | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class FaPNSemanticSegmenterOutput(SemanticSegmenterOutput):
    """[`SemanticSegmenterOutput`] plus the `pixel_mask` `(N, H, W)` the model was given (1 on image pixels), with
    which `FaPNImageProcessor.post_process_semantic_segmentation` crops each image out of a padded batch."""

    pixel_mask: torch.LongTensor | None = None


def check_pixel_mask(pixel_mask: torch.Tensor | None, pixel_values: torch.Tensor) -> None:
    """Raises `ValueError` unless `pixel_mask` is None or `(N, H, W)` for `pixel_values` `(N, C, H, W)`."""
    if pixel_mask is not None and tuple(pixel_mask.shape) != (pixel_values.shape[0], *pixel_values.shape[-2:]):
        raise ValueError(
            f"pixel_mask must have shape (batch, height, width) = {(pixel_values.shape[0], *pixel_values.shape[-2:])}"
            f", got {tuple(pixel_mask.shape)}"
        )


def masked_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """Cross-entropy averaged over the pixels (or points) whose label is not `ignore_index`; 0, with zero gradient,
    when there is none (PyTorch's mean would be NaN). `logits` `(N, K, ...)`, `labels` `(N, ...)`."""
    total = F.cross_entropy(logits, labels, ignore_index=ignore_index, reduction="sum")
    return total / (labels != ignore_index).sum().clamp(min=1)


# What most often puts a value outside the label map: a data set with 0 for background and classes from 1.
REDUCE_LABELS_HINT = (
    ". If the data set marks background with 0 and the classes from 1, set `do_reduce_labels=True` in the image "
    "processor."
)


def _batch_norm_error(error: ValueError, pixel_values: torch.Tensor) -> ValueError | None:
    """PyTorch's "Expected more than 1 value per channel when training", explained with what to do about it; None
    for any other error."""
    if "more than 1 value per channel" not in str(error):
        return None
    batch, _, height, width = pixel_values.shape
    return ValueError(
        f"a BatchNorm layer saw one value per channel while training on a batch of {batch} image(s) of "
        f"{height}x{width} (the stride-32 map is {height // 32}x{width // 32}): train with at least 2 images per "
        "device or larger crops, or use neck_norm='GN' / a frozen backbone BatchNorm"
    )


def load_timm_backbone_weights(backbone: nn.Module, checkpoint_file: str | None = None) -> None:
    """Loads timm's pretrained weights (every parameter and BatchNorm statistic) into `backbone`, a transformers
    `TimmBackbone`, with a strict key match.

    Args:
        backbone: the model's `TimmBackbone` (its `config` names the timm model and its feature outputs).
        checkpoint_file: a local `.safetensors`/`.pth` file of that timm model; by default timm fetches the model's
            default pretrained weights (from the Hub cache, or the network).
    """
    import timm

    backbone_config = getattr(backbone, "config", None)
    if getattr(backbone, "_backbone", None) is None or getattr(backbone_config, "backbone", None) is None:
        raise ValueError(
            f"pretrained backbone weights are timm's: the backbone is a {type(backbone).__name__}, not a timm "
            "backbone; load a transformers backbone with `AutoBackbone.from_pretrained` and assign it instead"
        )
    if checkpoint_file is not None and not Path(checkpoint_file).is_file():
        raise FileNotFoundError(f"backbone checkpoint not found: {checkpoint_file}")
    pretrained = timm.create_model(
        backbone_config.backbone,
        pretrained=True,
        features_only=backbone_config.features_only,
        out_indices=tuple(backbone_config.out_indices),
        in_chans=backbone_config.num_channels,
        output_stride=backbone_config.output_stride,
        pretrained_cfg_overlay={"file": str(checkpoint_file)} if checkpoint_file else None,
    )
    backbone._backbone.load_state_dict(pretrained.state_dict(), strict=True)


def warn_unloaded_pretrained_backbone(config: PreTrainedConfig, backbone: nn.Module) -> None:
    """Warns when `config.use_pretrained_backbone` asks for pretrained weights that the constructor, which never
    downloads, has not loaded into the freshly built `backbone`. Silent under `from_pretrained` (built on the meta
    device: the checkpoint holds the backbone)."""
    if getattr(config, "use_pretrained_backbone", False) and not next(backbone.parameters()).is_meta:
        logger.warning(
            "use_pretrained_backbone=True, but a model constructor never loads weights (no network access while "
            "building): this backbone is randomly initialised. Build the model with its "
            "`from_pretrained_backbone(config)` classmethod or call `model.base_model.load_pretrained_backbone()`."
        )


class PretrainedBackboneMixin:
    """Where a family's backbone sits (`backbone_module_name`, inside `model.base_model`) and the explicit step that
    loads timm's pretrained weights into it: `load_pretrained_backbone`, or `from_pretrained_backbone` for a new
    model."""

    # The backbone's name inside the base model: `get_submodule` path.
    backbone_module_name: str = "backbone"

    def backbone_module(self) -> nn.Module:
        """The backbone (transformers' backbone API) of this model, whichever head it carries."""
        return self.base_model.get_submodule(self.backbone_module_name)

    def load_pretrained_backbone(self, checkpoint_file: str | None = None) -> None:
        """Loads timm's pretrained weights (all parameters and BatchNorm statistics) into the backbone and records it
        in `config.use_pretrained_backbone`. The constructor never does this (see `from_pretrained_backbone`).

        Args:
            checkpoint_file: a local `.safetensors`/`.pth` file of the timm model; by default timm fetches the
                model's default pretrained weights (from the Hub cache, or the network).
        """
        load_timm_backbone_weights(self.backbone_module(), checkpoint_file)
        self.config.use_pretrained_backbone = True

    @classmethod
    def from_pretrained_backbone(cls, config: PreTrainedConfig, checkpoint_file: str | None = None) -> PreTrainedModel:
        """A new model of `config`: backbone from timm's pretrained (ImageNet) weights, the rest initialised as usual.

        Why a separate step: a constructor never touches the network or the Hub cache (transformers 5's rule too:
        `load_backbone` builds a random backbone and `use_pretrained_backbone` is no longer read there), so building
        from a config, `from_config` and `from_pretrained` stay offline and deterministic; this is the one call that
        fetches backbone weights. Afterwards `config.use_pretrained_backbone` is True: it records where the backbone
        started and is saved with the model (reloading reads the checkpoint, never timm's weights).

        Args:
            config: the model's config; its backbone must be a timm backbone.
            checkpoint_file: a local `.safetensors`/`.pth` file of the timm model instead of timm's download.
        """
        # The constructor warns about a requested but unloaded backbone; here the weights follow.
        config.use_pretrained_backbone = False
        model = cls(config)
        model.load_pretrained_backbone(checkpoint_file)
        return model


def padded_size(height: int, width: int, divisor: int) -> tuple[int, int]:
    return (-(-height // divisor) * divisor, -(-width // divisor) * divisor)


class FaPNPreTrainedModel(FamilyCodeSavingMixin, PretrainedBackboneMixin, PreTrainedModel):
    config_class = FaPNConfig
    config: FaPNConfig
    base_model_prefix = "fapn"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    # forward() has no host synchronisation under torch.compile (label values are checked outside it).
    _can_compile_fullgraph = True
    # forward() takes no **kwargs: the Trainer must not rescale the loss for it under DDP.
    accepts_loss_kwargs = False
    _no_split_modules = []
    # save_pretrained() ships the code of every FaPN head and the image processor (remote_code.py).
    code_family = FAPN_CODE

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        """Loads like any transformers model, then freezes the backbone as the config says: loading replaces every
        parameter with a fresh, trainable one."""
        loaded = super().from_pretrained(*args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        config = model.config
        freeze_backbone(model.backbone_module(), config.freeze_backbone_norm, config.freeze_backbone_stages)
        return loaded

    # Activation checkpointing (transformers 5's contract: every module with a `gradient_checkpointing` flag): FaPN's
    # GradientCheckpointingLayers (each FSM and FAM of the neck, each tower of the semantic head), transformers
    # backbones that support it themselves (Swin, ...) and ResNet's stages; timm backbones through timm's own switch.
    supports_gradient_checkpointing = True

    def _set_gradient_checkpointing(
        self, enable: bool = True, gradient_checkpointing_func: Callable = checkpoint, every_n_layers: int = 1
    ) -> None:
        super()._set_gradient_checkpointing(enable, gradient_checkpointing_func, every_n_layers)
        timm_model = getattr(self.backbone_module(), "_backbone", None)
        if timm_model is not None:
            # timm checkpoints with its own function (non-reentrant, the stages after the stem).
            for module in timm_model.modules():
                if hasattr(module, "set_grad_checkpointing"):
                    module.set_grad_checkpointing(enable)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Initialises one leaf module of the neck or the heads.

        transformers 5 calls this on leaves (a conv, a norm), not on the blocks that own them, and under
        `from_pretrained` only on leaves holding tensors the checkpoint lacked. Convs carry their detectron2 scheme
        from where they were built (`tag_init`); the deformable conv's weight keeps its own rule
        (U(+-1 / sqrt(fan_in)), bias 0); norms start at weight 1, bias 0 (BatchNorm statistics at 0 and 1). Backbones
        are initialised by their own `_init_weights` (see `initialize_weights` for timm).
        """
        scheme = getattr(module, "init_scheme", None)
        if scheme is not None:
            init_conv(module, scheme)
        elif isinstance(module, ModulatedDeformConv2d):
            module.reset_parameters()
        else:
            super()._init_weights(module)

    def initialize_weights(self) -> None:
        """transformers' initialisation, plus the weights a timm backbone misses.

        `TimmBackbone._init_weights` only resets BatchNorm statistics, leaving timm weights that a checkpoint lacks as
        uninitialised memory. Those are filled from a freshly built timm model of the same architecture (timm's own
        initialisation). A fresh backbone (its modules are marked initialised when it is built) and every loaded
        tensor are left alone.
        """
        missing = self._uninitialised_timm_tensors()
        super().initialize_weights()
        if missing:
            self._fill_from_fresh_timm_model(missing)

    def _uninitialised_timm_tensors(self) -> dict[str, torch.Tensor]:
        timm_model = getattr(getattr(self.base_model, "backbone", None), "_backbone", None)
        if timm_model is None:
            return {}
        missing = {}
        for module_name, module in timm_model.named_modules():
            if getattr(module, "_is_hf_initialized", False):
                continue
            tensors = [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]
            for name, tensor in tensors:
                if tensor is None or tensor.is_meta or getattr(tensor, "_is_hf_initialized", False):
                    continue
                missing[f"{module_name}.{name}" if module_name else name] = tensor
        return missing

    @torch.no_grad()
    def _fill_from_fresh_timm_model(self, missing: dict[str, torch.Tensor]) -> None:
        import timm

        backbone_config = self.config.backbone_config
        with torch.device("cpu"):
            fresh = timm.create_model(
                backbone_config.backbone,
                pretrained=False,
                features_only=backbone_config.features_only,
                in_chans=backbone_config.num_channels,
                out_indices=tuple(backbone_config.out_indices),
                output_stride=backbone_config.output_stride,
            )
        fresh_state = fresh.state_dict()
        unknown = sorted(set(missing) - set(fresh_state))
        if unknown:
            raise ValueError(
                f"cannot initialise timm backbone tensors {unknown}: a fresh {backbone_config.backbone!r} lacks them"
            )
        for name, tensor in missing.items():
            tensor.copy_(fresh_state[name])


class CheckpointedResNetStage(GradientCheckpointingLayer, ResNetStage):
    """transformers' `ResNetStage` as a GradientCheckpointingLayer (ResNet has no checkpointing of its own); same
    parameters and state-dict keys. `FaPNModel` gives its ResNet backbone's stages this class."""


class FaPNModel(FaPNPreTrainedModel):
    """Backbone + FaPN neck: the feature pyramid P2..P5, with P2 as `last_hidden_state`."""

    def __init__(self, config: FaPNConfig) -> None:
        super().__init__(config)
        self.backbone = load_backbone(config)
        if isinstance(self.backbone, ResNetBackbone):
            for stage in self.backbone.encoder.stages:
                stage.__class__ = CheckpointedResNetStage
        self.neck = FaPNNeck(config, self.backbone.channels)
        # timm's transformer backbones (Swin) return NHWC maps.
        self.backbone_channels_last = str(getattr(getattr(self.backbone, "_backbone", None), "output_fmt", "")) in (
            "NHWC",
            "Format.NHWC",
        )
        self.post_init()
        warn_unloaded_pretrained_backbone(config, self.backbone)
        freeze_backbone(self.backbone, config.freeze_backbone_norm, config.freeze_backbone_stages)

    def train(self, mode: bool = True) -> FaPNModel:
        """Sets training mode, except for the backbone norms that `freeze_backbone_norm`/`_stages` keep frozen."""
        super().train(mode)
        if mode:
            keep_norms_frozen(self.backbone, self.config.freeze_backbone_norm, self.config.freeze_backbone_stages)
        return self

    def check_pixel_values(self, pixel_values: torch.Tensor) -> None:
        """Raises `ValueError` for inputs the model cannot take: not a float `(N, C, H, W)` tensor with the
        backbone's channel count, an empty batch or an empty image. Shapes only: no host synchronisation."""
        if not isinstance(pixel_values, torch.Tensor):
            raise ValueError(
                f"pixel_values must be a torch.Tensor (batch, 3, height, width), got {type(pixel_values).__name__}; "
                "FaPNImageProcessor makes it from images"
            )
        if pixel_values.dim() != 4:
            raise ValueError(f"pixel_values must be (batch, channels, height, width), got {tuple(pixel_values.shape)}")
        if not pixel_values.is_floating_point():
            raise ValueError(
                f"pixel_values must be normalised floats, got dtype {pixel_values.dtype}; FaPNImageProcessor rescales "
                "and normalises images"
            )
        batch, channels, height, width = pixel_values.shape
        expected = getattr(self.config.backbone_config, "num_channels", 3)
        if channels != expected:
            raise ValueError(f"pixel_values must have {expected} channels, got shape {tuple(pixel_values.shape)}")
        if batch == 0 or height == 0 or width == 0:
            raise ValueError(f"pixel_values is empty: shape {tuple(pixel_values.shape)} (batch, channels, H, W)")

    def check_feature_strides(self, features: Sequence[torch.Tensor], input_size: tuple[int, int]) -> None:
        """Raises `ValueError` unless the backbone's four maps are at strides 4, 8, 16 and 32 of `input_size` (sides
        rounded either way). Shapes only: no host synchronisation."""
        strides = (4, 8, 16, 32)
        actual = [tuple(f.shape[-2:]) for f in features]
        fits = len(actual) == len(strides) and all(
            side // stride <= got <= -(-side // stride)
            for size, stride in zip(actual, strides)
            for got, side in zip(size, input_size)
        )
        if not fits:
            expected = [(-(-input_size[0] // s), -(-input_size[1] // s)) for s in strides]
            raise ValueError(
                f"the backbone's feature maps are {actual} for a {input_size[0]}x{input_size[1]} input; FaPN needs "
                f"4 maps at strides 4, 8, 16, 32 ({expected}): check the backbone config's out_indices / out_features"
            )

    def forward(
        self,
        pixel_values: torch.Tensor,
        pixel_mask: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> FaPNModelOutput | tuple:
        """
        Args:
            pixel_values: `(N, 3, H, W)` normalised images, any H and W (zero-padded to `size_divisibility`).
            pixel_mask: `(N, H, W)`, 1 on image pixels and 0 on the processor's padding. The features do not depend
                on it: the model pads with zeros itself, as the processor does (and as detectron2 batches images).
        Returns:
            [`FaPNModelOutput`]: `last_hidden_state` P2 `(N, D, H' / 4, W' / 4)` and the pyramid P2..P5, for the input
            zero-padded to `(H', W')`, multiples of `size_divisibility`.
        """
        return_dict = self.config.return_dict if return_dict is None else return_dict
        output_hidden_states = (
            self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        )
        self.check_pixel_values(pixel_values)
        check_pixel_mask(pixel_mask, pixel_values)
        height, width = pixel_values.shape[-2:]
        target_h, target_w = padded_size(height, width, self.config.size_divisibility)
        padded = F.pad(pixel_values, (0, target_w - width, 0, target_h - height))
        try:
            backbone_outputs = self.backbone(padded, output_hidden_states=output_hidden_states, return_dict=True)
        except ValueError as error:
            if (explained := _batch_norm_error(error, padded)) is None:
                raise
            raise explained from error
        features = tuple(backbone_outputs.feature_maps)
        if self.backbone_channels_last:
            features = tuple(f.permute(0, 3, 1, 2).contiguous() for f in features)
        self.check_feature_strides(features, (target_h, target_w))
        try:
            pyramid = tuple(self.neck(features))
        except ValueError as error:
            if (explained := _batch_norm_error(error, padded)) is None:
                raise
            raise explained from error
        output = FaPNModelOutput(
            last_hidden_state=pyramid[0],
            feature_maps=pyramid,
            backbone_feature_maps=features,
            hidden_states=backbone_outputs.hidden_states if output_hidden_states else None,
        )
        return output if return_dict else output.to_tuple()


class FaPNForSemanticSegmentation(FaPNPreTrainedModel):
    """FaPN with the semantic FPN head (and optional PointRend refinement).

    Forward: `pixel_values` `(N, 3, H, W)` -> [`SemanticSegmenterOutput`] with `logits` `(N, num_labels, H, W)` at
    input resolution and, when `labels` `(N, H, W)` are given, the cross-entropy loss (ignoring
    `semantic_loss_ignore_index`; plus the point loss for PointRend models in training mode).
    """

    def __init__(self, config: FaPNConfig) -> None:
        super().__init__(config)
        self.fapn = FaPNModel(config)
        self.decode_head = SemanticFPNHead(config)
        self.point_head = PointHead(config) if config.use_point_rend else None
        # A legacy `config.gradient_checkpointing` is consumed by the base model's post_init; extend it to the heads.
        base_checkpointing = self.fapn.is_activation_checkpointing
        self.post_init()
        if base_checkpointing:
            self.activation_checkpointing_enable()

    def check_labels(self, labels: torch.Tensor, pixel_values: torch.Tensor) -> None:
        """Raises `ValueError` for labels of the wrong shape or type, or with values outside the label map.

        The value check reads the labels on the host (a synchronisation), so it is left out while `torch.compile`
        traces `forward`: a compiled training step checks them before the model, in `FaPNTrainer.compute_loss`
        (or call `check_label_values` yourself)."""
        if not isinstance(labels, torch.Tensor):
            raise ValueError(
                f"labels must be a torch.Tensor of class ids (batch, height, width), got {type(labels).__name__}; "
                "convert with torch.as_tensor(labels, dtype=torch.long)"
            )
        expected = (pixel_values.shape[0], *pixel_values.shape[-2:])
        if tuple(labels.shape) != expected:
            raise ValueError(f"labels must have shape (batch, height, width) = {expected}, got {tuple(labels.shape)}")
        if labels.is_floating_point() or labels.dtype == torch.bool:
            raise ValueError(f"labels must hold integer class ids, got dtype {labels.dtype}")
        if not torch.compiler.is_compiling():
            check_label_values(
                labels, self.config.num_labels, self.config.semantic_loss_ignore_index, hint=REDUCE_LABELS_HINT
            )

    def point_rend_loss(self, coarse_logits: torch.Tensor, fine_features: torch.Tensor, labels: torch.Tensor):
        """Cross-entropy of the point head at uncertainty-sampled points (labels padded like the input)."""
        config = self.config
        points = sample_training_points(
            coarse_logits,
            config.point_rend_train_num_points,
            config.point_rend_oversample_ratio,
            config.point_rend_importance_sample_ratio,
        )
        point_logits = self.point_head(point_sample(fine_features, points), point_sample(coarse_logits, points))
        point_labels = point_sample(labels.unsqueeze(1).to(fine_features.dtype), points, mode="nearest")
        return masked_cross_entropy(point_logits, point_labels[:, 0].long(), config.semantic_loss_ignore_index)

    def point_rend_inference(self, coarse_logits: torch.Tensor, fine_features: torch.Tensor) -> torch.Tensor:
        """Subdivision inference (SPEC 2.6): `steps` times, upsample the logits 2x and re-predict their most uncertain
        cells. The point head reads the stride-4 `coarse_logits` at those cells, never the upsampled or already
        refined map, as in detectron2 and as in training."""
        logits = coarse_logits
        for _ in range(self.config.point_rend_subdivision_steps):
            logits = F.interpolate(logits, scale_factor=2, mode="bilinear", align_corners=False)
            indices, points = most_uncertain_grid_points(
                uncertainty(logits), self.config.point_rend_subdivision_num_points
            )
            point_logits = self.point_head(point_sample(fine_features, points), point_sample(coarse_logits, points))
            batch, num_labels, height, width = logits.shape
            logits = (
                logits.reshape(batch, num_labels, height * width)
                .scatter(2, indices.unsqueeze(1).expand(-1, num_labels, -1), point_logits.to(logits.dtype))
                .view(batch, num_labels, height, width)
            )
        return logits

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        pixel_mask: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> FaPNSemanticSegmenterOutput | tuple:
        """
        Args:
            pixel_values: `(N, 3, H, W)` normalised images of any size.
            labels: `(N, H, W)` class ids in `[0, num_labels)` or `semantic_loss_ignore_index`.
            pixel_mask: `(N, H, W)`, 1 on image pixels and 0 on the processor's padding of a batch of different
                sizes. Returned with the logits, for `post_process_semantic_segmentation` to crop each image.
        Returns:
            [`FaPNSemanticSegmenterOutput`]: `logits` `(N, num_labels, H, W)`, `loss` when labels are given.
        """
        return_dict = self.config.return_dict if return_dict is None else return_dict
        if labels is not None:
            self.check_labels(labels, pixel_values)
        check_pixel_mask(pixel_mask, pixel_values)
        outputs = self.fapn(pixel_values, output_hidden_states=output_hidden_states, return_dict=True)
        fine_features = outputs.feature_maps[0]
        coarse_logits = self.decode_head(outputs.feature_maps)

        height, width = pixel_values.shape[-2:]
        full_size = padded_size(height, width, self.config.size_divisibility)
        if self.point_head is not None and not self.training:
            logits = resize_to(self.point_rend_inference(coarse_logits, fine_features), full_size)
        else:
            logits = resize_to(coarse_logits, full_size)
        logits = logits[:, :, :height, :width].contiguous()  # crop the padding

        loss = None
        if labels is not None:
            ignore = self.config.semantic_loss_ignore_index
            loss = masked_cross_entropy(logits, labels.long(), ignore)
            if self.point_head is not None and self.training:
                padded_labels = F.pad(labels, (0, full_size[1] - width, 0, full_size[0] - height), value=ignore)
                loss = loss + self.point_rend_loss(coarse_logits, fine_features, padded_labels)

        output = FaPNSemanticSegmenterOutput(
            loss=loss, logits=logits, hidden_states=outputs.hidden_states, pixel_mask=pixel_mask
        )
        return output if return_dict else output.to_tuple()


__all__ = [
    "FaPNForSemanticSegmentation",
    "FaPNModel",
    "FaPNModelOutput",
    "FaPNPreTrainedModel",
    "FaPNSemanticSegmenterOutput",
]
