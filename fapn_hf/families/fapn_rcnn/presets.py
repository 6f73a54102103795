"""Named configurations of the FaPN detectors (`RCNN_PRESETS`): the paper's six COCO models (Faster R-CNN, Mask R-CNN
and Panoptic FPN, R50 1x and R101 3x), their detectron2 FPN baselines (`fpn-*`), and small demo models that train on
two CPU cores (`*-demo`). Label sets: COCO's 80 thing classes, and COCO panoptic's 80 things + 53 stuff classes."""

from __future__ import annotations

from typing import Any

from transformers import ResNetConfig

from ...labels import label_maps
from ...modeling.configuration_fapn_rcnn import FaPNRCNNConfig

# COCO's 80 thing classes in detectron2's contiguous order (category ids 1..90 without the unused ones): the first 80
# of COCO-Stuff's 171 (`fapn_hf.labels.COCO_STUFF_LABELS`), written out here so that the presets stand alone.
COCO_THING_LABELS: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow", "elephant",
    "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard",
    "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange", "broccoli",
    "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed", "dining table", "toilet",
    "tv", "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink",
    "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip

# COCO panoptic's 53 stuff classes in the order of its category ids (92..200), as detectron2's panoptic metadata.
COCO_PANOPTIC_STUFF_LABELS: tuple[str, ...] = (
    "banner", "blanket", "bridge", "cardboard", "counter", "curtain", "door-stuff", "floor-wood", "flower", "fruit",
    "gravel", "house", "light", "mirror-stuff", "net", "pillow", "platform", "playingfield", "railroad", "river",
    "road", "roof", "sand", "sea", "shelf", "snow", "stairs", "tent", "towel", "wall-brick", "wall-stone", "wall-tile",
    "wall-wood", "water-other", "window-blind", "window-other", "tree-merged", "fence-merged", "ceiling-merged",
    "sky-other-merged", "cabinet-merged", "table-merged", "floor-other-merged", "pavement-merged", "mountain-merged",
    "grass-merged", "dirt-merged", "paper-merged", "food-other-merged", "building-other-merged", "rock-merged",
    "wall-other-merged", "rug-merged",
)  # fmt: skip

# Label set name -> (all names, things first; number of things).
LABEL_SETS: dict[str, tuple[tuple[str, ...], int]] = {
    "coco": (COCO_THING_LABELS, len(COCO_THING_LABELS)),
    "coco_panoptic": (COCO_THING_LABELS + COCO_PANOPTIC_STUFF_LABELS, len(COCO_THING_LABELS)),
}

_ARCHITECTURES = {"faster-rcnn": "faster_rcnn", "mask-rcnn": "mask_rcnn", "panoptic-fpn": "panoptic_fpn"}
_NECKS = {"fapn": {"use_fam": True, "use_fsm": True}, "fpn": {"use_fam": False, "use_fsm": False}}
# detectron2's fine-tuning of its ImageNet trunk: FrozenBN everywhere, stem and res2 frozen (FREEZE_AT 2).
_DETECTRON2_FREEZING = {"freeze_backbone_norm": True, "freeze_backbone_stages": 2}
# The demo: a ResNet-18 trained from scratch on the synthetic shapes, D = 64 and lighter heads, on two CPU cores.
_DEMO_SETTINGS: dict[str, Any] = {
    "backbone": "resnet18",
    "fpn_dim": 64,
    "box_head_fc_dim": 256,
    "mask_head_conv_dim": 64,
    "mask_head_num_conv": 2,
    "semantic_head_channels": 64,
    "anchor_sizes": [16.0, 32.0, 64.0, 128.0, 256.0],
    "rpn_pre_nms_topk_train": 1000,
    "rpn_pre_nms_topk_test": 500,
    "rpn_post_nms_topk_train": 500,
    "rpn_post_nms_topk_test": 300,
    "rpn_batch_size_per_image": 128,
    "roi_batch_size_per_image": 128,
    "detections_per_image": 50,
}


