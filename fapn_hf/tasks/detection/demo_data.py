"""A procedurally generated detection / instance / panoptic data set for demos, quick training runs and tests.

Every image shows one to five shapes, each an instance of a thing class ("disc", "square", "triangle"), on a
background split by a wavy line into two stuff regions ("sand": warm speckled noise, "water": blue horizontal
waves). Shapes occlude each other: an instance's mask is the part of it left visible, its box the tight box of that
mask (COCO's pixel-cover convention: `[x, y, w, h]` with `w = x_max + 1 - x_min`); shapes hidden below
`MIN_VISIBLE_AREA` pixels are painted but left unlabelled (void in the panoptic map, no instance). Class colours are
drawn from overlapping hue ranges, so a model needs the shape too.

Rows have the canonical columns of `fapn_hf.tasks.detection.data` (so the three tasks read them as they read a
COCO folder): `image` (PNG), `image_id`, `objects` (COCO `bbox`, contiguous `category`, `area`, `id`, `iscrowd`,
`segmentation` as the JSON text of a compressed RLE), `panoptic` (a PNG of segment ids encoded
`r + 256 g + 256^2 b`) and `segments_info` (JSON list of `{"id", "category_id", "iscrowd", "area", "bbox"}`, category
ids in the `DEMO_LABELS` space: things first, then stuff).

Sample `index` of seed `seed` is rendered from `numpy.random.default_rng([seed, index])` alone, so splits drawn
from disjoint index ranges are reproducible whatever their sizes.
"""

from __future__ import annotations

import colorsys
import io
import json

import datasets
import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

DEMO_THING_LABELS: tuple[str, ...] = ("disc", "square", "triangle")
DEMO_STUFF_LABELS: tuple[str, ...] = ("sand", "water")
# id2label order of the detector family's contract: things first, then stuff.
DEMO_LABELS: tuple[str, ...] = DEMO_THING_LABELS + DEMO_STUFF_LABELS
DISC, SQUARE, TRIANGLE, SAND, WATER = range(len(DEMO_LABELS))
VALIDATION_START_INDEX = 1_000_000
# Shapes left with fewer visible pixels than this are not instances (a sliver is no fair target).
MIN_VISIBLE_AREA = 16
_HUES = {DISC: (0.02, 0.15), SQUARE: (0.55, 0.15), TRIANGLE: (0.30, 0.15)}
_FEATURES = datasets.Features(
    {
        "image": datasets.Image(),
        "image_id": datasets.Value("int64"),
        "objects": {
            "bbox": datasets.Sequence(datasets.Sequence(datasets.Value("float32"), length=4)),
            "category": datasets.Sequence(datasets.Value("int64")),
            "area": datasets.Sequence(datasets.Value("float32")),
            "id": datasets.Sequence(datasets.Value("int64")),
            "iscrowd": datasets.Sequence(datasets.Value("int64")),
            "segmentation": datasets.Sequence(datasets.Value("string")),
        },
        "panoptic": datasets.Image(),
        "segments_info": datasets.Value("string"),
    }
)


def demo_id2label() -> dict[int, str]:
    """`{class id: name}` of the demo set: things `0..2`, then stuff `3..4`."""
    return dict(enumerate(DEMO_LABELS))


def _shape_mask(kind: int, ys: np.ndarray, xs: np.ndarray, cy: float, cx: float, r: float, theta: float) -> np.ndarray:
    """Pixels (centres) inside a disc, a rotated square or a rotated equilateral triangle of circumradius `r`."""
    dy, dx = ys - cy, xs - cx
    if kind == DISC:
        return dy**2 + dx**2 <= r**2
    c, s = np.cos(theta), np.sin(theta)
    u, v = dx * c + dy * s, dy * c - dx * s
    if kind == SQUARE:
        half = r / np.sqrt(2.0)
        return (np.abs(u) <= half) & (np.abs(v) <= half)
    # Triangle: inside the three half-planes whose outward normals point at angles 90, 210 and 330 degrees.
    inside = np.ones(np.broadcast_shapes(u.shape, v.shape), bool)
    for angle in (np.pi / 2, np.pi / 2 + 2 * np.pi / 3, np.pi / 2 + 4 * np.pi / 3):
        inside &= u * np.cos(angle) + v * np.sin(angle) <= r / 2
    return inside


