"""Object detection, instance segmentation and panoptic segmentation: data (`data`: the demo set, COCO folders,
`datasets` sources in transformers' object-detection schema), augmentation (`transforms`: detectron2's multi-scale
shortest-edge resize and flip on `torchvision.transforms.v2`), metrics (`metrics`: COCO box / mask AP through
pycocotools, PQ / SQ / RQ) and the built-in demo set (`demo_data`).

The pieces are imported when first used, as the semantic task's are: a model, the predictor or a Space need none of
the training stack. Options a task fixes (which annotations a COCO folder gives, whether samples carry masks and
the panoptic map) are bound here; what depends on the model (`num_thing_labels`) is passed by the engine."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from ..base import Task


def _on_first_use(module: str, name: str, **bound: Any) -> Callable[..., Any]:
    """`name` of this package's `module`, imported when first called, with the keyword arguments `bound`."""

    def call(*args: Any, **kwargs: Any) -> Any:
        return getattr(importlib.import_module(f"{__name__}.{module}"), name)(*args, **{**bound, **kwargs})

    call.__name__ = call.__qualname__ = name
    settings = ", ".join(f"{key}={value!r}" for key, value in bound.items())
    call.__doc__ = (
        f"`fapn_hf.tasks.detection.{module}.{name}` (imported on first use){f' with {settings}' if settings else ''}."
    )
    return call


def train_augmentation(data_args: Any) -> Any:
    """detectron2's training augmentation: shorter side from `min_size_train`, longer at most `max_size_train`, flip."""
    from .transforms import train_augmentation as build

    return build(data_args)


def _target_sizes(targets: list[dict[str, Any]]) -> list[tuple[int, int]]:
    return [tuple(int(side) for side in target["size"]) for target in targets]


def score_detections(processor: Any, outputs: Any, targets: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`Task.score_batch` of object detection: every detection of the model (no score threshold: AP ranks them) as
    `{"boxes", "scores", "labels"}` in the pixels of each target's original image."""
    return processor.post_process_object_detection(outputs, threshold=-1.0, target_sizes=_target_sizes(targets))


def score_instances(processor: Any, outputs: Any, targets: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`Task.score_batch` of instance segmentation: `score_detections` plus each detection's whole mask `(K, H, W)`
    bool pasted at the original size (detectron2's 0.5 threshold). Both post-processings keep the same entries (all
    valid ones with a non-empty box), so boxes and masks correspond."""
    sizes = _target_sizes(targets)
    detections = processor.post_process_object_detection(outputs, threshold=-1.0, target_sizes=sizes)
    instances = processor.post_process_instance_segmentation(
        outputs, threshold=-1.0, target_sizes=sizes, return_binary_maps=True
    )
    for boxes, masks in zip(detections, instances):
        boxes["masks"] = masks["segmentation"]
    return detections


def score_panoptic(processor: Any, outputs: Any, targets: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`Task.score_batch` of panoptic segmentation: Panoptic FPN's combination (the processor's defaults,
    detectron2's) at each target's original size, `{"segmentation", "segments_info"}`."""
    return processor.post_process_panoptic_segmentation(outputs, target_sizes=_target_sizes(targets))


def _task(
    name: str, display_name: str, pipeline_tag: str, tags: tuple[str, ...], metrics, kind: str, score, **spec
) -> Task:
    return Task(
        name=name,
        display_name=display_name,
        pipeline_tag=pipeline_tag,
        card_tags=(*tags, "vision", "fapn-rcnn"),
        card_metrics=metrics,
        label_settings=_on_first_use("data", "label_settings", kind=kind),
        load_splits=_on_first_use("data", "load_detection_dataset", kind=kind),
        check_samples=_on_first_use("data", "check_samples"),
        label_spec=_on_first_use("data", "label_spec", **spec),
        make_dataset=_on_first_use("data", "DetectionDataset"),
        train_augmentation=train_augmentation,
        eval_collator=_on_first_use("data", "eval_collator"),
        make_metrics=_on_first_use(
            "metrics",
            "make_panoptic_metrics" if spec.get("panoptic") else "make_detection_metrics",
            **({} if spec.get("panoptic") else {"masks": spec.get("masks", False)}),
        ),
        score_batch=score,
        target_keys=("targets",),  # `data.TARGET_KEYS`, written out: `data` is imported on first use
    )


_BOX_METRICS = (
    ("bbox_AP", "mAP", "box AP"),
    ("bbox_AP50", "mAP@0.5", "box AP50"),
    ("bbox_AP75", "mAP@0.75", "box AP75"),
)
_MASK_METRICS = (
    ("segm_AP", "mask_mAP", "mask AP"),
    ("segm_AP50", "mask_mAP@0.5", "mask AP50"),
    ("segm_AP75", "mask_mAP@0.75", "mask AP75"),
)
_PANOPTIC_METRICS = (
    ("PQ", "PQ", "PQ"),
    ("PQ_th", "PQ_things", "PQ things"),
    ("PQ_st", "PQ_stuff", "PQ stuff"),
    ("SQ", "SQ", "SQ"),
    ("RQ", "RQ", "RQ"),
)

OBJECT_DETECTION = _task(
    "object-detection",
    "Object Detection",
    "object-detection",
    ("object-detection",),
    _BOX_METRICS,
    "instances",
    score_detections,
)
INSTANCE_SEGMENTATION = _task(
    "instance-segmentation",
    "Instance Segmentation",
    "image-segmentation",
    ("instance-segmentation", "image-segmentation"),
    _MASK_METRICS + _BOX_METRICS,
    "instances",
    score_instances,
    masks=True,
)
PANOPTIC_SEGMENTATION = _task(
    "panoptic-segmentation",
    "Panoptic Segmentation",
    "image-segmentation",
    ("panoptic-segmentation", "image-segmentation"),
    _PANOPTIC_METRICS,
    "panoptic",
    score_panoptic,
    panoptic=True,
)
TASKS = {task.name: task for task in (OBJECT_DETECTION, INSTANCE_SEGMENTATION, PANOPTIC_SEGMENTATION)}

__all__ = [
    "INSTANCE_SEGMENTATION",
    "OBJECT_DETECTION",
    "PANOPTIC_SEGMENTATION",
    "TASKS",
    "score_detections",
    "score_instances",
    "score_panoptic",
    "train_augmentation",
]