def _build_presets() -> dict[str, dict[str, Any]]:
    presets: dict[str, dict[str, Any]] = {}
    for neck, switches in _NECKS.items():
        for short, architecture in _ARCHITECTURES.items():
            labels = "coco_panoptic" if architecture == "panoptic_fpn" else "coco"
            common = {"meta_architecture": architecture, "labels": labels, **switches}
            # The paper's schedules (1x: 90k iterations, 3x: 270k) are the recipes'; the models differ by trunk.
            presets[f"{neck}-{short}-r50-1x"] = {**common, "backbone": "resnet50", **_DETECTRON2_FREEZING}
            presets[f"{neck}-{short}-r101-3x"] = {**common, "backbone": "resnet101", **_DETECTRON2_FREEZING}
            presets[f"{neck}-{short}-demo"] = {**common, **_DEMO_SETTINGS}
    return presets


RCNN_PRESETS: dict[str, dict[str, Any]] = _build_presets()


def rcnn_label_maps(labels: str | list[str] | tuple[str, ...]) -> tuple[dict[int, str], dict[str, int], int | None]:
    """`(id2label, label2id, num_thing_labels)` of a label set: `"coco"` (80 things), `"coco_panoptic"` (80 things,
    then 53 stuff), or a list of names (`num_thing_labels` None: the caller says, or every class is a thing)."""
    if isinstance(labels, str) and labels in LABEL_SETS:
        names, things = LABEL_SETS[labels]
        id2label, label2id = label_maps(list(names))
        return id2label, label2id, things
    if isinstance(labels, str):
        raise ValueError(f"Unknown detector label set {labels!r}; available: {', '.join(LABEL_SETS)}, or a list")
    id2label, label2id = label_maps(labels)
    return id2label, label2id, None


def rcnn_preset_config(
    name: str, labels: str | list[str] | tuple[str, ...] | None = None, **overrides: Any
) -> FaPNRCNNConfig:
    """The `FaPNRCNNConfig` of preset `name` with its label set (COCO, or COCO panoptic for Panoptic FPN) unless
    `labels` names another; `overrides` set config fields, e.g. `backbone="resnet18"` or `num_thing_labels=3` with a
    list of labels for Panoptic FPN (things first)."""
    if name not in RCNN_PRESETS:
        raise ValueError(f"Unknown FaPN detector preset {name!r}; available: {', '.join(RCNN_PRESETS)}")
    settings = dict(RCNN_PRESETS[name])
    id2label, label2id, things = rcnn_label_maps(settings.pop("labels") if labels is None else labels)
    settings.pop("labels", None)
    if things is not None:
        settings["num_thing_labels"] = things
    if "backbone_config" in overrides:
        settings.pop("backbone", None)
    return FaPNRCNNConfig(**{**settings, "id2label": id2label, "label2id": label2id, **overrides})


def msra_resnet_config(depth: int) -> ResNetConfig:
    """transformers' `ResNetConfig` holding detectron2's MSRA ResNet-50/101 trunk one-to-one (stride in the first 1x1
    conv of each bottleneck), returning res2..res5: the backbone of converted detectors (SPEC 2.8, 6.1)."""
    depths = {50: [3, 4, 6, 3], 101: [3, 4, 23, 3]}
    if depth not in depths:
        raise ValueError(f"detectron2's detectors use ResNet-50 or ResNet-101, got depth {depth!r}")
    return ResNetConfig(
        layer_type="bottleneck",
        embedding_size=64,
        hidden_sizes=[256, 512, 1024, 2048],
        depths=depths[depth],
        downsample_in_bottleneck=True,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )


__all__ = [
    "COCO_PANOPTIC_STUFF_LABELS",
    "COCO_THING_LABELS",
    "LABEL_SETS",
    "RCNN_PRESETS",
    "msra_resnet_config",
    "rcnn_label_maps",
    "rcnn_preset_config",
]
