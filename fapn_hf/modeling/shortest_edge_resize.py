"""detectron2's `ResizeShortestEdge`, exactly: the resize every converted processor applies, so that a converted model
sees the pixels its original saw.

The size rule (detectron2's `ResizeShortestEdge.get_output_shape`): the shorter side becomes `short_edge_length`, the
longer side keeps the aspect ratio; when the longer side would exceed `max_size`, both are scaled down by
`max_size / longer`; each side is then rounded with `int(x + 0.5)` (not truncated: `int(x)` makes 174 of the 401
heights 400..800 at width 640 one pixel short at short side 640). The pixels (detectron2's `ResizeTransform`): a uint8
image is resized by PIL's bilinear filter (which widens its support when shrinking), a float image by
`F.interpolate(mode="bilinear", align_corners=False)`; label maps by PIL's nearest neighbour.

Training samples the shorter side per image (`ResizeShortestEdge(DETECTRON2_TRAIN_SHORT_EDGES, 1333)`: a choice
among 640, 672, ..., 800, as detectron2's `MIN_SIZE_TRAIN` with `MIN_SIZE_TRAIN_SAMPLING: choice`).

Part of the shipped kernel: imports nothing of the package (see `remote_code.KERNEL_MODULES`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F

# detectron2's defaults (`INPUT.MIN_SIZE_TEST`, `INPUT.MAX_SIZE_TEST`, `INPUT.MIN_SIZE_TRAIN`, `INPUT.MAX_SIZE_TRAIN`).
DETECTRON2_TEST_SHORT_EDGE = 800
DETECTRON2_MAX_SIZE = 1333
DETECTRON2_TRAIN_SHORT_EDGES: tuple[int, ...] = (640, 672, 704, 736, 768, 800)


def _positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def shortest_edge_size(height: int, width: int, short_edge_length: int, max_size: int | None = None) -> tuple[int, int]:
    """`(new_height, new_width)` of an image of `(height, width)` resized so that its shorter side is
    `short_edge_length` and its longer side at most `max_size` (None: no cap), with detectron2's arithmetic: the
    shorter side is set to the length itself, the longer to `scale * side`; a cap rescales both; `int(x + 0.5)`
    rounds. Python floats (float64), in detectron2's order of operations, so that every size is its size."""
    height, width = _positive_int(height, "height"), _positive_int(width, "width")
    size = float(_positive_int(short_edge_length, "short_edge_length"))
    scale = size / min(height, width)
    new_height, new_width = (size, scale * width) if height < width else (scale * height, size)
    if max_size is not None and max(new_height, new_width) > _positive_int(max_size, "max_size"):
        scale = max_size * 1.0 / max(new_height, new_width)
        new_height, new_width = new_height * scale, new_width * scale
    # A 1-pixel side of a very elongated image rounds to 0 in detectron2 (which then fails); keep one pixel.
    return max(1, int(new_height + 0.5)), max(1, int(new_width + 0.5))


def _pil_resize(plane: np.ndarray, size: tuple[int, int], resample: int) -> np.ndarray:
    """One `(H, W)` or `(H, W, 3)` array through PIL's `resize` to `size` `(h, w)`."""
    image = PIL.Image.fromarray(plane)
    return np.asarray(image.resize((size[1], size[0]), resample))


