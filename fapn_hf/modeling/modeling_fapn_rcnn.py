"""PyTorch FaPN detectors: Faster R-CNN, Mask R-CNN and Panoptic FPN with the FaPN neck (Huang et al., ICCV 2021).

A backbone of transformers' backbone API, the kernel's FaPN neck (detectron2's FPN with `use_fam=False,
use_fsm=False`) plus p6 = max-pool(p5, kernel 1, stride 2), and torchvision's detection parts (`RegionProposalNetwork`,
`RPNHead`, `AnchorGenerator`, `MultiScaleRoIAlign`, `RoIHeads`, `TwoMLPHead`, `FastRCNNPredictor`, `MaskRCNNHeads`,
`MaskRCNNPredictor`, `LastLevelMaxPool`). Where detectron2 (and so a converted checkpoint) differs from torchvision,
a subclass below plugs detectron2's rule in (SPEC 6.2):

- `FixedStrideAnchorGenerator`: cell anchors not rounded, shifts on each level's true stride (4..64);
- `Detectron2RPN`: per-level top-k on the logits, non-finite and empty boxes dropped (no 0.001-px filter), NMS
  batched by level, the losses with detectron2's normaliser (256 x images) and L1 box loss;
- `ROIAlignV2Pooler`: `roi_align(aligned=True, sampling_ratio=0)` with detectron2's level assignment;
- `BackgroundLastPredictor`: `cls_score` with K + 1 rows, background last, class-specific `bbox_pred` (4K rows);
- `Detectron2RoIHeads`: detectron2's Fast R-CNN / mask losses (L1 box loss over the sampled ROIs, mask targets
  rasterised with ROIAlignV2) and test-time post-processing (softmax, drop background, decode, clip,
  score > 0.05, per-class NMS, top 100; no small-box filter).

Evaluation with labels (the Trainer's evaluation loop): in `eval()` mode with `labels` the model returns the losses
and the detections; the ROI sampling the loss needs runs on a separate pass, so the detections equal those without
labels.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork, RPNHead, concat_box_prediction_layers
from torchvision.ops import MultiScaleRoIAlign, batched_nms, roi_align
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from transformers import PreTrainedModel
from transformers import initialization as hf_init
from transformers.backbone_utils import load_backbone
from transformers.utils import ModelOutput

from .backbone_utils import (
    PretrainedBackboneMixin,
    channels_first,
    check_feature_strides,
    freeze_backbone,
    keep_norms_frozen,
    make_resnet_stages_checkpointable,
    returns_channels_last,
    warn_unloaded_pretrained_backbone,
)
from .configuration_fapn_rcnn import DETECTOR_STRIDES, FAPN_RCNN_CODE, FaPNRCNNConfig
from .fapn_layers import (
    FaPNNeck,
    SemanticFPNHead,
    check_pixel_values,
    explain_batch_norm_error,
    pad_to_multiple,
)
from .initialisation import InitWeightsMixin, tag_init
from .label_checks import check_label_values
from .remote_code import FamilyCodeSavingMixin

PYRAMID_NAMES = ("p2", "p3", "p4", "p5", "p6")
# The ROI heads read p2..p5 (detectron2's ROI_HEADS.IN_FEATURES); the RPN reads p2..p6.
ROI_LEVELS = 4


def _normal_init(layer: nn.Module, std: float) -> nn.Module:
    """Marks `layer` for N(0, std^2) weights and zero bias (detectron2's RPN and box predictor); see `_init_weights`."""
    layer.normal_init_std = std
    return layer


# ---------------------------------------------------------------------------------------------------------------------
# Anchors and proposals (detectron2's DefaultAnchorGenerator and RPN behind torchvision's interfaces)
# ---------------------------------------------------------------------------------------------------------------------


class FixedStrideAnchorGenerator(AnchorGenerator):
    """torchvision's `AnchorGenerator` with detectron2's anchors: one size per level, cell anchors
    `w = sqrt(size^2 / ratio)`, `h = ratio * w`, corners at +-w/2, +-h/2, **not rounded**, shifted by multiples of
    each level's fixed stride (torchvision rounds and infers the stride as padded size // grid size: P6 of an
    800x1216 input would get (61, 64)).

    Forward: an `ImageList` and the feature maps `(N, C, H_l, W_l)` -> per image `(sum_l H_l * W_l * A, 4)` anchors,
    location-major (A = len(aspect_ratios) anchors per location), levels concatenated."""

    def __init__(
        self, sizes: Sequence[float], aspect_ratios: Sequence[float], strides: Sequence[int], offset: float = 0.0
    ) -> None:
        super().__init__(sizes=tuple((float(s),) for s in sizes), aspect_ratios=(tuple(aspect_ratios),) * len(sizes))
        self.strides = tuple(strides)
        self.offset = float(offset)

    def generate_anchors(
        self,
        scales: Sequence[float],
        aspect_ratios: Sequence[float],
        dtype: torch.dtype = torch.float32,
        device: torch.device | None = None,
    ) -> torch.Tensor:
        """`(len(scales) * len(aspect_ratios), 4)` zero-centred anchors, computed in Python floats as detectron2."""
        anchors = []
        for size in scales:
            area = float(size) ** 2
            for ratio in aspect_ratios:
                width = math.sqrt(area / ratio)
                height = ratio * width
                anchors.append([-width / 2.0, -height / 2.0, width / 2.0, height / 2.0])
        return torch.tensor(anchors, dtype=dtype, device=device)

    def level_anchors(self, feature_maps: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Per level `(H_l * W_l * A, 4)` anchors in float32 (shared by every image)."""
        device = feature_maps[0].device
        anchors = []
        # Cell anchors are made here, not taken from `self.cell_anchors`: a model that `from_pretrained` built on the
        # meta device would hold meta tensors there (a plain list, which loading never fills).
        for feature, stride, sizes, ratios in zip(feature_maps, self.strides, self.sizes, self.aspect_ratios):
            height, width = feature.shape[-2:]
            shifts_x = torch.arange(
                self.offset * stride, width * stride, step=stride, dtype=torch.float32, device=device
            )
            shifts_y = torch.arange(
                self.offset * stride, height * stride, step=stride, dtype=torch.float32, device=device
            )
            shift_y, shift_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")
            shift_x, shift_y = shift_x.reshape(-1), shift_y.reshape(-1)
            shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=1)
            cell = self.generate_anchors(sizes, ratios, dtype=torch.float32, device=device)
            anchors.append((shifts.view(-1, 1, 4) + cell.view(1, -1, 4)).reshape(-1, 4))
        return anchors

    def forward(self, image_list: ImageList, feature_maps: list[torch.Tensor]) -> list[torch.Tensor]:
        if len(feature_maps) != len(self.strides):
            raise ValueError(f"expected {len(self.strides)} feature maps (one per stride), got {len(feature_maps)}")
        anchors = torch.cat(self.level_anchors(feature_maps))
        return [anchors for _ in range(len(image_list.image_sizes))]


class Detectron2RPN(RegionProposalNetwork):
    """torchvision's `RegionProposalNetwork` with detectron2's proposal selection and losses.

    Forward: `images` (`ImageList`, `image_sizes` the un-padded sizes), `features` (ordered dict p2..p6) and,
    optionally, `targets` (per image `{"boxes": (N, 4)}`) -> per image proposals `(P_i, 4)` (detached, sorted by
    objectness) and the losses `{"loss_rpn_cls", "loss_rpn_loc"}` when targets are given (in any mode)."""

    def __init__(self, config: FaPNRCNNConfig, anchor_generator: FixedStrideAnchorGenerator, head: RPNHead) -> None:
        low, high = config.rpn_iou_thresholds
        super().__init__(
            anchor_generator,
            head,
            fg_iou_thresh=high,
            bg_iou_thresh=low,
            batch_size_per_image=config.rpn_batch_size_per_image,
            positive_fraction=config.rpn_positive_fraction,
            pre_nms_top_n={"training": config.rpn_pre_nms_topk_train, "testing": config.rpn_pre_nms_topk_test},
            post_nms_top_n={"training": config.rpn_post_nms_topk_train, "testing": config.rpn_post_nms_topk_test},
            nms_thresh=config.rpn_nms_threshold,
        )
        self.box_coder.weights = tuple(float(w) for w in config.rpn_bbox_reg_weights)
        self.batch_size_per_image = config.rpn_batch_size_per_image
        self.loss_weight = config.rpn_loss_weight
        self.bbox_loss_weight = config.rpn_bbox_loss_weight

    def filter_proposals(
        self,
        proposals: torch.Tensor,
        objectness: torch.Tensor,
        image_shapes: list[tuple[int, int]],
        num_anchors_per_level: list[int],
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """detectron2's `find_top_rpn_proposals`: top-k logits per level, then per image drop non-finite boxes, clip,
        drop empty boxes (width or height 0), NMS batched by level, keep the post-NMS top-k. `proposals`
        `(N, R, 4)`, `objectness` `(N * R, 1)` -> per image boxes `(P_i, 4)` and their logits `(P_i,)`."""
        num_images = proposals.shape[0]
        device = proposals.device
        objectness = objectness.detach().reshape(num_images, -1)
        levels = torch.cat(
            [torch.full((n,), index, dtype=torch.int64, device=device) for index, n in enumerate(num_anchors_per_level)]
        ).expand_as(objectness)
        top = self._get_top_n_idx(objectness, num_anchors_per_level)
        batch = torch.arange(num_images, device=device)[:, None]
        objectness, levels, proposals = objectness[batch, top], levels[batch, top], proposals[batch, top]

        final_boxes, final_scores = [], []
        for boxes, scores, level, (height, width) in zip(proposals, objectness, levels, image_shapes):
            valid = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores)
            if not bool(valid.all()):
                if self.training:
                    raise FloatingPointError("the RPN predicted non-finite boxes or scores: training has diverged")
                boxes, scores, level = boxes[valid], scores[valid], level[valid]
            boxes = torch.stack(
                (
                    boxes[:, 0].clamp(min=0, max=width),
                    boxes[:, 1].clamp(min=0, max=height),
                    boxes[:, 2].clamp(min=0, max=width),
                    boxes[:, 3].clamp(min=0, max=height),
                ),
                dim=1,
            )
            keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
            boxes, scores, level = boxes[keep], scores[keep], level[keep]
            keep = batched_nms(boxes, scores, level, self.nms_thresh)[: self.post_nms_top_n()]
            final_boxes.append(boxes[keep])
            final_scores.append(scores[keep])
        return final_boxes, final_scores

    def compute_loss(
        self,
        objectness: torch.Tensor,
        pred_bbox_deltas: torch.Tensor,
        labels: list[torch.Tensor],
        regression_targets: list[torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """detectron2's RPN losses on the sampled anchors: BCE (sum) and L1 on the positives (smooth-L1 with beta 0,
        sum), both divided by `batch_size_per_image * num_images`."""
        sampled_pos, sampled_neg = self.fg_bg_sampler(labels)
        positive = torch.where(torch.cat(sampled_pos))[0]
        sampled = torch.where(torch.cat(sampled_pos) | torch.cat(sampled_neg))[0]
        normaliser = self.batch_size_per_image * len(labels)
        box_loss = (
            F.l1_loss(pred_bbox_deltas[positive], torch.cat(regression_targets)[positive], reduction="sum") / normaliser
        )
        objectness_loss = (
            F.binary_cross_entropy_with_logits(
                objectness.flatten()[sampled], torch.cat(labels)[sampled], reduction="sum"
            )
            / normaliser
        )
        return objectness_loss, box_loss

    def forward(
        self,
        images: ImageList,
        features: Mapping[str, torch.Tensor],
        targets: list[dict[str, torch.Tensor]] | None = None,
    ) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        feature_list = list(features.values())
        objectness, pred_bbox_deltas = self.head(feature_list)
        anchors = self.anchor_generator(images, feature_list)
        num_images = len(anchors)
        num_anchors_per_level = [o[0].numel() for o in objectness]
        objectness, pred_bbox_deltas = concat_box_prediction_layers(objectness, pred_bbox_deltas)
        # The proposals never carry gradient back to the RPN (Faster R-CNN's approximate joint training).
        proposals = self.box_coder.decode(pred_bbox_deltas.detach().float(), anchors).view(num_images, -1, 4)
        boxes, _ = self.filter_proposals(proposals, objectness.float(), images.image_sizes, num_anchors_per_level)

        losses: dict[str, torch.Tensor] = {}
        if targets is not None:
            labels, matched_gt_boxes = self.assign_targets_to_anchors(anchors, targets)
            regression_targets = self.box_coder.encode(matched_gt_boxes, anchors)
            loss_cls, loss_loc = self.compute_loss(
                objectness.float(), pred_bbox_deltas.float(), labels, list(regression_targets)
            )
            losses = {
                "loss_rpn_cls": loss_cls * self.loss_weight,
                "loss_rpn_loc": loss_loc * self.loss_weight * self.bbox_loss_weight,
            }
        return boxes, losses


# ---------------------------------------------------------------------------------------------------------------------
# ROI heads
# ---------------------------------------------------------------------------------------------------------------------


class ROIAlignV2Pooler(MultiScaleRoIAlign):
    """torchvision's `MultiScaleRoIAlign` as detectron2's `ROIPooler` with ROIAlignV2: `roi_align(aligned=True,
    sampling_ratio=0)` at each level's true stride, a box of side `s = sqrt(area)` pooled from level
    `floor(4 + log2(s / 224 + 1e-8))` clamped to the levels given (torchvision: aligned=False, sampling ratio 2, and
    the epsilon outside the log).

    Forward: `features` (dict holding `featmap_names`), per image boxes `(R_i, 4)` in input pixels, and the image
    sizes (unused: the strides are fixed) -> `(sum R_i, C, M, M)` in the order of the boxes."""

    def __init__(self, featmap_names: Sequence[str], output_size: int, strides: Sequence[int]) -> None:
        super().__init__(list(featmap_names), output_size, sampling_ratio=0)
        self.strides = tuple(strides)
        self.min_level = int(math.log2(self.strides[0]))
        self.canonical_box_size, self.canonical_level = 224.0, 4

    def assign_levels(self, boxes: torch.Tensor) -> torch.Tensor:
        """Index (0 = the finest level given) of the level each `(R, 4)` box is pooled from."""
        sizes = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
        levels = torch.floor(self.canonical_level + torch.log2(sizes / self.canonical_box_size + 1e-8))
        levels = levels.clamp(min=self.min_level, max=self.min_level + len(self.strides) - 1)
        return levels.to(torch.int64) - self.min_level

    def forward(
        self,
        x: Mapping[str, torch.Tensor],
        boxes: list[torch.Tensor],
        image_shapes: list[tuple[int, int]] | None = None,
    ) -> torch.Tensor:
        features = [x[name] for name in self.featmap_names]
        reference = features[0]
        all_boxes = torch.cat([b.to(reference.dtype) for b in boxes]) if boxes else reference.new_zeros((0, 4))
        image_index = torch.cat(
            [torch.full((len(b), 1), i, dtype=reference.dtype, device=reference.device) for i, b in enumerate(boxes)]
        )
        rois = torch.cat([image_index, all_boxes], dim=1)
        size = self.output_size if isinstance(self.output_size, (tuple, list)) else (self.output_size,) * 2
        output = reference.new_zeros((len(rois), reference.shape[1], *size))
        levels = self.assign_levels(all_boxes)
        for level, (feature, stride) in enumerate(zip(features, self.strides)):
            index = torch.where(levels == level)[0]
            if index.numel():
                output[index] = roi_align(
                    feature, rois[index], size, spatial_scale=1.0 / stride, sampling_ratio=0, aligned=True
                ).to(output.dtype)
        return output


class BackgroundLastPredictor(FastRCNNPredictor):
    """torchvision's `FastRCNNPredictor` in detectron2's layout: `cls_score` `(K + 1)` logits with background LAST,
    `bbox_pred` `4K` class-specific deltas (no background row). `(R, D)` -> `(R, K + 1)`, `(R, 4K)`."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__(in_channels, num_classes + 1)
        self.bbox_pred = nn.Linear(in_channels, 4 * num_classes)
        _normal_init(self.cls_score, 0.01)
        _normal_init(self.bbox_pred, 0.001)


def _mask_head(in_channels: int, conv_dim: int, num_conv: int) -> MaskRCNNHeads:
    head = MaskRCNNHeads(in_channels, [conv_dim] * num_conv, dilation=1)
    for module in head.modules():
        if isinstance(module, nn.Conv2d):
            tag_init(module, "msra")
    return head


def _mask_predictor(conv_dim: int, num_classes: int) -> MaskRCNNPredictor:
    predictor = MaskRCNNPredictor(conv_dim, conv_dim, num_classes)
    tag_init(predictor.conv5_mask, "msra")
    tag_init(predictor.mask_fcn_logits, "normal")  # N(0, 0.001^2), as detectron2's mask predictor
    return predictor


class Detectron2RoIHeads(RoIHeads):
    """torchvision's `RoIHeads` (its matcher, sampler, box coder, `select_training_samples`) with detectron2's
    class layout (background last), losses and test-time post-processing.

    Forward: `features` (dict p2..p5), per image proposals `(P_i, 4)`, image sizes and optional `targets` (per image
    `boxes` `(N, 4)`, 0-based `labels` `(N,)`, `masks` `(N, h, w)` for mask models) -> `(detections, losses)`:
    per image `{"boxes" (D, 4), "scores" (D,), "labels" (D,), "masks" (D, M, M) probabilities}` (sorted by score)
    and, with targets, `{"loss_cls", "loss_box_reg", "loss_mask"}`. Detections come from all proposals and never
    depend on the sampling the losses use."""

    def __init__(
        self,
        config: FaPNRCNNConfig,
        box_roi_pool: ROIAlignV2Pooler,
        box_head: nn.Module,
        box_predictor: BackgroundLastPredictor,
        mask_roi_pool: ROIAlignV2Pooler | None = None,
        mask_head: nn.Module | None = None,
        mask_predictor: nn.Module | None = None,
    ) -> None:
        super().__init__(
            box_roi_pool,
            box_head,
            box_predictor,
            fg_iou_thresh=config.roi_iou_threshold,
            bg_iou_thresh=config.roi_iou_threshold,
            batch_size_per_image=config.roi_batch_size_per_image,
            positive_fraction=config.roi_positive_fraction,
            bbox_reg_weights=tuple(float(w) for w in config.roi_bbox_reg_weights),
            score_thresh=config.box_score_threshold,
            nms_thresh=config.box_nms_threshold,
            detections_per_img=config.detections_per_image,
            mask_roi_pool=mask_roi_pool,
            mask_head=mask_head,
            mask_predictor=mask_predictor,
        )
        self.num_classes = config.num_thing_labels

    def box_outputs(
        self, features: Mapping[str, torch.Tensor], boxes: list[torch.Tensor], image_shapes: list[tuple[int, int]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Class logits `(R, K + 1)` and deltas `(R, 4K)` of the boxes of every image, concatenated."""
        return self.box_predictor(self.box_head(self.box_roi_pool(features, boxes, image_shapes)))

    def mask_logits(
        self, features: Mapping[str, torch.Tensor], boxes: list[torch.Tensor], image_shapes: list[tuple[int, int]]
    ) -> torch.Tensor:
        """Per-class mask logits `(R, K, M, M)` of the boxes of every image, concatenated."""
        return self.mask_predictor(self.mask_head(self.mask_roi_pool(features, boxes, image_shapes)))

    def losses(
        self,
        features: Mapping[str, torch.Tensor],
        proposals: list[torch.Tensor],
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, torch.Tensor]],
    ) -> dict[str, torch.Tensor]:
        """detectron2's Fast R-CNN (and mask) losses on ROIs sampled from the proposals plus the ground truth."""
        # torchvision's sampling takes background as class 0: the things are shifted by one on the way in.
        shifted = [{**t, "labels": t["labels"] + 1} for t in targets]
        proposals = [p.detach() for p in proposals]
        sampled, matched, labels, regression_targets = self.select_training_samples(proposals, shifted)
        classes = [torch.where(label > 0, label - 1, self.num_classes) for label in labels]
        class_logits, deltas = self.box_outputs(features, sampled, image_shapes)
        all_classes = torch.cat(classes)
        all_targets = torch.cat(list(regression_targets))
        num_rois = all_classes.numel()
        if num_rois == 0:
            zero = class_logits.sum() * 0 + deltas.sum() * 0
            losses = {"loss_cls": zero, "loss_box_reg": zero}
        else:
            foreground = torch.where(all_classes < self.num_classes)[0]
            chosen = deltas.view(num_rois, self.num_classes, 4)[foreground, all_classes[foreground]]
            losses = {
                "loss_cls": F.cross_entropy(class_logits.float(), all_classes),
                # smooth-L1 with beta 0 is L1; detectron2 divides by the number of sampled ROIs.
                "loss_box_reg": F.l1_loss(chosen.float(), all_targets[foreground], reduction="sum") / num_rois,
            }
        if self.has_mask():
            losses["loss_mask"] = self.mask_loss(features, sampled, classes, matched, image_shapes, targets)
        return losses

    def mask_loss(
        self,
        features: Mapping[str, torch.Tensor],
        sampled: list[torch.Tensor],
        classes: list[torch.Tensor],
        matched: list[torch.Tensor],
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, torch.Tensor]],
    ) -> torch.Tensor:
        """Mean BCE of the foreground ROIs' mask logits (their class's channel) against the matched ground-truth
        masks rasterised into each ROI as detectron2 does for bitmasks: ROIAlignV2 of the 0/1 mask, then >= 0.5."""
        positive = [torch.where(c < self.num_classes)[0] for c in classes]
        boxes = [s[p] for s, p in zip(sampled, positive)]
        logits = self.mask_logits(features, boxes, image_shapes)
        if logits.shape[0] == 0:
            return logits.sum() * 0
        size = logits.shape[-2:]
        mask_targets = []
        for image_boxes, image_positive, image_matched, target in zip(boxes, positive, matched, targets):
            if image_boxes.numel() == 0:
                continue
            gt_masks = target["masks"][:, None].to(image_boxes.dtype)
            rois = torch.cat([image_matched[image_positive][:, None].to(image_boxes.dtype), image_boxes], dim=1)
            crops = roi_align(gt_masks, rois, size, spatial_scale=1.0, sampling_ratio=0, aligned=True)[:, 0]
            mask_targets.append((crops >= 0.5).to(logits.dtype))
        pos_classes = torch.cat([c[p] for c, p in zip(classes, positive)])
        chosen = logits[torch.arange(len(pos_classes), device=logits.device), pos_classes]
        return F.binary_cross_entropy_with_logits(chosen.float(), torch.cat(mask_targets).float())

    def detections(
        self, features: Mapping[str, torch.Tensor], proposals: list[torch.Tensor], image_shapes: list[tuple[int, int]]
    ) -> list[dict[str, torch.Tensor]]:
        """detectron2's `fast_rcnn_inference` per image: drop proposals with non-finite outputs, softmax, drop the
        background column, decode, clip, keep scores > threshold, NMS per class, keep the top `detections_per_img`;
        then the masks of the kept boxes (sigmoid of their class's channel)."""
        class_logits, deltas = self.box_outputs(features, proposals, image_shapes)
        counts = [len(p) for p in proposals]
        boxes = self.box_coder.decode(deltas.float(), proposals).reshape(sum(counts), -1)  # (R, 4K)
        scores = F.softmax(class_logits.float(), dim=-1)
        results = []
        for image_boxes, image_scores, (height, width) in zip(boxes.split(counts), scores.split(counts), image_shapes):
            valid = torch.isfinite(image_boxes).all(dim=1) & torch.isfinite(image_scores).all(dim=1)
            if not bool(valid.all()):
                image_boxes, image_scores = image_boxes[valid], image_scores[valid]
            image_scores = image_scores[:, :-1]
            image_boxes = image_boxes.view(-1, 4)
            limits = image_boxes.new_tensor([width, height, width, height])
            image_boxes = torch.minimum(image_boxes.clamp(min=0), limits).view(-1, self.num_classes, 4)
            keep_mask = image_scores > self.score_thresh
            indices = keep_mask.nonzero()
            kept_boxes, kept_scores = image_boxes[keep_mask], image_scores[keep_mask]
            keep = batched_nms(kept_boxes, kept_scores, indices[:, 1], self.nms_thresh)[: self.detections_per_img]
            results.append({"boxes": kept_boxes[keep], "scores": kept_scores[keep], "labels": indices[keep, 1]})
        if self.has_mask():
            logits = self.mask_logits(features, [r["boxes"] for r in results], image_shapes)
            labels = torch.cat([r["labels"] for r in results])
            probabilities = logits[torch.arange(len(labels), device=logits.device), labels].sigmoid()
            for result, masks in zip(results, probabilities.split([len(r["boxes"]) for r in results])):
                result["masks"] = masks
        return results

    def forward(
        self,
        features: Mapping[str, torch.Tensor],
        proposals: list[torch.Tensor],
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, torch.Tensor]] | None = None,
    ) -> tuple[list[dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
        losses = {} if targets is None else self.losses(features, proposals, image_shapes, targets)
        # Training needs no detections (detectron2 returns none); evaluation returns them, with the losses if asked.
        detections = [] if self.training else self.detections(features, proposals, image_shapes)
        return detections, losses


# ---------------------------------------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class FaPNRCNNModelOutput(ModelOutput):
    """Output of [`FaPNRCNNModel`], for the input zero-padded to `size_divisibility`.

    Args:
        last_hidden_state (`torch.FloatTensor` of shape `(N, D, H / 4, W / 4)`): p2, the finest pyramid level.
        feature_maps (`tuple(torch.FloatTensor)`): the pyramid p2..p6, each `(N, D, H / s, W / s)` for
            s = 4, 8, 16, 32, 64.
        backbone_feature_maps (`tuple(torch.FloatTensor)`): the backbone maps C2..C5 (NCHW).
        hidden_states (`tuple(torch.FloatTensor)`, *optional*): the pyramid p2..p6 again, when
            `output_hidden_states=True` (the detector's hidden states).
    """

    last_hidden_state: torch.FloatTensor | None = None
    feature_maps: tuple[torch.FloatTensor, ...] | None = None
    backbone_feature_maps: tuple[torch.FloatTensor, ...] | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class FaPNRCNNOutput(ModelOutput):
    """Output of [`FaPNRCNNForObjectDetection`]. Detections are padded to `K = config.detections_per_image`.

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*): the sum of the weighted losses, when `labels` are
            given (in training and in evaluation mode).
        loss_dict (`dict[str, torch.FloatTensor]`, *optional*): the weighted losses by name (`loss_rpn_cls`,
            `loss_rpn_loc`, `loss_cls`, `loss_box_reg`, `loss_mask`, `loss_sem_seg`).
        pred_boxes (`torch.FloatTensor` of shape `(N, K, 4)`): absolute `(x0, y0, x1, y1)` in `pixel_values`
            pixels, inside each image's `image_sizes` region; padding entries are 0.
        scores (`torch.FloatTensor` of shape `(N, K)`): detection scores, sorted descending; padding 0.
        pred_labels (`torch.LongTensor` of shape `(N, K)`): 0-based thing classes; padding -1.
        num_detections (`torch.LongTensor` of shape `(N,)`): valid entries per image.
        pred_masks (`torch.FloatTensor` of shape `(N, K, M, M)`, *optional*): mask probabilities in each box's frame
            (M = 28) for Mask R-CNN and Panoptic FPN; pasting them into the image is the processor's job.
        semantic_logits (`torch.FloatTensor` of shape `(N, 1 + num_stuff, H' / 4, W' / 4)`, *optional*): Panoptic
            FPN's semantic head over the padded input `(H', W')`: channel 0 = any thing, 1 + j = stuff class
            `num_thing_labels + j`.
        image_sizes (`torch.LongTensor` of shape `(N, 2)`): the `(height, width)` of each image inside
            `pixel_values`, echoed for post-processing.
        hidden_states (`tuple(torch.FloatTensor)`, *optional*): the pyramid p2..p6, when `output_hidden_states`.
    """

    loss: torch.FloatTensor | None = None
    loss_dict: dict[str, torch.FloatTensor] | None = None
    pred_boxes: torch.FloatTensor | None = None
    scores: torch.FloatTensor | None = None
    pred_labels: torch.LongTensor | None = None
    num_detections: torch.LongTensor | None = None
    pred_masks: torch.FloatTensor | None = None
    semantic_logits: torch.FloatTensor | None = None
    image_sizes: torch.LongTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None


# ---------------------------------------------------------------------------------------------------------------------
# Input checks
# ---------------------------------------------------------------------------------------------------------------------


def check_image_sizes(image_sizes: Any, pixel_values: torch.Tensor) -> list[tuple[int, int]]:
    """`image_sizes` `(N, 2)` (tensor, array or nested list of `(height, width)`) as a list of int pairs, each inside
    `pixel_values` `(N, C, H, W)`; None means every image fills the tensor. Raises `ValueError` otherwise."""
    batch, _, height, width = pixel_values.shape
    if image_sizes is None:
        return [(height, width)] * batch
    try:
        sizes = torch.as_tensor(image_sizes)
    except (TypeError, ValueError, RuntimeError) as error:
        raise ValueError(f"image_sizes must be (batch, 2) integers (height, width), got {image_sizes!r}") from error
    if sizes.shape != (batch, 2) or sizes.is_floating_point() or sizes.is_complex() or sizes.dtype == torch.bool:
        raise ValueError(
            f"image_sizes must be a ({batch}, 2) integer tensor of (height, width), got shape {tuple(sizes.shape)} "
            f"and dtype {sizes.dtype}"
        )
    pairs = [(int(h), int(w)) for h, w in sizes.tolist()]
    for index, (h, w) in enumerate(pairs):
        if not (1 <= h <= height and 1 <= w <= width):
            raise ValueError(
                f"image_sizes[{index}] = ({h}, {w}) must lie inside pixel_values' {height}x{width} (at least 1x1)"
            )
    return pairs


def _as_tensor(value: Any, name: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    try:
        return torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as error:
        raise ValueError(f"{name} must be a tensor, got {type(value).__name__}") from error


def check_detection_labels(
    labels: Any, config: FaPNRCNNConfig, image_sizes: list[tuple[int, int]], device: torch.device
) -> list[dict[str, torch.Tensor]]:
    """The detector's `labels` as its heads take them, or `ValueError` naming what is wrong.

    Args:
        labels: one dict per image: `boxes` `(N, 4)` absolute xyxy, `class_labels` `(N,)` in `[0, num_thing_labels)`,
            `masks` `(N, h, w)` at the image's size (Mask R-CNN, Panoptic FPN), `semantic_labels` `(h, w)` in the
            semantic head's channel space or `semantic_loss_ignore_index` (Panoptic FPN), optional `iscrowd` `(N,)`.
        config: the model's config.
        image_sizes: each image's `(h, w)`.
        device: where the targets go.

    Returns:
        per image `{"boxes" float32, "labels" int64, "masks" uint8 (mask models), "semantic_labels" int64
        (Panoptic FPN)}` on `device`, without crowd instances.
    """
    if isinstance(labels, Mapping) or not isinstance(labels, (list, tuple)):
        raise ValueError(
            f"labels must be a list with one dict per image ({len(image_sizes)}), got {type(labels).__name__}"
        )
    if len(labels) != len(image_sizes):
        raise ValueError(f"labels must have one dict per image ({len(image_sizes)}), got {len(labels)}")
    targets = []
    for index, (label, (height, width)) in enumerate(zip(labels, image_sizes)):
        where = f"labels[{index}]"
        if not isinstance(label, Mapping):
            raise ValueError(f"{where} must be a dict with 'boxes' and 'class_labels', got {type(label).__name__}")
        missing = [key for key in ("boxes", "class_labels") if key not in label]
        if config.has_masks and "masks" not in label:
            missing.append("masks")
        if config.meta_architecture == "panoptic_fpn" and "semantic_labels" not in label:
            missing.append("semantic_labels")
        if missing:
            raise ValueError(f"{where} lacks {missing} ({config.meta_architecture} trains on them)")
        boxes = _as_tensor(label["boxes"], f"{where}['boxes']")
        if boxes.dim() != 2 or boxes.shape[1] != 4 or not boxes.is_floating_point():
            raise ValueError(
                f"{where}['boxes'] must be a float (num_boxes, 4) tensor of absolute (x0, y0, x1, y1), got shape "
                f"{tuple(boxes.shape)} and dtype {boxes.dtype}"
            )
        if not bool(torch.isfinite(boxes).all()):
            raise ValueError(f"{where}['boxes'] holds non-finite values")
        classes = _as_tensor(label["class_labels"], f"{where}['class_labels']")
        if classes.shape != (len(boxes),) or classes.is_floating_point() or classes.dtype == torch.bool:
            raise ValueError(
                f"{where}['class_labels'] must be ({len(boxes)},) integer class ids (one per box), got shape "
                f"{tuple(classes.shape)} and dtype {classes.dtype}"
            )
        check_label_values(classes, config.num_thing_labels, None, name=f"{where}['class_labels']", unit="boxes")
        keep = torch.ones(len(boxes), dtype=torch.bool)
        if label.get("iscrowd") is not None:
            crowd = _as_tensor(label["iscrowd"], f"{where}['iscrowd']")
            if crowd.shape != (len(boxes),):
                raise ValueError(f"{where}['iscrowd'] must be ({len(boxes)},), got shape {tuple(crowd.shape)}")
            keep = crowd.cpu() == 0  # detectron2 drops crowd instances from the targets
        target = {
            "boxes": boxes[keep.to(boxes.device)].to(device=device, dtype=torch.float32),
            "labels": classes[keep.to(classes.device)].to(device=device, dtype=torch.int64),
        }
        if config.has_masks:
            masks = _as_tensor(label["masks"], f"{where}['masks']")
            if masks.shape != (len(boxes), height, width):
                raise ValueError(
                    f"{where}['masks'] must be ({len(boxes)}, {height}, {width}): one mask per box at the image's "
                    f"size (image_sizes[{index}]), got shape {tuple(masks.shape)}"
                )
            target["masks"] = (masks[keep.to(masks.device)] > 0).to(device=device, dtype=torch.uint8)
        if config.meta_architecture == "panoptic_fpn":
            semantic = _as_tensor(label["semantic_labels"], f"{where}['semantic_labels']")
            if semantic.shape != (height, width) or semantic.is_floating_point() or semantic.dtype == torch.bool:
                raise ValueError(
                    f"{where}['semantic_labels'] must be an integer ({height}, {width}) map at the image's size, got "
                    f"shape {tuple(semantic.shape)} and dtype {semantic.dtype}"
                )
            check_label_values(
                semantic,
                config.num_semantic_labels,
                config.semantic_loss_ignore_index,
                name=f"{where}['semantic_labels']",
                hint=" (0 = thing pixel, 1 + j = stuff class num_thing_labels + j)",
            )
            target["semantic_labels"] = semantic.to(device=device, dtype=torch.int64)
        targets.append(target)
    return targets


# ---------------------------------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------------------------------


@contextmanager
def _seeded_sampling(device: torch.device, enabled: bool) -> Iterator[None]:
    """Runs the block on a forked random generator seeded with 0 (CPU, and `device` when it is a GPU); a no-op
    unless `enabled`."""
    if not enabled:
        yield
        return
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, device_type=device.type if devices else "cuda"):
        torch.manual_seed(0)
        yield


class FaPNRCNNPreTrainedModel(FamilyCodeSavingMixin, PretrainedBackboneMixin, InitWeightsMixin, PreTrainedModel):
    """Weights, saving and loading of the FaPN detectors.

    Initialisation (detectron2's): RPN convs N(0, 0.01^2); box head fcs c2_xavier_fill; `cls_score` N(0, 0.01^2),
    `bbox_pred` N(0, 0.001^2); mask convs and deconv c2_msra_fill; mask predictor N(0, 0.001^2); biases 0; the neck
    and the semantic head as the other families (the kernel's tags)."""

    config_class = FaPNRCNNConfig
    config: FaPNRCNNConfig
    base_model_prefix = "model"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    # Proposal selection and NMS produce data-dependent shapes and read values on the host.
    _can_compile_fullgraph = False
    accepts_loss_kwargs = False
    supports_gradient_checkpointing = True
    _no_split_modules = []
    code_family = FAPN_RCNN_CODE

    @classmethod
    def from_pretrained(cls, *args: Any, **kwargs: Any) -> Any:
        """Loads like any transformers model, then freezes the backbone as the config says."""
        loaded = super().from_pretrained(*args, **kwargs)
        model = loaded[0] if isinstance(loaded, tuple) else loaded
        config = model.config
        freeze_backbone(model.backbone_module(), config.freeze_backbone_norm, config.freeze_backbone_stages)
        return loaded

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        std = getattr(module, "normal_init_std", None)
        if std is not None:
            hf_init.normal_(module.weight, std=std)
            if module.bias is not None:
                hf_init.zeros_(module.bias)
        else:
            super()._init_weights(module)


class FaPNRCNNModel(FaPNRCNNPreTrainedModel):
    """Backbone + FaPN (or FPN) neck + p6: the detectors' pyramid p2..p6 (strides 4..64).

    Forward: `pixel_values` `(N, 3, H, W)` -> [`FaPNRCNNModelOutput`] for the input zero-padded to multiples of
    `size_divisibility`."""

    def __init__(self, config: FaPNRCNNConfig) -> None:
        super().__init__(config)
        self.backbone = load_backbone(config)
        make_resnet_stages_checkpointable(self.backbone)
        self.neck = FaPNNeck(
            self.backbone.channels,
            config.fpn_dim,
            norm=config.neck_norm,
            use_fsm=config.use_fsm,
            use_fam=config.use_fam,
            deformable_groups=config.deformable_groups,
            deform_conv_implementation=config.deform_conv_implementation,
        )
        # detectron2's LastLevelMaxPool: p6 = max_pool2d(p5, kernel 1, stride 2), no parameters.
        self.top_block = LastLevelMaxPool()
        self.backbone_channels_last = returns_channels_last(self.backbone)
        self.post_init()
        warn_unloaded_pretrained_backbone(config, self.backbone)
        freeze_backbone(self.backbone, config.freeze_backbone_norm, config.freeze_backbone_stages)

    def train(self, mode: bool = True) -> FaPNRCNNModel:
        """Sets training mode, except for the backbone norms that `freeze_backbone_norm`/`_stages` keep frozen."""
        super().train(mode)
        if mode:
            keep_norms_frozen(self.backbone, self.config.freeze_backbone_norm, self.config.freeze_backbone_stages)
        return self

    def check_pixel_values(self, pixel_values: Any) -> torch.Tensor:
        """`pixel_values` as the model takes them (the kernel's check), or `ValueError`."""
        channels = getattr(self.config.backbone_config, "num_channels", 3)
        return check_pixel_values(pixel_values, channels, self.dtype, "FaPNRCNNImageProcessor")

    def forward(
        self,
        pixel_values: torch.Tensor,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> FaPNRCNNModelOutput | tuple:
        """
        Args:
            pixel_values: `(N, 3, H, W)` normalised images (zero-padded here to multiples of `size_divisibility`).
        Returns:
            [`FaPNRCNNModelOutput`]: p2 as `last_hidden_state`, the pyramid p2..p6 and the backbone maps.
        """
        return_dict = self.config.return_dict if return_dict is None else return_dict
        output_hidden_states = (
            self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        )
        pixel_values = self.check_pixel_values(pixel_values)
        padded = pad_to_multiple(pixel_values, self.config.size_divisibility)
        try:
            features = channels_first(self.backbone(padded, return_dict=True).feature_maps, self.backbone_channels_last)
            check_feature_strides(features, tuple(padded.shape[-2:]))
            pyramid = self.neck(features)
        except ValueError as error:
            if (explained := explain_batch_norm_error(error, padded)) is None:
                raise
            raise explained from error
        pyramid, _ = self.top_block(list(pyramid), list(features), list(PYRAMID_NAMES[:-1]))
        pyramid = tuple(pyramid)
        output = FaPNRCNNModelOutput(
            last_hidden_state=pyramid[0],
            feature_maps=pyramid,
            backbone_feature_maps=tuple(features),
            hidden_states=pyramid if output_hidden_states else None,
        )
        return output if return_dict else output.to_tuple()


class FaPNRCNNForObjectDetection(FaPNRCNNPreTrainedModel):
    """A FaPN detector: Faster R-CNN, Mask R-CNN or Panoptic FPN (`config.meta_architecture`).

    Forward: `pixel_values` `(N, 3, H, W)`, `image_sizes` `(N, 2)`, optional `labels` -> [`FaPNRCNNOutput`] with the
    detections padded to `detections_per_image` (and masks, semantic logits) and, with labels, the losses (in
    training and evaluation mode; in training mode no detections are computed and they come back empty)."""

    def __init__(self, config: FaPNRCNNConfig) -> None:
        super().__init__(config)
        self.model = FaPNRCNNModel(config)
        dim = config.fpn_dim
        anchors = FixedStrideAnchorGenerator(
            config.anchor_sizes, config.anchor_aspect_ratios, DETECTOR_STRIDES, config.anchor_offset
        )
        rpn_head = RPNHead(dim, len(config.anchor_aspect_ratios))
        for module in rpn_head.modules():
            if isinstance(module, nn.Conv2d):
                _normal_init(module, 0.01)
        self.rpn = Detectron2RPN(config, anchors, rpn_head)

        roi_names, roi_strides = PYRAMID_NAMES[:ROI_LEVELS], DETECTOR_STRIDES[:ROI_LEVELS]
        box_resolution = config.box_pooler_resolution
        box_head = TwoMLPHead(dim * box_resolution**2, config.box_head_fc_dim)
        tag_init(box_head.fc6, "xavier")
        tag_init(box_head.fc7, "xavier")
        mask_parts: dict[str, nn.Module] = {}
        if config.has_masks:
            mask_parts = {
                "mask_roi_pool": ROIAlignV2Pooler(roi_names, config.mask_pooler_resolution, roi_strides),
                "mask_head": _mask_head(dim, config.mask_head_conv_dim, config.mask_head_num_conv),
                "mask_predictor": _mask_predictor(config.mask_head_conv_dim, config.num_thing_labels),
            }
        self.roi_heads = Detectron2RoIHeads(
            config,
            ROIAlignV2Pooler(roi_names, box_resolution, roi_strides),
            box_head,
            BackgroundLastPredictor(config.box_head_fc_dim, config.num_thing_labels),
            **mask_parts,
        )
        self.semantic_head = (
            SemanticFPNHead(dim, config.semantic_head_channels, config.num_semantic_labels)
            if config.meta_architecture == "panoptic_fpn"
            else None
        )
        self.post_init()

    def semantic_loss(self, logits: torch.Tensor, targets: list[dict[str, torch.Tensor]]) -> torch.Tensor:
        """Panoptic FPN's semantic loss: the stride-4 logits upsampled 4x (bilinear), cross-entropy averaged over the
        pixels that are not ignored (the padding is), times `semantic_loss_weight`."""
        ignore = self.config.semantic_loss_ignore_index
        upsampled = F.interpolate(logits.float(), scale_factor=4, mode="bilinear", align_corners=False)
        height, width = upsampled.shape[-2:]
        labels = torch.full((len(targets), height, width), ignore, dtype=torch.int64, device=logits.device)
        for index, target in enumerate(targets):
            semantic = target["semantic_labels"]
            labels[index, : semantic.shape[0], : semantic.shape[1]] = semantic
        total = F.cross_entropy(upsampled, labels, ignore_index=ignore, reduction="sum")
        return total / (labels != ignore).sum().clamp(min=1) * self.config.semantic_loss_weight

    def pad_detections(
        self, detections: list[dict[str, torch.Tensor]], batch: int, device: torch.device, dtype: torch.dtype
    ) -> dict[str, torch.Tensor]:
        """Per image detections -> the padded `(N, K, ...)` tensors of [`FaPNRCNNOutput`]."""
        k = self.config.detections_per_image
        side = 2 * self.config.mask_pooler_resolution
        boxes = torch.zeros(batch, k, 4, device=device, dtype=dtype)
        scores = torch.zeros(batch, k, device=device, dtype=dtype)
        labels = torch.full((batch, k), -1, device=device, dtype=torch.int64)
        counts = torch.zeros(batch, device=device, dtype=torch.int64)
        masks = torch.zeros(batch, k, side, side, device=device, dtype=dtype) if self.config.has_masks else None
        for index, detection in enumerate(detections):
            count = len(detection["boxes"])
            boxes[index, :count] = detection["boxes"].to(dtype)
            scores[index, :count] = detection["scores"].to(dtype)
            labels[index, :count] = detection["labels"]
            counts[index] = count
            if masks is not None:
                masks[index, :count] = detection["masks"].to(dtype)
        return {
            "pred_boxes": boxes,
            "scores": scores,
            "pred_labels": labels,
            "num_detections": counts,
            "pred_masks": masks,
        }

    def forward(
        self,
        pixel_values: torch.Tensor,
        image_sizes: torch.Tensor | None = None,
        labels: list[dict[str, torch.Tensor]] | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
    ) -> FaPNRCNNOutput | tuple:
        """
        Args:
            pixel_values: `(N, 3, H, W)` normalised images, zero-padded (bottom, right) to one size.
            image_sizes: `(N, 2)` `(height, width)` of each image's un-padded region (None: the whole tensor); boxes
                are clipped to it.
            labels: one dict per image (see `check_detection_labels`), coordinates in `pixel_values` pixels.
        Returns:
            [`FaPNRCNNOutput`]: padded detections (`pred_boxes` `(N, K, 4)`, `scores`, `pred_labels`,
            `num_detections`, `pred_masks` `(N, K, 28, 28)`), `semantic_logits` (Panoptic FPN) and, with labels, the
            loss.
        """
        return_dict = self.config.return_dict if return_dict is None else return_dict
        pixel_values = self.model.check_pixel_values(pixel_values)
        sizes = check_image_sizes(image_sizes, pixel_values)
        if self.training and labels is None:
            raise ValueError(
                "labels are needed in training mode (the detector computes losses only); call model.eval() to predict"
            )
        targets = None if labels is None else check_detection_labels(labels, self.config, sizes, pixel_values.device)

        outputs = self.model(pixel_values, output_hidden_states=output_hidden_states, return_dict=True)
        pyramid = outputs.feature_maps
        features = OrderedDict(zip(PYRAMID_NAMES, pyramid))
        images = ImageList(pad_to_multiple(pixel_values, self.config.size_divisibility), sizes)
        # Evaluation with labels samples anchors and ROIs for the loss from a fixed seed, on a forked generator: the
        # evaluation loss is reproducible and the caller's random stream untouched (the detections never depend on it).
        with _seeded_sampling(pixel_values.device, enabled=targets is not None and not self.training):
            proposals, losses = self.rpn(images, features, targets)
            roi_features = OrderedDict(list(features.items())[:ROI_LEVELS])
            detections, roi_losses = self.roi_heads(roi_features, proposals, sizes, targets)
        losses.update(roi_losses)
        semantic_logits = None
        if self.semantic_head is not None:
            semantic_logits = self.semantic_head(pyramid[:ROI_LEVELS])
            if targets is not None:
                losses["loss_sem_seg"] = self.semantic_loss(semantic_logits, targets)

        loss = torch.stack([value.float() for value in losses.values()]).sum() if targets is not None else None
        padded = self.pad_detections(detections, len(sizes), pixel_values.device, pixel_values.dtype)
        output = FaPNRCNNOutput(
            loss=loss,
            loss_dict=losses if targets is not None else None,
            **padded,
            semantic_logits=semantic_logits,
            image_sizes=torch.tensor(sizes, dtype=torch.int64, device=pixel_values.device),
            hidden_states=outputs.hidden_states,
        )
        return output if return_dict else output.to_tuple()


__all__ = [
    "BackgroundLastPredictor",
    "Detectron2RPN",
    "Detectron2RoIHeads",
    "FaPNRCNNForObjectDetection",
    "FaPNRCNNModel",
    "FaPNRCNNModelOutput",
    "FaPNRCNNOutput",
    "FaPNRCNNPreTrainedModel",
    "FixedStrideAnchorGenerator",
    "ROIAlignV2Pooler",
    "check_detection_labels",
    "check_image_sizes",
]
