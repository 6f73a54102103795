"""Semantic label maps as mask-classification targets, for training MaskFormer + FaPN on semantic datasets.

The original MaskFormer's semantic dataset mapper (`MaskFormerSemanticDatasetMapper`) turns a label map into one
binary mask per class present, with that class as the mask's label: the ignore label is no class, its pixels belong
to no mask (so the padding, filled with the ignore label, does too), and an image with only ignored pixels gets no
masks at all, a `(0, H, W)` tensor. `semantic_to_mask_targets` does this for a batch; `MaskClassificationCollator`
batches the dataset's `{"pixel_values", "labels"}` samples into what `MaskFormerFaPNForInstanceSegmentation` takes.

A flat module depending on torch and `labels.py` alone, so that the remote-code image processor may import it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ...labels import check_label_values


def semantic_to_mask_targets(
    labels: torch.Tensor | Sequence[torch.Tensor], num_labels: int, ignore_index: int = 255
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per-class binary masks and their classes from semantic label maps.

    Args:
        labels: `(N, H, W)` integer class ids, or a sequence of `(H_i, W_i)` maps (sizes may differ).
        ignore_index: the label of pixels that belong to no class (no mask is made for it).
        num_labels: every label other than `ignore_index` must lie in `[0, num_labels)`.

    Returns:
        `(mask_labels, class_labels)`: per image a float `(K_i, H_i, W_i)` tensor of 0/1 masks, one per class
        present in increasing class order, and the `(K_i,)` int64 tensor of those classes; `K_i = 0` for an image
        whose pixels are all `ignore_index`. On the device of the labels.
    """
    if isinstance(labels, torch.Tensor) and labels.dim() != 3:
        raise ValueError(f"labels must be (batch, height, width) or a list of (height, width) maps, got {labels.shape}")
    mask_labels, class_labels = [], []
    for index, label_map in enumerate(labels):
        label_map = torch.as_tensor(label_map)
        if label_map.dim() != 2:
            raise ValueError(f"label map {index} must be (height, width), got shape {tuple(label_map.shape)}")
        if label_map.is_floating_point() or label_map.is_complex() or label_map.dtype == torch.bool:
            raise ValueError(f"label map {index} must hold integer class ids, got dtype {label_map.dtype}")
        check_label_values(label_map, num_labels, ignore_index, name=f"label map {index}")
        classes = torch.unique(label_map)  # sorted
        classes = classes[classes != ignore_index]
        mask_labels.append((label_map[None] == classes[:, None, None]).float())
        class_labels.append(classes.long())
    return mask_labels, class_labels


@dataclass
class MaskClassificationCollator:
    """Batches `{"pixel_values": (3, H_i, W_i), "labels": (H_i, W_i)}` samples for MaskFormer + FaPN training.

    Images are zero-padded at the bottom and right to the batch's largest size (the model pads with zeros too) and
    labels with `ignore_index`, so padding belongs to no mask. Returns `pixel_values` `(N, 3, H, W)`, `pixel_mask`
    `(N, H, W)` int64 (1 on each image's pixels), and `mask_labels` / `class_labels` (`semantic_to_mask_targets`,
    at the padded size). Usable as a `Trainer`'s `data_collator`.
    """

    num_labels: int
    ignore_index: int = 255

    def __call__(self, samples: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        if not samples:
            raise ValueError("cannot collate an empty list of samples")
        sizes = []
        for index, sample in enumerate(samples):
            image_size, label_size = tuple(sample["pixel_values"].shape[-2:]), tuple(sample["labels"].shape)
            if image_size != label_size:
                raise ValueError(
                    f"sample {index}: labels of size {label_size} (H, W) for an image of size {image_size}; mask "
                    "targets need labels at the image's resolution"
                )
            sizes.append(image_size)
        height, width = max(h for h, _ in sizes), max(w for _, w in sizes)
        pixel_values = torch.zeros(len(samples), 3, height, width, dtype=samples[0]["pixel_values"].dtype)
        pixel_mask = torch.zeros(len(samples), height, width, dtype=torch.long)
        labels = torch.full((len(samples), height, width), self.ignore_index, dtype=torch.long)
        for index, (sample, (h, w)) in enumerate(zip(samples, sizes)):
            pixel_values[index, :, :h, :w] = sample["pixel_values"]
            pixel_mask[index, :h, :w] = 1
            labels[index, :h, :w] = sample["labels"]
        mask_labels, class_labels = semantic_to_mask_targets(labels, self.num_labels, self.ignore_index)
        return {
            "pixel_values": pixel_values,
            "pixel_mask": pixel_mask,
            "mask_labels": mask_labels,
            "class_labels": class_labels,
        }


__all__ = ["MaskClassificationCollator", "semantic_to_mask_targets"]
