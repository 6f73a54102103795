"""Semantic segmentation: one class per pixel. Data (`data`), augmentation (`transforms`), metrics (`metrics`: mIoU,
boundary mIoU, pixel accuracy), drawing (`visualization`) and the built-in demo set (`demo_data`).

The task's pieces are imported when first used: a model, the predictor or a Space need none of the training stack
(`datasets`, the augmentation), and `import fapn_hf` stays light."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from ..base import Task


def _on_first_use(module: str, name: str) -> Callable[..., Any]:
    """`name` of this package's `module`, imported when first called."""

    def call(*args: Any, **kwargs: Any) -> Any:
        return getattr(importlib.import_module(f"{__name__}.{module}"), name)(*args, **kwargs)

    call.__name__ = call.__qualname__ = name
    call.__doc__ = f"`fapn_hf.tasks.semantic.{module}.{name}` (imported on first use)."
    return call


def train_augmentation(data_args: Any) -> Any:
    """The recipe's training augmentation: random scale, category-capped crop, flip, photometric distortion."""
    from .transforms import TrainAugmentation

    return TrainAugmentation(
        crop_size=tuple(data_args.crop_size),
        scale_range=tuple(data_args.scale_range),
        cat_max_ratio=data_args.cat_max_ratio,
        hflip_probability=data_args.hflip_probability,
        photometric=data_args.photometric_distortion,
        ignore_index=data_args.ignore_index,
    )


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
    label_settings=_on_first_use("layouts", "label_settings"),
    load_splits=_on_first_use("data", "load_segmentation_dataset"),
    check_samples=_on_first_use("data", "check_samples"),
    label_spec=_on_first_use("data", "LabelSpec"),
    make_dataset=_on_first_use("data", "SegmentationDataset"),
    train_augmentation=train_augmentation,
    eval_collator=_on_first_use("data", "SegmentationCollator"),
    make_metrics=_on_first_use("metrics", "SegmentationMetrics"),
)

__all__ = ["TASK", "train_augmentation"]
