"""detectron2's R-CNN inference (Faster R-CNN, Mask R-CNN, Panoptic FPN) with the FaPN or the FPN neck, re-implemented
from the original semantics for the detector converter's exactness tests (SPEC section 6).

What it reproduces, module by module, with the original parameter names (so `state_dict()` is an original-layout
checkpoint: `backbone.bottom_up.*`, `backbone.fan_align*` / `backbone.fpn_lateral*`, `proposal_generator.*`,
`roi_heads.*`, `sem_seg_head.*`):

- the `DefaultPredictor` input path: RGB uint8 -> BGR, `ResizeShortestEdge` (sides `int(x + 0.5)`, PIL bilinear on the
  uint8 image), `(x - PIXEL_MEAN) / PIXEL_STD`, zero padding to a multiple of 32 (`ImageList`);
- the MSRA ResNet (FrozenBN, stride in the 1x1 conv) at any widths and block counts, the FaPN neck (`FAN`: P5 the 1x1
  lateral of C5, FSM + FAM + 3x3 output on P4..P2) or detectron2's `FPN` (laterals, nearest 2x top-down, 3x3 outputs on
  every level), P6 = `max_pool2d(P5, 1, 2)`;
- `DefaultAnchorGenerator` (cell anchors not rounded, shifts at each level's fixed stride), `StandardRPNHead` and
  `find_top_rpn_proposals` (per-level top-k, drop non-finite, clip, drop empty, NMS by level, top-k per image);
- `ROIPooler` (ROIAlignV2, level `floor(4 + log2(sqrt(area) / 224 + 1e-8))` clamped to 2..5), `FastRCNNConvFCHead`,
  `FastRCNNOutputLayers` with background last and `fast_rcnn_inference_single_image`, `MaskRCNNConvUpsampleHead` with
  `mask_rcnn_inference`;
- `detector_postprocess` (boxes scaled to the original image, clipped, empty ones dropped, masks pasted by
  `grid_sample` at pixel centres and thresholded at 0.5, one mask at a time inside its box + 1 pixel as on the CPU),
  `sem_seg_postprocess` and `combine_semantic_and_instance_outputs`.

The layers of the semantic network that the detectors share (FrozenBN, the bottleneck block, FaPN's FSM/FAM with the
DCNv2 kernel `torchvision.ops.deform_conv2d`, `SemSegFPNHead`, the resize) come from `original_fapn.py`. Kernels used
as detectron2 uses them: `torchvision.ops.batched_nms`, `torchvision.ops.roi_align`. Nothing here imports fapn_hf.

`random_checkpoint` makes random original-layout checkpoints of the released architectures (`ARCHITECTURES`) with
values that exercise everything: deformation offsets of a few pixels, about a thousand proposals, detections above
the panoptic score threshold, stuff regions above the area limit; `save_pkl` / `save_pth` write them as detectron2 does.
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import original_fapn as base
import PIL.Image
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

PIXEL_MEAN_BGR = base.PIXEL_MEAN_BGR
PIXEL_STD_BGR = base.PIXEL_STD_BGR
RESNET_BLOCKS = base.RESNET_BLOCKS
META_ARCHITECTURES = ("faster_rcnn", "mask_rcnn", "panoptic_fpn")

# detectron2's defaults (Base-RCNN-FPN.yaml and config/defaults.py) at test time.
ANCHOR_SIZES = (32, 64, 128, 256, 512)
ANCHOR_RATIOS = (0.5, 1.0, 2.0)
FEATURE_STRIDES = {"p2": 4, "p3": 8, "p4": 16, "p5": 32, "p6": 64}
RPN_PRE_NMS_TOPK_TEST = 1000
RPN_POST_NMS_TOPK_TEST = 1000
RPN_NMS_THRESH = 0.7
RPN_BBOX_REG_WEIGHTS = (1.0, 1.0, 1.0, 1.0)
ROI_BBOX_REG_WEIGHTS = (10.0, 10.0, 5.0, 5.0)
SCALE_CLAMP = math.log(1000.0 / 16)
SCORE_THRESH_TEST = 0.05
NMS_THRESH_TEST = 0.5
DETECTIONS_PER_IMAGE = 100
BOX_POOLER_RESOLUTION = 7
MASK_POOLER_RESOLUTION = 14
CANONICAL_BOX_SIZE, CANONICAL_LEVEL = 224, 4
MASK_THRESHOLD = 0.5
PANOPTIC_OVERLAP_THRESH = 0.5
PANOPTIC_STUFF_AREA_LIMIT = 4096
PANOPTIC_INSTANCES_CONFIDENCE_THRESH = 0.5
SIZE_DIVISIBILITY = 32


# ------------------------------------------------------------------------------------------------------ architecture


@dataclass(frozen=True)
class Architecture:
    """The sizes of a detectron2 R-CNN checkpoint. The defaults are the released R50 models (COCO: 80 thing classes,
    53 stuff classes + the "things" channel in Panoptic FPN's semantic head)."""

    meta_architecture: str
    fapn: bool
    blocks: tuple[int, int, int, int] = RESNET_BLOCKS[50]
    stem_channels: int = 64
    stage_channels: tuple[int, int, int, int] = (256, 512, 1024, 2048)
    bottleneck_channels: tuple[int, int, int, int] = (64, 128, 256, 512)
    fpn_dim: int = 256
    num_thing_classes: int = 80
    num_stuff_classes: int = 53
    box_fc_dim: int = 1024
    mask_dim: int = 256
    sem_dim: int = 128

    def __post_init__(self) -> None:
        if self.meta_architecture not in META_ARCHITECTURES:
            raise ValueError(f"meta_architecture must be one of {META_ARCHITECTURES}, got {self.meta_architecture!r}")

    @property
    def has_masks(self) -> bool:
        return self.meta_architecture in ("mask_rcnn", "panoptic_fpn")

    @property
    def is_panoptic(self) -> bool:
        return self.meta_architecture == "panoptic_fpn"

    def tiny(self, **overrides) -> Architecture:
        """The same key layout (every block of the real depth) at widths that run in milliseconds."""
        small = dict(
            stem_channels=8,
            stage_channels=(16, 32, 64, 128),
            bottleneck_channels=(4, 8, 16, 32),
            fpn_dim=16,
            num_thing_classes=3,
            num_stuff_classes=4,
            box_fc_dim=32,
            mask_dim=16,
            sem_dim=64,
        )
        small.update(overrides)
        return replace(self, **small)


# The released models the converter makes, by (meta architecture, neck, depth): the authors' six FaPN models and
# detectron2's model-zoo FPN baselines.
ARCHITECTURES: dict[str, Architecture] = {
    f"{meta}-{neck}-r{depth}": Architecture(meta, neck == "fapn", RESNET_BLOCKS[depth])
    for meta in META_ARCHITECTURES
    for neck in ("fapn", "fpn")
    for depth in (50, 101)
}


def architecture_of(state: Mapping[str, torch.Tensor]) -> Architecture:
    """The architecture a detectron2 R-CNN state dict holds, read from its keys and shapes."""
    keys = set(state)
    fapn = any(k.startswith("backbone.fan_align") for k in keys)
    if not fapn and "backbone.fpn_lateral5.weight" not in keys:
        raise ValueError("not a detectron2 R-CNN with an FPN or FaPN neck: no backbone.fan_align* / fpn_lateral5")
    if any(k.startswith("sem_seg_head.") for k in keys):
        meta = "panoptic_fpn"
    elif any(k.startswith("roi_heads.mask_head.") for k in keys):
        meta = "mask_rcnn"
    else:
        meta = "faster_rcnn"
    trunk = "backbone.bottom_up"
    blocks = tuple(
        len({k.split(".")[3] for k in keys if k.startswith(f"{trunk}.res{stage}.")}) for stage in (2, 3, 4, 5)
    )
    stage_channels = tuple(state[f"{trunk}.res{s}.0.conv3.weight"].shape[0] for s in (2, 3, 4, 5))
    bottleneck_channels = tuple(state[f"{trunk}.res{s}.0.conv1.weight"].shape[0] for s in (2, 3, 4, 5))
    num_classes = state["roi_heads.box_predictor.cls_score.weight"].shape[0] - 1
    return Architecture(
        meta_architecture=meta,
        fapn=fapn,
        blocks=blocks,
        stem_channels=state[f"{trunk}.stem.conv1.weight"].shape[0],
        stage_channels=stage_channels,
        bottleneck_channels=bottleneck_channels,
        fpn_dim=state["proposal_generator.rpn_head.conv.weight"].shape[0],
        num_thing_classes=num_classes,
        num_stuff_classes=state["sem_seg_head.predictor.weight"].shape[0] - 1 if meta == "panoptic_fpn" else 0,
        box_fc_dim=state["roi_heads.box_head.fc1.weight"].shape[0],
        mask_dim=state["roi_heads.mask_head.mask_fcn1.weight"].shape[0] if meta != "faster_rcnn" else 256,
        sem_dim=state["sem_seg_head.predictor.weight"].shape[1] if meta == "panoptic_fpn" else 128,
    )


# ---------------------------------------------------------------------------------------------- backbone and necks


class BasicStem(nn.Module):
    """conv1 7x7/2 (FrozenBN) + ReLU + max-pool 3x3/2."""

    def __init__(self, out_channels: int) -> None:
        super().__init__()
        norm = base.FrozenBatchNorm2d(out_channels)
        self.conv1 = base.Conv2d(3, out_channels, kernel_size=7, stride=2, padding=3, bias=False, norm=norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(F.relu(self.conv1(x)), kernel_size=3, stride=2, padding=1)


class ResNet(nn.Module):
    """The MSRA ResNet trunk (`STRIDE_IN_1X1`, FrozenBN), res2 at stride 4 .. res5 at stride 32."""

    def __init__(self, arch: Architecture) -> None:
        super().__init__()
        self.stem = BasicStem(arch.stem_channels)
        in_channels = arch.stem_channels
        for index, num_blocks in enumerate(arch.blocks):
            out_channels, bottleneck = arch.stage_channels[index], arch.bottleneck_channels[index]
            blocks = []
            for block in range(num_blocks):
                stride = 2 if index > 0 and block == 0 else 1
                blocks.append(base.BottleneckBlock(in_channels, out_channels, bottleneck, stride))
                in_channels = out_channels
            self.add_module(f"res{index + 2}", nn.Sequential(*blocks))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.stem(x)
        outputs = {}
        for name in ("res2", "res3", "res4", "res5"):
            x = getattr(self, name)(x)
            outputs[name] = x
        return outputs


class FAN(nn.Module):
    """The authors' detection backbone (`build_resnet_fan_backbone`, norm ""): p5 = fan_align5(res5), a 1x1 conv
    with bias and nothing else; p4..p2 = fpn_output(FeatureAlign_V2(res_i, un-convolved previous level));
    p6 = max_pool2d(p5, kernel 1, stride 2)."""

    def __init__(self, arch: Architecture) -> None:
        super().__init__()
        self.bottom_up = ResNet(arch)
        for stage in (2, 3, 4):
            self.add_module(f"fan_align{stage}", base.FeatureAlignV2(arch.stage_channels[stage - 2], arch.fpn_dim))
            self.add_module(f"fpn_output{stage}", base.Conv2d(arch.fpn_dim, arch.fpn_dim, 3, padding=1, bias=True))
        self.fan_align5 = base.Conv2d(arch.stage_channels[3], arch.fpn_dim, 1, bias=True)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.bottom_up(x)
        prev = self.fan_align5(features["res5"])
        results = {"p5": prev}
        for stage in (4, 3, 2):
            prev = getattr(self, f"fan_align{stage}")(features[f"res{stage}"], prev)
            results[f"p{stage}"] = getattr(self, f"fpn_output{stage}")(prev)
        results["p6"] = F.max_pool2d(results["p5"], kernel_size=1, stride=2, padding=0)
        return {name: results[name] for name in ("p2", "p3", "p4", "p5", "p6")}


class FPN(nn.Module):
    """detectron2's FPN (norm "", fuse "sum"): lateral 1x1 convs, nearest 2x top-down sums, a 3x3 output conv on every
    level including p5; p6 = max_pool2d(p5 output, kernel 1, stride 2) (`LastLevelMaxPool`)."""

    def __init__(self, arch: Architecture) -> None:
        super().__init__()
        self.bottom_up = ResNet(arch)
        for stage in (2, 3, 4, 5):
            self.add_module(f"fpn_lateral{stage}", base.Conv2d(arch.stage_channels[stage - 2], arch.fpn_dim, 1))
            self.add_module(f"fpn_output{stage}", base.Conv2d(arch.fpn_dim, arch.fpn_dim, 3, padding=1))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.bottom_up(x)
        prev = self.fpn_lateral5(features["res5"])
        results = {"p5": self.fpn_output5(prev)}
        for stage in (4, 3, 2):
            top_down = F.interpolate(prev, scale_factor=2.0, mode="nearest")
            prev = getattr(self, f"fpn_lateral{stage}")(features[f"res{stage}"]) + top_down
            results[f"p{stage}"] = getattr(self, f"fpn_output{stage}")(prev)
        results["p6"] = F.max_pool2d(results["p5"], kernel_size=1, stride=2, padding=0)
        return {name: results[name] for name in ("p2", "p3", "p4", "p5", "p6")}


# ------------------------------------------------------------------------------------------------------------- boxes


def apply_deltas(deltas: torch.Tensor, boxes: torch.Tensor, weights: Sequence[float]) -> torch.Tensor:
    """`Box2BoxTransform.apply_deltas`: `(R, 4k)` deltas on `(R, 4)` xyxy boxes -> `(R, 4k)` boxes. Decoded in float32
    as detectron2 does (`deltas.float()`), widths `x1 - x0` (no +1), dw/dh clamped at log(1000/16)."""
    deltas = deltas.float()
    boxes = boxes.to(deltas.dtype)
    widths, heights = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    ctr_x, ctr_y = boxes[:, 0] + 0.5 * widths, boxes[:, 1] + 0.5 * heights
    wx, wy, ww, wh = weights
    dx, dy = deltas[:, 0::4] / wx, deltas[:, 1::4] / wy
    dw = torch.clamp(deltas[:, 2::4] / ww, max=SCALE_CLAMP)
    dh = torch.clamp(deltas[:, 3::4] / wh, max=SCALE_CLAMP)
    pred_ctr_x, pred_ctr_y = dx * widths[:, None] + ctr_x[:, None], dy * heights[:, None] + ctr_y[:, None]
    pred_w, pred_h = torch.exp(dw) * widths[:, None], torch.exp(dh) * heights[:, None]
    corners = (
        pred_ctr_x - 0.5 * pred_w,
        pred_ctr_y - 0.5 * pred_h,
        pred_ctr_x + 0.5 * pred_w,
        pred_ctr_y + 0.5 * pred_h,
    )
    return torch.stack(corners, dim=-1).reshape(deltas.shape)


def clip_boxes(boxes: torch.Tensor, height: float, width: float) -> torch.Tensor:
    """`Boxes.clip((h, w))`: x into [0, w], y into [0, h]."""
    return torch.stack(
        (
            boxes[:, 0].clamp(min=0, max=width),
            boxes[:, 1].clamp(min=0, max=height),
            boxes[:, 2].clamp(min=0, max=width),
            boxes[:, 3].clamp(min=0, max=height),
        ),
        dim=-1,
    )


def nonempty(boxes: torch.Tensor, threshold: float = 0.0) -> torch.Tensor:
    """`Boxes.nonempty`: both sides strictly larger than `threshold`."""
    return (boxes[:, 2] - boxes[:, 0] > threshold) & (boxes[:, 3] - boxes[:, 1] > threshold)


def cell_anchors(size: float, ratios: Sequence[float] = ANCHOR_RATIOS) -> torch.Tensor:
    """`DefaultAnchorGenerator.generate_cell_anchors` for one size: `(A, 4)` centred at 0, w = sqrt(size^2 / r),
    h = r * w, not rounded."""
    anchors = []
    for ratio in ratios:
        w = math.sqrt(size**2.0 / ratio)
        h = ratio * w
        anchors.append([-w / 2.0, -h / 2.0, w / 2.0, h / 2.0])
    return torch.tensor(anchors)


def grid_anchors(grid_size: tuple[int, int], stride: int, size: float) -> torch.Tensor:
    """All anchors of a level, `(H * W * A, 4)`, location-major (row by row), shifts `stride * (x, y)`, offset 0."""
    height, width = grid_size
    shifts_x = torch.arange(0, width * stride, step=stride, dtype=torch.float32)
    shifts_y = torch.arange(0, height * stride, step=stride, dtype=torch.float32)
    shift_y, shift_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")
    shift_x, shift_y = shift_x.reshape(-1), shift_y.reshape(-1)
    shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=1)
    return (shifts.view(-1, 1, 4) + cell_anchors(size).view(1, -1, 4)).reshape(-1, 4)


# --------------------------------------------------------------------------------------------------------------- RPN


class StandardRPNHead(nn.Module):
    def __init__(self, channels: int, num_anchors: int = len(ANCHOR_RATIOS)) -> None:
        super().__init__()
        self.conv = base.Conv2d(channels, channels, 3, padding=1, activation=F.relu)
        self.objectness_logits = nn.Conv2d(channels, num_anchors, 1)
        self.anchor_deltas = nn.Conv2d(channels, num_anchors * 4, 1)

    def forward(self, features: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        logits, deltas = [], []
        for x in features:
            t = self.conv(x)
            logits.append(self.objectness_logits(t))
            deltas.append(self.anchor_deltas(t))
        return logits, deltas


class RPN(nn.Module):
    """Inference of detectron2's `RPN` on p2..p6 (`find_top_rpn_proposals`). Returns per image `(boxes (R, 4),
    objectness logits (R,))`, sorted by logit, at most `RPN_POST_NMS_TOPK_TEST`."""

    in_features = ("p2", "p3", "p4", "p5", "p6")

    def __init__(self, arch: Architecture) -> None:
        super().__init__()
        self.rpn_head = StandardRPNHead(arch.fpn_dim)

    def forward(
        self, features: dict[str, torch.Tensor], image_sizes: list[tuple[int, int]]
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        maps = [features[name] for name in self.in_features]
        logits, deltas = self.rpn_head(maps)
        num_images = maps[0].shape[0]
        scores_per_level, boxes_per_level, level_ids = [], [], []
        for level, (name, x, logit, delta) in enumerate(zip(self.in_features, maps, logits, deltas)):
            anchors = grid_anchors(tuple(x.shape[-2:]), FEATURE_STRIDES[name], ANCHOR_SIZES[level]).to(x.device)
            # (N, A, H, W) -> (N, H*W*A); (N, 4A, H, W) -> (N, H*W*A, 4): location-major like the anchors.
            logit = logit.permute(0, 2, 3, 1).flatten(1)
            height, width = delta.shape[-2:]
            delta = delta.view(num_images, -1, 4, height, width).permute(0, 3, 4, 1, 2).flatten(1, -2)
            proposals = apply_deltas(
                delta.reshape(-1, 4), anchors.unsqueeze(0).expand(num_images, -1, -1).reshape(-1, 4),
                RPN_BBOX_REG_WEIGHTS,
            ).view(num_images, -1, 4)  # fmt: skip
            k = min(logit.shape[1], RPN_PRE_NMS_TOPK_TEST)
            top_scores, top_index = logit.topk(k, dim=1)
            batch_index = torch.arange(num_images, device=x.device)[:, None]
            scores_per_level.append(top_scores)
            boxes_per_level.append(proposals[batch_index, top_index])
            level_ids.append(torch.full((k,), level, dtype=torch.int64, device=x.device))
        scores, boxes, levels = torch.cat(scores_per_level, 1), torch.cat(boxes_per_level, 1), torch.cat(level_ids)
        results = []
        for n, (height, width) in enumerate(image_sizes):
            image_boxes, image_scores, image_levels = boxes[n], scores[n], levels
            valid = torch.isfinite(image_boxes).all(dim=1) & torch.isfinite(image_scores)
            if not valid.all():
                image_boxes, image_scores, image_levels = image_boxes[valid], image_scores[valid], image_levels[valid]
            image_boxes = clip_boxes(image_boxes, height, width)
            keep = nonempty(image_boxes)
            image_boxes, image_scores, image_levels = image_boxes[keep], image_scores[keep], image_levels[keep]
            keep = torchvision.ops.batched_nms(image_boxes.float(), image_scores, image_levels, RPN_NMS_THRESH)
            keep = keep[:RPN_POST_NMS_TOPK_TEST]
            results.append((image_boxes[keep], image_scores[keep]))
        return results


# --------------------------------------------------------------------------------------------------------- ROI heads


def roi_pool(features: list[torch.Tensor], boxes: list[torch.Tensor], output_size: int) -> torch.Tensor:
    """`ROIPooler` with ROIAlignV2 over p2..p5 (scales 1/4..1/32, sampling ratio 0, aligned): each box on the level
    `floor(4 + log2(sqrt(area) / 224 + 1e-8))` clamped to 2..5. `(sum R_i, C, S, S)` in the order of `boxes`."""
    rois = torch.cat([torch.cat([torch.full_like(b[:, :1], i), b], dim=1) for i, b in enumerate(boxes)], dim=0)
    all_boxes = torch.cat(boxes, dim=0)
    areas = (all_boxes[:, 2] - all_boxes[:, 0]) * (all_boxes[:, 3] - all_boxes[:, 1])
    levels = torch.floor(CANONICAL_LEVEL + torch.log2(torch.sqrt(areas) / CANONICAL_BOX_SIZE + 1e-8))
    levels = torch.clamp(levels, min=2, max=5).to(torch.int64) - 2
    output = features[0].new_zeros(len(rois), features[0].shape[1], output_size, output_size)
    for level, x in enumerate(features):
        index = torch.nonzero(levels == level, as_tuple=True)[0]
        pooled = torchvision.ops.roi_align(
            x, rois[index].to(x.dtype), output_size, spatial_scale=1.0 / 2 ** (level + 2), sampling_ratio=0,
            aligned=True,
        )  # fmt: skip
        output.index_put_((index,), pooled)
    return output


class FastRCNNConvFCHead(nn.Module):
    """Flatten, fc1 + ReLU, fc2 + ReLU (no convs, `NUM_FC: 2`)."""

    def __init__(self, in_features: int, fc_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, fc_dim)
        self.fc2 = nn.Linear(fc_dim, fc_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.fc2(F.relu(self.fc1(torch.flatten(x, start_dim=1)))))


class FastRCNNOutputLayers(nn.Module):
    """`cls_score` (K + 1 rows, background last), `bbox_pred` (4K rows, class-specific)."""

    def __init__(self, fc_dim: int, num_classes: int) -> None:
        super().__init__()
        self.cls_score = nn.Linear(fc_dim, num_classes + 1)
        self.bbox_pred = nn.Linear(fc_dim, num_classes * 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cls_score(x), self.bbox_pred(x)


class MaskRCNNConvUpsampleHead(nn.Module):
    """mask_fcn1..4 (3x3 + ReLU), deconv (2x2 stride 2) + ReLU, predictor 1x1 with one channel per class."""

    def __init__(self, in_channels: int, dim: int, num_classes: int) -> None:
        super().__init__()
        for k in range(4):
            conv = base.Conv2d(in_channels if k == 0 else dim, dim, 3, padding=1, activation=F.relu)
            self.add_module(f"mask_fcn{k + 1}", conv)
        self.deconv = nn.ConvTranspose2d(dim, dim, kernel_size=2, stride=2)
        self.predictor = nn.Conv2d(dim, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for k in range(4):
            x = getattr(self, f"mask_fcn{k + 1}")(x)
        return self.predictor(F.relu(self.deconv(x)))


def fast_rcnn_inference_single_image(
    boxes: torch.Tensor, scores: torch.Tensor, image_size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`(R, 4K)` decoded boxes and `(R, K + 1)` probabilities -> boxes `(D, 4)`, scores `(D,)`, classes `(D,)`:
    drop non-finite rows and the background column, clip, keep score > 0.05, NMS per class at 0.5, top 100."""
    valid = torch.isfinite(boxes).all(dim=1) & torch.isfinite(scores).all(dim=1)
    if not valid.all():
        boxes, scores = boxes[valid], scores[valid]
    scores = scores[:, :-1]
    num_classes = boxes.shape[1] // 4
    boxes = clip_boxes(boxes.reshape(-1, 4), *image_size).view(-1, num_classes, 4)
    filter_mask = scores > SCORE_THRESH_TEST
    filter_index = filter_mask.nonzero()
    boxes = boxes[filter_index[:, 0], 0] if num_classes == 1 else boxes[filter_mask]
    scores = scores[filter_mask]
    keep = torchvision.ops.batched_nms(boxes.float(), scores, filter_index[:, 1], NMS_THRESH_TEST)
    keep = keep[:DETECTIONS_PER_IMAGE]
    return boxes[keep], scores[keep], filter_index[keep, 1]


class StandardROIHeads(nn.Module):
    """Box branch (and mask branch) at test time. Returns per image a dict of `pred_boxes`, `scores`,
    `pred_classes` (and `pred_masks` `(D, 1, 28, 28)` probabilities of the predicted class)."""

    in_features = ("p2", "p3", "p4", "p5")

    def __init__(self, arch: Architecture) -> None:
        super().__init__()
        pooled = arch.fpn_dim * BOX_POOLER_RESOLUTION**2
        self.box_head = FastRCNNConvFCHead(pooled, arch.box_fc_dim)
        self.box_predictor = FastRCNNOutputLayers(arch.box_fc_dim, arch.num_thing_classes)
        self.mask_head = (
            MaskRCNNConvUpsampleHead(arch.fpn_dim, arch.mask_dim, arch.num_thing_classes) if arch.has_masks else None
        )

    def forward(
        self, features: dict[str, torch.Tensor], proposals: list[torch.Tensor], image_sizes: list[tuple[int, int]]
    ) -> list[dict[str, torch.Tensor]]:
        maps = [features[name] for name in self.in_features]
        box_features = self.box_head(roi_pool(maps, proposals, BOX_POOLER_RESOLUTION))
        class_logits, box_deltas = self.box_predictor(box_features)
        boxes = apply_deltas(box_deltas, torch.cat(proposals), ROI_BBOX_REG_WEIGHTS)
        probabilities = F.softmax(class_logits, dim=-1)
        counts = [len(p) for p in proposals]
        results = []
        for image_boxes, image_scores, size in zip(boxes.split(counts), probabilities.split(counts), image_sizes):
            pred_boxes, scores, classes = fast_rcnn_inference_single_image(image_boxes, image_scores, size)
            results.append({"pred_boxes": pred_boxes, "scores": scores, "pred_classes": classes})
        if self.mask_head is not None:
            mask_logits = self.mask_head(roi_pool(maps, [r["pred_boxes"] for r in results], MASK_POOLER_RESOLUTION))
            classes = torch.cat([r["pred_classes"] for r in results])
            probabilities = mask_logits[torch.arange(len(classes)), classes][:, None].sigmoid()
            for result, masks in zip(results, probabilities.split([len(r["pred_classes"]) for r in results])):
                result["pred_masks"] = masks
        return results


# ---------------------------------------------------------------------------------------------- post-processing


def paste_masks_in_image(masks: torch.Tensor, boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """`paste_masks_in_image` on the CPU: each `(M, M)` probability map is sampled at the centres of the image pixels
    inside its box (+- 1 pixel, `grid_sample`, align_corners False) and thresholded at 0.5 (`>=`). `(D, H, W)` bool."""
    pasted = torch.zeros(len(masks), height, width, dtype=torch.bool)
    for index in range(len(masks)):
        box = boxes[index : index + 1]
        x0_int, y0_int = torch.clamp(box.min(dim=0).values.floor()[:2] - 1, min=0).to(dtype=torch.int32)
        x1_int = torch.clamp(box[:, 2].max().ceil() + 1, max=width).to(dtype=torch.int32)
        y1_int = torch.clamp(box[:, 3].max().ceil() + 1, max=height).to(dtype=torch.int32)
        x0, y0, x1, y1 = torch.split(box, 1, dim=1)
        img_y = torch.arange(y0_int, y1_int, dtype=torch.float32) + 0.5
        img_x = torch.arange(x0_int, x1_int, dtype=torch.float32) + 0.5
        img_y = (img_y - y0) / (y1 - y0) * 2 - 1
        img_x = (img_x - x0) / (x1 - x0) * 2 - 1
        gx = img_x[:, None, :].expand(1, img_y.size(1), img_x.size(1))
        gy = img_y[:, :, None].expand(1, img_y.size(1), img_x.size(1))
        grid = torch.stack([gx, gy], dim=3)
        mask = masks[index : index + 1, None]
        sampled = F.grid_sample(mask, grid.to(mask.dtype), align_corners=False)[0, 0]
        pasted[index, y0_int:y1_int, x0_int:x1_int] = sampled >= MASK_THRESHOLD
    return pasted


def detector_postprocess(result: dict[str, torch.Tensor], image_size: tuple[int, int], height: int, width: int):
    """Boxes from the resized input to the original image (`scale`, `clip`, drop empty), masks pasted there."""
    scale_x, scale_y = width / image_size[1], height / image_size[0]
    boxes = result["pred_boxes"].clone()
    boxes[:, 0::2] *= scale_x
    boxes[:, 1::2] *= scale_y
    boxes = clip_boxes(boxes, height, width)
    keep = nonempty(boxes)
    output = {name: value[keep] for name, value in result.items()}
    output["pred_boxes"] = boxes[keep]
    if "pred_masks" in output:
        output["pred_masks"] = paste_masks_in_image(output["pred_masks"][:, 0], output["pred_boxes"], height, width)
    return output


def sem_seg_postprocess(result: torch.Tensor, image_size: tuple[int, int], height: int, width: int) -> torch.Tensor:
    """Crop the padding, bilinear (align_corners False) to the original size. `(C, H, W)`."""
    result = result[:, : image_size[0], : image_size[1]].expand(1, -1, -1, -1)
    return F.interpolate(result, size=(height, width), mode="bilinear", align_corners=False)[0]


def combine_semantic_and_instance_outputs(
    instances: dict[str, torch.Tensor], semantic: torch.Tensor
) -> tuple[torch.Tensor, list[dict]]:
    """Panoptic FPN's combination: instances of score >= 0.5 in score order, skipped when more than half of the mask
    is taken, else painted on the free pixels; then each semantic class except 0 ("things") whose free area is at
    least 4096 pixels. `(H, W)` int32 segment ids (0 = void) and detectron2's `segments_info`."""
    panoptic = torch.zeros_like(semantic, dtype=torch.int32)
    segment_id, segments = 0, []
    masks = instances["pred_masks"].to(dtype=torch.bool)
    for index in torch.argsort(-instances["scores"]):
        score = instances["scores"][index].item()
        if score < PANOPTIC_INSTANCES_CONFIDENCE_THRESH:
            break
        mask = masks[index]
        area = mask.sum().item()
        if area == 0:
            continue
        intersect = (mask > 0) & (panoptic > 0)
        intersect_area = intersect.sum().item()
        if intersect_area * 1.0 / area > PANOPTIC_OVERLAP_THRESH:
            continue
        if intersect_area > 0:
            mask = mask & (panoptic == 0)
        segment_id += 1
        panoptic[mask] = segment_id
        segments.append(
            {
                "id": segment_id,
                "isthing": True,
                "score": score,
                "category_id": instances["pred_classes"][index].item(),
                "instance_id": index.item(),
            }
        )
    for label in torch.unique(semantic).tolist():
        if label == 0:  # the "things" channel is never stuff
            continue
        mask = (semantic == label) & (panoptic == 0)
        area = mask.sum().item()
        if area < PANOPTIC_STUFF_AREA_LIMIT:
            continue
        segment_id += 1
        panoptic[mask] = segment_id
        segments.append({"id": segment_id, "isthing": False, "category_id": label, "area": area})
    return panoptic, segments


# ------------------------------------------------------------------------------------------------- meta architecture


class OriginalRCNN(nn.Module):
    """`GeneralizedRCNN` (Faster / Mask R-CNN) or `PanopticFPN` at test time, `forward(batched_inputs)` as detectron2:
    a list of `{"image": (3, h, w) BGR float 0..255, "height", "width"}` -> a list of `{"instances": {...}}`, plus
    `"sem_seg"` and `"panoptic_seg"` for Panoptic FPN. `last_proposals` keeps the RPN's output of the last call."""

    def __init__(self, arch: Architecture) -> None:
        super().__init__()
        self.arch = arch
        self.backbone = FAN(arch) if arch.fapn else FPN(arch)
        self.proposal_generator = RPN(arch)
        self.roi_heads = StandardROIHeads(arch)
        if arch.is_panoptic:
            self.sem_seg_head = base.SemSegFPNHead(arch.num_stuff_classes + 1, arch.fpn_dim, arch.sem_dim)
        # Not part of the state dict: recent detectron2 registers them as non-persistent buffers.
        self.register_buffer("pixel_mean", torch.tensor(PIXEL_MEAN_BGR).view(-1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(PIXEL_STD_BGR).view(-1, 1, 1), persistent=False)
        self.last_proposals: list[tuple[torch.Tensor, torch.Tensor]] = []

    def preprocess(self, batched_inputs: list[dict]) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """Normalise, then zero-pad to a common size divisible by 32 (`ImageList.from_tensors`)."""
        images = [(x["image"].to(self.pixel_mean.dtype) - self.pixel_mean) / self.pixel_std for x in batched_inputs]
        max_h = max(i.shape[-2] for i in images)
        max_w = max(i.shape[-1] for i in images)
        stride = SIZE_DIVISIBILITY
        max_h, max_w = (max_h + stride - 1) // stride * stride, (max_w + stride - 1) // stride * stride
        batch = images[0].new_zeros(len(images), 3, max_h, max_w)
        for index, image in enumerate(images):
            batch[index, :, : image.shape[-2], : image.shape[-1]].copy_(image)
        return batch, [tuple(i.shape[-2:]) for i in images]

    def forward(self, batched_inputs: list[dict]) -> list[dict]:
        images, image_sizes = self.preprocess(batched_inputs)
        features = self.backbone(images)
        proposals = self.proposal_generator(features, image_sizes)
        self.last_proposals = proposals
        detections = self.roi_heads(features, [boxes for boxes, _ in proposals], image_sizes)
        semantic = None
        if self.arch.is_panoptic:
            semantic = self.sem_seg_head(features)
        outputs = []
        for index, (inputs, size) in enumerate(zip(batched_inputs, image_sizes)):
            height, width = inputs.get("height", size[0]), inputs.get("width", size[1])
            result = {"instances": detector_postprocess(detections[index], size, height, width)}
            if semantic is not None:
                result["sem_seg"] = sem_seg_postprocess(semantic[index], size, height, width)
                result["panoptic_seg"] = combine_semantic_and_instance_outputs(
                    result["instances"], result["sem_seg"].argmax(dim=0)
                )
            outputs.append(result)
        return outputs


def resize_shortest_edge(rgb: np.ndarray, short_edge: int, max_size: int) -> np.ndarray:
    """`ResizeShortestEdge` at test time on a uint8 image: sizes `int(x + 0.5)`, PIL bilinear."""
    height, width = rgb.shape[:2]
    new_h, new_w = base.resize_shortest_edge_shape(height, width, short_edge, max_size)
    return np.asarray(PIL.Image.fromarray(rgb).resize((new_w, new_h), PIL.Image.BILINEAR))


@torch.no_grad()
def predict(model: OriginalRCNN, rgb: np.ndarray, short_edge: int = 800, max_size: int = 1333) -> dict:
    """`DefaultPredictor` on an RGB uint8 `(H, W, 3)` image: to BGR, resize, the model, results at the image's size."""
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an RGB uint8 image (H, W, 3), got {rgb.dtype} {rgb.shape}")
    height, width = rgb.shape[:2]
    resized = resize_shortest_edge(np.ascontiguousarray(rgb[:, :, ::-1]), short_edge, max_size)
    image = torch.as_tensor(resized.astype("float32").transpose(2, 0, 1))
    return model([{"image": image, "height": height, "width": width}])[0]


def load_original(state: Mapping[str, torch.Tensor | np.ndarray]) -> OriginalRCNN:
    """The reference model of a detectron2-keyed state dict (numpy arrays or tensors), strictly loaded; `pixel_mean`
    and `pixel_std`, when the checkpoint has them, set the normalisation."""
    tensors = {k: torch.as_tensor(np.asarray(v)) if isinstance(v, np.ndarray) else v for k, v in state.items()}
    model = OriginalRCNN(architecture_of(tensors)).eval()
    statistics = {k: tensors.pop(k) for k in ("pixel_mean", "pixel_std") if k in tensors}
    model.load_state_dict(tensors, strict=True)
    for name, value in statistics.items():
        getattr(model, name).copy_(value.reshape(-1, 1, 1))
    return model


# ------------------------------------------------------------------------------------------- random "trained" weights


def sample_image(height: int = 240, width: int = 320, seed: int = 0) -> np.ndarray:
    """An RGB uint8 image with structure at several scales: a smooth field, a few bright rectangles, noise."""
    rng = np.random.default_rng(seed)
    coarse = torch.from_numpy(rng.uniform(0, 255, (1, 3, 4, 5)))
    smooth = F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)[0].permute(1, 2, 0)
    image = smooth.numpy() + rng.normal(0, 20, (height, width, 3))
    for _ in range(6):
        h, w = rng.integers(height // 8, height // 2), rng.integers(width // 8, width // 2)
        y, x = rng.integers(0, height - h), rng.integers(0, width - w)
        image[y : y + h, x : x + w] = rng.uniform(0, 255, 3)
    return np.clip(image, 0, 255).astype(np.uint8)


@torch.no_grad()
def _calibrate(model: OriginalRCNN, image: torch.Tensor, targets: list[tuple[nn.Module, float, torch.Tensor]]) -> None:
    """One forward pass on the calibration image, then each `(layer, std, bias)`: the layer's weight scaled so that
    its outputs there spread by about `std` around `bias`. Layers calibrated together must not feed each other."""
    captured: dict[nn.Module, list[torch.Tensor]] = {layer: [] for layer, _, _ in targets}

    def capture(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        shape = (1, -1) + (1,) * (output.dim() - 2)  # the bias broadcast over a conv's spatial axes
        captured[module].append(output - module.bias.view(shape))

    hooks = [layer.register_forward_hook(capture) for layer, _, _ in targets]
    try:
        model([{"image": image}])
    finally:
        for hook in hooks:
            hook.remove()
    for layer, std, bias in targets:
        if not captured[layer]:
            raise RuntimeError(f"{layer} saw no input during calibration (no detections?)")
        spread = torch.cat([c.reshape(-1) for c in captured[layer]]).std().clamp_min(1e-6)
        layer.weight.mul_(std / spread)
        layer.bias.copy_(bias)


LEVEL_GAINS = (0.25, 0.5, 1.0, 2.0)
ANCHOR_GROWTH = 0.5


@torch.no_grad()
def randomize(model: OriginalRCNN, seed: int, image: np.ndarray, short_edge: int, max_size: int) -> None:
    """Random weights with trained-network scales (`original_fapn.randomize`: He convs, random norms, FrozenBN
    statistics from a calibration pass, DCN offsets of about two pixels), then heads calibrated on `image` so that
    the test exercises everything: objectness logits of spread 2 (about a thousand proposals survive NMS), anchor
    deltas of spread 0.3 (proposals of every size, few clipped to the image), class logits that put many boxes above
    the 0.05 threshold and scores on both sides of the panoptic 0.5, box deltas that move boxes by a few percent, mask
    logits of spread 3 with a per-class offset, semantic logits with two dominant stuff classes."""
    generator = torch.Generator().manual_seed(seed + 1)
    resized = resize_shortest_edge(np.ascontiguousarray(image[:, :, ::-1]), short_edge, max_size)
    calibration = torch.as_tensor(resized.astype("float32").transpose(2, 0, 1))
    base.randomize(model, seed, calibration[None])

    def normal(shape, std=1.0):
        return torch.randn(shape, generator=generator) * std

    for module in model.modules():
        if isinstance(module, nn.Linear):
            module.weight.copy_(normal(module.weight.shape, math.sqrt(2.0 / module.in_features)))
            module.bias.copy_(normal(module.bias.shape, 0.1))
        elif isinstance(module, nn.ConvTranspose2d):
            module.weight.copy_(normal(module.weight.shape, math.sqrt(2.0 / module.in_channels)))
            module.bias.copy_(normal(module.bias.shape, 0.1))
    # Finer pyramid levels get weaker outputs: the RPN scores them lower, so the 1000 proposals kept come from every
    # level instead of p2's 70000 anchors alone (the pooler then reads every level).
    backbone = model.backbone
    for level, gain in zip((2, 3, 4, 5), LEVEL_GAINS):
        output = getattr(backbone, f"fpn_output{level}" if level < 5 or not model.arch.fapn else "fan_align5")
        output.weight.mul_(gain)
        output.bias.mul_(gain)
    rpn = model.proposal_generator.rpn_head
    delta_bias = normal(rpn.anchor_deltas.bias.shape, 0.1).view(-1, 4)
    delta_bias[:, 2:] += ANCHOR_GROWTH  # proposals somewhat larger than their anchors
    rpn_targets = [
        (rpn.objectness_logits, 2.0, normal(rpn.objectness_logits.bias.shape, 0.5)),
        (rpn.anchor_deltas, 0.3, delta_bias.flatten()),
    ]
    _calibrate(model, calibration, rpn_targets)
    predictor = model.roi_heads.box_predictor
    cls_bias = torch.linspace(0.3, 0.0, model.arch.num_thing_classes + 1)  # background last, at 0
    box_targets = [
        (predictor.cls_score, 0.35, cls_bias),
        (predictor.bbox_pred, 0.5, normal(predictor.bbox_pred.bias.shape, 0.2)),
    ]
    _calibrate(model, calibration, box_targets)
    last_targets = []
    if model.roi_heads.mask_head is not None:
        mask_predictor = model.roi_heads.mask_head.predictor
        last_targets.append((mask_predictor, 3.0, normal(mask_predictor.bias.shape, 0.5)))
    if model.arch.is_panoptic:
        sem_predictor = model.sem_seg_head.predictor
        sem_bias = torch.zeros(sem_predictor.bias.shape)
        sem_bias[1:3] = 1.5  # two stuff classes cover large regions, the rest appear in patches
        last_targets.append((sem_predictor, 1.0, sem_bias))
    if last_targets:
        _calibrate(model, calibration, last_targets)


def random_checkpoint(
    arch: Architecture | str,
    seed: int = 0,
    *,
    tiny: bool = True,
    image: np.ndarray | None = None,
    short_edge: int = 800,
    max_size: int = 1333,
    with_pixel_statistics: bool = False,
) -> tuple[dict[str, torch.Tensor], OriginalRCNN]:
    """A random original-layout checkpoint of `arch` (an `ARCHITECTURES` name or an `Architecture`; `tiny` narrows a
    name's widths), calibrated on `image` at the given test resize. Returns the state dict (detectron2's keys, float32;
    with `pixel_mean`/`pixel_std` as older detectron2 versions saved them when `with_pixel_statistics`) and the
    reference model holding it."""
    if isinstance(arch, str):
        if arch not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {arch!r}; known: {sorted(ARCHITECTURES)}")
        arch = ARCHITECTURES[arch].tiny() if tiny else ARCHITECTURES[arch]
    torch.manual_seed(seed)
    model = OriginalRCNN(arch).eval()
    randomize(model, seed, sample_image() if image is None else image, short_edge, max_size)
    state = {name: tensor.detach().clone().contiguous() for name, tensor in model.state_dict().items()}
    if with_pixel_statistics:
        state["pixel_mean"] = model.pixel_mean.clone()
        state["pixel_std"] = model.pixel_std.clone()
    return state, model


def save_pkl(state: Mapping[str, torch.Tensor], path: str | Path, numpy1_names: bool = True) -> Path:
    """A detectron2 model-zoo `.pkl`: `{"model": {name: float32 numpy array}, "__author__": ...}` pickled with
    protocol 2; `numpy1_names` names numpy 1.x's array constructor (`numpy.core.multiarray`), as the released files
    do."""
    content = {
        "model": {name: tensor.numpy() for name, tensor in state.items()},
        "__author__": "Detectron2 Model Zoo",
    }
    data = pickle.dumps(content, protocol=2)
    if numpy1_names:
        data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    path = Path(path)
    path.write_bytes(data)
    return path


def save_pth(state: Mapping[str, torch.Tensor], path: str | Path) -> Path:
    """A detectron2 training checkpoint: `{"model": state_dict, "iteration": ...}` through `torch.save`."""
    path = Path(path)
    torch.save({"model": dict(state), "iteration": 89999}, path)
    return path
