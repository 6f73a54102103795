"""Drawings of detection results: boxes, instance masks and class names with scores over the image, and panoptic
segments coloured by class with their names. Used by `fapn-predict` and the Space for the detectors."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import PIL.Image
import PIL.ImageDraw
import PIL.ImageFont


def _rgb(image: Any) -> np.ndarray:
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise ValueError(f"image must be (H, W, 3) uint8 RGB, got shape {array.shape} and dtype {array.dtype}")
    return array


def _blend(image: np.ndarray, mask: np.ndarray, color: np.ndarray, alpha: float) -> None:
    """Paints `color` over `image` where `mask` holds, in place, at opacity `alpha`."""
    image[mask] = np.round((1 - alpha) * image[mask] + alpha * color).astype(np.uint8)


def _caption(draw: PIL.ImageDraw.ImageDraw, xy: tuple[float, float], text: str, color: Sequence[int]) -> None:
    """`text` on a filled box of `color` whose bottom-left corner is at `xy` (inside the image when `xy` is near
    the top), in black or white, whichever reads better on that colour."""
    font = PIL.ImageFont.load_default()
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    width, height = right - left + 4, bottom - top + 2
    x, y = xy[0], max(0.0, xy[1] - height)
    draw.rectangle((x, y, x + width, y + height), fill=tuple(int(c) for c in color))
    luminance = 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2]
    draw.text((x + 2 - left, y + 1 - top), text, fill=(0, 0, 0) if luminance > 140 else (255, 255, 255), font=font)


def draw_detections(
    image: Any,
    boxes: Any,
    labels: Any,
    scores: Any,
    names: Sequence[str],
    colors: np.ndarray,
    masks: Any = None,
    threshold: float = 0.5,
    alpha: float = 0.5,
) -> PIL.Image.Image:
    """Detections with `score >= threshold` drawn over `image` `(H, W, 3)` uint8: masks `(n, H, W)` bool blended at
    `alpha`, box outlines `(n, 4)` absolute xyxy, and `"name 0.87"` captions, in the colour `colors[label]`; the
    lowest score is drawn first so that the best detections lie on top. Returns an RGB image of the same size."""
    canvas = _rgb(image).copy()
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if not len(boxes) == len(labels) == len(scores):
        raise ValueError(f"boxes ({len(boxes)}), labels ({len(labels)}) and scores ({len(scores)}) differ in number")
    if len(labels) and (labels.min() < 0 or labels.max() >= len(names)):
        raise ValueError(f"labels must lie in [0, {len(names)}) (the class names), got {labels.min()}..{labels.max()}")
    if masks is not None:
        masks = np.asarray(masks, dtype=bool)
        if masks.shape != (len(boxes), *canvas.shape[:2]):
            raise ValueError(f"masks must be (n, H, W) = {(len(boxes), *canvas.shape[:2])}, got {masks.shape}")
    order = [i for i in np.argsort(scores, kind="stable") if scores[i] >= threshold]
    if masks is not None:
        for i in order:
            _blend(canvas, masks[i], colors[labels[i]], alpha)
    drawing = PIL.Image.fromarray(canvas)
    draw = PIL.ImageDraw.Draw(drawing)
    for i in order:
        color = tuple(int(c) for c in colors[labels[i]])
        draw.rectangle(tuple(boxes[i]), outline=color, width=2)
        _caption(draw, (boxes[i][0], boxes[i][1]), f"{names[labels[i]]} {scores[i]:.2f}", color)
    return drawing


def draw_panoptic(
    image: Any,
    segmentation: Any,
    segments_info: Sequence[dict[str, Any]],
    names: Sequence[str],
    colors: np.ndarray,
    alpha: float = 0.5,
) -> PIL.Image.Image:
    """A panoptic result drawn over `image` `(H, W, 3)` uint8: every segment of `segmentation` `(H, W)` (segment
    ids, 0 = none) blended in its class colour (`segments_info`'s `label_id`), with its class name at the top-left
    of its extent. Returns an RGB image of the same size."""
    canvas = _rgb(image).copy()
    segmentation = np.asarray(segmentation)
    if segmentation.shape != canvas.shape[:2]:
        raise ValueError(f"segmentation {segmentation.shape} and image {canvas.shape[:2]} differ in size")
    captions = []
    for segment in segments_info:
        label = int(segment["label_id"])
        if not 0 <= label < len(names):
            raise ValueError(f"segment {segment['id']}: label_id {label} is not a class id in [0, {len(names)})")
        mask = segmentation == segment["id"]
        if not mask.any():
            continue
        _blend(canvas, mask, colors[label], alpha)
        rows, columns = np.nonzero(mask)
        captions.append(((float(columns.min()), float(rows.min()) + 12), names[label], colors[label]))
    drawing = PIL.Image.fromarray(canvas)
    draw = PIL.ImageDraw.Draw(drawing)
    for xy, text, color in captions:
        _caption(draw, xy, text, color)
    return drawing


__all__ = ["draw_detections", "draw_panoptic"]
