"""One evaluation path for the Trainer, `scripts/evaluate.py` and the notebooks.

Every image goes through the model's image processor (its resize rule), through the model without padding (padding
inside a batch would change a FaPN's output, whose feature selection pools over the whole map: images of one size run
as a batch, the others alone), and its logits are resized bilinearly to the label's original resolution, where it is
scored: the mmseg / detectron2 convention, and what `pipeline("image-segmentation")` returns.

`predict_at_label_size` is that step for a collated batch (the Trainer's evaluation); `evaluate_predictor` runs a
`SegmentationPredictor`, with optional test-time augmentation, over decoded samples (the script and the notebooks).
Without augmentation both give the same class maps (up to the floating-point summation order of a batch), hence the
same metrics.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .inference import SegmentationPredictor, TTAConfig, logits_at_size
from .metrics import SegmentationMetrics


def predict_at_label_size(
    model: torch.nn.Module,
    pixel_values: torch.Tensor,
    image_sizes: torch.Tensor,
    label_sizes: torch.Tensor,
    labels: torch.Tensor | None = None,
    ignore_index: int = 255,
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Class maps of a collated batch at each label's original size, and the loss there.

    Args:
        pixel_values: `(N, 3, h, w)`, sample `i` in its top-left `image_sizes[i]` (the rest is padding).
        image_sizes, label_sizes: `(N, 2)` unpadded (height, width) of each image and of its label map.
        labels: `(N, H, W)` class ids padded with `ignore_index`, or None.

    Returns:
        The cross-entropy over every labelled pixel of the batch (None without labels; 0 when none is labelled), and
        the predictions `(N, H, W)` int64, 0 outside each label's size. Images never see padding: those of one size
        (with labels of one size) run together, the others alone.
    """
    height, width = label_sizes.max(dim=0).values.tolist()
    predictions = torch.zeros(len(pixel_values), height, width, dtype=torch.long, device=pixel_values.device)
    loss_sum, labelled = pixel_values.new_zeros((), dtype=torch.float32), 0
    groups: dict[tuple[int, ...], list[int]] = {}
    for index, sizes in enumerate(torch.cat([image_sizes, label_sizes], dim=1).tolist()):
        groups.setdefault(tuple(sizes), []).append(index)
    for (image_h, image_w, label_h, label_w), indices in groups.items():
        members = torch.tensor(indices, device=pixel_values.device)
        images = pixel_values[members, :, :image_h, :image_w]
        logits = logits_at_size(model, images, (label_h, label_w))
        predictions[members, :label_h, :label_w] = logits.argmax(dim=1)
        if labels is not None:
            target = labels[members, :label_h, :label_w].long()
            loss_sum = loss_sum + F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="sum")
            labelled += int((target != ignore_index).sum())
    loss = None if labels is None else loss_sum / max(labelled, 1)
    return loss, predictions


def evaluate_predictor(
    predictor: SegmentationPredictor,
    samples: Iterable[tuple[Any, np.ndarray]],
    tta: TTAConfig | None = None,
    ignore_index: int | None = None,
) -> dict[str, Any]:
    """Scores of `predictor` over `(image, labels)` pairs (labels `(H, W)` class ids at the image's resolution, e.g.
    `SegmentationDataset.samples()`): mIoU, accuracies, boundary mIoU and `per_class_iou`, plus `num_images`.

    `ignore_index` defaults to the model's `semantic_loss_ignore_index`. Raises `ValueError` when no pixel of the
    samples is labelled (the scores would be NaN)."""
    config = predictor.model.config
    ignore = config.semantic_loss_ignore_index if ignore_index is None else ignore_index
    metrics = SegmentationMetrics(config.num_labels, ignore, id2label=config.id2label)
    num_images, labelled = 0, 0
    for image, labels in samples:
        labels = np.asarray(labels)
        metrics.update(predictor.predict(image, tta), labels)
        num_images += 1
        labelled += int(np.count_nonzero(labels != ignore))
    if labelled == 0:
        raise ValueError(f"nothing to score: {num_images} images without a labelled pixel (all ignore_index={ignore})")
    return {**metrics.compute(), "num_images": num_images}


__all__ = ["evaluate_predictor", "predict_at_label_size"]
