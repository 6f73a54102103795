"""FaPN detectors' configuration: Faster R-CNN, Mask R-CNN and Panoptic FPN with the FaPN (or FPN) neck."""

from __future__ import annotations

import math
from typing import Any

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from .backbone_utils import backbone_config_from_name, check_pyramid_backbone
from .config_checks import check_field_types, own_settings, warn_about_misspelt_keys
from .deform_conv import check_deform_conv_implementation, check_deformable_groups
from .label_checks import (
    check_id2label,
    check_ignore_index,
    check_label2id,
    check_num_labels_argument,
    reheaded_config_dict,
)
from .remote_code import CodeFamily, check_pretrained_source

META_ARCHITECTURES = ("faster_rcnn", "mask_rcnn", "panoptic_fpn")
NECK_NORMS = ("", "GN", "BN")
# The pyramid the heads read: p2..p6 at these strides (p6 = max-pool of p5, kernel 1, stride 2).
DETECTOR_STRIDES = (4, 8, 16, 32, 64)

# Fields holding sequences: checked here (check_field_types knows scalars only).
_SEQUENCE_FIELDS = {
    "anchor_sizes": (len(DETECTOR_STRIDES), "one anchor size per pyramid level p2..p6"),
    "anchor_aspect_ratios": (None, "aspect ratios (height / width)"),
    "rpn_iou_thresholds": (2, "(background below, foreground from)"),
    "rpn_bbox_reg_weights": (4, "(wx, wy, ww, wh)"),
    "roi_bbox_reg_weights": (4, "(wx, wy, ww, wh)"),
}