def resize_image(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """detectron2's `ResizeTransform.apply_image` (bilinear) on a channels-first image: `(C, H, W)` or `(N, C, H, W)`
    -> `(..., C, h, w)` of the same dtype and device, `size = (h, w)`.

    uint8: PIL's bilinear resize (3 channels as one RGB image, as detectron2 hands PIL the HWC array; other channel
    counts plane by plane, which PIL computes identically). Floating point: `F.interpolate(mode="bilinear",
    align_corners=False)`, detectron2's path for non-uint8 images. Other dtypes are refused."""
    if not isinstance(image, torch.Tensor) or image.ndim not in (3, 4):
        raise ValueError(
            f"resize_image takes a (C, H, W) or (N, C, H, W) tensor, got "
            f"{tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__}"
        )
    new_height, new_width = (_positive_int(side, "size") for side in size)
    if tuple(image.shape[-2:]) == (new_height, new_width):
        return image.clone()
    if image.is_floating_point():
        batch = image if image.ndim == 4 else image[None]
        resized = F.interpolate(batch, size=(new_height, new_width), mode="bilinear", align_corners=False)
        return resized if image.ndim == 4 else resized[0]
    if image.dtype != torch.uint8:
        raise ValueError(f"resize_image takes uint8 or floating-point images, got {image.dtype}")
    array = image.detach().cpu().numpy()
    flat = array.reshape(-1, *array.shape[-3:])
    out = np.empty((flat.shape[0], flat.shape[1], new_height, new_width), dtype=np.uint8)
    for index, planes in enumerate(flat):
        if planes.shape[0] == 3:
            out[index] = _pil_resize(planes.transpose(1, 2, 0), (new_height, new_width), PIL.Image.BILINEAR).transpose(
                2, 0, 1
            )
        else:
            for channel, plane in enumerate(planes):
                out[index, channel] = _pil_resize(plane, (new_height, new_width), PIL.Image.BILINEAR)
    return torch.from_numpy(out.reshape(*array.shape[:-2], new_height, new_width)).to(image.device)


def resize_label_map(label_map: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """A map of integer labels (class ids, instance masks) resized by PIL's nearest neighbour, detectron2's
    `apply_segmentation` on uint8 maps (output pixel `x` copies input pixel about `(x + 0.5) * W / w`, in PIL's
    fixed-point arithmetic). `(..., H, W)` integer or boolean -> `(..., h, w)` of the same dtype and device, through
    PIL's int32 mode `I` (the same pixels as mode `L` for uint8 maps, and ids above 255 kept); values must fit int32."""
    if not isinstance(label_map, torch.Tensor) or label_map.ndim < 2:
        raise ValueError("resize_label_map takes a (..., H, W) tensor of labels")
    if label_map.is_floating_point() or label_map.is_complex():
        raise ValueError(f"resize_label_map takes integer or boolean labels, got {label_map.dtype}")
    new_height, new_width = (_positive_int(side, "size") for side in size)
    if tuple(label_map.shape[-2:]) == (new_height, new_width):
        return label_map.clone()
    values = label_map.detach().cpu()
    if values.dtype == torch.int64 and values.numel() and (values.min() < -(2**31) or values.max() >= 2**31):
        raise ValueError("resize_label_map: labels must fit in int32")
    planes = values.reshape(-1, *values.shape[-2:]).to(torch.int32).numpy()
    out = np.stack([_pil_resize(plane, (new_height, new_width), PIL.Image.NEAREST) for plane in planes])
    result = torch.from_numpy(out).reshape(*values.shape[:-2], new_height, new_width)
    return result.to(dtype=label_map.dtype, device=label_map.device)


def scale_boxes(boxes: torch.Tensor, old_size: tuple[int, int], new_size: tuple[int, int]) -> torch.Tensor:
    """Absolute xyxy boxes `(N, 4)` of an image of `old_size` `(H, W)` in the pixels of the image resized to
    `new_size` `(h, w)`: x times `w / W`, y times `h / H` (detectron2's `ResizeTransform.apply_box`)."""
    (old_height, old_width), (new_height, new_width) = old_size, new_size
    factors = torch.tensor([new_width / old_width, new_height / old_height] * 2, dtype=boxes.dtype, device=boxes.device)
    return boxes * factors


class ResizeShortestEdge:
    """detectron2's `ResizeShortestEdge` augmentation: the shorter side from `short_edge_lengths`, the longer at most
    `max_size`, sizes by `shortest_edge_size`, pixels by `resize_image`.

    Args:
        short_edge_lengths: one length (test time), or the lengths to sample from at training time.
        max_size: the cap of the longer side.
        sample_style: `"choice"`: one of `short_edge_lengths`; `"range"`: an int in `[low, high]` of two lengths.
    """

    def __init__(
        self,
        short_edge_lengths: int | Sequence[int] = DETECTRON2_TEST_SHORT_EDGE,
        max_size: int = DETECTRON2_MAX_SIZE,
        sample_style: Literal["choice", "range"] = "choice",
    ) -> None:
        lengths = (short_edge_lengths,) if isinstance(short_edge_lengths, (int, np.integer)) else short_edge_lengths
        if isinstance(lengths, (str, bytes)) or not isinstance(lengths, Sequence) or not lengths:
            raise ValueError(
                f"short_edge_lengths must be an int or a non-empty list of ints, got {short_edge_lengths!r}"
            )
        self.short_edge_lengths = tuple(_positive_int(length, "short_edge_lengths") for length in lengths)
        self.max_size = _positive_int(max_size, "max_size")
        if sample_style not in ("choice", "range"):
            raise ValueError(f"sample_style must be 'choice' or 'range', got {sample_style!r}")
        if sample_style == "range" and len(self.short_edge_lengths) != 2:
            raise ValueError(f"sample_style='range' takes (low, high), got {self.short_edge_lengths}")
        self.sample_style = sample_style

    def sample_short_edge(self, generator: torch.Generator | None = None) -> int:
        """One shorter side: uniform over the choices, or over `[low, high]` (torch's generator, so DataLoader workers
        seeded by torch draw different sizes)."""
        if self.sample_style == "range":
            low, high = self.short_edge_lengths
            return int(torch.randint(low, high + 1, (1,), generator=generator))
        index = int(torch.randint(len(self.short_edge_lengths), (1,), generator=generator))
        return self.short_edge_lengths[index]

    def output_size(self, height: int, width: int, generator: torch.Generator | None = None) -> tuple[int, int]:
        """`(h, w)` for an image of `(height, width)`, with a sampled shorter side."""
        return shortest_edge_size(height, width, self.sample_short_edge(generator), self.max_size)

    def __call__(self, image: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """`(C, H, W)` -> `(C, h, w)` resized (`resize_image`)."""
        return resize_image(image, self.output_size(*image.shape[-2:], generator=generator))

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(short_edge_lengths={self.short_edge_lengths}, max_size={self.max_size}, "
            f"sample_style={self.sample_style!r})"
        )


__all__ = [
    "DETECTRON2_MAX_SIZE",
    "DETECTRON2_TEST_SHORT_EDGE",
    "DETECTRON2_TRAIN_SHORT_EDGES",
    "ResizeShortestEdge",
    "resize_image",
    "resize_label_map",
    "scale_boxes",
    "shortest_edge_size",
]