def _background(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """The stuff layer: image `(H, W, 3)` float in [0, 1] and stuff class ids `(H, W)` (SAND or WATER)."""
    ys = np.arange(height, dtype=np.float32)[:, None]
    xs = np.arange(width, dtype=np.float32)[None, :]
    level = rng.uniform(0.3, 0.7) * height
    wave = level + rng.uniform(2.0, 0.12 * height) * np.sin(
        xs * (2 * np.pi / rng.uniform(30.0, 90.0)) + rng.uniform(0, 7)
    )
    water_on_top = rng.uniform() < 0.5
    water = (ys < wave) if water_on_top else (ys >= wave)
    stuff = np.where(water, WATER, SAND).astype(np.int64)
    sand = np.array(colorsys.hsv_to_rgb(rng.uniform(0.08, 0.14), rng.uniform(0.3, 0.6), rng.uniform(0.55, 0.85)))
    sea = np.array(colorsys.hsv_to_rgb(rng.uniform(0.55, 0.65), rng.uniform(0.4, 0.8), rng.uniform(0.4, 0.75)))
    speckle = 1.0 + 0.18 * rng.uniform(-1.0, 1.0, (height, width))
    ripples = 1.0 + 0.15 * np.sin(ys * (2 * np.pi / rng.uniform(4.0, 9.0)) + 0.3 * np.sin(xs / 7.0))
    image = np.where(water[..., None], sea * ripples[..., None], sand * speckle[..., None])
    return image.astype(np.float32), stuff


def _encode_rle(mask: np.ndarray) -> str:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return json.dumps({"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")})


def _png(array: np.ndarray) -> dict[str, bytes | None]:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": None}


def _tight_box(mask: np.ndarray) -> list[float]:
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return [float(cols[0]), float(rows[0]), float(cols[-1] + 1 - cols[0]), float(rows[-1] + 1 - rows[0])]


def render_sample(index: int, seed: int = 0, size: tuple[int, int] = (128, 128)) -> dict:
    """Renders sample `index` of seed `seed` as plain arrays.

    Returns:
        `{"image": (H, W, 3) uint8, "segment_ids": (H, W) int64 (0 = void), "segments": [{"id", "category_id",
        "iscrowd", "area", "bbox"}]}`: things (`category_id` < 3) in painting order, then the stuff segments.
        Instance `k` of the things has segment id `k + 1`; stuff segments follow.
    """
    if index < 0 or seed < 0:
        raise ValueError(f"index and seed must be non-negative, got index={index}, seed={seed}")
    height, width = int(size[0]), int(size[1])
    if height < 32 or width < 32:
        raise ValueError(f"size must be at least (32, 32), got {tuple(size)}")
    rng = np.random.default_rng([seed, index])
    image, stuff = _background(rng, height, width)
    ys = np.arange(height, dtype=np.float32)[:, None] + 0.5
    xs = np.arange(width, dtype=np.float32)[None, :] + 0.5
    scale = min(height, width) / 128.0
    # owner[y, x] = index of the shape painted last there (-1: background); a later shape hides an earlier one.
    owner = np.full((height, width), -1, np.int64)
    kinds = []
    for shape in range(int(rng.integers(1, 6))):
        kind = int(rng.integers(0, len(DEMO_THING_LABELS)))
        r = rng.uniform(9.0, 30.0) * scale
        cy, cx = rng.uniform(0.05, 0.95) * height, rng.uniform(0.05, 0.95) * width
        inside = _shape_mask(kind, ys, xs, cy, cx, r, rng.uniform(0.0, 2 * np.pi))
        centre, spread = _HUES[kind]
        colour = colorsys.hsv_to_rgb((centre + rng.uniform(-spread, spread)) % 1.0, rng.uniform(0.5, 1.0), 0.9)
        shading = 1.0 - 0.25 * np.clip(np.hypot(ys - cy, xs - cx) / r, 0.0, 1.0)
        image = np.where(inside[..., None], np.asarray(colour, np.float32) * shading[..., None], image)
        owner[inside] = shape
        kinds.append(kind)
    image = image + rng.normal(0.0, 0.03, image.shape)
    segment_ids = np.zeros((height, width), np.int64)
    segments = []
    for shape, kind in enumerate(kinds):
        visible = owner == shape
        area = int(visible.sum())
        if area < MIN_VISIBLE_AREA:
            continue  # left void: painted, but neither a thing segment nor stuff
        segment_ids[visible] = len(segments) + 1
        bbox = _tight_box(visible)
        segments.append({"id": len(segments) + 1, "category_id": kind, "iscrowd": 0, "area": area, "bbox": bbox})
    for label in (SAND, WATER):
        region = (owner < 0) & (stuff == label)
        if region.any():
            segment_ids[region] = len(segments) + 1
            segments.append(
                {"id": len(segments) + 1, "category_id": label, "iscrowd": 0, "area": int(region.sum()),
                 "bbox": _tight_box(region)}
            )  # fmt: skip
    rgb = (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return {"image": rgb, "segment_ids": segment_ids, "segments": segments}


def encode_segment_ids(segment_ids: np.ndarray) -> np.ndarray:
    """Segment ids `(H, W)` as COCO panoptic's RGB PNG pixels `(H, W, 3)` uint8: `id = r + 256 g + 256^2 b`."""
    ids = np.asarray(segment_ids, np.int64)
    if ids.min(initial=0) < 0 or ids.max(initial=0) >= 256**3:
        raise ValueError(f"segment ids must lie in [0, 256^3), got [{ids.min()}, {ids.max()}]")
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8)


