"""Semantic segmentation: one class per pixel. Data (`data`), augmentation (`transforms`), metrics (`metrics`: mIoU,
boundary mIoU, pixel accuracy), drawing (`visualization`) and the built-in demo set (`demo_data`)."""

from __future__ import annotations

from typing import Any

import numpy as np

from ...labels import palette
from ..base import Task
from .data import LabelSpec, SegmentationCollator, SegmentationDataset, check_samples, load_segmentation_dataset
from .metrics import SegmentationMetrics
from .transforms import TrainAugmentation
from .visualization import overlay


def train_augmentation(data_args: Any) -> TrainAugmentation:
    """The recipe's training augmentation: random scale, category-capped crop, flip, photometric distortion."""
    return TrainAugmentation(
        crop_size=tuple(data_args.crop_size),
        scale_range=tuple(data_args.scale_range),
        cat_max_ratio=data_args.cat_max_ratio,
        hflip_probability=data_args.hflip_probability,
        photometric=data_args.photometric_distortion,
        ignore_index=data_args.ignore_index,
    )


def render(image: np.ndarray, class_map: np.ndarray, id2label: dict[int, str], alpha: float = 0.5) -> np.ndarray:
    """The class map `(H, W)` coloured with the label set's palette over `image` `(H, W, 3)` uint8."""
    labels = [id2label[i] for i in range(len(id2label))]
    return overlay(image, class_map, palette(len(labels), labels), alpha)


TASK = Task(
    name="semantic-segmentation",
    display_name="Semantic Segmentation",
    pipeline_tag="image-segmentation",
    card_tags=("semantic-segmentation", "vision", "image-segmentation"),
    card_metrics=(
        ("mean_iou", "mean_iou", "mIoU"),
        ("boundary_mean_iou", "boundary_mean_iou", "boundary mIoU (mean of 3/5/8/12 px)"),
        ("pixel_accuracy", "accuracy", "pixel accuracy"),
    ),
    load_splits=load_segmentation_dataset,
    check_samples=check_samples,
    label_spec=LabelSpec,
    make_dataset=SegmentationDataset,
    train_augmentation=train_augmentation,
    eval_collator=SegmentationCollator,
    make_metrics=SegmentationMetrics,
    render=render,
)

__all__ = ["TASK", "render", "train_augmentation"]
