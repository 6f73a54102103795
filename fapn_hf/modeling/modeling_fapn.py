"""PyTorch FaPN: feature-aligned pyramid network (Huang et al., ICCV 2021) for semantic segmentation.

Layout follows the official detectron2 implementation: a backbone from transformers' backbone API, the FaPN neck
(feature selection + feature alignment over a modulated deformable convolution), the Panoptic-FPN semantic head
and, optionally, PointRend refinement. `use_fam=False, use_fsm=False` turns the neck into the standard FPN.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.backbone_utils import load_backbone
from transformers.modeling_outputs import SemanticSegmenterOutput
from transformers.utils import ModelOutput

from .backbone_utils import (
    CheckpointedResNetStage,
    PretrainedBackboneMixin,
    channels_first,
    check_feature_strides,
    freeze_backbone,
    keep_norms_frozen,
    load_timm_backbone_weights,
    make_resnet_stages_checkpointable,
    returns_channels_last,
    warn_unloaded_pretrained_backbone,
)
from .configuration_fapn import FAPN_CODE, FaPNConfig
from .fapn_layers import (
    ConvNormAct,
    FaPNNeck,
    FeatureAlignmentModule,
    FeatureSelectionModule,
    SemanticFPNHead,
    check_pixel_mask,
    check_pixel_values,
    check_semantic_labels,
    explain_batch_norm_error,
    pad_to_multiple,
    padded_size,
    resize_to,
)
from .initialisation import INIT_SCHEMES, InitWeightsMixin, tag_init
from .label_checks import REDUCE_LABELS_HINT
from .remote_code import FamilyCodeSavingMixin

# ---------------------------------------------------------------------------------------------------------------------
# PointRend (the paper's Cityscapes models)
# ---------------------------------------------------------------------------------------------------------------------


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


def masked_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int) -> torch.Tensor:
    """Cross-entropy averaged over the pixels (or points) whose label is not `ignore_index`; 0, with zero gradient,
    when there is none (PyTorch's mean would be NaN). `logits` `(N, K, ...)`, `labels` `(N, ...)`."""
    total = F.cross_entropy(logits, labels, ignore_index=ignore_index, reduction="sum")
    return total / (labels != ignore_index).sum().clamp(min=1)


class FaPNPreTrainedModel(FamilyCodeSavingMixin, PretrainedBackboneMixin, InitWeightsMixin, PreTrainedModel):
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
    # backbones that support it themselves (Swin, ...) and ResNet's stages; timm backbones through timm's own switch
    # (`PretrainedBackboneMixin`).
    supports_gradient_checkpointing = True


class FaPNModel(FaPNPreTrainedModel):
    """Backbone + FaPN neck: the feature pyramid P2..P5, with P2 as `last_hidden_state`."""

    def __init__(self, config: FaPNConfig) -> None:
        super().__init__(config)
        self.backbone = load_backbone(config)
        make_resnet_stages_checkpointable(self.backbone)
        self.neck = FaPNNeck(
            self.backbone.channels,
            config.neck_channels,
            norm=config.neck_norm,
            use_fsm=config.use_fsm,
            use_fam=config.use_fam,
            deformable_groups=config.deformable_groups,
            deform_conv_implementation=config.deform_conv_implementation,
        )
        # timm's transformer backbones (Swin) return NHWC maps.
        self.backbone_channels_last = returns_channels_last(self.backbone)
        self.post_init()
        warn_unloaded_pretrained_backbone(config, self.backbone)
        freeze_backbone(self.backbone, config.freeze_backbone_norm, config.freeze_backbone_stages)

    def train(self, mode: bool = True) -> FaPNModel:
        """Sets training mode, except for the backbone norms that `freeze_backbone_norm`/`_stages` keep frozen."""
        super().train(mode)
        if mode:
            keep_norms_frozen(self.backbone, self.config.freeze_backbone_norm, self.config.freeze_backbone_stages)
        return self

    def check_pixel_values(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """`pixel_values` as the model takes them (the kernel's `check_pixel_values`: a float `(N, C, H, W)` tensor with
        the backbone's channel count, cast to the model's dtype), or `ValueError`. Shapes only: no host
        synchronisation."""
        channels = getattr(self.config.backbone_config, "num_channels", 3)
        return check_pixel_values(pixel_values, channels, self.dtype, "FaPNImageProcessor")

    def check_feature_strides(self, features: Sequence[torch.Tensor], input_size: tuple[int, int]) -> None:
        """Raises `ValueError` unless the backbone's four maps are at strides 4, 8, 16 and 32 of `input_size` (the
        kernel's `check_feature_strides`). Shapes only: no host synchronisation."""
        check_feature_strides(features, input_size)

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
        pixel_values = self.check_pixel_values(pixel_values)
        check_pixel_mask(pixel_mask, pixel_values)
        padded = pad_to_multiple(pixel_values, self.config.size_divisibility)
        try:
            backbone_outputs = self.backbone(padded, output_hidden_states=output_hidden_states, return_dict=True)
        except ValueError as error:
            if (explained := explain_batch_norm_error(error, padded)) is None:
                raise
            raise explained from error
        features = channels_first(backbone_outputs.feature_maps, self.backbone_channels_last)
        self.check_feature_strides(features, tuple(padded.shape[-2:]))
        try:
            pyramid = tuple(self.neck(features))
        except ValueError as error:
            if (explained := explain_batch_norm_error(error, padded)) is None:
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
        self.decode_head = SemanticFPNHead(config.neck_channels, config.head_channels, config.num_labels)
        self.point_head = PointHead(config) if config.use_point_rend else None
        # A legacy `config.gradient_checkpointing` is consumed by the base model's post_init; extend it to the heads.
        base_checkpointing = self.fapn.is_activation_checkpointing
        self.post_init()
        if base_checkpointing:
            self.activation_checkpointing_enable()

    def check_labels(self, labels: torch.Tensor, pixel_values: torch.Tensor) -> None:
        """Raises `ValueError` for labels of the wrong shape or type, or with values outside the label map (the
        kernel's `check_semantic_labels`, every family's check of `labels=`).

        The value check reads the labels on the host (a synchronisation), so it is left out while `torch.compile`
        traces `forward`: a compiled training step checks them before the model, in `FaPNTrainer.compute_loss`
        (or call `check_label_values` yourself)."""
        check_semantic_labels(
            labels, pixel_values, self.config.num_labels, self.config.semantic_loss_ignore_index, REDUCE_LABELS_HINT
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
        pixel_values = self.fapn.check_pixel_values(pixel_values)
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
    "REDUCE_LABELS_HINT",
    "FaPNForSemanticSegmentation",
    "FaPNModel",
    "FaPNModelOutput",
    "FaPNPreTrainedModel",
    "FaPNSemanticSegmenterOutput",
    "masked_cross_entropy",
    # The kernel's layers and backbone helpers, which lived here before: re-exported for code that imports them from
    # this module.
    "INIT_SCHEMES",
    "CheckpointedResNetStage",
    "ConvNormAct",
    "FaPNNeck",
    "FeatureAlignmentModule",
    "FeatureSelectionModule",
    "PretrainedBackboneMixin",
    "SemanticFPNHead",
    "check_pixel_mask",
    "load_timm_backbone_weights",
    "padded_size",
    "resize_to",
    "tag_init",
    "warn_unloaded_pretrained_backbone",
]