@strict
class FaPNRCNNConfig(PreTrainedConfig):
    r"""
    Configuration of a FaPN detector (Huang et al., ICCV 2021, the paper's COCO models): a backbone, the FaPN neck
    (or detectron2's FPN with `use_fam=False, use_fsm=False`) giving p2..p6, and detectron2's R-CNN heads built on
    torchvision's detection parts. The defaults are detectron2's `Base-RCNN-FPN.yaml` (R50-FPN 1x) settings.

    Labels: `id2label` names **all** classes, things first, then stuff. Classes `0 .. num_thing_labels - 1` are things
    (boxes and masks); the rest are stuff classes of the panoptic semantic head (`panoptic_fpn` only).

    Args:
        meta_architecture (`str`, *optional*, defaults to `"faster_rcnn"`):
            `"faster_rcnn"` (boxes), `"mask_rcnn"` (boxes and masks) or `"panoptic_fpn"` (Mask R-CNN plus the
            semantic FPN head over "things" + stuff classes).
        backbone_config (`PreTrainedConfig` or `dict`, *optional*):
            The backbone, as in `FaPNConfig`: a `TimmBackboneConfig` or transformers' `ResNetConfig` (the MSRA trunk
            of converted models) returning the stride 4..32 maps. Defaults to timm's `resnet50`.
        backbone (`str`, *optional*): shortcut, a timm model name (no network access). Not stored.
        use_pretrained_backbone (`bool`, *optional*, defaults to `False`): as in `FaPNConfig`.
        use_fam (`bool`, *optional*, defaults to `True`): feature alignment in the top-down path.
        use_fsm (`bool`, *optional*, defaults to `True`): feature selection laterals. Both off: detectron2's FPN.
        fpn_dim (`int`, *optional*, defaults to 256): the pyramid width D.
        deformable_groups (`int`, *optional*, defaults to 8): deformable groups of each FAM.
        neck_norm (`str`, *optional*, defaults to `""`): `""`, `"GN"` or `"BN"` in the neck.
        deform_conv_implementation (`str`, *optional*, defaults to `"auto"`): as in `FaPNConfig`.
        size_divisibility (`int`, *optional*, defaults to 32): inputs are zero-padded to a multiple of this.
        freeze_backbone_norm (`bool`, *optional*, defaults to `False`): detectron2's FrozenBN (the paper models'
            presets set it).
        freeze_backbone_stages (`int`, *optional*, defaults to 0): detectron2's `FREEZE_AT` (the presets set 2).
        num_thing_labels (`int`, *optional*): classes `0 .. num_thing_labels - 1` are things; defaults to all labels
            (must be all labels except for `panoptic_fpn`).
        anchor_sizes (`list[float]`, *optional*, defaults to `[32, 64, 128, 256, 512]`): one per level p2..p6.
        anchor_aspect_ratios (`list[float]`, *optional*, defaults to `[0.5, 1.0, 2.0]`): height / width.
        anchor_offset (`float`, *optional*, defaults to 0.0): anchor centres at `(i + offset) * stride`.
        rpn_pre_nms_topk_train / rpn_pre_nms_topk_test (`int`, defaults 2000 / 1000): per-level top-k before NMS.
        rpn_post_nms_topk_train / rpn_post_nms_topk_test (`int`, defaults 1000 / 1000): proposals kept per image.
        rpn_nms_threshold (`float`, defaults to 0.7): RPN NMS IoU, batched by level.
        rpn_batch_size_per_image (`int`, defaults to 256), rpn_positive_fraction (`float`, defaults to 0.5): anchors
            sampled for the RPN loss.
        rpn_iou_thresholds (`list[float]`, defaults to `[0.3, 0.7]`): below is background, from the second
            foreground (with low-quality matches).
        rpn_bbox_reg_weights (`list[float]`, defaults to `[1, 1, 1, 1]`): the RPN's box coder weights.
        rpn_loss_weight (`float`, defaults to 1.0), rpn_bbox_loss_weight (`float`, defaults to 1.0).
        roi_batch_size_per_image (`int`, defaults to 512), roi_positive_fraction (`float`, defaults to 0.25),
            roi_iou_threshold (`float`, defaults to 0.5): ROI sampling for the box loss.
        roi_bbox_reg_weights (`list[float]`, defaults to `[10, 10, 5, 5]`): the box head's coder weights.
        box_pooler_resolution (`int`, defaults to 7), box_head_fc_dim (`int`, defaults to 1024).
        mask_pooler_resolution (`int`, defaults to 14), mask_head_conv_dim (`int`, defaults to 256),
            mask_head_num_conv (`int`, defaults to 4): masks come out at `2 * mask_pooler_resolution` (28).
        box_score_threshold (`float`, defaults to 0.05), box_nms_threshold (`float`, defaults to 0.5),
            detections_per_image (`int`, defaults to 100): test-time detections.
        semantic_head_channels (`int`, defaults to 128): width of Panoptic FPN's semantic head (GroupNorm(32)).
        semantic_loss_weight (`float`, defaults to 0.5): weight of its cross-entropy.
        semantic_loss_ignore_index (`int`, defaults to 255): label value its loss ignores.

    Example:

    ```python
    >>> from fapn_hf.modeling.configuration_fapn_rcnn import FaPNRCNNConfig
    >>> config = FaPNRCNNConfig(meta_architecture="mask_rcnn", backbone="resnet18", num_labels=80)
    ```
    """

    model_type = "fapn_rcnn"
    sub_configs_defaults = {
        "backbone_config": SubConfigSpec(
            config_class=AutoConfig,
            model_type="timm_backbone",
            init_kwargs={"backbone": "resnet50", "out_indices": [1, 2, 3, 4]},
        ),
    }

    meta_architecture: str = "faster_rcnn"
    backbone_config: dict | PreTrainedConfig | None = None
    use_pretrained_backbone: bool = False
    use_fam: bool = True
    use_fsm: bool = True
    fpn_dim: int = 256
    deformable_groups: int = 8
    neck_norm: str = ""
    deform_conv_implementation: str = "auto"
    size_divisibility: int = 32
    freeze_backbone_norm: bool = False
    freeze_backbone_stages: int = 0
    num_thing_labels: int | None = None
    anchor_sizes: list[float] | tuple[float, ...] = (32.0, 64.0, 128.0, 256.0, 512.0)
    anchor_aspect_ratios: list[float] | tuple[float, ...] = (0.5, 1.0, 2.0)
    anchor_offset: float | int = 0.0
    rpn_pre_nms_topk_train: int = 2000
    rpn_pre_nms_topk_test: int = 1000
    rpn_post_nms_topk_train: int = 1000
    rpn_post_nms_topk_test: int = 1000
    rpn_nms_threshold: float | int = 0.7
    rpn_batch_size_per_image: int = 256
    rpn_positive_fraction: float | int = 0.5
    rpn_iou_thresholds: list[float] | tuple[float, ...] = (0.3, 0.7)
    rpn_bbox_reg_weights: list[float] | tuple[float, ...] = (1.0, 1.0, 1.0, 1.0)
    rpn_loss_weight: float | int = 1.0
    rpn_bbox_loss_weight: float | int = 1.0
    roi_batch_size_per_image: int = 512
    roi_positive_fraction: float | int = 0.25
    roi_iou_threshold: float | int = 0.5
    roi_bbox_reg_weights: list[float] | tuple[float, ...] = (10.0, 10.0, 5.0, 5.0)
    box_pooler_resolution: int = 7
    box_head_fc_dim: int = 1024
    mask_pooler_resolution: int = 14
    mask_head_conv_dim: int = 256
    mask_head_num_conv: int = 4
    box_score_threshold: float | int = 0.05
    box_nms_threshold: float | int = 0.5
    detections_per_image: int = 100
    semantic_head_channels: int = 128
    semantic_loss_weight: float | int = 0.5
    semantic_loss_ignore_index: int = 255

    def __post_init__(self, **kwargs):
        self.backbone_config = backbone_config_from_name(kwargs, self.backbone_config, "FaPNRCNNConfig")
        check_num_labels_argument(kwargs.get("num_labels"), self.id2label, "FaPNRCNNConfig")
        given_label2id = self.label2id
        warn_about_misspelt_keys(kwargs, own_settings(type(self), PreTrainedConfig), "FaPNRCNNConfig")
        super().__post_init__(**kwargs)
        check_label2id(given_label2id, self.id2label, "FaPNRCNNConfig")
        if self.id2label is not None and self.label2id is None:
            self.label2id = {name: index for index, name in self.id2label.items()}
        # JSON brings lists: keep one form, so that a reloaded config equals the saved one.
        for name in _SEQUENCE_FIELDS:
            value = getattr(self, name)
            if isinstance(value, (list, tuple)):
                setattr(self, name, [float(v) if isinstance(v, (int, float)) else v for v in value])
        if self.num_thing_labels is None:
            self.num_thing_labels = self.num_labels
        self._check_values()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Any, *args: Any, **kwargs: Any) -> FaPNRCNNConfig:
        """transformers' `from_pretrained`; a mistyped local folder is named with the closest saved one."""
        check_pretrained_source(pretrained_model_name_or_path)
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs: Any) -> FaPNRCNNConfig:
        """transformers' `from_dict`; `num_labels` alone re-heads a saved config (`reheaded_config_dict`), and then
        every class is a thing unless `num_thing_labels` is given too."""
        reheaded = reheaded_config_dict(config_dict, kwargs)
        if reheaded is not config_dict and "num_thing_labels" not in kwargs:
            reheaded = {key: value for key, value in reheaded.items() if key != "num_thing_labels"}
        return super().from_dict(reheaded, **kwargs)

    @property
    def is_timm_backbone(self) -> bool:
        return getattr(self.backbone_config, "model_type", None) == "timm_backbone"

    @property
    def has_masks(self) -> bool:
        """Whether the model predicts instance masks (Mask R-CNN, Panoptic FPN)."""
        return self.meta_architecture in ("mask_rcnn", "panoptic_fpn")

    @property
    def num_stuff_labels(self) -> int:
        return self.num_labels - self.num_thing_labels

    @property
    def num_semantic_labels(self) -> int:
        """Channels of Panoptic FPN's semantic head: 0 = any thing, 1 + j = stuff class `num_thing_labels + j`."""
        return self.num_stuff_labels + 1

    def _check_values(self) -> None:
        """Raises `ValueError` naming the first inconsistent or out-of-range setting."""

        def require(condition: bool, message: str) -> None:
            if not condition:
                raise ValueError(f"FaPNRCNNConfig: {message}")

        check_field_types(self, FaPNRCNNConfig.__annotations__, "FaPNRCNNConfig")
        check_id2label(self.id2label, "FaPNRCNNConfig")
        check_pyramid_backbone(self.backbone_config, "FaPNRCNNConfig")
        require(
            self.meta_architecture in META_ARCHITECTURES,
            f"meta_architecture must be one of {META_ARCHITECTURES}, got {self.meta_architecture!r}",
        )
        require(self.neck_norm in NECK_NORMS, f"neck_norm must be one of {NECK_NORMS}, got {self.neck_norm!r}")
        check_deform_conv_implementation(self.deform_conv_implementation, "FaPNRCNNConfig")
        require(self.fpn_dim > 0, f"fpn_dim must be positive, got {self.fpn_dim}")
        if self.neck_norm == "GN":
            require(self.fpn_dim % 32 == 0, f"neck_norm='GN' uses 32 groups: fpn_dim ({self.fpn_dim}) % 32 != 0")
        if self.use_fam:
            check_deformable_groups(self.fpn_dim, self.deformable_groups, "FaPNRCNNConfig", "fpn_dim")
        require(self.size_divisibility >= 1, f"size_divisibility must be >= 1, got {self.size_divisibility}")
        require(
            0 <= self.freeze_backbone_stages <= 5,
            f"freeze_backbone_stages must lie in [0, 5] (detectron2's FREEZE_AT), got {self.freeze_backbone_stages}",
        )
        if self.use_pretrained_backbone:
            require(self.is_timm_backbone, "use_pretrained_backbone loads timm weights and needs a timm backbone")

        things = self.num_thing_labels
        require(
            isinstance(things, int) and not isinstance(things, bool),
            f"num_thing_labels must be an int, got {things!r} ({type(things).__name__})",
        )
        require(
            1 <= things <= self.num_labels,
            f"num_thing_labels must lie in [1, num_labels={self.num_labels}], got {things}",
        )
        if self.meta_architecture != "panoptic_fpn":
            require(
                things == self.num_labels,
                f"{self.meta_architecture} has no stuff classes: num_thing_labels ({things}) must equal num_labels "
                f"({self.num_labels})",
            )
        else:
            check_ignore_index(self.semantic_loss_ignore_index, self.num_semantic_labels, "FaPNRCNNConfig")
            require(
                self.semantic_head_channels % 32 == 0 and self.semantic_head_channels >= 64,
                f"semantic_head_channels ({self.semantic_head_channels}) must be a multiple of 32 and at least 64 "
                "(GroupNorm(32))",
            )

        for name, (length, meaning) in _SEQUENCE_FIELDS.items():
            value = getattr(self, name)
            require(
                isinstance(value, (list, tuple))
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
                and (length is None or len(value) == length)
                and len(value) > 0,
                f"{name} must be a list of {length or 'some'} numbers ({meaning}), got {value!r}",
            )
            require(all(math.isfinite(v) for v in value), f"{name} must be finite, got {value!r}")
        require(all(v > 0 for v in self.anchor_sizes), f"anchor_sizes must be positive, got {self.anchor_sizes}")
        require(
            all(v > 0 for v in self.anchor_aspect_ratios),
            f"anchor_aspect_ratios must be positive, got {self.anchor_aspect_ratios}",
        )
        low, high = self.rpn_iou_thresholds
        require(0 <= low <= high <= 1, f"rpn_iou_thresholds must satisfy 0 <= low <= high <= 1, got {[low, high]}")
        for name in ("rpn_nms_threshold", "roi_iou_threshold", "box_nms_threshold", "box_score_threshold"):
            value = getattr(self, name)
            require(0 <= value <= 1, f"{name} must lie in [0, 1], got {value}")
        for name in ("rpn_positive_fraction", "roi_positive_fraction"):
            value = getattr(self, name)
            require(0 < value <= 1, f"{name} must lie in (0, 1], got {value}")
        for name in (
            "rpn_pre_nms_topk_train",
            "rpn_pre_nms_topk_test",
            "rpn_post_nms_topk_train",
            "rpn_post_nms_topk_test",
            "rpn_batch_size_per_image",
            "roi_batch_size_per_image",
            "box_pooler_resolution",
            "box_head_fc_dim",
            "mask_pooler_resolution",
            "mask_head_conv_dim",
            "mask_head_num_conv",
            "detections_per_image",
        ):
            value = getattr(self, name)
            require(value >= 1, f"{name} must be >= 1, got {value}")
        for name in ("rpn_loss_weight", "rpn_bbox_loss_weight", "semantic_loss_weight"):
            value = getattr(self, name)
            require(math.isfinite(value) and value >= 0, f"{name} must be a finite number >= 0, got {value}")

    def validate_fapn(self) -> None:
        self._check_values()


# What a saved detector folder ships and `import fapn_hf` registers: the config, the base model, the detector
# (registered for detection and the segmentation Auto classes; the image-segmentation pipeline loads a folder through
# AutoModelForImageSegmentation) and the image processor.
_DETECTOR = "modeling_fapn_rcnn.FaPNRCNNForObjectDetection"
FAPN_RCNN_CODE = CodeFamily(
    config="configuration_fapn_rcnn.FaPNRCNNConfig",
    models={
        "AutoModel": "modeling_fapn_rcnn.FaPNRCNNModel",
        "AutoModelForObjectDetection": _DETECTOR,
        "AutoModelForInstanceSegmentation": _DETECTOR,
        "AutoModelForUniversalSegmentation": _DETECTOR,
        "AutoModelForImageSegmentation": _DETECTOR,
    },
    processor="image_processing_fapn_rcnn.FaPNRCNNImageProcessor",
)


__all__ = ["DETECTOR_STRIDES", "FAPN_RCNN_CODE", "META_ARCHITECTURES", "NECK_NORMS", "FaPNRCNNConfig"]
