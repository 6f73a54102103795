"""Semantic label maps as mask-classification targets, for training MaskFormer + FaPN on semantic datasets.

The original MaskFormer's semantic dataset mapper (`MaskFormerSemanticDatasetMapper`) turns a label map into one
binary mask per class present, with that class as the mask's label: the ignore label is no class, its pixels belong
to no mask (so the padding, filled with the ignore label, does too), and an image with only ignored pixels gets no
masks at all, a `(0, H, W)` tensor. `semantic_to_mask_targets` does this for a batch; it is shipped code
(`fapn_hf.modeling.modeling_maskformer_fapn`), as the model turns a semantic `labels=` into mask targets with it, and
is re-exported here. `MaskClassificationCollator` batches the dataset's `{"pixel_values", "labels"}` samples into what
`MaskFormerFaPNForInstanceSegmentation` takes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ...modeling.modeling_maskformer_fapn import semantic_to_mask_targets


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
