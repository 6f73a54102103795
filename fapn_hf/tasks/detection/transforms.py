"""Training augmentation of the detection tasks on `torchvision.transforms.v2`: detectron2's recipe, a shorter side
sampled from (640, 672, 704, 736, 768, 800) with the longer side at most 1333, then a horizontal flip.

Inputs are a `tv_tensors.Image` `(3, H, W)` uint8 and a target dict whose `boxes` are `tv_tensors.BoundingBoxes`
(absolute xyxy) and whose `masks` `(N, H, W)` / `semantic_labels` `(H, W)` are `tv_tensors.Mask`; other entries
(`class_labels`, `iscrowd`) pass through. The resize is the one converted processors use
(`fapn_hf.modeling.shortest_edge_resize`: sizes by `int(x + 0.5)`, PIL bilinear on the uint8 image, PIL nearest on
masks and label maps, boxes scaled by the size ratios), so a trained model sees at test time the pixels it trained
on. v2 provides the flip (image, boxes and masks together).

Like every v2 transform these draw from torch's global generator; `TrainAugmentation` seeds it from its `seed`
argument inside `torch.random.fork_rng`, so a sample's augmentation is a function of `(sample, seed)` alone.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from ...modeling.shortest_edge_resize import (
    DETECTRON2_MAX_SIZE,
    DETECTRON2_TRAIN_SHORT_EDGES,
    resize_image,
    resize_label_map,
    scale_boxes,
    shortest_edge_size,
)

__all__ = ["RandomShortestEdgeResize", "TrainAugmentation", "train_augmentation"]


def _positive_ints(values: Any, name: str) -> tuple[int, ...]:
    if isinstance(values, int) and not isinstance(values, bool):
        values = (values,)
    try:
        result = tuple(values)
    except TypeError:
        raise ValueError(f"{name} must be a positive int or a list of them, got {values!r}") from None
    if not result or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in result):
        raise ValueError(f"{name} must be a positive int or a non-empty list of them, got {values!r}")
    return result


class RandomShortestEdgeResize(v2.Transform):
    """detectron2's `ResizeShortestEdge` (sample style "choice") as a v2 transform: one shorter side drawn from
    `short_edge_lengths` per call, the longer side capped at `max_size`; the image, boxes, masks and label maps of
    one call get the same size."""

    def __init__(
        self, short_edge_lengths: Sequence[int] = DETECTRON2_TRAIN_SHORT_EDGES, max_size: int = DETECTRON2_MAX_SIZE
    ) -> None:
        super().__init__()
        self.short_edge_lengths = _positive_ints(short_edge_lengths, "short_edge_lengths")
        self.max_size = _positive_ints(max_size, "max_size")[0]

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        short = self.short_edge_lengths[int(torch.randint(len(self.short_edge_lengths), ()))]
        return {"old": (height, width), "size": shortest_edge_size(height, width, short, self.max_size)}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        size = params["size"]
        if isinstance(inpt, tv_tensors.BoundingBoxes):
            boxes = scale_boxes(inpt.as_subclass(torch.Tensor).float(), params["old"], size)
            return tv_tensors.BoundingBoxes(boxes, format=inpt.format, canvas_size=size)
        if isinstance(inpt, tv_tensors.Mask):
            values = inpt.as_subclass(torch.Tensor)
            if values.numel() == 0:
                return tv_tensors.Mask(values.new_zeros((*values.shape[:-2], *size)))
            # int64 through the shared resize (it checks int32 bounds, which narrower dtypes overflow), then back.
            return tv_tensors.Mask(resize_label_map(values.long(), size).to(values.dtype))
        if isinstance(inpt, tv_tensors.Image):
            return tv_tensors.Image(resize_image(inpt.as_subclass(torch.Tensor), size))
        return inpt


def _torch_seed(seed: int | Sequence[int]) -> int:
    """A 63-bit torch seed from an int or a sequence of ints such as `(seed, epoch, index)`."""
    parts = list(seed) if isinstance(seed, (list, tuple)) else [seed]
    if not parts or not all(isinstance(p, int) and not isinstance(p, bool) and p >= 0 for p in parts):
        raise ValueError(f"seed must be a non-negative int or a non-empty sequence of them, got {seed!r}")
    digest = hashlib.blake2b(",".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class TrainAugmentation:
    """`aug(image, target, seed) -> (image, target)`: `RandomShortestEdgeResize(short_edge_lengths, max_size)`
    then a horizontal flip with `hflip_probability` (detectron2's default recipe; the demo passes smaller sizes).
    The output depends on the inputs and `seed` only; torch's global generator is left as it was."""

    def __init__(
        self,
        short_edge_lengths: Sequence[int] = DETECTRON2_TRAIN_SHORT_EDGES,
        max_size: int = DETECTRON2_MAX_SIZE,
        hflip_probability: float = 0.5,
    ) -> None:
        if not 0.0 <= float(hflip_probability) <= 1.0:
            raise ValueError(f"hflip_probability must lie in [0, 1], got {hflip_probability!r}")
        self.resize = RandomShortestEdgeResize(short_edge_lengths, max_size)
        self.hflip_probability = float(hflip_probability)
        self.pipeline = v2.Compose([self.resize, v2.RandomHorizontalFlip(self.hflip_probability)])

    def __call__(self, image: torch.Tensor, target: dict[str, Any], seed: int | Sequence[int]) -> tuple[Any, Any]:
        if not isinstance(image, tv_tensors.Image) or not isinstance(target.get("boxes"), tv_tensors.BoundingBoxes):
            raise TypeError("TrainAugmentation takes a tv_tensors.Image and a target with tv_tensors.BoundingBoxes")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_torch_seed(seed))
            return self.pipeline(image, target)

    def __repr__(self) -> str:
        return (
            f"TrainAugmentation(short_edge_lengths={self.resize.short_edge_lengths}, max_size={self.resize.max_size}, "
            f"hflip_probability={self.hflip_probability})"
        )


def train_augmentation(data_args: Any) -> TrainAugmentation:
    """`Task.train_augmentation`: the recipe's `min_size_train` (shorter sides), `max_size_train` and
    `hflip_probability`, each defaulting to detectron2's when the arguments lack it."""
    return TrainAugmentation(
        short_edge_lengths=getattr(data_args, "min_size_train", None) or DETECTRON2_TRAIN_SHORT_EDGES,
        max_size=getattr(data_args, "max_size_train", None) or DETECTRON2_MAX_SIZE,
        hflip_probability=getattr(data_args, "hflip_probability", 0.5),
    )