def _row(index: int, seed: int, size: tuple[int, int]) -> dict:
    sample = render_sample(index, seed=seed, size=size)
    things = [s for s in sample["segments"] if s["category_id"] < len(DEMO_THING_LABELS)]
    objects = {
        "bbox": [s["bbox"] for s in things],
        "category": [s["category_id"] for s in things],
        "area": [float(s["area"]) for s in things],
        "id": [s["id"] for s in things],
        "iscrowd": [0 for _ in things],
        "segmentation": [_encode_rle(sample["segment_ids"] == s["id"]) for s in things],
    }
    return {
        "image": _png(sample["image"]),
        "image_id": index,
        "objects": objects,
        "panoptic": _png(encode_segment_ids(sample["segment_ids"])),
        "segments_info": json.dumps(sample["segments"]),
    }


def make_demo_dataset(
    num_samples: int = 64, seed: int = 0, size: tuple[int, int] = (128, 128), start_index: int = 0
) -> datasets.Dataset:
    """Renders samples `start_index .. start_index + num_samples - 1` into an in-memory `datasets.Dataset` with the
    canonical detection columns (module docstring)."""
    if num_samples < 0:
        raise ValueError(f"num_samples must be non-negative, got {num_samples}")
    rows = [_row(index, seed, size) for index in range(start_index, start_index + num_samples)]
    columns = {key: [row[key] for row in rows] for key in _FEATURES}
    info = datasets.DatasetInfo(
        description=f"FaPN demo detection data (seed {seed}, indices [{start_index}, {start_index + num_samples}))",
        features=_FEATURES,
    )
    return datasets.Dataset.from_dict(columns, features=_FEATURES, info=info)


def make_demo_splits(
    num_train: int = 256, num_validation: int = 64, seed: int = 0, size: tuple[int, int] = (128, 128)
) -> datasets.DatasetDict:
    """`"train"` (indices `0 .. num_train - 1`) and `"validation"` (from `VALIDATION_START_INDEX` on) splits; the
    validation split does not depend on `num_train`."""
    if num_train > VALIDATION_START_INDEX:
        raise ValueError(f"num_train must be at most {VALIDATION_START_INDEX}, got {num_train}")
    return datasets.DatasetDict(
        train=make_demo_dataset(num_train, seed=seed, size=size),
        validation=make_demo_dataset(num_validation, seed=seed, size=size, start_index=VALIDATION_START_INDEX),
    )


__all__ = [
    "DEMO_LABELS",
    "DEMO_STUFF_LABELS",
    "DEMO_THING_LABELS",
    "MIN_VISIBLE_AREA",
    "VALIDATION_START_INDEX",
    "demo_id2label",
    "encode_segment_ids",
    "make_demo_dataset",
    "make_demo_splits",
    "render_sample",
]
